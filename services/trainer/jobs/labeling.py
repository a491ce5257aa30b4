"""Labelling queues' selection jobs: which (query, product) pairs people should judge next.

The pool's queries (a relevance dataset version's, or the searches shoppers made in a window) each get
candidates from the whole catalog: BM25's and the retriever's best ``candidates_per_query`` (the
deployed bi-encoder, or the zero-shot base model when none is deployed) and, for searches, what
shoppers were shown. Pairs already judged (in the pool's version, or the base the labels will join) are
left out. Every candidate is scored by each ranker that is there: BM25, the retriever, the deployed
cross-encoder and, for searches, the click model (shared.feedback's grades of what shoppers did); the
queue's strategy then picks its budget of pairs with diversity across queries (shared.labeling.select).
The store writes the pairs, shares them among the labellers and opens the queue in one transaction."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from services.trainer import evaluation
from services.trainer.control import JobControl, in_thread
from services.trainer.finetune.base import resolve_base_model
from services.trainer.jobs.base import JobRun
from services.trainer.jobs.version import VersionSpec, version_spec
from services.trainer.store import NewLabelingItems
from shared.datasets.catalog import catalog_text
from shared.datasets.storage import read_table
from shared.errors import ValidationFailed
from shared.feedback import Action, FeedbackOptions, Served, normalize_query, relevance
from shared.labeling import Candidate, LabelingOptions, Strategy, select
from shared.search import BM25Index, dense_top_k
from shared.storage import ObjectStore
from shared.training import DEFAULT_BASE_MODEL, Hyperparameters

UNSEEN = -1.0  # the click model's score of a pair shoppers were never shown


@dataclass
class Pool:
    queries: list[str]  # in the order they are offered (most searched first, for searches)
    shown: dict[str, list[str]] = field(default_factory=dict)  # normalised query -> products shown
    clicks: dict[tuple[str, str], float] = field(default_factory=dict)  # (normalised query, product) -> grade
    described: dict[str, Any] = field(default_factory=dict)


@dataclass
class Models:
    retriever: evaluation.Scorer  # embeds queries (and products, unless `products` is set)
    retriever_name: str
    products: evaluation.Scorer | None = None
    reranker: evaluation.Scorer | None = None
    reranker_name: str | None = None


def dataset_pool(
    store: ObjectStore, tables: dict[str, Any], options: LabelingOptions, rng: np.random.Generator
) -> Pool:
    table = read_table(store, tables, "relevance", columns=["query", "split"])
    queries = sorted(
        {
            q
            for q, split in zip(table["query"].to_pylist(), table["split"].to_pylist(), strict=True)
            if options.split == "all" or split == options.split
        }
    )
    described = {"source": "dataset", "split": options.split, "queries_in_pool": len(queries)}
    if len(queries) > options.max_queries:
        picked = rng.choice(len(queries), size=options.max_queries, replace=False)
        queries = [queries[i] for i in sorted(picked)]
    return Pool(queries=queries, described=described)


def impressions_pool(served: list[Served], actions: list[Action], options: LabelingOptions) -> Pool:
    searched = Counter(normalize_query(s.query) for s in served if s.query and normalize_query(s.query))
    queries = [q for q, _ in sorted(searched.items(), key=lambda item: (-item[1], item[0]))]
    shown: dict[str, list[str]] = {}
    for s in served:
        if s.query and (q := normalize_query(s.query)):
            known = shown.setdefault(q, [])
            known.extend(p for p in s.product_ids[: options.candidates_per_query] if p not in known)
    assert options.start is not None and options.end is not None
    graded = relevance(
        served,
        actions,
        FeedbackOptions(start=options.start, end=options.end, min_impressions=1, sequences=False),
    ).table
    clicks = {
        (q, p): float(g)
        for q, p, g in zip(
            graded["query"].to_pylist(),
            graded["product_id"].to_pylist(),
            graded["grade"].to_pylist(),
            strict=True,
        )
    }
    described = {
        "source": "impressions",
        "from": options.start.isoformat(),
        "to": options.end.isoformat(),
        "searches": sum(searched.values()),
        "queries_in_pool": len(queries),
    }
    return Pool(queries=queries[: options.max_queries], shown=shown, clicks=clicks, described=described)


def judged_pairs(store: ObjectStore, versions: list[dict[str, Any]]) -> set[tuple[str, str]]:
    judged: set[tuple[str, str]] = set()
    for tables in versions:
        if "relevance" not in tables:
            continue
        table = read_table(store, tables, "relevance", columns=["query", "product_id"])
        judged.update(
            (normalize_query(q), p)
            for q, p in zip(table["query"].to_pylist(), table["product_id"].to_pylist(), strict=True)
        )
    return judged


def choose(
    pool: Pool,
    products: dict[str, str],
    judged: set[tuple[str, str]],
    models: Models,
    options: LabelingOptions,
    control: JobControl,
) -> tuple[list[Candidate], list[float], list[dict[str, float]], dict[str, Any]]:
    """The pairs to judge, best first, with the strategy's score and each ranker's score of each."""
    rng = np.random.default_rng(options.seed)
    ids = list(products)
    texts = [products[i] for i in ids]
    depth = options.candidates_per_query
    control.report(phase="candidates", queries=len(pool.queries))
    bm25 = BM25Index(ids, texts)
    lexical = bm25.search(pool.queries, depth)
    catalog = evaluation.embed_texts(models.products or models.retriever, texts, control, "catalog")
    assert models.retriever.embed is not None
    query_vectors = np.asarray(models.retriever.embed(pool.queries), dtype=np.float32)
    qids = [str(i) for i in range(len(pool.queries))]
    dense = dense_top_k(qids, query_vectors, ids, catalog, depth)
    position = {pid: i for i, pid in enumerate(ids)}

    candidates: list[Candidate] = []
    rows: list[int] = []  # the query's row in query_vectors
    left_out = 0
    for row, query in enumerate(pool.queries):
        found = [pid for pid, _ in lexical[row]]
        found += sorted(dense[qids[row]], key=lambda pid: -dense[qids[row]][pid])
        found += [pid for pid in pool.shown.get(normalize_query(query), []) if pid in position]
        for pid in dict.fromkeys(found):
            if (normalize_query(query), pid) in judged:
                left_out += 1
                continue
            candidates.append(Candidate(query, pid, products[pid]))
            rows.append(row)
    if not candidates:
        raise ValidationFailed(
            f"no pair left to judge: the pool's {len(pool.queries)} queries gave {left_out} candidates, "
            "all judged already; choose another pool (a split or a window) or a larger candidates_per_query"
        )
    control.check()
    control.report(phase="scoring", candidates=len(candidates))
    queries = [c.query for c in candidates]
    signals: dict[str, np.ndarray] = {}
    by_query: dict[str, list[int]] = {}
    for i, c in enumerate(candidates):
        by_query.setdefault(c.query, []).append(i)
    lexical_scores = np.zeros(len(candidates))
    for query, members in by_query.items():
        lexical_scores[members] = bm25.score(query, [candidates[i].product_id for i in members])
    signals["bm25"] = lexical_scores
    signals["retriever"] = np.einsum(
        "ij,ij->i", query_vectors[rows], catalog[[position[c.product_id] for c in candidates]]
    )
    if models.reranker is not None and options.strategy != Strategy.random:
        assert models.reranker.score is not None
        signals["reranker"] = evaluation.score_all(
            models.reranker.score, queries, [c.product_text for c in candidates], control, "reranker"
        )
    if pool.clicks:
        signals["clicks"] = np.asarray(
            [pool.clicks.get((normalize_query(c.query), c.product_id), UNSEEN) for c in candidates]
        )
    control.check()
    picked, scores = select(
        options.strategy,
        queries,
        options.budget,
        rng=rng,
        reranker_logits=signals.get("reranker"),
        rankers=list(signals.values()),
        k=options.k,
        per_query=options.per_query,
    )
    chosen = [candidates[i] for i in picked]
    report = {
        "pool": pool.described,
        "queries": len(pool.queries),
        "candidates": len(candidates),
        "judged_left_out": left_out,
        "selected": len(chosen),
        "queries_selected": len({c.query for c in chosen}),
        "rankers": list(signals),
        "retriever": models.retriever_name,
        "reranker": models.reranker_name,
    }
    return (
        chosen,
        [float(scores[i]) for i in picked],
        [{name: round(float(values[i]), 6) for name, values in signals.items()} for i in picked],
        report,
    )


def _scorers(
    retriever: VersionSpec | None, reranker: VersionSpec | None, job: JobRun, max_length: int
) -> Models:
    cache = job.settings.cache_dir
    if retriever is not None:
        model = retriever.onnx(retriever.served_file)
        product_file = retriever.served_product_file
        products = retriever.onnx(product_file)
        models = Models(
            retriever=evaluation.Scorer(embed=model.embed),
            retriever_name=f"model version {retriever.relative.name}",
            products=evaluation.product_scorer(products, cache),
        )
    else:
        build = evaluation.zero_shot(resolve_base_model(DEFAULT_BASE_MODEL), job.device, max_length, cache)
        models = Models(retriever=build(), retriever_name="zero-shot base model")
    if reranker is not None:
        models.reranker = evaluation.onnx_scorer(reranker.onnx(reranker.served_file), reranker.job_type)
        models.reranker_name = f"model version {reranker.relative.name}"
    return models


async def run(job: JobRun) -> NewLabelingItems:
    assert job.store is not None
    claimed = job.claimed
    options = LabelingOptions.model_validate(claimed.job.hyperparameters)
    if claimed.catalog_tables is None:
        raise ValidationFailed("the project has no catalog to find candidates in: import one first")
    job.control.report(phase="reading")
    products = await anyio.to_thread.run_sync(catalog_text, job.objects, claimed.catalog_tables)
    rng = np.random.default_rng(options.seed)
    if options.pool == "dataset":
        pool = await anyio.to_thread.run_sync(dataset_pool, job.objects, claimed.tables, options, rng)
    else:
        assert options.start is not None and options.end is not None
        served, actions = await job.store.feedback_window(claimed.job.project_id, options.start, options.end)
        pool = await anyio.to_thread.run_sync(impressions_pool, served, actions, options)
    if not pool.queries:
        where = "this split of the dataset" if options.pool == "dataset" else "this window"
        raise ValidationFailed(f"the pool has no queries: nobody searched in {where}; widen it")
    judged_tables = await job.store.dataset_tables(list(options.judged_version_ids))
    judged = await anyio.to_thread.run_sync(judged_pairs, job.objects, judged_tables)
    versions = await job.store.model_versions(
        [v for v in (options.retriever_version_id, options.reranker_version_id) if v is not None]
    )
    retriever = reranker = None
    if options.retriever_version_id is not None:
        retriever = await version_spec(job, _found(versions, options.retriever_version_id))
    if options.reranker_version_id is not None:
        reranker = await version_spec(job, _found(versions, options.reranker_version_id))
    max_length = retriever.max_length if retriever else Hyperparameters().max_length
    models = _scorers(retriever, reranker, job, max_length)
    chosen, scores, signals, report = await in_thread(
        job.control, choose, pool, products, judged, models, options, job.control
    )
    return NewLabelingItems(
        queue_id=options.queue_id,
        items=tuple(chosen),
        scores=tuple(scores),
        signals=tuple(signals),
        result=report,
        progress=job.control.progress,
    )


def _found(versions: dict[uuid.UUID, Any], version_id: uuid.UUID) -> Any:
    if version_id not in versions:
        raise ValidationFailed(f"model version {version_id} is gone or has no ONNX graph")
    return versions[version_id]
