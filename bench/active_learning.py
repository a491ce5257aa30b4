"""Active learning, simulated on judged relevance data: catalog quality per label for each labelling strategy.

    .venv/bin/python bench/active_learning.py ../shared/data/homedepot/relevance_dev.csv \\
        --json /tmp/al_results.json

The grades are hidden and revealed only for the pairs a strategy picks (the dataset's grade is the
oracle). The data is imported as the platform imports it (shared.datasets: the Home Depot reader, the
by-query split with seed 42); the pool is the training split's judged pairs (about 6 per query), and
the validation queries are those every trainer job scores on.

1. Seed set: ``--seed-labels`` pairs picked by shared.labeling's ``random`` strategy (at most 2 per
   query), the same for every strategy. Its models are trained once and shared: they are every
   strategy's round 0.
2. Each round, each strategy picks ``--round-labels`` more pairs from what is left of its pool with
   ``shared.labeling.select`` (what the platform's labelling queues use), the oracle grades them, and the
   strategy's models are trained again from the base model on all its labels. As a queue on a dataset
   does (``LabelingOptions.max_queries``, 1,000 by default), a round offers the unlabelled pairs of
   ``--pool-queries`` training queries drawn at random, the same draw for every strategy:
   - ``random``: every pair alike;
   - ``uncertainty``: the strategy's current cross-encoder's probability nearest 0.5;
   - ``committee``: vote entropy of top-k membership among BM25, the current bi-encoder's cosine and the
     current cross-encoder's logit, the rankers of a labelling queue, in that order.
   Each strategy keeps its own labels, models and pool.
3. After each round, the strategy's bi-encoder is scored as a trainer job scores a bi-encoder:
   ``services.trainer.evaluation.ranking_suite``, whose ``catalog_ndcg@10`` is dense retrieval over the
   whole catalog (every product title) for every validation query, unjudged products counting as
   irrelevant (``shared.metrics.ranking_metrics``, ``shared.search.dense_top_k``). BM25 and the zero-shot
   base model are scored once, as the trainer's baselines (``evaluation.baselines``).

Training is the trainer's own: the job's task wiring (``jobs.finetune.train_task``: BiEncoderTask and
CrossEncoderTask), ``finetune.loop.fit`` and the platform's default hyperparameters (AdamW at 5e-5 with
10% warmup, batches of 32, max_length 64, fp32 on a CPU), ``--seed`` as the job's seed. Both models
train a fixed ``--steps`` optimiser steps each round, from the base model, whatever the number of
labels: the curves compare labels, not compute (one epoch over 500 labels would be 16 steps, over
3,000 about 94; fixed steps keep the seed set's models from being mere zero-shot ones).

Adjusted to measure, and why:
- ``committee`` takes each query's top ``--k`` (3), not a queue's default 10: a pool query has only
  about 6 judged candidates, so every ranker's top 10 would hold all of them and never disagree.
- The models are scored and run for selection as the ONNX graphs the trainer exports (fp32:
  ``export_graph`` for the bi-encoder, ``export_model`` for the cross-encoder), not in torch: on this
  CPU onnxruntime embeds the catalog and scores pairs 3-4x as fast (the trainer also scores a CPU job on
  its exported graph; it picks int8 when int8 keeps the quality, fp32 here leaves quantisation noise
  out). Re-embedding the 41,695 titles costs about a minute a round either way; the number of
  validation queries barely matters, so all of them are evaluated unless ``--val-queries`` says fewer.
- ``random`` trains no cross-encoder (it needs none), and no strategy trains one in the last round.
- The round's candidates are 1,000 queries' pairs (about 6,300), not the whole pool's 42,215: this is
  what a labelling queue offers, and scoring the whole pool with each cross-encoder took 4 minutes a
  round on this shared 2-core machine (measured); a 500-pair budget still picks 1 in 12.
- The graphs run without spinning threads (``OnnxTextModel(spinning=False)``): the benchmark shares
  its 2 cores with other work; results are the same either way.

It prints a table of labels against catalog nDCG@10 per strategy beside BM25 and zero-shot, how many
labels each strategy needed to reach random's final score (the first round at or above it), and draws
the curves (``--chart``, default docs/active-learning.png); ``--json`` writes every number."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from quality import console, print_header  # noqa: E402  (bench/quality.py, beside this script)

from services.trainer import evaluation  # noqa: E402
from services.trainer.control import JobControl  # noqa: E402
from services.trainer.device import setup_threads  # noqa: E402
from services.trainer.export import MODEL_FILE, export_graph, export_model, parity_examples  # noqa: E402
from services.trainer.finetune.base import resolve_base_model  # noqa: E402
from services.trainer.finetune.loop import fit, seed_everything  # noqa: E402
from services.trainer.jobs.finetune import FineTuneSpec, train_task  # noqa: E402
from shared.datasets import storage  # noqa: E402
from shared.datasets.examples import Examples, Judged, load  # noqa: E402
from shared.datasets.formats import FORMAT_KIND, DataFormat, ImportOptions  # noqa: E402
from shared.datasets.pipeline import prepare  # noqa: E402
from shared.datasets.splits import SplitSpec  # noqa: E402
from shared.labeling import Strategy, select  # noqa: E402
from shared.models.enums import DatasetKind, JobType  # noqa: E402
from shared.onnxmodel import OnnxTextModel  # noqa: E402
from shared.search import BM25Index  # noqa: E402
from shared.storage import folder_store  # noqa: E402
from shared.training import DEFAULT_BASE_MODEL, Hyperparameters  # noqa: E402

METRIC = "catalog_ndcg@10"
CPU = torch.device("cpu")
NOT_REACHED = "not reached"


# -- the data: a pool whose grades the oracle keeps -----------------------------------------------


def read_examples(path: Path, data_format: DataFormat) -> Examples:
    """The dataset imported as the platform imports it (validated, split by query with seed 42) and read
    back as a trainer job reads it."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    prepared = prepare(files, ImportOptions(data_format), SplitSpec())
    with tempfile.TemporaryDirectory() as tmp:
        manifest = storage.write_version(folder_store(Path(tmp)), "data", prepared.tables)
        return load(folder_store(Path(tmp)), FORMAT_KIND[data_format], manifest, None)


class Oracle:
    """The training split's judged pairs: what a strategy may see (queries and products) and, apart, the
    grades, revealed pair by pair when a strategy picks them."""

    def __init__(self, train: list[tuple[str, str, float]]):
        self.queries = [q for q, _, _ in train]
        self.products = [p for _, p, _ in train]
        self._grades = [g for _, _, g in train]  # normalised to 0..1, as the trainer reads them

    def __len__(self) -> int:
        return len(self.queries)

    def reveal(self, picked: Sequence[int]) -> list[tuple[str, str, float]]:
        """The labelled examples of ``picked`` (indices into the pool), as a trainer job's examples."""
        return [(self.queries[i], self.products[i], self._grades[i]) for i in picked]


def validation_subset(examples: Examples, count: int, seed: int) -> Examples:
    """The examples with ``count`` validation queries drawn at random (0: all); the catalog stays whole."""
    valid = examples.valid
    if not count or count >= len(valid.queries):
        return examples
    rng = np.random.default_rng(seed)
    ids = list(valid.queries)
    kept = [ids[i] for i in sorted(rng.choice(len(ids), size=count, replace=False))]
    subset = Judged(
        {q: valid.queries[q] for q in kept},
        {q: valid.candidates[q] for q in kept},
        {q: valid.grades[q] for q in kept},
        {q: valid.exclude[q] for q in kept if q in valid.exclude},
    )
    return dataclasses.replace(examples, valid=subset)


# -- models: trained by the trainer's code, run as its exported graphs ----------------------------


class Embedder:
    """A bi-encoder's fp32 graph, keeping every text's vector it has embedded (the catalog, embedded for
    the evaluation, is then at hand for the committee's cosine scores)."""

    def __init__(self, graph: OnnxTextModel):
        self.graph = graph
        self.kept: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.asarray(self.graph.embed(list(texts)), dtype=np.float32)
        self.kept.update(zip(texts, vectors, strict=True))
        return vectors

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.kept]
        if missing:
            self.embed(missing)
        return np.stack([self.kept[t] for t in texts])


@dataclasses.dataclass
class Models:
    """One strategy's models after one round, and their scores of pool pairs (NaN: not scored yet)."""

    bi: Embedder
    ce: OnnxTextModel | None
    pool_logits: np.ndarray
    pool_cosines: np.ndarray
    seconds: dict[str, float]


class Trainer:
    def __init__(self, examples: Examples, oracle: Oracle, args: argparse.Namespace, work: Path):
        self.examples = examples
        self.oracle = oracle
        self.base_dir = resolve_base_model(args.base_model)
        self.base_model = args.base_model
        self.hp = Hyperparameters(max_steps=args.steps, seed=args.seed)
        self.work = work
        self.runs = 0

    def _fit(self, job_type: JobType, labelled: list[tuple[str, str, float]]) -> tuple[Path, float]:
        """Train ``job_type`` on ``labelled`` as a trainer job would; the trained model's folder."""
        self.runs += 1
        folder = self.work / f"{self.runs:03d}-{job_type.value}"
        folder.mkdir()
        spec = FineTuneSpec(
            job_type=job_type,
            base_model=self.base_model,
            hyperparameters=self.hp,
            examples=dataclasses.replace(self.examples, train=labelled),
            device=CPU,
            work_dir=folder / "work",
            out_dir=folder / "out",
            checkpoint_interval_s=float("inf"),
            int8_tolerance=0.0,
        )
        spec.work_dir.mkdir()
        started = time.monotonic()
        seed_everything(self.hp.seed)
        task = train_task(spec, self.base_dir)
        fit(task, self.hp, CPU, JobControl(), spec.work_dir, checkpoint_interval_s=float("inf"))
        task.save_merged(folder / "trained")
        return folder, time.monotonic() - started

    def train(self, picked: Sequence[int], with_cross_encoder: bool) -> Models:
        labelled = self.oracle.reveal(picked)
        seconds: dict[str, float] = {}
        folder, seconds["train_bi_encoder"] = self._fit(JobType.bi_encoder, labelled)
        started = time.monotonic()
        graph_path = export_graph(
            folder / "trained",
            folder / "graph",
            examples=cast(list[str], parity_examples(JobType.bi_encoder, self.examples)),
            max_length=self.hp.max_length,
        )
        bi = Embedder(graph(graph_path, self.hp.max_length))
        seconds["export"] = time.monotonic() - started
        ce = None
        if with_cross_encoder:
            folder, seconds["train_cross_encoder"] = self._fit(JobType.cross_encoder, labelled)
            started = time.monotonic()
            export_model(
                folder / "trained",
                folder / "graph",
                task="text-classification",
                examples=parity_examples(JobType.cross_encoder, self.examples),
                max_length=self.hp.max_length,
            )
            ce = graph(folder / "graph" / MODEL_FILE, self.hp.max_length)
            seconds["export"] += time.monotonic() - started
        for trained in self.work.glob("*-*"):  # the graphs are loaded: their files are not needed
            shutil.rmtree(trained, ignore_errors=True)
        empty = np.full(len(self.oracle), np.nan)
        return Models(bi, ce, empty.copy(), empty.copy(), seconds)


def graph(path: Path, max_length: int) -> OnnxTextModel:
    return OnnxTextModel(path, path.parent, max_length=max_length, spinning=False)


def evaluate(models: Models, examples: Examples, label: str) -> dict[str, float]:
    """The trainer's metrics of the bi-encoder (rerank view and catalog view) and, when the round trained
    one, the cross-encoder's rerank nDCG@10 on the validation queries' judged products."""
    started = time.monotonic()
    control = JobControl()
    found = evaluation.ranking_suite(examples, evaluation.Scorer(embed=models.bi.embed), control, label)
    metrics = {k: float(v) for k, v in found.items()}
    if models.ce is not None:
        reranked = evaluation.ranking_suite(
            examples, evaluation.onnx_scorer(models.ce, JobType.cross_encoder), control, f"{label} ce"
        )
        metrics["cross_encoder_ndcg@10"] = float(reranked["ndcg@10"])
    models.seconds["evaluate"] = time.monotonic() - started
    return metrics


# -- selection: shared.labeling on each strategy's remaining pool ---------------------------------


def offered_queries(oracle: Oracle, count: int, seed: int, round_number: int) -> set[str]:
    """The training queries whose pairs round ``round_number`` offers: ``count`` drawn at random (0: all),
    as a labelling queue draws its pool's queries (services.trainer.jobs.labeling.dataset_pool)."""
    queries = sorted(set(oracle.queries))
    if not count or count >= len(queries):
        return set(queries)
    rng = np.random.default_rng([seed, 1000 + round_number])
    return {queries[i] for i in rng.choice(len(queries), size=count, replace=False)}


class Selector:
    def __init__(self, oracle: Oracle, product_text: dict[str, str], k: int):
        self.oracle = oracle
        self.product_text = product_text
        self.k = k
        self._bm25: np.ndarray | None = None

    def bm25(self) -> np.ndarray:
        """BM25's score of every pool pair (it never changes), as a labelling queue scores candidates."""
        if self._bm25 is None:
            ids = list(self.product_text)
            index = BM25Index(ids, [self.product_text[p] for p in ids])
            by_query: dict[str, list[int]] = {}
            for i, query in enumerate(self.oracle.queries):
                by_query.setdefault(query, []).append(i)
            scores = np.zeros(len(self.oracle))
            for query, rows in by_query.items():
                scores[rows] = index.score(query, [self.oracle.products[i] for i in rows])
            self._bm25 = scores
        return self._bm25

    def logits(self, models: Models, rows: np.ndarray) -> np.ndarray:
        assert models.ce is not None, "uncertainty and committee need the round's cross-encoder"
        todo = rows[np.isnan(models.pool_logits[rows])]
        if todo.size:
            score = evaluation.onnx_scorer(models.ce, JobType.cross_encoder).score
            assert score is not None
            models.pool_logits[todo] = score(
                [self.oracle.queries[i] for i in todo],
                [self.product_text[self.oracle.products[i]] for i in todo],
            )
        found: np.ndarray = models.pool_logits[rows]
        return found

    def cosines(self, models: Models, rows: np.ndarray) -> np.ndarray:
        todo = rows[np.isnan(models.pool_cosines[rows])]
        if todo.size:
            queries = models.bi.vectors([self.oracle.queries[i] for i in todo])
            products = models.bi.vectors([self.product_text[self.oracle.products[i]] for i in todo])
            models.pool_cosines[todo] = np.einsum("ij,ij->i", queries, products)
        found: np.ndarray = models.pool_cosines[rows]
        return found

    def pick(
        self, strategy: Strategy, models: Models, left: np.ndarray, budget: int, rng: np.random.Generator
    ) -> list[int]:
        """``budget`` pool indices among ``left`` (the strategy's unlabelled pairs), as its queue would."""
        queries = [self.oracle.queries[i] for i in left]
        if strategy == Strategy.random:
            picked, _ = select(strategy, queries, budget, rng=rng)
        elif strategy == Strategy.uncertainty:
            picked, _ = select(strategy, queries, budget, rng=rng, reranker_logits=self.logits(models, left))
        else:
            rankers = [self.bm25()[left], self.cosines(models, left), self.logits(models, left)]
            picked, _ = select(strategy, queries, budget, rng=rng, rankers=rankers, k=self.k)
        return [int(left[i]) for i in picked]


# -- the report -----------------------------------------------------------------------------------


def labels_to_reach(curves: dict[str, list[dict[str, Any]]]) -> dict[str, int | str]:
    """Per strategy, the labels of its first round at or above random's final score."""
    if Strategy.random.value not in curves:
        return {}
    target = curves[Strategy.random.value][-1][METRIC]
    return {
        name: next((p["labels"] for p in points if p[METRIC] >= target), NOT_REACHED)
        for name, points in curves.items()
    }


def draw(
    path: Path, curves: dict[str, list[dict[str, Any]]], references: dict[str, float], title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name, points in curves.items():
        ax.plot([p["labels"] for p in points], [p[METRIC] for p in points], marker="o", label=name)
    styles = {"zero-shot": ("tab:gray", "--"), "BM25": ("black", "--")}
    for name, value in references.items():
        color, style = styles.get(name, ("tab:gray", ":"))
        ax.axhline(value, color=color, linestyle=style, linewidth=1, label=f"{name} ({value:.4f})")
    ax.set_xlabel("labelled pairs")
    ax.set_ylabel("catalog nDCG@10 (validation queries)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def commit() -> str:
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return found.stdout.strip()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def results_table(curves: dict[str, list[dict[str, Any]]], references: dict[str, float], title: str) -> Table:
    table = Table("labels", *curves, title=title)
    rounds = max(len(points) for points in curves.values())
    for r in range(rounds):
        row = [next(str(f"{p[r]['labels']:,}") for p in curves.values() if len(p) > r)]
        row += [f"{points[r][METRIC]:.4f}" if len(points) > r else "-" for points in curves.values()]
        table.add_row(*row)
    for name, value in references.items():
        table.add_row(f"{name} (reference)", *[f"{value:.4f}"] * len(curves))
    return table


# -- the run --------------------------------------------------------------------------------------


def strategies(value: str) -> list[Strategy]:
    try:
        chosen = [Strategy(name.strip()) for name in value.split(",") if name.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"strategies are a comma-separated list of {', '.join(s.value for s in Strategy)}"
        ) from None
    if not chosen:
        raise argparse.ArgumentTypeError("name at least one strategy")
    return list(dict.fromkeys(chosen))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="Judged relevance data (Home Depot's CSV, or a folder).")
    parser.add_argument(
        "--format",
        type=DataFormat,
        default=DataFormat.homedepot,
        choices=[f for f, kind in FORMAT_KIND.items() if kind == DatasetKind.relevance],
        help="The data's public format (default homedepot).",
    )
    parser.add_argument("--seed-labels", type=int, default=500, help="Pairs labelled before round 1.")
    parser.add_argument("--round-labels", type=int, default=500, help="Pairs each strategy labels a round.")
    parser.add_argument("--rounds", type=int, default=5, help="Rounds after the seed set.")
    parser.add_argument(
        "--steps", type=int, default=100, help="Optimiser steps of each model each round (from the base)."
    )
    parser.add_argument(
        "--strategies",
        type=strategies,
        default=list(Strategy),
        help="Comma-separated, of random, uncertainty, committee (default all three).",
    )
    parser.add_argument("--seed", type=int, default=42, help="The seed set's, the picks' and training's.")
    parser.add_argument(
        "--val-queries", type=int, default=0, help="Evaluate this many validation queries (default 0: all)."
    )
    parser.add_argument(
        "--pool-queries",
        type=int,
        default=1000,
        help="Training queries whose pairs a round offers, as a queue's max_queries (default 1000; 0: all).",
    )
    parser.add_argument("--k", type=int, default=3, help="The committee's top-k (a pool query has ~6 pairs).")
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL, help="Default MiniLM (all-MiniLM-L6-v2).")
    parser.add_argument("--json", type=Path, help="Also write every number to this file.")
    parser.add_argument(
        "--chart", type=Path, default=PROJECT_ROOT / "docs" / "active-learning.png", help="The curves' image."
    )
    args = parser.parse_args(argv)
    if not args.path.exists():
        parser.error(
            f"{args.path}: no such file or folder (the Home Depot file is in ../shared/data/homedepot/)"
        )
    for name in ("seed_labels", "round_labels", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.rounds, args.val_queries, args.pool_queries) < 0 or args.k < 1:
        parser.error("--rounds, --val-queries and --pool-queries must be >= 0, --k >= 1")

    started = time.monotonic()
    setup_threads()
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # the cross-encoder's new head is meant to be untrained
    print_header()
    header = {
        "command": "python " + " ".join(sys.argv),
        "commit": commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    console.print(f"commit {header['commit']}, {header['cpu']}, {header['torch_threads']} torch threads")

    examples = read_examples(args.path, args.format)
    oracle = Oracle(examples.train)
    evaluated = validation_subset(examples, args.val_queries, args.seed)
    data = {
        "file": args.path.name,
        "pool_pairs": len(oracle),
        "pool_queries": len(set(oracle.queries)),
        "validation_queries": len(evaluated.valid.queries),
        "validation_queries_in_split": len(examples.valid.queries),
        "catalog_products": len(examples.product_text),
    }
    console.print(
        f"{args.path.name}: pool {data['pool_pairs']:,} judged pairs of {data['pool_queries']:,} training "
        f"queries; {data['validation_queries']:,} validation queries over {data['catalog_products']:,} "
        "products"
    )
    hp = Hyperparameters(max_steps=args.steps, seed=args.seed)
    settings = {
        "seed_labels": args.seed_labels,
        "round_labels": args.round_labels,
        "rounds": args.rounds,
        "steps": args.steps,
        "strategies": [s.value for s in args.strategies],
        "seed": args.seed,
        "committee_k": args.k,
        "pool_queries_per_round": args.pool_queries or "all",
        "per_query": "shared.labeling default: max(2, ceil(2 * budget / queries))",
        "learning_rate": hp.peak_learning_rate,
        "batch_size": hp.batch_size,
        "max_length": hp.max_length,
        "warmup_ratio": hp.warmup_ratio,
        "val_queries": args.val_queries or "all",
        "graphs": "fp32 ONNX (export_graph / export_model)",
        "base_model": args.base_model,
    }
    results: dict[str, Any] = {**header, "data": data, "settings": settings}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="active-learning-") as tmp:
        work = Path(tmp)
        with console.status("baselines: BM25 and the zero-shot base model over the whole catalog"):
            began = time.monotonic()
            base = evaluation.baselines(
                JobType.bi_encoder,
                evaluated,
                evaluation.zero_shot(resolve_base_model(args.base_model), CPU, hp.max_length, work / "cache"),
                JobControl(),
            )
        references = {"zero-shot": base["zero_shot"][METRIC], "BM25": base["bm25"][METRIC]}
        results["references"] = {"zero_shot": base["zero_shot"], "bm25": base["bm25"]}
        console.print(
            f"zero-shot catalog nDCG@10 {references['zero-shot']:.4f}, BM25 {references['BM25']:.4f} "
            f"({time.monotonic() - began:.0f} s)"
        )

        trainer = Trainer(examples, oracle, args, work)
        selector = Selector(oracle, examples.product_text, args.k)
        needs_ce = [s for s in args.strategies if s != Strategy.random]
        rngs = {s: np.random.default_rng([args.seed, list(Strategy).index(s)]) for s in args.strategies}
        seed_set, _ = select(
            Strategy.random, oracle.queries, args.seed_labels, rng=np.random.default_rng(args.seed)
        )
        labelled = {s: list(seed_set) for s in args.strategies}
        curves: dict[str, list[dict[str, Any]]] = {s.value: [] for s in args.strategies}
        results["curves"] = curves

        def point(
            strategy: Strategy, r: int, models: Models, metrics: dict[str, float], picked: list[int]
        ) -> None:
            revealed = oracle.reveal(picked)
            everything = oracle.reveal(labelled[strategy])
            curves[strategy.value].append(
                {
                    "round": r,
                    "labels": len(labelled[strategy]),
                    **metrics,
                    "positives": sum(g >= 0.5 for _, _, g in everything),  # the bi-encoder's examples
                    "picked_mean_grade": round(float(np.mean([g for _, _, g in revealed])), 4),
                    "picked_queries": len({q for q, _, _ in revealed}),
                    "seconds": {k: round(v, 1) for k, v in models.seconds.items()},
                }
            )

        drawn = {
            r: offered_queries(oracle, args.pool_queries, args.seed, r) for r in range(1, args.rounds + 1)
        }
        total = 1 + args.rounds * len(args.strategies)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(f"round 0: {args.seed_labels} seed labels", total=total)
            seed_models = trainer.train(seed_set, with_cross_encoder=bool(needs_ce) and args.rounds > 0)
            metrics = evaluate(seed_models, evaluated, "seed")
            models = {s: seed_models for s in args.strategies}
            for s in args.strategies:
                point(s, 0, seed_models, metrics, seed_set)
            progress.advance(bar)
            progress.console.print(
                f"round 0, every strategy, {len(seed_set):,} labels: {METRIC} {metrics[METRIC]:.4f} "
                f"({_seconds(seed_models)})"
            )
            save()
            for r in range(1, args.rounds + 1):
                for s in args.strategies:
                    progress.update(bar, description=f"round {r}: {s.value}, selecting")
                    began = time.monotonic()
                    taken = set(labelled[s])
                    offered = drawn[r]
                    left = np.asarray(
                        [i for i in range(len(oracle)) if i not in taken and oracle.queries[i] in offered],
                        dtype=np.int64,
                    )
                    picked = selector.pick(s, models[s], left, args.round_labels, rngs[s])
                    selecting = time.monotonic() - began
                    labelled[s] += picked
                    progress.update(bar, description=f"round {r}: {s.value}, training and scoring")
                    models[s] = trainer.train(
                        labelled[s], with_cross_encoder=s in needs_ce and r < args.rounds
                    )
                    models[s].seconds["select"] = selecting
                    metrics = evaluate(models[s], evaluated, f"{s.value} round {r}")
                    point(s, r, models[s], metrics, picked)
                    progress.advance(bar)
                    progress.console.print(
                        f"round {r}, {s.value}, {len(labelled[s]):,} labels: {METRIC} {metrics[METRIC]:.4f}; "
                        f"picked mean grade {curves[s.value][-1]['picked_mean_grade']:.3f} (0..1), "
                        f"{curves[s.value][-1]['positives']:,} positives in all ({_seconds(models[s])})"
                    )
                    save()

    reach = labels_to_reach(curves)
    results["labels_to_reach_random_final"] = reach
    results["seconds"] = round(time.monotonic() - started)
    title = (
        f"{args.path.name}: catalog nDCG@10 of the bi-encoder, {data['validation_queries']:,} validation "
        f"queries, {data['catalog_products']:,} products; {args.steps} steps per model per round, "
        f"seed {args.seed}"
    )
    console.print(results_table(curves, references, title))
    if reach:
        target = curves[Strategy.random.value][-1][METRIC]
        console.print(f"labels to reach random's final {METRIC} ({target:.4f}):")
        for name, labels in reach.items():
            console.print(f"  {name}: {labels if isinstance(labels, str) else f'{labels:,}'}")
    draw(
        args.chart,
        curves,
        references,
        f"{args.path.name}: bi-encoder catalog nDCG@10 ({data['validation_queries']:,} validation queries, "
        f"{data['catalog_products']:,} products)\n{args.steps} steps per model per round, "
        f"{args.round_labels} labels a round, seed {args.seed}, committee k={args.k}",
    )
    results["chart"] = str(args.chart)
    save()
    console.print(f"chart: {args.chart}; done in {results['seconds'] / 60:.1f} min")


def _seconds(models: Models) -> str:
    return ", ".join(f"{k} {v:.0f} s" for k, v in models.seconds.items())


if __name__ == "__main__":
    main()
