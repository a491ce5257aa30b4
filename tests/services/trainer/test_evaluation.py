"""Evaluation's caches (the zero-shot model's catalog embeddings, computed once per catalog) and the
precision fine-tunes train in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from services.trainer import evaluation
from services.trainer.control import JobControl


def _counting_embedder(calls: list[int]) -> evaluation.Embed:
    def embed(texts: Sequence[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.asarray([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    return embed


def test_a_catalog_is_embedded_once_per_model_and_read_back_in_order(tmp_path: Path) -> None:
    texts = [f"product {i} " + "x" * (i % 7) for i in range(evaluation.VECTORS_FROM)]
    calls: list[int] = []
    scorer = evaluation.Scorer(
        embed=_counting_embedder(calls), vectors=evaluation.VectorCache(tmp_path, "minilm|64")
    )
    first = evaluation.embed_texts(scorer, texts, JobControl(), "zero-shot products")
    assert sum(calls) == len(texts)
    again = evaluation.embed_texts(scorer, texts, JobControl(), "zero-shot products")
    assert sum(calls) == len(texts)  # read back, not embedded again
    np.testing.assert_array_equal(first, again)
    assert again[5, 0] == len(texts[5])  # rows in the caller's order

    changed = [*texts[:-1], "a new product"]  # another catalog: embedded
    evaluation.embed_texts(scorer, changed, JobControl(), "zero-shot products")
    assert sum(calls) == 2 * len(texts)
    other_model = evaluation.Scorer(
        embed=_counting_embedder(calls), vectors=evaluation.VectorCache(tmp_path, "minilm|128")
    )
    evaluation.embed_texts(other_model, texts, JobControl(), "zero-shot products")
    assert sum(calls) == 3 * len(texts)  # the model's key (max_length) is part of the name

    short = texts[:10]  # a short list (validation queries) is cheap: never kept
    evaluation.embed_texts(scorer, short, JobControl(), "zero-shot queries")
    assert len(list(tmp_path.glob("*.npy"))) == 3


def test_the_cache_keeps_the_most_recently_used_files(tmp_path: Path) -> None:
    cache = evaluation.VectorCache(tmp_path, "m", kept=2)
    lists = [[f"{n}-{i}" for i in range(3)] for n in range(3)]
    for n, texts in enumerate(lists):
        cache.put(texts, np.full((3, 2), n, dtype=np.float32))
        if n == 1:
            assert cache.get(lists[0]) is not None  # read: the most recently used now
    assert cache.get(lists[0]) is not None and cache.get(lists[2]) is not None
    assert cache.get(lists[1]) is None  # the least recently used went
    cache.file(lists[2]).write_bytes(b"not numpy")
    assert cache.get(lists[2]) is None  # unreadable: embedded again, never an error


def test_mixed_precision_follows_the_device_unless_set() -> None:
    import torch

    from services.trainer.device import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, None) is None  # off on CPUs unless asked for
    assert autocast_dtype(cpu, True) == torch.bfloat16  # asked for: emulated where not native
    assert autocast_dtype(cpu, False) is None


def test_the_zero_shot_model_runs_as_a_graph_exported_once_and_embeds_as_torch_does(
    tmp_path: Path, tiny_model: Path
) -> None:
    texts = ["cordless drill", "white oak vanity with sink", "pcr tubes 0.2 ml", "x"]
    cpu = torch.device("cpu")
    in_torch = evaluation.zero_shot(str(tiny_model), cpu, 32)()  # no cache folder: torch, as before
    expected = in_torch.embed(texts)  # type: ignore[misc]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)

    graph_scorer = evaluation.zero_shot(str(tiny_model), cpu, 32, tmp_path)()
    (graph,) = (tmp_path / "graphs").glob("*/model.onnx")
    np.testing.assert_allclose(graph_scorer.embed(texts), expected, atol=1e-4)  # type: ignore[misc]
    exported = graph.stat().st_mtime_ns

    evaluation.zero_shot(str(tiny_model), cpu, 32, tmp_path)()  # the next job reads it back
    assert [p.stat().st_mtime_ns for p in (tmp_path / "graphs").glob("*/model.onnx")] == [exported]
    assert not [p for p in (tmp_path / "graphs").iterdir() if p.name.startswith(".")]  # no staging left

    (tiny_model / "extra.txt").write_text("changed")  # another model in the same folder: exported again
    try:
        evaluation.zero_shot(str(tiny_model), cpu, 32, tmp_path)()
        assert len(list((tmp_path / "graphs").glob("*/model.onnx"))) == 2
    finally:
        (tiny_model / "extra.txt").unlink()
