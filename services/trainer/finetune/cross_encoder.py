"""Cross-encoders: a relevance score for each (query, product) pair, for reranking."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from services.trainer.finetune.base import PairTask, load_model, loader
from shared.training import Hyperparameters


class CrossEncoderTask(PairTask):
    """(query, product) -> relevance logit, fitted to the normalised grade (soft binary targets)."""

    def __init__(
        self,
        model_dir: str,
        examples: list[tuple[str, str, float]],
        product_text: dict[str, str],
        max_length: int,
        *,
        base_dir: str | None = None,
        adapter: Hyperparameters | None = None,
    ):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = load_model(
            loader(AutoModelForSequenceClassification, num_labels=1),
            model_dir,
            base_dir,
            adapter,
            uses_pooler=True,
        )
        self._index([(q, product_text[p], g) for q, p, g in examples], max_length)

    def logits(self, queries: Sequence[str], products: Sequence[str], device: torch.device) -> torch.Tensor:
        self.texts.add(list(queries) + list(products))
        logits: torch.Tensor = self.model(**self.texts.pairs(queries, products, device)).logits.squeeze(-1)
        return logits

    def loss(self, batch: list[tuple[str, str, float]], device: torch.device) -> torch.Tensor:
        logits = self.logits([q for q, _, _ in batch], [t for _, t, _ in batch], device)
        target = torch.tensor([g for _, _, g in batch], dtype=logits.dtype, device=device)
        return nn.functional.binary_cross_entropy_with_logits(logits, target)
