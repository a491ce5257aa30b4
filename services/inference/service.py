"""What each inference endpoint does, given the loaded deployments."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import math
import random
import time
import uuid
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.inference import timing
from services.inference.catalog import CatalogIndex, Filters, Mask
from services.inference.merchandising import apply_rules
from services.inference.registry import ModelRegistry, ProjectServing, ServedVersion
from services.inference.schemas import (
    Classification,
    ClassifyRequest,
    ClassifyResponse,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EventsRequest,
    Item,
    RecommendRequest,
    RecommendResponse,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ScoreRequest,
    ScoreResponse,
    Usage,
)
from shared.datasets.catalog import history_text
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.models import Event
from shared.models.enums import DeploymentRole, ModelTaskType
from shared.projects import project_by_ref

RRF_K = 60  # reciprocal rank fusion constant (Cormack et al. 2009)
RERANK_TOP = 20  # how many fused candidates the cross-encoder reorders
STORED_HISTORY = 50  # the latest events that make a stored user history
HISTORY_EVENTS = ("click", "cart", "purchase")


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def fuse(lists: list[list[tuple[int, float]]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of ranked lists of (position, score): sum of 1 / (k + rank)."""
    fused: dict[int, float] = {}
    for ranked in lists:
        for rank, (position, _) in enumerate(ranked, start=1):
            fused[position] = fused.get(position, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


async def _stored_history(
    sessionmaker: async_sessionmaker[AsyncSession], project_id: uuid.UUID, user_id: str
) -> list[str]:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(Event.product_id)
            .where(
                Event.project_id == project_id, Event.user_id == user_id, Event.event_type.in_(HISTORY_EVENTS)
            )
            .order_by(Event.occurred_at.desc(), Event.id.desc())
            .limit(STORED_HISTORY)
        )
        return [pid for (pid,) in rows][::-1]


def explores(serving: ProjectServing, request_id: str) -> bool:
    """Whether this search is one of the project's exploration share (decided by the request id, so a
    retried request is answered alike). Its top k are then shown in a random order (the RandTop-k
    intervention of Wang et al., *Learning to Rank with Selection Bias in Personal Search*, 2016):
    every product turns up at every rank now and then, which is what lets a click model separate the
    pull of a position from the pull of a product."""
    share = serving.exploration_percent / 100
    return share > 0 and random.Random(f"explore:{request_id}").random() < share


def _lexical(
    catalog: CatalogIndex, query: str, wanted: int, allowed: Mask | None, seen: set[int]
) -> list[tuple[int, float]]:
    with timing.stage("bm25"):
        hits = catalog.lexical(query, wanted + len(seen), allowed)
        return [hit for hit in hits if hit[0] not in seen][:wanted]


async def recommend(
    registry: ModelRegistry,
    sessionmaker: async_sessionmaker[AsyncSession],
    serving: ProjectServing,
    data: RecommendRequest,
    request_id: str,
) -> RecommendResponse:
    started = time.perf_counter()
    role = serving.role(DeploymentRole.retriever)
    version = role.pick(data.user_id or request_id)
    catalog = version.catalog
    if catalog is None:
        raise Conflict(f"project {serving.slug!r} has no catalog: import one, then the retriever serves it")
    with timing.stage("filters"):
        filters = Filters(**data.filters.model_dump())
        allowed = catalog.mask(filters)
    history = list(data.history or [])
    if not history and data.user_id and data.query is None:
        with timing.stage("history"):
            history = await _stored_history(sessionmaker, serving.project_id, data.user_id)
    seen = {catalog.position[p] for p in history if p in catalog.position}
    wanted = max(data.candidates, data.k)
    if data.query is not None:
        lists = []
        lexical: list[tuple[int, float]] | None = None
        if data.retrieval != "lexical":
            bm25 = None
            if data.retrieval == "hybrid":  # BM25 on another core while the model embeds the query
                bm25 = asyncio.get_running_loop().run_in_executor(
                    None, contextvars.copy_context().run, _lexical, catalog, data.query, wanted, allowed, seen
                )
            # submitted before anything else awaits, so the version picked is the one that embeds
            # (a hot swap closes a retired version's queue between two steps of the event loop)
            embedding = await version.embed([data.query])
            if bm25 is not None:
                lexical = await bm25
            with timing.stage("ann"):
                lists.append(catalog.dense(embedding[0], wanted, allowed, seen))
        if data.retrieval != "dense":
            lists.append(
                lexical if lexical is not None else _lexical(catalog, data.query, wanted, allowed, seen)
            )
        with timing.stage("fusion"):
            ranked = fuse(lists) if len(lists) > 1 else lists[0]
    else:
        text = history_text(history, catalog.texts)
        if not text:
            raise ValidationFailed(
                "none of the user's history is in the catalog: give a query or known product ids",
                detail=[{"loc": ["body", "history"], "msg": "no known products"}],
            )
        vector = (await version.embed([text]))[0]
        with timing.stage("ann"):
            ranked = catalog.dense(vector, wanted, allowed, seen)
    reranker: ServedVersion | None = None
    if data.rerank and data.query is not None and ranked:
        reranker = serving.role(DeploymentRole.reranker).pick(data.user_id or request_id)
        head = ranked[: max(RERANK_TOP, data.k)]
        scores = await reranker.score([(data.query, catalog.texts[catalog.ids[p]]) for p, _ in head])
        order = np.argsort(-scores, kind="stable")
        ranked = [(head[i][0], float(scores[i])) for i in order] + ranked[len(head) :]
    if serving.rules:
        with timing.stage("rules"):
            ranked = apply_rules(ranked, catalog, serving.rules, data.query, allowed, seen)
    with timing.stage("items"):
        items = [
            Item(product_id=catalog.ids[p], title=catalog.titles[p], score=round(float(score), 6))
            for p, score in ranked[: data.k]
        ]
    explored = data.query is not None and len(items) > 1 and explores(serving, request_id)
    if explored:
        random.Random(f"order:{request_id}").shuffle(items)
    return RecommendResponse(
        request_id=request_id,
        model_version=str(version.id),
        reranker_version=str(reranker.id) if reranker else None,
        items=items,
        took_ms=_ms(started),
        explored=explored,
        warnings=catalog.filter_warnings(filters),
    )


def _scorer(serving: ProjectServing, key: str) -> ServedVersion:
    """The reranker when one is deployed, else the retriever (cosine of embeddings)."""
    role = serving.roles.get(DeploymentRole.reranker) or serving.role(DeploymentRole.retriever)
    return role.pick(key)


async def score(serving: ProjectServing, data: ScoreRequest, request_id: str) -> ScoreResponse:
    started = time.perf_counter()
    version = _scorer(serving, request_id)
    if data.documents is not None:
        documents = data.documents
    else:
        retriever = serving.roles.get(DeploymentRole.retriever)
        catalog = retriever.primary.catalog if retriever else None
        if catalog is None:
            raise Conflict(
                "scoring product ids needs a deployed retriever with a catalog; send documents instead"
            )
        unknown = [p for p in data.product_ids or [] if p not in catalog.texts]
        if unknown:
            raise ValidationFailed(
                f"unknown product ids: {unknown[:10]}",
                detail=[{"loc": ["body", "product_ids"], "msg": "unknown"}],
            )
        if version.task == ModelTaskType.bi_encoder and version.catalog is not None:
            # the products' vectors are in the version's catalog index: embed the query alone
            query = (await version.embed([data.query]))[0]
            rows = [version.catalog.position[p] for p in data.product_ids or []]
            cosine = version.catalog.vectors[rows] @ query
            return ScoreResponse(
                model_version=str(version.id), scores=[float(s) for s in cosine], took_ms=_ms(started)
            )
        documents = [catalog.texts[p] for p in data.product_ids or []]
    scores = await version.score([(data.query, d) for d in documents])
    return ScoreResponse(
        model_version=str(version.id), scores=[float(s) for s in scores], took_ms=_ms(started)
    )


async def rerank(serving: ProjectServing, data: RerankRequest, request_id: str) -> RerankResponse:
    version = _scorer(serving, request_id)
    scores = await version.score([(data.query, d) for d in data.documents])
    if version.task == ModelTaskType.cross_encoder:
        scores = 1.0 / (1.0 + np.exp(-scores.astype(np.float64)))  # a logit becomes a 0..1 relevance
    order = np.argsort(-scores, kind="stable")[: data.top_n or len(data.documents)]
    return RerankResponse(
        model_version=str(version.id),
        results=[
            RerankResult(
                index=int(i),
                relevance_score=float(scores[i]),
                document=data.documents[i] if data.return_documents else None,
            )
            for i in order
        ],
    )


async def classify(serving: ProjectServing, data: ClassifyRequest, request_id: str) -> ClassifyResponse:
    started = time.perf_counter()
    version = serving.role(DeploymentRole.classifier).pick(request_id)
    logits = (await version.logits(data.texts)).astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = version.labels or [str(i) for i in range(probabilities.shape[1])]
    results = []
    for row in probabilities:
        best = int(row.argmax())
        results.append(
            Classification(
                label=labels[best],
                score=round(float(row[best]), 6),
                probabilities={label: round(float(p), 6) for label, p in zip(labels, row, strict=True)},
            )
        )
    return ClassifyResponse(model_version=str(version.id), results=results, took_ms=_ms(started))


async def embeddings(
    serving: ProjectServing, data: EmbeddingRequest, request_id: str
) -> tuple[EmbeddingResponse, str]:
    texts = [data.input] if isinstance(data.input, str) else data.input
    version = serving.role(DeploymentRole.retriever).pick(data.user or request_id)
    vectors = await version.embed(texts)
    if data.dimensions is not None and data.dimensions != vectors.shape[1]:
        raise ValidationFailed(f"this model's embeddings have {vectors.shape[1]} dimensions")
    # counting tokens and encoding 2,048 vectors are CPU work: off the event loop, like the model run
    answer = await asyncio.to_thread(_embedding_response, version, texts, vectors, data)
    return answer, str(version.id)


def _embedding_response(
    version: ServedVersion, texts: list[str], vectors: np.ndarray, data: EmbeddingRequest
) -> EmbeddingResponse:
    tokens = sum(len(e.ids) for e in version.model.tokenizer.encode_batch(texts))
    data_out = []
    for i, vector in enumerate(vectors):
        value: list[float] | str = (
            base64.b64encode(vector.astype("<f4").tobytes()).decode()
            if data.encoding_format == "base64"
            else vector.tolist()
        )
        data_out.append(Embedding(index=i, embedding=value))
    return EmbeddingResponse(
        data=data_out, model=data.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
    )


async def store_events(
    sessionmaker: async_sessionmaker[AsyncSession],
    project_id: uuid.UUID,
    data: EventsRequest,
    versions: dict[str, str],
) -> tuple[int, int]:
    """Insert the events in one statement; each names the model version that served its request. An
    event whose event_id the project already has is skipped. Returns (stored, skipped)."""
    rows: list[dict[str, Any]] = [
        {
            "project_id": project_id,
            "model_version_id": uuid.UUID(versions[e.request_id]) if e.request_id in versions else None,
            "request_id": e.request_id,
            "event_id": e.event_id,
            "occurred_at": e.occurred_at if e.occurred_at is not None else func.now(),
            "event_type": e.event,
            "user_id": e.user_id,
            "product_id": e.product_id,
            "position": e.position,
            "value": e.value if e.value is None or math.isfinite(e.value) else None,
            "properties": e.properties,
        }
        for e in data.events
    ]
    statement = (
        pg_insert(Event)
        .values(rows)
        .on_conflict_do_nothing(
            index_elements=[Event.project_id, Event.event_id], index_where=Event.event_id.is_not(None)
        )
        .returning(Event.id)
    )
    async with sessionmaker() as session:
        stored = len((await session.execute(statement)).all())
        await session.commit()
    return stored, len(rows) - stored


async def find_project(sessionmaker: async_sessionmaker[AsyncSession], ref: str) -> uuid.UUID:
    """A project's id from its id or slug (an id always wins); 404 when there is none."""
    async with sessionmaker() as session:
        found = await project_by_ref(session, ref)
    if found is None:
        raise unknown_project(ref)
    return found.id


def unknown_project(ref: str) -> NotFound:
    return NotFound(f"project {ref!r} not found: no project has that slug or id")
