from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.inference import service, timing
from services.inference.admission import CALLER
from services.inference.app_state import InferenceResources, get_resources
from services.inference.auth import Caller
from services.inference.impressions import Served
from services.inference.registry import ProjectServing, ServedVersion
from services.inference.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EventsRequest,
    EventsResponse,
    RecommendRequest,
    RecommendResponse,
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
)
from shared.errors import Forbidden, NotFound
from shared.models.enums import DeploymentRole, KeyRole

log = logging.getLogger("recforge.inference")
router = APIRouter()
REQUEST_TTL_S = 7 * 24 * 3600  # how long a request id stays linked to the version that served it
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid key"},
    403: {"description": "Not a service key of this project"},
    404: {"description": "Nothing deployed for the project or role"},
    429: {"description": "The model's queue is full; retry after Retry-After seconds"},
}

Resources = Annotated[InferenceResources, Depends(get_resources)]
# the endpoints whose key is checked before their body is read (services.inference.admission.KeyFirst)
POST_PATHS = frozenset({"/recommend", "/score", "/rerank", "/classify", "/v1/embeddings", "/events"})
# batches sent for throughput: admitted by their model's queue-delay budget, not an adaptive ceiling
BULK_PATHS = frozenset({"/v1/embeddings"})


async def _caller(
    request: Request, resources: Resources, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    checked: Caller | None = request.scope.get(CALLER)  # by KeyFirst, before the body was read
    return checked if checked is not None else await resources.keys.check(authorization)


CallerDep = Annotated[Caller, Depends(_caller)]


async def _serving(
    resources: InferenceResources, caller: Caller, project: str, scope: str = "inference"
) -> ProjectServing:
    """The project's deployments. A project that is not served here is looked up: unknown, it is
    named so; the caller's own, it is said to have nothing deployed. Another project's key gets the
    unknown-project answer either way, so no key learns which projects exist."""
    caller.require_service_or_admin()
    try:
        serving = resources.registry.project(project)
    except NotFound:
        project_id = await service.find_project(resources.sessionmaker, project)
        if not caller.sees(project_id):
            raise service.unknown_project(project) from None
        raise
    if not caller.sees(serving.project_id):
        raise service.unknown_project(project)
    caller.require(serving.project_id, scope)
    return serving


def _request_id(request: Request) -> str:
    return str(request.state.request_id)


def _request_key(project_id: uuid.UUID, request_id: str) -> str:
    """Request ids come from clients (X-Request-ID): each project has its own, so no project can
    overwrite, or read, another's."""
    return f"recforge:request:{project_id}:{request_id}"


def _remember(resources: InferenceResources, project_id: uuid.UUID, request_id: str, version_id: str) -> None:
    """Link the request id to the version that answered, for events that arrive later (not awaited)."""

    async def write() -> None:
        try:
            await resources.redis.set(_request_key(project_id, request_id), version_id, ex=REQUEST_TTL_S)
        except Exception:
            log.warning("could not record the request's model version", exc_info=True)

    task = asyncio.create_task(write())
    resources.background.add(task)
    task.add_done_callback(resources.background.discard)


@router.post("/recommend", response_model=RecommendResponse, responses=ERRORS, tags=["inference"])
async def recommend(
    data: RecommendRequest, request: Request, resources: Resources, caller: CallerDep
) -> RecommendResponse:
    """Products for a query (hybrid: the deployed bi-encoder and BM25, fused by reciprocal rank, with
    an optional cross-encoder rerank) or for a user (their history as one vector; seen items excluded)."""
    started = time.perf_counter()
    with timing.handler():
        serving = await _serving(resources, caller, data.project)
        answer = await service.recommend(
            resources.registry, resources.sessionmaker, serving, data, _request_id(request)
        )
        with timing.stage("log"):
            _remember(resources, serving.project_id, answer.request_id, answer.model_version)
            _record_recommend(resources, serving, data, answer, started)
    resources.metrics.took("/recommend", answer.model_version, started)
    return answer


def _record_recommend(
    resources: InferenceResources,
    serving: ProjectServing,
    data: RecommendRequest,
    answer: RecommendResponse,
    started: float,
) -> None:
    resources.impressions.record(
        Served(
            project_id=serving.project_id,
            request_id=answer.request_id,
            endpoint="recommend",
            model_version_id=answer.model_version,
            reranker_version_id=answer.reranker_version,
            arm=_arm(serving.role(DeploymentRole.retriever).canary, answer.model_version),
            query=data.query,
            user_id=data.user_id,
            product_ids=[item.product_id for item in answer.items],
            latency_ms=(time.perf_counter() - started) * 1000,
            explored=answer.explored,
        )
    )


@router.post("/score", response_model=ScoreResponse, responses=ERRORS, tags=["inference"])
async def score(
    data: ScoreRequest, request: Request, resources: Resources, caller: CallerDep
) -> ScoreResponse:
    """Relevance of products (ids or texts) to a query: the cross-encoder's logit when a reranker is
    deployed, else the cosine of the retriever's embeddings."""
    started = time.perf_counter()
    answer = await service.score(await _serving(resources, caller, data.project), data, _request_id(request))
    resources.metrics.took("/score", answer.model_version, started)
    return answer


@router.post("/rerank", response_model=RerankResponse, responses=ERRORS, tags=["inference"])
async def rerank(
    data: RerankRequest, request: Request, resources: Resources, caller: CallerDep
) -> RerankResponse:
    """Documents ordered by relevance to the query, best first (as the Cohere and TEI rerank APIs)."""
    started = time.perf_counter()
    serving = await _serving(resources, caller, data.project)
    answer = await service.rerank(serving, data, _request_id(request))
    if data.product_ids is not None:
        _remember(resources, serving.project_id, _request_id(request), answer.model_version)
        role = serving.roles.get(DeploymentRole.reranker) or serving.role(DeploymentRole.retriever)
        resources.impressions.record(
            Served(
                project_id=serving.project_id,
                request_id=_request_id(request),
                endpoint="rerank",
                model_version_id=answer.model_version,
                reranker_version_id=None,
                arm=_arm(role.canary, answer.model_version),
                query=data.query,
                user_id=None,
                product_ids=[data.product_ids[result.index] for result in answer.results],
                latency_ms=(time.perf_counter() - started) * 1000,
            )
        )
    resources.metrics.took("/rerank", answer.model_version, started)
    return answer


def _arm(canary: ServedVersion | None, answered: str) -> str:
    return "canary" if canary is not None and str(canary.id) == answered else "primary"


@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS, tags=["inference"])
async def classify(
    data: ClassifyRequest, request: Request, resources: Resources, caller: CallerDep
) -> ClassifyResponse:
    """Each text's label and the probability of every label, from the deployed classifier."""
    started = time.perf_counter()
    answer = await service.classify(
        await _serving(resources, caller, data.project), data, _request_id(request)
    )
    resources.metrics.took("/classify", answer.model_version, started)
    return answer


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERRORS, tags=["openai"])
async def embeddings(
    data: EmbeddingRequest, request: Request, response: Response, resources: Resources, caller: CallerDep
) -> EmbeddingResponse:
    """OpenAI-compatible embeddings from the project's deployed bi-encoder; `model` is the project's id
    or slug. The `openai` client works against it (base_url `http://host:8001/v1`)."""
    started = time.perf_counter()
    answer, version = await service.embeddings(
        await _serving(resources, caller, data.model), data, _request_id(request)
    )
    response.headers["X-Model-Version"] = version
    resources.metrics.took("/v1/embeddings", version, started)
    return answer


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EventsResponse,
    responses=ERRORS,
    tags=["events"],
)
async def events(data: EventsRequest, resources: Resources, caller: CallerDep) -> EventsResponse:
    """Store impressions, clicks, carts and purchases for feedback training and online metrics; each
    event with a request_id is tied to the model version that served that request."""
    caller.require_service_or_admin()
    try:
        project_id = resources.registry.project(data.project).project_id
    except NotFound:  # nothing deployed here (yet): events are still the project's
        project_id = await service.find_project(resources.sessionmaker, data.project)
    if not caller.sees(project_id):
        raise service.unknown_project(data.project)
    caller.require(project_id, "events")
    request_ids = sorted({e.request_id for e in data.events if e.request_id})
    versions: dict[str, str] = {}
    if request_ids:
        try:
            found = await resources.redis.mget([_request_key(project_id, r) for r in request_ids])
        except Exception:  # the events are the truth; which version served them is a detail
            log.warning("Redis did not answer: events are stored without their model version", exc_info=True)
            found = [None] * len(request_ids)
        versions = {
            r: (v.decode() if isinstance(v, bytes) else v)
            for r, v in zip(request_ids, found, strict=True)
            if v
        }
    accepted, duplicates = await service.store_events(resources.sessionmaker, project_id, data, versions)
    return EventsResponse(accepted=accepted, duplicates=duplicates)


@router.get("/models", responses=ERRORS, tags=["ops"])
async def models(resources: Resources, caller: CallerDep) -> list[dict[str, Any]]:
    """What this replica serves (admins): every deployed version, loaded or failed with the reason."""
    if caller.role != KeyRole.admin:
        raise Forbidden("this needs an admin key")
    return resources.registry.describe()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, resources: Resources) -> Response:
    """Prometheus metrics, for the metrics token (RECFORGE_METRICS_TOKEN) or an admin key: the series
    name every project's model versions."""
    authorization = request.headers.get("authorization") or ""
    token = resources.settings.metrics_token
    if not (
        token and hmac.compare_digest(authorization.encode(), f"Bearer {token.get_secret_value()}".encode())
    ):
        caller = await resources.keys.check(authorization)
        if caller.role != KeyRole.admin:
            raise Forbidden(
                "metrics are read with the metrics token (RECFORGE_METRICS_TOKEN) or an admin key"
            )
    return Response(generate_latest(resources.metrics.registry), media_type=CONTENT_TYPE_LATEST)
