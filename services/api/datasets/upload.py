"""Multipart uploads streamed to disk, with a size limit enforced while the body arrives.

The route authenticates and checks the caller's role first, then reads the body: a client without
the right to import cannot make the server store gigabytes. Bodies larger than the limit answer 413
as soon as the limit is crossed (or at once, when Content-Length says so)."""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message

from shared.config import Settings
from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

MAX_FILES = 16
MAX_FIELDS = 32
_SAFE_NAME = re.compile(r"[^\w.\-+ ]")


@dataclass(frozen=True)
class StagedFile:
    name: str
    path: Path
    size: int
    sha256: str


@dataclass
class Upload:
    files: list[StagedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": f.name, "bytes": f.size, "sha256": f.sha256} for f in self.files]


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the upload is larger than the limit of {limit // (1024 * 1024)} MiB (RECFORGE_MAX_UPLOAD_MB)",
        detail={"limit_bytes": limit},
    )


def _limited_receive(request: Request, limit: int) -> Any:
    received = 0
    receive = request.receive

    async def wrapped() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return wrapped


def _safe_name(raw: str | None, index: int) -> str:
    name = Path(raw or "").name.strip()
    name = _SAFE_NAME.sub("_", name)[:200].lstrip(".")
    return name or f"upload-{index}"


def _copy(source: BinaryIO, target: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    source.seek(0)
    with target.open("wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@asynccontextmanager
async def staged_upload(request: Request, settings: Settings) -> AsyncIterator[Upload]:
    """Receive a multipart body; yield its files (copied under DATA_DIR/uploads) and text fields.

    The staging folder is removed when the block ends, whatever happens."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType("send the data as multipart/form-data with one or more `file` parts")
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    limited = Request(request.scope, receive=_limited_receive(request, limit))
    try:
        form = await limited.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from exc
    staging = settings.uploads_dir / uuid.uuid4().hex
    try:
        upload = Upload()
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "file":
                    raise _field_error(key, "files go in `file` parts")
                name = _safe_name(value.filename, len(upload.files))
                if any(f.name == name for f in upload.files):
                    raise _field_error("file", f"two files are named {name!r}")
                staging.mkdir(parents=True, exist_ok=True)
                target = staging / name
                size, sha = await anyio.to_thread.run_sync(_copy, value.file, target)
                upload.files.append(StagedFile(name, target, size, sha))
            elif key in upload.fields:
                raise _field_error(key, "given more than once")
            else:
                upload.fields[key] = value
        if not upload.files:
            raise _field_error("file", "no file was uploaded")
        if all(f.size == 0 for f in upload.files):
            raise _field_error("file", "the uploaded file is empty")
        yield upload
    finally:
        await form.close()
        shutil.rmtree(staging, ignore_errors=True)


def _field_error(name: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"{name}: {message}", detail=[{"loc": ["body", name], "msg": message, "type": "value_error"}]
    )
