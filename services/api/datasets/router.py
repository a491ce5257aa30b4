from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response, status
from pydantic import ValidationError

from services.api.context import CurrentPerson, ProjectDep, ReleasedProjectDep
from services.api.datasets import service
from services.api.datasets.schemas import (
    DatasetRead,
    DatasetVersionRead,
    ImportForm,
    ImportReport,
    ImportResult,
    LineageRead,
    StatsRead,
)
from services.api.datasets.upload import staged_upload
from services.api.deps import ResourcesDep, SessionDep
from services.api.errors import ERRORS, ErrorBody
from services.api.pagination import CursorQuery, LimitQuery, Page
from services.api.projects.permissions import Action
from shared.datasets.formats import DataFormat
from shared.errors import ValidationFailed
from shared.models.enums import DatasetKind, ImportStatus

router = APIRouter(tags=["datasets"])


def _form_schema() -> dict[str, Any]:
    properties: dict[str, Any] = {
        "file": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "The data file(s). Public formats with several files take one part per file.",
        },
    }
    for name, field in ImportForm.model_fields.items():
        prop: dict[str, Any] = {"type": "string", "description": field.description or ""}
        if name == "format":
            prop["enum"] = [f.value for f in DataFormat]
        elif name == "kind":
            prop["enum"] = [k.value for k in DatasetKind]
        elif name == "split_seed":
            prop = {"type": "integer", "default": field.default}
        elif name in {"valid_fraction", "test_fraction"}:
            prop = {"type": "number", "default": field.default}
        elif field.default not in (None, ""):
            prop["default"] = field.default
        properties[name] = prop
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": properties}
                }
            },
        }
    }


def _parse_form(fields: dict[str, str]) -> ImportForm:
    try:
        return ImportForm.model_validate({k: v for k, v in fields.items() if v != ""})
    except ValidationError as exc:
        detail = [
            {"loc": ["body", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        raise ValidationFailed("invalid import fields", detail=detail) from None


@router.post(
    "/projects/{project_id}/datasets",
    status_code=status.HTTP_201_CREATED,
    response_model=ImportResult,
    responses={
        **ERRORS,
        200: {"model": ImportResult, "description": "Identical content: the existing version"},
        413: {"model": ErrorBody, "description": "The upload is larger than RECFORGE_MAX_UPLOAD_MB"},
        415: {"model": ErrorBody, "description": "Not multipart/form-data"},
        422: {
            "model": ErrorBody,
            "description": "Invalid fields, or invalid data: `detail` holds import_id, error_count and the "
            "first 100 errors (file, row, column, reason); nothing was stored",
        },
    },
    openapi_extra=_form_schema(),
)
async def import_dataset(
    request: Request, ctx: ReleasedProjectDep, resources: ResourcesDep, response: Response
) -> ImportResult:
    """Upload data (multipart) as a new version of a dataset: validated all or nothing, split by
    group, described, stored as Parquet. Identical content returns the existing version with 200."""
    ctx.require(Action.write_datasets)  # before reading the body
    async with staged_upload(request, resources.settings) as upload:  # no database connection held
        form = _parse_form(upload.fields)
        result = await service.import_dataset(resources, ctx, upload, form)
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return result


@router.get("/projects/{project_id}/datasets", response_model=Page[DatasetRead], responses=ERRORS)
async def list_datasets(
    ctx: ProjectDep, session: SessionDep, cursor: CursorQuery = None, limit: LimitQuery = 50
) -> Page[DatasetRead]:
    return await service.list_datasets(session, ctx, cursor=cursor, limit=limit)


@router.get("/projects/{project_id}/dataset-imports", response_model=Page[ImportReport], responses=ERRORS)
async def list_imports(
    ctx: ProjectDep,
    session: SessionDep,
    status: ImportStatus | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> Page[ImportReport]:
    """Every import attempt, newest first: created, duplicate or rejected (with its errors)."""
    return await service.list_imports(session, ctx, status=status, cursor=cursor, limit=limit)


@router.get("/datasets/{dataset_id}", response_model=DatasetRead, responses=ERRORS)
async def get_dataset(dataset_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> DatasetRead:
    _, dataset = await service.dataset_context(session, principal, dataset_id)
    return await service.get_dataset(session, dataset)


@router.get("/datasets/{dataset_id}/versions", response_model=Page[DatasetVersionRead], responses=ERRORS)
async def list_versions(
    dataset_id: uuid.UUID,
    session: SessionDep,
    principal: CurrentPerson,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> Page[DatasetVersionRead]:
    """The dataset's versions, newest first."""
    _, dataset = await service.dataset_context(session, principal, dataset_id)
    return await service.list_versions(session, dataset, cursor=cursor, limit=limit)


@router.get("/dataset-versions/{version_id}", response_model=DatasetVersionRead, responses=ERRORS)
async def get_version(
    version_id: uuid.UUID, session: SessionDep, principal: CurrentPerson
) -> DatasetVersionRead:
    _, version = await service.version_context(session, principal, version_id)
    return DatasetVersionRead.model_validate(version)


@router.get("/dataset-versions/{version_id}/stats", response_model=StatsRead, responses=ERRORS)
async def get_stats(version_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> StatsRead:
    """Rows, distinct queries/users/products, label distribution, text lengths, split sizes."""
    _, version = await service.version_context(session, principal, version_id)
    return service.stats(version)


@router.get("/dataset-versions/{version_id}/errors", response_model=ImportReport, responses=ERRORS)
async def get_errors(version_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> ImportReport:
    """The report of the import that created this version: its warnings (a stored version has no
    errors; rejected uploads are at /dataset-imports/{import_id})."""
    _, version = await service.version_context(session, principal, version_id)
    return await service.version_report(session, version)


@router.get("/dataset-versions/{version_id}/lineage", response_model=LineageRead, responses=ERRORS)
async def get_lineage(version_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> LineageRead:
    """The training jobs and model versions that used this dataset version."""
    _, version = await service.version_context(session, principal, version_id)
    return await service.lineage(session, version)


@router.get("/dataset-imports/{import_id}", response_model=ImportReport, responses=ERRORS)
async def get_import(import_id: uuid.UUID, session: SessionDep, principal: CurrentPerson) -> ImportReport:
    """One import attempt's report, with the first 100 errors of a rejected upload."""
    _, record = await service.import_context(session, principal, import_id)
    return ImportReport.model_validate(record)
