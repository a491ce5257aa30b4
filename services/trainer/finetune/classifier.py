"""Text classifiers (intents, categories): a label for each text."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from services.trainer.finetune.base import Task, Texts, load_model, loader
from shared.training import Hyperparameters


class ClassifierTask(Task):
    """Text -> one of the labels seen in training, by cross-entropy."""

    def __init__(
        self,
        model_dir: str,
        examples: list[tuple[str, str]],
        labels: list[str],
        max_length: int,
        *,
        base_dir: str | None = None,
        adapter: Hyperparameters | None = None,
    ):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.labels = labels
        self.model = load_model(
            loader(
                AutoModelForSequenceClassification,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
            ),
            model_dir,
            base_dir,
            adapter,
            uses_pooler=True,
        )
        self.examples = examples
        self.texts = Texts(self.tokenizer, max_length)
        self.texts.add([t for t, _ in examples])

    def lengths(self) -> list[int]:
        return [self.texts.length(t) for t, _ in self.examples]

    def logits(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        self.texts.add(texts)
        logits: torch.Tensor = self.model(**self.texts.batch(texts, device)).logits
        return logits

    def loss(self, batch: list[tuple[str, str]], device: torch.device) -> torch.Tensor:
        target = torch.tensor([self.labels.index(label) for _, label in batch], device=device)
        return nn.functional.cross_entropy(self.logits([t for t, _ in batch], device), target)
