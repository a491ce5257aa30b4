"""LoRA adapters (the PEFT library) in place of full fine-tuning.

The base model's weights stay frozen; low-rank matrices beside the targeted linear layers learn, and so
does any module the checkpoint did not hold (a cross-encoder's or classifier's new head): PEFT's
``modules_to_save`` trains those in full and saves them with the adapter, so the head is neither left at
its random initialisation nor lost when the adapter is loaded again. A checkpoint holds the adapter
alone; the exported model has the adapter merged into its weights, so serving is unchanged.

With ``query_tower_only`` (bi-encoders) the product side is the base model itself: products are embedded
with the adapter disabled, so a catalog embedded by the base model serves the new version as it is."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model

from shared.training import DEFAULT_LORA_TARGETS, Hyperparameters

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def _targets(names: list[str], skip_pooler: bool, trained_whole: list[str]) -> str:
    """A regular expression PEFT matches whole against each module's dotted name: the modules whose last
    name is one of ``names``, but not a module ``trained_whole`` (a new head) and not under the pooler
    when the task never uses it (a bi-encoder pools the tokens itself: adapter weights there would
    never get a gradient)."""
    alternatives = "|".join(re.escape(n) for n in names)
    guards = r"(?!.*\bpooler\b)" if skip_pooler else ""
    if trained_whole:
        guards += rf"(?!(?:{'|'.join(re.escape(m) for m in trained_whole)})$)"
    return rf"^{guards}(.*\.)?({alternatives})$"


def lora_config(hp: Hyperparameters, trained_whole: list[str], *, uses_pooler: bool) -> LoraConfig:
    names = list(hp.target_modules or DEFAULT_LORA_TARGETS)
    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=_targets(names, skip_pooler=not uses_pooler, trained_whole=trained_whole),
        modules_to_save=trained_whole or None,
        bias="none",
    )


def new_modules(missing_keys: list[str]) -> list[str]:
    """The modules whose parameters the checkpoint did not hold (a new head), from transformers' loading
    report: ``classifier.weight`` -> ``classifier``."""
    return sorted({key.rsplit(".", 1)[0] for key in missing_keys if "." in key})


def with_adapter(
    load: Callable[[str], tuple[Any, list[str]]],
    model_dir: str,
    base_dir: str,
    hp: Hyperparameters,
    *,
    uses_pooler: bool,
) -> Any:
    """The model to train: ``load(folder)`` (the model and the parameter names the folder lacked) as it
    is without an adapter; with one, the base model with a new LoRA adapter, or with the adapter of the
    checkpoint in ``model_dir`` loaded to go on training."""
    if hp.adapter is None:
        return load(model_dir)[0]
    base, missing = load(base_dir)
    if is_adapter_folder(model_dir):  # a checkpoint: the adapter, and any trained head beside it
        return PeftModel.from_pretrained(base, model_dir, is_trainable=True)
    target = lora_config(hp, new_modules(missing), uses_pooler=uses_pooler)
    try:
        return get_peft_model(base, target)
    except ValueError as exc:  # PEFT's own words for targets that match nothing, with ours after them
        raise ValueError(
            f"{exc}; target_modules {hp.target_modules or list(DEFAULT_LORA_TARGETS)} must name linear "
            "layers of the base model (for BERT-like models: query, key, value, dense)"
        ) from exc


def merged(model: Any) -> Any:
    """A copy of ``model`` with its adapter merged into the weights (the plain transformers model, the
    trained head in place); the model itself as it is without an adapter."""
    if not isinstance(model, PeftModel):
        return model
    return copy.deepcopy(model).merge_and_unload()


def trainable_state(model: Any) -> dict[str, Any]:
    """What training changes: every weight without an adapter; with one, the adapter's and the head's."""
    if not isinstance(model, PeftModel):
        return dict(model.state_dict())
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
