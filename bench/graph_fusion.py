"""What onnxruntime's transformer fusions would give the served int8 graphs: the bi-encoder and a
cross-encoder exported as RecForge exports them, against the same fp32 graphs fused by
`onnxruntime.transformers.optimizer` (attention, skip-layer-norm, GELU) and then quantised dynamically
(onnxruntime's `quantize_dynamic`, weights per channel; the unfused graph quantised by the same call as a
control), timed alike through `shared.onnxmodel.OnnxTextModel`.

    python bench/graph_fusion.py ../shared/data/homedepot/relevance_dev.csv --format homedepot

The cross-encoder is the base model with a new one-logit head (its scores mean nothing; its speed is a
trained one's). Prints, for each graph, the p50 of one query embedded (`/recommend`'s dense path), of 32
texts embedded (`/v1/embeddings` batches) and of 20 (query, product) pairs scored (`/rerank` of a top
20), and how far the fused int8 graph's outputs are from the fp32 graph's beside the unfused int8's."""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from zero_shot import catalog_texts  # noqa: E402  (bench/zero_shot.py, beside this script)

from services.trainer.export import export_model  # noqa: E402
from services.trainer.finetune.base import resolve_base_model  # noqa: E402
from shared.datasets.formats import FORMAT_KIND, DataFormat  # noqa: E402
from shared.onnxmodel import OnnxTextModel  # noqa: E402
from shared.training import DEFAULT_BASE_MODEL, Hyperparameters  # noqa: E402


def _p50_ms(call: Callable[[], Any], rounds: int) -> float:
    for _ in range(5):
        call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _fused(fp32: Path, folder: Path) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    fused = optimize_model(
        str(fp32), model_type="bert", num_heads=0, hidden_size=0, opt_level=1, use_gpu=False
    )
    counts = {name: count for name, count in fused.get_fused_operator_statistics().items() if count}
    print(f"  fused operators ({fp32.parent.name}): {counts}")
    path = folder / "fused.onnx"
    fused.save_model_to_file(str(path))
    return path


def _int8(fp32: Path, target: Path) -> Path:
    """Dynamic int8, weights per channel, the same call for a fused or an unfused graph."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fp32,
        target,
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": TensorProto.FLOAT},  # fused operators' outputs are float
    )
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--format", type=DataFormat, choices=list(FORMAT_KIND), required=True)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=Hyperparameters().max_length)
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    args = parser.parse_args()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = Path(resolve_base_model(args.base_model))
    texts = catalog_texts(args.path, args.format, 2000)
    queries = [" ".join(t.split()[:3]) for t in texts[:200]]
    pairs = list(zip(queries, texts[:200], strict=True))
    print(f"{platform.machine()}, max_length {args.max_length}, {args.rounds} rounds each")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cross_source = root / "cross-source"
        AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(cross_source)
        AutoTokenizer.from_pretrained(base).save_pretrained(cross_source)  # type: ignore[no-untyped-call]
        built = {}
        for name, source, task, examples in (
            ("bi-encoder", base, "feature-extraction", texts[:32]),
            ("cross-encoder", cross_source, "text-classification", pairs[:32]),
        ):
            out = root / name
            export_model(source, out, task=task, examples=examples, max_length=args.max_length)  # type: ignore[arg-type]
            built[name] = {
                "int8, as exported (optimum's preset for this CPU)": out / "model.int8.onnx",
                "int8 (quantize_dynamic) of the unfused graph": _int8(
                    out / "model.onnx", out / "plain.int8.onnx"
                ),
                "int8 (quantize_dynamic) of the fused graph": _int8(
                    _fused(out / "model.onnx", out), out / "fused.int8.onnx"
                ),
            }

        bi_dir, cross_dir = root / "bi-encoder", root / "cross-encoder"
        rows = []
        reference_bi = OnnxTextModel(bi_dir / "model.onnx", bi_dir, max_length=args.max_length).embed(texts)
        reference_cross = OnnxTextModel(
            cross_dir / "model.onnx", cross_dir, max_length=args.max_length
        ).score_pairs(pairs)
        for label, bi_path in built["bi-encoder"].items():
            bi = OnnxTextModel(bi_path, bi_dir, max_length=args.max_length)
            cross = OnnxTextModel(built["cross-encoder"][label], cross_dir, max_length=args.max_length)
            one = _p50_ms(functools.partial(bi.embed, queries[:1]), args.rounds)
            batch = _p50_ms(functools.partial(bi.embed, texts[:32]), max(args.rounds // 4, 10))
            rerank = _p50_ms(functools.partial(cross.score_pairs, pairs[:20]), max(args.rounds // 4, 10))
            cosine = float(np.mean(np.sum(bi.embed(texts) * reference_bi, axis=1)))
            drift = float(np.max(np.abs(cross.score_pairs(pairs) - reference_cross)))
            rows.append((label, one, batch, rerank, cosine, drift))
    print("| graph | 1 query ms | 32 texts ms | 20 pairs ms | mean cosine to fp32 | max logit diff to fp32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, one, batch, rerank, cosine, drift in rows:
        print(f"| {label} | {one:.3f} | {batch:.2f} | {rerank:.2f} | {cosine:.5f} | {drift:.4f} |")


if __name__ == "__main__":
    main()
