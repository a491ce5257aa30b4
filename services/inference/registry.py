"""Which model versions this process serves, per project and role, and how they are swapped.

The registry reads the active deployments from Postgres when it starts, when the API publishes a
promotion on Redis, and every `deployment_refresh_s` (a lost notice only delays a swap). A version
that is not loaded yet is loaded in a worker thread (its ONNX session, and for a retriever the
catalog's embeddings and indexes) while requests keep being served by what is loaded; then the
project's snapshot is replaced in one assignment, so a request sees either the old set or the new."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.inference.batching import MicroBatcher
from services.inference.catalog import CatalogIndex, category_path, load_vectors
from services.inference.merchandising import Rule
from shared.artifacts import cpu_graph, product_graph, stored_files, unrooted, version_folder
from shared.config import Settings
from shared.datasets.catalog import catalog_text, latest_catalog_version
from shared.errors import NotFound, ServiceUnavailable
from shared.files import verify
from shared.jobs import DEPLOYMENTS_CHANNEL
from shared.models import Deployment, MerchandisingRule, ModelVersion, Project
from shared.models.enums import DeploymentRole, ModelTaskType, RuleAction
from shared.onnxmodel import OnnxTextModel, providers
from shared.projects import as_id
from shared.storage import object_store

log = logging.getLogger("recforge.inference")

Observer = Callable[[str, int, int], None]


@dataclass(eq=False)
class ServedVersion:
    """One model version, loaded: its session behind a micro-batcher, and a retriever's catalog."""

    id: uuid.UUID
    project_id: uuid.UUID
    number: int
    task: ModelTaskType
    model_file: str
    provider: str
    labels: list[str] | None
    model: OnnxTextModel
    batcher: MicroBatcher[Any, Any]
    catalog: CatalogIndex | None = None
    # a bi-encoder's product side: the sha256 of the graph that embeds its products (its own graph's, or
    # a query-tower-only version's base model graph's); versions alike share one catalog index
    product_tower: str | None = None

    @property
    def name(self) -> str:
        return f"v{self.number}"

    async def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(await self.batcher.submit(texts, "embed"), dtype=np.float32)

    async def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Cross-encoder logits, or the cosine of the two embeddings for a bi-encoder."""
        if self.task == ModelTaskType.cross_encoder:
            return np.asarray(await self.batcher.submit(pairs, "score"), dtype=np.float32).reshape(-1)
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))  # each distinct text once
        vectors = await self.embed(texts)
        row = {text: i for i, text in enumerate(texts)}
        left = vectors[[row[q] for q, _ in pairs]]
        right = vectors[[row[d] for _, d in pairs]]
        cosine: np.ndarray = np.sum(left * right, axis=1)
        return cosine

    async def logits(self, texts: list[str]) -> np.ndarray:
        return np.asarray(await self.batcher.submit(texts, "classify"), dtype=np.float32)


@dataclass(frozen=True)
class RoleServing:
    deployment_id: uuid.UUID
    primary: ServedVersion
    canary: ServedVersion | None
    canary_percent: int

    def pick(self, key: str) -> ServedVersion:
        """The canary for `canary_percent` of keys (a user or request id), stably; else the primary."""
        if self.canary is None or self.canary_percent <= 0:
            return self.primary
        bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 100
        return self.canary if bucket < self.canary_percent else self.primary


@dataclass(frozen=True)
class LoadFailure:
    """A deployed version this replica could not load (a missing or damaged file, say)."""

    deployment_id: uuid.UUID
    version_id: uuid.UUID
    error: str


@dataclass(frozen=True)
class ProjectServing:
    project_id: uuid.UUID
    slug: str
    roles: dict[DeploymentRole, RoleServing] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()  # merchandising, in creation order
    # deployments this replica could not load; a role among them serves the version it had, if any
    failed: dict[DeploymentRole, LoadFailure] = field(default_factory=dict)
    exploration_percent: float = 0.0  # searches whose top k is shown in a random order

    def role(self, role: DeploymentRole) -> RoleServing:
        found = self.roles.get(role)
        if found is not None:
            return found
        failure = self.failed.get(role)
        if failure is not None:  # this project's trouble alone: every other project is served
            raise ServiceUnavailable(
                f"project {self.slug!r}'s {role.value} (model version {failure.version_id}) could not be "
                f"loaded here: {failure.error}. Promote a working version, or re-run its export job.",
                headers={"Retry-After": "30"},
            )
        raise NotFound(f"project {self.slug!r} has no {role.value} deployed: promote a model version first")


def _choose_file(artifacts: dict[str, Any], prefer_gpu: bool) -> tuple[str, list[str]]:
    """The graph to serve and the providers to ask for: fp16 on CUDA, else int8 when servable, else fp32."""
    wanted = providers(prefer_gpu=prefer_gpu)
    if "CUDAExecutionProvider" in wanted and "model_fp16" in artifacts:
        return "model_fp16", wanted
    served = cpu_graph(artifacts)
    return (served, ["CPUExecutionProvider"]) if served == "model_int8" else (served, wanted)


class ModelRegistry:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession] | None = None,
        redis: Redis | None = None,
        observe: Observer | None = None,
        forget: Callable[[str, str], None] | None = None,
        on_catalog: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._sessionmaker = sessionmaker
        self._redis = redis
        self._observe = observe
        self._forget = forget  # (model version id, batcher name) of a version that left
        self._on_catalog = on_catalog  # where a loaded retriever's catalog embeddings came from
        self._projects: dict[uuid.UUID, ProjectServing] = {}
        self._slugs: dict[str, uuid.UUID] = {}
        self._versions: dict[tuple[uuid.UUID, str | None], ServedVersion] = {}
        self._wanted: set[uuid.UUID] = set()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.refreshed = False  # the first look at the deployments has finished (whatever it found)

    # -- lookups ------------------------------------------------------------------------------

    @property
    def loaded_versions(self) -> frozenset[uuid.UUID]:
        return frozenset(version_id for version_id, _ in self._versions)

    def project(self, ref: str) -> ProjectServing:
        """A project by id or slug (a reference that reads as a UUID is an id, never a slug); 404 when
        it has nothing deployed here."""
        project_id = as_id(ref)
        if project_id is None:
            project_id = self._slugs.get(ref.lower())
        serving = self._projects.get(project_id) if project_id else None
        if serving is None:
            raise self.unknown(ref)
        return serving

    @staticmethod
    def unknown(ref: str) -> NotFound:
        return NotFound(
            f"project {ref!r} has no deployed model versions: promote one "
            "(recforge models list, then recforge models promote VERSION_ID)"
        )

    def describe(self) -> list[dict[str, Any]]:
        """What this replica serves, per project and role: the loaded versions and the failed ones."""
        rows: list[dict[str, Any]] = []
        for serving in sorted(self._projects.values(), key=lambda p: p.slug):
            where = {"project": serving.slug, "project_id": str(serving.project_id)}
            for role, found in serving.roles.items():
                for version, arm in ((found.primary, "primary"), (found.canary, "canary")):
                    if version is None:
                        continue
                    rows.append(
                        {
                            **where,
                            "role": role.value,
                            "arm": arm,
                            "model_version_id": str(version.id),
                            "state": "loaded",
                            "file": version.model_file,
                            "provider": version.provider,
                        }
                    )
            for role, failure in serving.failed.items():
                rows.append(
                    {
                        **where,
                        "role": role.value,
                        "model_version_id": str(failure.version_id),
                        "state": "failed",
                        "error": failure.error,
                    }
                )
        return rows

    async def deploys_anything(self, session: AsyncSession) -> bool:
        found = await session.execute(select(Deployment.id).where(Deployment.is_active).limit(1))
        return found.first() is not None

    @property
    def failures(self) -> int:
        return sum(len(p.failed) for p in self._projects.values())

    # -- loading --------------------------------------------------------------------------------

    def _load(
        self, version: ModelVersion, catalog: tuple[str, dict[str, Any]] | None, slug: str
    ) -> ServedVersion:
        """Blocking: the version's ONNX session and, for a retriever, its catalog index."""
        settings = self.settings
        folder = version_folder(version.project_id, version.id)
        store = object_store(settings)
        directory = store.local(str(folder))
        model_file, wanted = _choose_file(version.artifacts, settings.prefer_gpu)
        product_file = product_graph(version.artifacts, model_file)
        # from a bucket: the graph served (and the one embedding its products), the tokenizer's files and
        # the catalog index, not other graphs
        store.fetch_all(
            entry
            for name, entry in version.artifacts.items()
            if isinstance(entry, dict)
            and "path" in entry
            and (name in (model_file, product_file) or not name.startswith(("model", "product_model")))
        )
        store.fetch_all(stored_files((version.artifacts.get("catalog_index") or {}).get("files") or {}))
        # the graph served is the one the registry describes, byte for byte
        path = verify(directory, unrooted(version.artifacts, folder)[model_file])
        max_length = int(version.config.get("max_length") or 128)
        model = OnnxTextModel(
            path,
            directory,
            max_length=max_length,
            threads=settings.inference_threads,
            providers=wanted,
            spinning=settings.ort_spinning,
        )
        task = ModelTaskType(version.task_type)
        log.info(
            "loaded a model version",
            extra={"model_version_id": str(version.id), "file": model_file, "provider": model.provider},
        )
        run: Callable[[list[Any]], Any]
        if task == ModelTaskType.bi_encoder:
            run = model.embed
        elif task == ModelTaskType.cross_encoder:
            run = model.score_pairs
        else:
            run = model.classify_logits
        batcher: MicroBatcher[Any, Any] = MicroBatcher(
            lambda items: list(run(items)),
            name=f"{slug} v{version.version}",  # 429s and /metrics name it so
            max_batch=settings.max_batch,
            max_wait_ms=settings.batch_wait_ms,
            max_queue=settings.max_queue,
            max_delay_ms=settings.max_queue_delay_ms,
            observe=self._observe,
            split_run=lambda: {"tokenize": model.last_tokenize_s},
        )
        served = ServedVersion(
            id=version.id,
            project_id=version.project_id,
            number=version.version,
            task=task,
            model_file=model_file,
            provider=model.provider,
            labels=version.config.get("labels"),
            model=model,
            batcher=batcher,
        )
        if task == ModelTaskType.bi_encoder:
            served.product_tower = version.artifacts[product_file].get("sha256")
            if catalog is not None:
                twin = self._same_product_side(served.product_tower, catalog[0])
                if twin is not None:  # its catalog embeddings and indexes serve this version as they are
                    served.catalog = twin.catalog
                    log.info(
                        "reusing a loaded version's catalog index: the same graph embeds products",
                        extra={"model_version_id": str(version.id), "from_version_id": str(twin.id)},
                    )
                    self._note_catalog("shared")
                else:
                    served.catalog = self._catalog(version, served, product_file, folder, catalog)
        return served

    def _note_catalog(self, source: str) -> None:
        if self._on_catalog is not None:
            self._on_catalog(source)

    def _same_product_side(self, tower: str | None, catalog_id: str) -> ServedVersion | None:
        """A loaded version whose catalog index of ``catalog_id`` was embedded by the graph ``tower``."""
        if tower is None:
            return None
        for served in list(self._versions.values()):
            index = served.catalog
            if served.product_tower == tower and index is not None and index.catalog_version_id == catalog_id:
                return served
        return None

    def _catalog(
        self,
        version: ModelVersion,
        served: ServedVersion,
        product_file: str,
        folder: Path,
        catalog: tuple[str, dict[str, Any]],
    ) -> CatalogIndex:
        """The catalog's index, its products embedded by ``product_file`` (the served graph itself, or a
        query-tower-only version's product graph): from an index job's files when they match, else here."""
        catalog_id, tables = catalog
        store = object_store(self.settings)
        directory = store.local(str(folder))
        table = read_catalog_table(self.settings, tables)
        texts = catalog_text(store, tables)
        index = version.artifacts.get("catalog_index") or {}

        def vectors(ids: list[str]) -> np.ndarray:
            graph = version.artifacts.get(product_file, {}).get("sha256")
            same_graph = index.get("model_sha256") in (None, graph)  # an export may have rebuilt it
            if (
                index.get("dataset_version_id") == catalog_id
                and index.get("model_file") == product_file
                and same_graph
            ):
                found = load_vectors(directory, unrooted(index["files"], folder), ids)
                if found is not None:
                    self._note_catalog("index_job")
                    return found
            log.info(
                "embedding the catalog", extra={"model_version_id": str(version.id), "products": len(ids)}
            )
            embedder = served.model
            if product_file != served.model_file:
                embedder = OnnxTextModel(
                    verify(directory, unrooted(version.artifacts, folder)[product_file]),
                    directory,
                    max_length=served.model.max_length,
                    threads=self.settings.inference_threads,
                    providers=served.model.session.get_providers(),
                    spinning=self.settings.ort_spinning,
                )
            embedded: np.ndarray = embedder.embed([texts[p] for p in ids], batch_size=128)
            self._note_catalog("embedded")
            return embedded

        return CatalogIndex(
            catalog_id,
            table,
            texts,
            vectors,
            ann_threshold=self.settings.ann_threshold,
            threads=self.settings.inference_threads or os.cpu_count() or 1,
        )

    async def refresh(self) -> None:
        """Load what the active deployments name and swap each project's snapshot."""
        assert self._sessionmaker is not None
        async with self._lock:
            async with self._sessionmaker() as session:
                rows = (
                    await session.execute(
                        select(Deployment, Project.slug, Project.exploration_percent)
                        .join(Project, Project.id == Deployment.project_id)
                        .where(Deployment.is_active)
                    )
                ).all()
                version_ids = {d.model_version_id for d, _, _ in rows} | {
                    d.canary_model_version_id for d, _, _ in rows if d.canary_model_version_id
                }
                versions = {
                    v.id: v
                    for v in (
                        await session.execute(select(ModelVersion).where(ModelVersion.id.in_(version_ids)))
                    ).scalars()
                }
                rules: dict[uuid.UUID, list[Rule]] = {}
                for rule in (
                    await session.execute(
                        select(MerchandisingRule).order_by(MerchandisingRule.created_at, MerchandisingRule.id)
                    )
                ).scalars():
                    rules.setdefault(rule.project_id, []).append(
                        Rule(
                            RuleAction(rule.action),
                            rule.query,
                            rule.product_id,
                            category_path(rule.category) if rule.category is not None else None,
                            rule.position,
                            rule.weight,
                        )
                    )
                catalogs: dict[uuid.UUID, tuple[str, dict[str, Any]] | None] = {}
                for deployment, _, _ in rows:
                    if deployment.project_id not in catalogs:
                        found = await latest_catalog_version(session, deployment.project_id)
                        catalogs[deployment.project_id] = (str(found.id), found.tables) if found else None
            projects: dict[uuid.UUID, dict[DeploymentRole, RoleServing]] = {}
            slugs: dict[str, uuid.UUID] = {}
            failed: dict[uuid.UUID, dict[DeploymentRole, LoadFailure]] = {}
            keep: set[tuple[uuid.UUID, str | None]] = set()
            exploration: dict[uuid.UUID, float] = {}
            for deployment, slug, explore in rows:
                slugs[slug] = deployment.project_id
                exploration[deployment.project_id] = float(explore)
                catalog = catalogs.get(deployment.project_id)
                role = DeploymentRole(deployment.role)
                try:
                    primary = await self._ensure(versions[deployment.model_version_id], catalog, keep, slug)
                except Exception as exc:  # keep serving what is loaded; the project alone does without it
                    log.exception("could not load a deployment", extra={"deployment_id": str(deployment.id)})
                    failed.setdefault(deployment.project_id, {})[role] = LoadFailure(
                        deployment.id, deployment.model_version_id, f"{type(exc).__name__}: {exc}"[:500]
                    )
                    old = self._projects.get(deployment.project_id)
                    if old is not None and role in old.roles:
                        projects.setdefault(deployment.project_id, {})[role] = old.roles[role]
                        for version in (old.roles[role].primary, old.roles[role].canary):
                            if version is not None:
                                keep.add(
                                    (
                                        version.id,
                                        version.catalog.catalog_version_id if version.catalog else None,
                                    )
                                )
                    continue
                canary = None
                if deployment.canary_model_version_id:
                    try:
                        canary = await self._ensure(
                            versions[deployment.canary_model_version_id], catalog, keep, slug
                        )
                    except Exception:  # the primary takes the canary's share until it loads
                        log.exception("could not load a canary", extra={"deployment_id": str(deployment.id)})
                projects.setdefault(deployment.project_id, {})[role] = RoleServing(
                    deployment.id, primary, canary, deployment.canary_percent
                )
            self._projects = {
                project_id: ProjectServing(
                    project_id,
                    next(s for s, p in slugs.items() if p == project_id),
                    projects.get(project_id, {}),
                    tuple(rules.get(project_id, ())),
                    {
                        role: f
                        for role, f in failed.get(project_id, {}).items()
                        if role not in projects.get(project_id, {})
                    },
                    exploration.get(project_id, 0.0),
                )
                for project_id in {*projects, *failed}
            }
            self._slugs = slugs
            self.refreshed = True
            retired = [key for key in self._versions if key not in keep]
            for key in retired:  # in-flight requests finish on the batcher they hold
                gone = self._versions.pop(key)
                await gone.batcher.close()
                if self._forget is not None and all(other.id != gone.id for other in self._versions.values()):
                    self._forget(str(gone.id), gone.batcher.name)
            store = object_store(self.settings)
            if not store.is_local:  # what retired versions left in the local cache goes, oldest first
                await asyncio.to_thread(store.trim, self.settings.cache_max_bytes)

    async def _ensure(
        self,
        version: ModelVersion,
        catalog: tuple[str, dict[str, Any]] | None,
        keep: set[tuple[uuid.UUID, str | None]],
        slug: str,
    ) -> ServedVersion:
        catalog_id = catalog[0] if catalog and version.task_type == ModelTaskType.bi_encoder.value else None
        key = (version.id, catalog_id)
        keep.add(key)
        served = self._versions.get(key)
        if served is None:
            served = await asyncio.to_thread(self._load, version, catalog if catalog_id else None, slug)
            self._versions[key] = served
        return served

    # -- background ----------------------------------------------------------------------------

    async def start(self) -> None:
        """First load in the background (readiness reports it), then follow notices and the clock."""
        self._tasks = [
            asyncio.create_task(self._follow_notices(), name="deployments:notices"),
            asyncio.create_task(self._poll(), name="deployments:poll"),
        ]

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("deployment refresh failed")
            await asyncio.sleep(self.settings.deployment_refresh_s)

    async def _follow_notices(self) -> None:
        assert self._redis is not None
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(DEPLOYMENTS_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    log.info("deployment notice", extra={"notice": json.loads(message["data"])})
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("lost the deployments channel; resubscribing", exc_info=True)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for served in self._versions.values():
            await served.batcher.close()
        self._versions.clear()


def read_catalog_table(settings: Settings, tables: dict[str, Any]) -> Any:
    from shared.datasets.storage import read_table

    wanted = ["product_id", "title", "brand", "category", "price", "in_stock"]
    table = read_table(object_store(settings), tables, "catalog")
    return table.select([c for c in wanted if c in table.column_names])
