"""Export of fine-tuned transformer checkpoints to ONNX for the inference service.

Writes `model.onnx` (fp32), `model.int8.onnx` (dynamic int8), optionally `model.fp16.onnx`, the tokenizer
files, `config.json` and `manifest.json`; checks the fp32 graph against the torch model on real examples."""

from __future__ import annotations

import dataclasses
import importlib
import json
import platform
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from shared.datasets.examples import Examples
from shared.files import file_entry
from shared.models.enums import JobType
from shared.onnxmodel import OnnxTextModel

Task = Literal["feature-extraction", "text-classification"]
FloatArray = npt.NDArray[np.float32]

PARITY_TOLERANCE = 1e-4
OPSET = 18
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
FP16_FILE = "model.fp16.onnx"
MANIFEST_FILE = "manifest.json"
# Tokenizer and model configuration files copied next to the graphs when the checkpoint has them.
SUPPORT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)
_CPU_FLAGS_FILE = Path("/proc/cpuinfo")


class ExportError(Exception):
    """The checkpoint could not be exported, or the exported graph does not match the torch model."""


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how closely the graphs follow the torch model.

    `files` maps "model", "model_int8", "model_fp16" and the support file names to
    {"path": name relative to the output folder, "sha256": hex digest, "bytes": size}."""

    files: dict[str, dict[str, Any]]
    parity_max_abs_diff: float
    int8_max_abs_diff: float
    int8_mean_cosine: float | None
    opset: int
    seconds: float


def quantization_target() -> Literal["arm64", "avx512_vnni", "avx2"]:
    """The optimum AutoQuantizationConfig preset for this machine's CPU.

    ARM64 gets u8/s8; x86 with AVX512-VNNI gets u8/s8; every other x86 CPU gets u8/u8 (the avx2 preset),
    which avoids the u8/s8 saturation of AVX2 and non-VNNI AVX512 kernels."""
    machine = platform.machine().lower()
    if machine in {"arm64", "aarch64"}:
        return "arm64"
    flags: set[str] = set()
    try:
        for line in _CPU_FLAGS_FILE.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
                break
    except OSError:
        pass
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx2"


def _check_examples(task: Task, examples: Sequence[str] | Sequence[tuple[str, str]]) -> None:
    if len(examples) == 0:
        raise ExportError("export needs at least one real example for the parity check")
    if all(isinstance(item, str) for item in examples):
        return
    pairs = all(
        isinstance(item, tuple) and len(item) == 2 and all(isinstance(part, str) for part in item)
        for item in examples
    )
    if task == "text-classification" and pairs:
        return
    wanted = "strings" if task == "feature-extraction" else "strings or (text, text) pairs"
    raise ExportError(f"{task} examples must all be {wanted}")


def _float16_converter() -> Callable[..., Any]:
    """`convert_float_to_float16` from onnxruntime.transformers, else from onnxconverter-common."""
    for module_name in ("onnxruntime.transformers.float16", "onnxconverter_common.float16"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        converter = getattr(module, "convert_float_to_float16", None)
        if callable(converter):
            found: Callable[..., Any] = converter
            return found
    raise ExportError(
        "fp16 export needs a float16 converter: neither onnxruntime.transformers.float16 nor "
        "onnxconverter_common is importable (install onnxruntime with its transformers tools, "
        "or onnxconverter-common)"
    )


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    auto: Any = AutoTokenizer
    return auto.from_pretrained(str(model_dir), local_files_only=True)


def _load_torch_model(model_dir: Path, task: Task) -> Any:
    from transformers import AutoModel, AutoModelForSequenceClassification

    auto = AutoModel if task == "feature-extraction" else AutoModelForSequenceClassification
    try:
        model, info = auto.from_pretrained(
            str(model_dir), local_files_only=True, output_loading_info=True, dtype="float32"
        )
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load {model_dir} for {task}: {exc}") from exc
    missing = [key for key in info.get("missing_keys", []) if not key.startswith("pooler.")]
    if missing:
        raise ExportError(
            f"{model_dir} lacks trained weights for {task} (would be randomly initialised): "
            + ", ".join(sorted(missing)[:8])
        )
    model.eval()
    return model


def _torch_outputs(
    model: Any,
    model_dir: Path,
    task: Task,
    examples: Sequence[str] | Sequence[tuple[str, str]],
    max_length: int,
    batch_size: int = 32,
) -> FloatArray:
    """Reference outputs of the torch model: normalised mean-pooled embeddings, or logits."""
    import torch

    tokenizer = _load_tokenizer(model_dir)
    outputs: list[FloatArray] = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunk = list(examples[start : start + batch_size])
            if isinstance(chunk[0], tuple):
                firsts = [str(pair[0]) for pair in chunk]
                seconds = [str(pair[1]) for pair in chunk]
                batch = tokenizer(
                    firsts, seconds, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
                )
            else:
                batch = tokenizer(
                    chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
                )
            result = model(**batch)
            if task == "feature-extraction":
                hidden = result.last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                values = torch.nn.functional.normalize(pooled, p=2, dim=1)
            else:
                values = result.logits
            outputs.append(values.float().numpy())
    return np.concatenate(outputs).astype(np.float32)


def _onnx_outputs(
    model_path: Path,
    tokenizer_dir: Path,
    task: Task,
    examples: Sequence[str] | Sequence[tuple[str, str]],
    max_length: int,
) -> FloatArray:
    onnx_model = OnnxTextModel(
        model_path, tokenizer_dir, max_length=max_length, providers=["CPUExecutionProvider"]
    )
    if task == "feature-extraction":
        return onnx_model.embed([str(text) for text in examples])
    return onnx_model.classify_logits(examples)


def _checked_parity(
    model: Any,
    model_dir: Path,
    graph_dir: Path,
    task: Task,
    examples: Sequence[str] | Sequence[tuple[str, str]],
    max_length: int,
) -> tuple[FloatArray, float]:
    """The fp32 graph in `graph_dir` run on `examples` and its largest difference from the torch model;
    an ExportError when the shapes differ or the difference is over PARITY_TOLERANCE."""
    reference = _torch_outputs(model, model_dir, task, examples, max_length)
    fp32 = _onnx_outputs(graph_dir / MODEL_FILE, graph_dir, task, examples, max_length)
    if fp32.shape != reference.shape:
        raise ExportError(f"ONNX output shape {fp32.shape} differs from torch {reference.shape}")
    parity = float(np.max(np.abs(fp32 - reference)))
    if not parity <= PARITY_TOLERANCE:
        raise ExportError(
            f"ONNX fp32 output of {model_dir} differs from torch by {parity:.3g} "
            f"(tolerance {PARITY_TOLERANCE:g}) on {len(examples)} examples"
        )
    return fp32, parity


def _opset(model_path: Path) -> int:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False)
    for entry in graph.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportError(f"{model_path.name} declares no default-domain opset")


def _copy_support_files(model_dir: Path, out_dir: Path) -> list[str]:
    copied: list[str] = []
    for name in SUPPORT_FILES:
        source = model_dir / name
        if source.is_file():
            shutil.copyfile(source, out_dir / name)
            copied.append(name)
    if "tokenizer.json" not in copied:
        tokenizer = _load_tokenizer(model_dir)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ExportError(f"{model_dir}: no fast tokenizer, cannot write tokenizer.json")
        backend.save(str(out_dir / "tokenizer.json"))
        copied.append("tokenizer.json")
    if "config.json" not in copied:
        raise ExportError(f"{model_dir} has no config.json")
    return copied


def _export_fp32(model: Any, task: Task, staging: Path) -> Path:
    from optimum.exporters.onnx import onnx_export_from_model

    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and the attention-mask tracer notice are expected.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.tensor results are registered as constants")
        onnx_export_from_model(
            model=model,
            output=staging,
            opset=OPSET,
            task=task,
            do_validation=False,
            device="cpu",
        )
    path = staging / MODEL_FILE
    if not path.is_file():
        raise ExportError(f"optimum wrote no {MODEL_FILE}: {sorted(p.name for p in staging.iterdir())}")
    if any(staging.glob(f"{MODEL_FILE}_data*")) or any(staging.glob("*.onnx.data")):
        raise ExportError(
            "the model needs ONNX external data (over 2 GB), which this export does not support"
        )
    return path


def _quantize_int8(model_path: Path, model_config: Any, staging: Path) -> tuple[Path, str]:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    target = quantization_target()
    preset = getattr(AutoQuantizationConfig, target)
    config = preset(is_static=False, per_channel=True)
    quantizer = ORTQuantizer(model_path, config=model_config)
    save_dir = staging / "int8"
    quantizer.quantize(quantization_config=config, save_dir=save_dir, file_suffix="quantized")
    path = save_dir / f"{model_path.stem}_quantized.onnx"
    if not path.is_file():
        raise ExportError(f"ORTQuantizer wrote no {path.name}")
    return path, target


def _convert_fp16(model_path: Path, target: Path) -> None:
    import onnx

    converter = _float16_converter()
    graph = onnx.load(str(model_path))
    # keep_io_types: inputs stay int64 and outputs float32, so OnnxTextModel feeds and reads it unchanged.
    converted = converter(graph, keep_io_types=True)
    onnx.save(converted, str(target))


def export_model(
    model_dir: Path,
    out_dir: Path,
    *,
    task: Task,
    examples: Sequence[str] | Sequence[tuple[str, str]],
    max_length: int = 128,
    fp16: bool = False,
) -> ExportResult:
    """Export `model_dir` to ONNX in `out_dir`, quantize it to int8 and check both against torch."""
    started = time.perf_counter()
    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    if task not in ("feature-extraction", "text-classification"):
        raise ExportError(f"unsupported task {task!r}")
    _check_examples(task, examples)
    if fp16:
        _float16_converter()  # fail before the slow part when no converter is installed
    out_dir.mkdir(parents=True, exist_ok=True)

    model = _load_torch_model(model_dir, task)
    support = _copy_support_files(model_dir, out_dir)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        staging = Path(tmp)
        fp32_staged = _export_fp32(model, task, staging)
        shutil.move(fp32_staged, out_dir / MODEL_FILE)
        int8_staged, int8_target = _quantize_int8(out_dir / MODEL_FILE, model.config, staging)
        shutil.move(int8_staged, out_dir / INT8_FILE)
    if fp16:
        _convert_fp16(out_dir / MODEL_FILE, out_dir / FP16_FILE)

    fp32, parity = _checked_parity(model, model_dir, out_dir, task, examples, max_length)
    int8 = _onnx_outputs(out_dir / INT8_FILE, out_dir, task, examples, max_length)
    int8_diff = float(np.max(np.abs(int8 - fp32)))
    int8_cosine: float | None = None
    if task == "feature-extraction":
        int8_cosine = float(np.mean(np.sum(int8 * fp32, axis=1)))

    files: dict[str, dict[str, Any]] = {
        "model": file_entry(out_dir, MODEL_FILE),
        "model_int8": file_entry(out_dir, INT8_FILE),
    }
    if fp16:
        files["model_fp16"] = file_entry(out_dir, FP16_FILE)
    for name in support:
        files[name] = file_entry(out_dir, name)

    result = ExportResult(
        files=files,
        parity_max_abs_diff=parity,
        int8_max_abs_diff=int8_diff,
        int8_mean_cosine=int8_cosine,
        opset=_opset(out_dir / MODEL_FILE),
        seconds=time.perf_counter() - started,
    )
    manifest = {
        **dataclasses.asdict(result),
        "task": task,
        "max_length": max_length,
        "int8_quantization": {"preset": int8_target, "per_channel": True, "is_static": False},
        "examples": len(examples),
    }
    (out_dir / MANIFEST_FILE).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return result


def export_graph(model_dir: Path, out_dir: Path, *, examples: Sequence[str], max_length: int = 128) -> Path:
    """The fp32 feature-extraction graph of `model_dir` with its tokenizer files, in `out_dir`, checked
    against torch on `examples`; `out_dir` appears whole or not at all. One that is there is kept: a
    cache of a model that never changes (the zero-shot base model) exports once."""
    out_dir = Path(out_dir)
    if (out_dir / MODEL_FILE).is_file():
        return out_dir / MODEL_FILE
    _check_examples("feature-extraction", examples)

    def fill(staging: Path) -> None:
        model = _load_torch_model(Path(model_dir), "feature-extraction")
        _copy_support_files(Path(model_dir), staging)
        _export_fp32(model, "feature-extraction", staging)
        _checked_parity(model, Path(model_dir), staging, "feature-extraction", examples, max_length)

    _whole_folder(out_dir, MODEL_FILE, fill)
    return out_dir / MODEL_FILE


def _whole_folder(out_dir: Path, marker: str, fill: Callable[[Path], None]) -> None:
    """Make ``out_dir`` by filling a staging folder beside it and renaming that into place, so it appears
    whole or not at all; one whose ``marker`` file is there already is kept (another process made it)."""
    if (out_dir / marker).is_file():
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # named as the janitor sweeps what killed runs left (".*.tmp")
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        fill(staging)
        try:
            staging.rename(out_dir)
        except OSError:  # another process made it first: theirs serves
            if not (out_dir / marker).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_tower(model_dir: Path, out_dir: Path, *, examples: Sequence[str], max_length: int = 128) -> Path:
    """``export_model``'s fp32 and int8 feature-extraction graphs of a model that never changes (the base
    model a query-tower-only bi-encoder embeds products with), exported once into ``out_dir``, which
    appears whole or not at all; returns it. Every version made from the same base model copies these
    very files, so their digests say that the versions embed products alike."""

    def fill(staging: Path) -> None:
        export_model(model_dir, staging, task="feature-extraction", examples=examples, max_length=max_length)

    _whole_folder(Path(out_dir), INT8_FILE, fill)
    return Path(out_dir)


@dataclass(frozen=True)
class RebuildResult:
    """The int8 and fp16 graphs rebuilt from a version's fp32 graph, and how closely they follow it."""

    files: dict[str, dict[str, Any]]  # "model_int8", "model_fp16" -> {"path", "sha256", "bytes"}
    int8_max_abs_diff: float
    int8_mean_cosine: float | None
    fp16_max_abs_diff: float | None  # None when this machine's onnxruntime cannot run the fp16 graph
    int8_preset: str
    seconds: float


def rebuild_variants(
    out_dir: Path,
    *,
    model_file: str = MODEL_FILE,
    task: Task,
    examples: Sequence[str] | Sequence[tuple[str, str]],
    max_length: int = 128,
) -> RebuildResult:
    """Quantize `out_dir/model_file` to int8 with this machine's CPU preset and convert it to fp16.

    The new graphs get names of their own beside the old ones (`model.int8.<tag>.onnx`), which they
    never overwrite: the served files stay as they are until the registry records the new ones, and the
    caller removes whichever set ends up unused."""
    from transformers import AutoConfig

    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_examples(task, examples)
    _float16_converter()
    fp32_path = out_dir / model_file
    if not fp32_path.is_file():
        raise ExportError(f"{fp32_path} is missing: the version's fp32 graph is needed to rebuild it")
    model_config = AutoConfig.from_pretrained(str(out_dir), local_files_only=True)
    with tempfile.TemporaryDirectory(prefix=".rebuild-", dir=out_dir) as tmp:
        staging = Path(tmp)
        int8_staged, preset = _quantize_int8(fp32_path, model_config, staging)
        fp16_staged = staging / FP16_FILE
        _convert_fp16(fp32_path, fp16_staged)
        reference = _onnx_outputs(fp32_path, out_dir, task, examples, max_length)
        int8 = _onnx_outputs(int8_staged, out_dir, task, examples, max_length)
        fp16_diff: float | None
        try:
            fp16 = _onnx_outputs(fp16_staged, out_dir, task, examples, max_length)
            fp16_diff = float(np.max(np.abs(fp16 - reference)))
        except Exception:  # onnxruntime builds without fp16 CPU kernels: the graph is checked where it runs
            fp16_diff = None
        tag = uuid.uuid4().hex[:8]
        int8_name, fp16_name = f"model.int8.{tag}.onnx", f"model.fp16.{tag}.onnx"
        shutil.move(int8_staged, out_dir / int8_name)
        shutil.move(fp16_staged, out_dir / fp16_name)
    cosine = float(np.mean(np.sum(int8 * reference, axis=1))) if task == "feature-extraction" else None
    return RebuildResult(
        files={"model_int8": file_entry(out_dir, int8_name), "model_fp16": file_entry(out_dir, fp16_name)},
        int8_max_abs_diff=float(np.max(np.abs(int8 - reference))),
        int8_mean_cosine=cosine,
        fp16_max_abs_diff=fp16_diff,
        int8_preset=preset,
        seconds=time.perf_counter() - started,
    )


def onnx_task(job_type: JobType) -> Task:
    """What the exported graph computes for a fine-tune of this type."""
    return "feature-extraction" if job_type == JobType.bi_encoder else "text-classification"


def parity_examples(job_type: JobType, examples: Examples) -> list[str] | list[tuple[str, str]]:
    """Real texts for the parity checks: validation queries and catalog titles, or labelled texts."""
    if job_type == JobType.classifier:
        return [t for t, _ in examples.texts.get("valid", examples.texts.get("train", []))[:32]] or [
            "example"
        ]
    queries = list(examples.valid.queries.values())[:16] or [q for q, _, _ in examples.train[:16]]
    titles = list(examples.product_text.values())[:16]
    if job_type == JobType.cross_encoder:
        return list(zip(queries, titles, strict=False)) or [("query", "product")]
    return (queries + titles) or ["example"]
