"""Dataset imports and reads. Parsing, validation and Parquet writing run in worker threads."""

from __future__ import annotations

import logging
import re
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.audit.service import audit_change
from services.api.context import (
    Principal,
    ProjectContext,
    load_entity,
    load_project_context,
    project_context_of,
)
from services.api.datasets import repository
from services.api.datasets.schemas import (
    DatasetRead,
    DatasetVersionRead,
    ImportForm,
    ImportReport,
    ImportResult,
    LineageRead,
    StatsRead,
    VersionSummary,
)
from services.api.datasets.upload import Upload
from services.api.deps import ApiResources
from services.api.pagination import Page, decode_int_cursor, decode_time_cursor, encode_cursor, time_cursor
from services.api.projects.permissions import Action
from shared.datasets import catalog, storage
from shared.datasets.formats import GENERIC, DataFormat, ImportOptions, guess_format, resolve_kind
from shared.datasets.pipeline import Prepared, content_hash, prepare
from shared.datasets.report import MAX_REPORTED, ImportProblem
from shared.datasets.splits import SplitSpec
from shared.db import on_rollback, unit_of_work
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.models import Dataset, DatasetImport, DatasetVersion
from shared.models.enums import DatasetKind, ImportStatus
from shared.storage import object_store

log = logging.getLogger("recforge.datasets")

_NEEDS_CATALOG = {DatasetKind.relevance, DatasetKind.interactions, DatasetKind.sequences}


def _other_kind(name: str, holds: str, kind: DatasetKind) -> str:
    return (
        f"dataset {name!r} holds {holds} data; to import {kind.value} data use --kind {kind.value} with "
        "a new --name (the form's kind and name fields)"
    )


def _options(form: ImportForm, upload: Upload) -> tuple[ImportOptions, DatasetKind, SplitSpec]:
    try:
        fmt = form.format or guess_format([f.name for f in upload.files])
        options = ImportOptions(format=fmt, kind=form.kind, encoding=form.encoding, locale=form.locale)
        kind = resolve_kind(options)
    except ImportProblem as problem:
        raise ValidationFailed(problem.message, detail=[{"loc": ["body"], "msg": problem.message}]) from None
    spec = SplitSpec(
        seed=form.split_seed, valid_fraction=form.valid_fraction, test_fraction=form.test_fraction
    )
    return options, kind, spec


def _default_name(options: ImportOptions, upload: Upload) -> str:
    if options.format not in GENERIC:
        return options.format.value
    stem = Path(upload.files[0].name).stem
    return re.sub(r"\s+", " ", stem).strip()[:200] or "dataset"


def _import_record(
    ctx: ProjectContext,
    status: ImportStatus,
    *,
    name: str,
    kind: str,
    options: ImportOptions,
    upload: Upload,
    content_hash: str,
    encoding: str | None,
    started: float,
    dataset_id: uuid.UUID | None = None,
    dataset_version_id: uuid.UUID | None = None,
    warnings: list[str] | None = None,
    problem: ImportProblem | None = None,
) -> DatasetImport:
    """The report of one import attempt, whatever its outcome."""
    return DatasetImport(
        project_id=ctx.project.id,
        dataset_id=dataset_id,
        dataset_version_id=dataset_version_id,
        dataset_name=name,
        status=status.value,
        kind=kind,
        format=options.format.value,
        files=upload.describe(),
        size_bytes=upload.size,
        encoding=encoding,
        content_hash=content_hash,
        error_count=problem.total if problem else 0,
        errors=[e.to_dict() for e in problem.errors] if problem else [],
        warnings=warnings or [],
        duration_ms=int((time.perf_counter() - started) * 1000),
        created_by=ctx.principal.user_id,
    )


def _result(
    dataset: Dataset, version: DatasetVersion, record: DatasetImport, *, created: bool
) -> ImportResult:
    stats = version.stats
    return ImportResult(
        id=dataset.id,
        version_id=version.id,
        version=version.version,
        created=created,
        import_id=record.id,
        name=dataset.name,
        kind=DatasetKind(dataset.kind),
        format=DataFormat(version.format),
        encoding=version.encoding,
        rows=version.row_count,
        tables={name: int(info["rows"]) for name, info in version.tables.items()},
        items=stats.get("products"),
        users=stats.get("users"),
        queries=stats.get("queries"),
        splits=version.splits,
        warnings=list(record.warnings),
        duration_ms=record.duration_ms,
    )


async def import_dataset(
    resources: ApiResources, ctx: ProjectContext, upload: Upload, form: ImportForm
) -> ImportResult:
    """Validate and store an upload as a new dataset version, or return the version that already
    holds identical content. Rejected uploads store nothing but their error report.

    No database connection is held while the files are parsed and checked (seconds to minutes for a
    large upload): what the import needs to know first is read in a short unit of work, and the
    version is written in another, which checks the caller's rights again."""
    ctx.require(Action.write_datasets)
    started = time.perf_counter()
    settings = resources.settings
    options, kind, spec = _options(form, upload)
    digest = content_hash([f.sha256 for f in upload.files], options, spec)
    name = form.name.strip() if form.name else _default_name(options, upload)
    project_id = ctx.project.id

    async with unit_of_work(resources.sessionmaker) as session:
        existing = await repository.find_dataset(session, project_id, name)
        if existing is not None and existing.kind != kind.value:
            raise Conflict(_other_kind(name, existing.kind, kind))
        if existing is not None:
            duplicate = await repository.version_by_hash(session, existing.id, digest)
            if duplicate is not None:
                return await _record_duplicate(session, ctx, existing, duplicate, upload, options, started)
        catalog_version = None
        if kind in _NEEDS_CATALOG and options.format in GENERIC:
            catalog_version = await catalog.latest_catalog_version(session, project_id)

    known_ids: pa.Array | None = None
    if catalog_version is not None:
        known_ids = await anyio.to_thread.run_sync(catalog.product_ids, settings, catalog_version)
    files = [f.path for f in upload.files]
    try:
        async with resources.import_limiter:
            prepared = await anyio.to_thread.run_sync(
                partial(prepare, files, options, spec, known_product_ids=known_ids, max_errors=MAX_REPORTED)
            )
    except ImportProblem as problem:
        report = await _record_rejection(
            resources, ctx, name, kind, options, upload, digest, problem, started
        )
        raise ValidationFailed(
            problem.message,
            detail={
                "import_id": str(report.id),
                "error_count": problem.total,
                "errors": [e.to_dict() for e in problem.errors],
            },
        ) from None

    async with unit_of_work(resources.sessionmaker) as session:
        # the caller's role may have changed while the upload was parsed
        ctx = await load_project_context(session, ctx.principal, str(project_id))
        ctx.require(Action.write_datasets)
        return await _create_version(
            session, resources, ctx, name, kind, options, spec, digest, prepared, upload, form, started
        )


async def _create_version(
    session: AsyncSession,
    resources: ApiResources,
    ctx: ProjectContext,
    name: str,
    kind: DatasetKind,
    options: ImportOptions,
    spec: SplitSpec,
    digest: str,
    prepared: Prepared,
    upload: Upload,
    form: ImportForm,
    started: float,
) -> ImportResult:
    project_id = ctx.project.id
    values = {
        "project_id": project_id,
        "name": name,
        "kind": kind.value,
        "format": options.format.value,
        "description": form.description,
        "created_by": ctx.principal.user_id,
    }
    dataset, _ = await repository.ensure_dataset(session, values)
    if dataset.kind != kind.value:  # created concurrently with another kind
        raise Conflict(_other_kind(name, dataset.kind, kind))
    duplicate = await repository.version_by_hash(session, dataset.id, digest)  # a concurrent twin
    if duplicate is not None:
        return await _record_duplicate(session, ctx, dataset, duplicate, upload, options, started)

    version = await _store_version(session, resources, ctx, dataset, prepared, upload, options, spec, digest)
    record = _import_record(
        ctx,
        ImportStatus.created,
        name=name,
        kind=kind.value,
        options=options,
        upload=upload,
        content_hash=digest,
        encoding=prepared.encoding,
        started=started,
        dataset_id=dataset.id,
        dataset_version_id=version.id,
        warnings=prepared.warnings,
    )
    session.add(record)
    await session.flush()
    await audit_change(
        session,
        ctx,
        "dataset_version.create",
        "dataset_version",
        version.id,
        None,
        {"dataset_id": str(dataset.id), "name": name, "version": version.version, "rows": version.row_count},
    )
    log.info(
        "dataset imported",
        extra={
            "dataset_id": str(dataset.id),
            "version": version.version,
            "rows": version.row_count,
            "seconds": round(prepared.seconds, 3),
        },
    )
    return _result(dataset, version, record, created=True)


async def _store_version(
    session: AsyncSession,
    resources: ApiResources,
    ctx: ProjectContext,
    dataset: Dataset,
    prepared: Prepared,
    upload: Upload,
    options: ImportOptions,
    spec: SplitSpec,
    digest: str,
) -> DatasetVersion:
    store = object_store(resources.settings)
    version_id = uuid.uuid4()
    relative = storage.version_dir(ctx.project.id, version_id)
    manifest = await anyio.to_thread.run_sync(storage.write_version, store, relative, prepared.tables)
    on_rollback(session, partial(storage.remove_version, store, relative))
    # on a bucket the files stay in this process's cache too: within its budget
    await anyio.to_thread.run_sync(store.trim, resources.settings.cache_max_bytes)
    version = DatasetVersion(
        id=version_id,
        dataset_id=dataset.id,
        version=await repository.next_version_number(session, dataset.id),
        content_hash=digest,
        format=options.format.value,
        source_filename=", ".join(f.name for f in upload.files)[:500],
        encoding=prepared.encoding,
        storage_path=relative,
        tables=manifest,
        row_count=prepared.row_count,
        stats=prepared.stats,
        splits=prepared.splits,
        split_seed=spec.seed if prepared.splits else None,
        created_by=ctx.principal.user_id,
    )
    session.add(version)
    await session.flush()
    return version


async def _record_duplicate(
    session: AsyncSession,
    ctx: ProjectContext,
    dataset: Dataset,
    version: DatasetVersion,
    upload: Upload,
    options: ImportOptions,
    started: float,
) -> ImportResult:
    record = _import_record(
        ctx,
        ImportStatus.duplicate,
        name=dataset.name,
        kind=dataset.kind,
        options=options,
        upload=upload,
        content_hash=version.content_hash,
        encoding=version.encoding,
        started=started,
        dataset_id=dataset.id,
        dataset_version_id=version.id,
    )
    session.add(record)
    await session.flush()
    return _result(dataset, version, record, created=False)


async def _record_rejection(
    resources: ApiResources,
    ctx: ProjectContext,
    name: str,
    kind: DatasetKind,
    options: ImportOptions,
    upload: Upload,
    digest: str,
    problem: ImportProblem,
    started: float,
) -> DatasetImport:
    """Keep the report of a rejected upload. It commits on its own: the request itself fails."""
    async with unit_of_work(resources.sessionmaker) as session:
        existing = await repository.find_dataset(session, ctx.project.id, name)
        record = _import_record(
            ctx,
            ImportStatus.rejected,
            name=name,
            kind=kind.value,
            options=options,
            upload=upload,
            content_hash=digest,
            encoding=options.encoding,
            started=started,
            dataset_id=existing.id if existing else None,
            problem=problem,
        )
        session.add(record)
        await session.flush()
    log.info("dataset import rejected", extra={"import_id": str(record.id), "errors": problem.total})
    return record


# -- reads ---------------------------------------------------------------------------------------


async def dataset_context(
    session: AsyncSession, principal: Principal, dataset_id: uuid.UUID
) -> tuple[ProjectContext, Dataset]:
    return await load_entity(session, principal, Dataset, dataset_id, "dataset")


async def version_context(
    session: AsyncSession, principal: Principal, version_id: uuid.UUID
) -> tuple[ProjectContext, DatasetVersion]:
    """A dataset version belongs to its dataset's project."""
    found = await repository.version_with_project(session, version_id)
    if found is None:
        raise NotFound("dataset version not found")
    version, project_id = found
    return await project_context_of(session, principal, project_id, "dataset version"), version


def _dataset_read(dataset: Dataset, summary: tuple[int, DatasetVersion] | None) -> DatasetRead:
    read = DatasetRead.model_validate(dataset)
    if summary is not None:
        read.version_count = summary[0]
        read.latest_version = VersionSummary.model_validate(summary[1])
    return read


async def get_dataset(session: AsyncSession, dataset: Dataset) -> DatasetRead:
    summaries = await repository.version_summaries(session, [dataset.id])
    return _dataset_read(dataset, summaries.get(dataset.id))


async def list_datasets(
    session: AsyncSession, ctx: ProjectContext, *, cursor: str | None, limit: int
) -> Page[DatasetRead]:
    rows = await repository.list_datasets(
        session, ctx.project.id, after=decode_time_cursor(cursor), limit=limit
    )
    page = rows[:limit]
    summaries = await repository.version_summaries(session, [d.id for d in page])
    items = [_dataset_read(d, summaries.get(d.id)) for d in page]
    next_cursor = time_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


async def list_versions(
    session: AsyncSession, dataset: Dataset, *, cursor: str | None, limit: int
) -> Page[DatasetVersionRead]:
    rows = await repository.list_versions(session, dataset.id, before=decode_int_cursor(cursor), limit=limit)
    page = rows[:limit]
    next_cursor = encode_cursor([page[-1].version]) if len(rows) > limit else None
    return Page(items=[DatasetVersionRead.model_validate(v) for v in page], next_cursor=next_cursor)


def stats(version: DatasetVersion) -> StatsRead:
    return StatsRead(
        version_id=version.id, rows=version.row_count, stats=version.stats, splits=version.splits
    )


async def version_report(session: AsyncSession, version: DatasetVersion) -> ImportReport:
    record = await repository.creating_import(session, version.id)
    if record is None:
        raise NotFound("this dataset version has no import report")
    return ImportReport.model_validate(record)


async def import_context(
    session: AsyncSession, principal: Principal, import_id: uuid.UUID
) -> tuple[ProjectContext, DatasetImport]:
    return await load_entity(session, principal, DatasetImport, import_id, "import")


async def list_imports(
    session: AsyncSession, ctx: ProjectContext, *, status: ImportStatus | None, cursor: str | None, limit: int
) -> Page[ImportReport]:
    rows = await repository.list_imports(
        session,
        ctx.project.id,
        status=status.value if status else None,
        after=decode_time_cursor(cursor),
        limit=limit,
    )
    page = rows[:limit]
    next_cursor = time_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return Page(items=[ImportReport.model_validate(r) for r in page], next_cursor=next_cursor)


async def lineage(session: AsyncSession, version: DatasetVersion) -> LineageRead:
    jobs, models = await repository.lineage(session, version.id)
    payload: dict[str, Any] = {"version_id": version.id, "training_jobs": jobs, "model_versions": models}
    return LineageRead.model_validate(payload, from_attributes=True)
