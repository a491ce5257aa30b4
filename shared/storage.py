"""Object storage for datasets, checkpoints, artifacts and catalog indexes: a folder (``file:///path``)
or an S3-compatible bucket (``s3://bucket/prefix``: AWS S3, MinIO, Ceph), through fsspec (s3fs for S3).

Objects are addressed by a key (a relative path such as ``datasets/<project>/<dataset>/v3/data.parquet``)
and verified by their sha256, which the database row that names them records.

- ``put`` publishes a local file under a key so that no reader ever sees part of it: into a folder it
  writes a temporary file beside the key and renames it; into S3 the object appears only when its
  upload completes (a multipart upload too). The row that names the key is committed after ``put``
  returns, so a reader that finds the row finds the whole object.
- ``fetch`` gives a local path to read: a folder's own file, or for S3 a copy in the local cache
  (``<cache>/objects/<sha256[:2]>/<sha256>``) downloaded once, checked against the digest, and shared by
  every key with that content. A download that does not match its digest is refused and not kept.

S3 settings come from the usual places: ``RECFORGE_S3_ENDPOINT_URL`` (MinIO, Ceph, a test server) and
botocore's own chain for the region and the credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, a profile, an instance role)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import fsspec

from shared.errors import AppError, ConfigurationError

CHUNK = 1 << 20


class StorageError(AppError):
    status_code = 503
    error = "storage_error"


@dataclass(frozen=True)
class Stored:
    key: str
    sha256: str
    size: int


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checked_key(key: str) -> str:
    """A relative key without '..' or an absolute part: nothing outside the store's root."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key:
        raise ValueError(f"not a storage key: {key!r} (a relative path, no '..')")
    return str(path)


class ObjectStore:
    """One store: a folder or a bucket with a prefix, and this process's local cache of its objects."""

    def __init__(self, url: str, cache_dir: Path, *, endpoint_url: str | None = None) -> None:
        parsed = urlparse(url)
        self.url = url
        self.cache_dir = cache_dir
        self.is_local = parsed.scheme in ("", "file")
        if self.is_local:
            self.root = str(Path(parsed.path if parsed.scheme else url).resolve())
            self.fs: Any = fsspec.filesystem("file")
        elif parsed.scheme == "s3":
            if not parsed.netloc:
                raise ConfigurationError(f"RECFORGE_STORAGE_URL {url!r} names no bucket: s3://bucket/prefix")
            self.root = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
            options: dict[str, Any] = (
                {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}
            )
            self.fs = fsspec.filesystem("s3", **options)
        else:
            raise ConfigurationError(
                f"RECFORGE_STORAGE_URL {url!r}: use file:///path (a folder) or s3://bucket/prefix"
            )

    def _path(self, key: str) -> str:
        return f"{self.root}/{_checked_key(key)}"

    def put(self, local: Path, key: str) -> Stored:
        """Publish ``local`` as ``key`` (replacing what the key held): readers see all of it or none."""
        sha256, size = file_sha256(local), local.stat().st_size
        target = self._path(key)
        try:
            if self.is_local:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                if Path(target).resolve() != local.resolve():
                    partial = f"{target}.partial-{uuid.uuid4().hex}"
                    try:
                        shutil.copyfile(local, partial)
                        os.replace(partial, target)
                    finally:
                        Path(partial).unlink(missing_ok=True)
            else:
                self.fs.put_file(str(local), target)  # S3: the object appears when the upload completes
        except OSError as exc:
            raise StorageError(f"could not store {key} in {self.url}: {exc}") from exc
        return Stored(key=key, sha256=sha256, size=size)

    def fetch(self, key: str, sha256: str) -> Path:
        """A local path holding the object ``key`` with content ``sha256``: the folder's own file (checked
        once), or the cache's copy of the bucket's object."""
        if self.is_local:
            path = Path(self._path(key))
            if not path.exists():
                raise StorageError(f"{key} is not in {self.url}")
            return path
        cached = self.cache_dir / "objects" / sha256[:2] / sha256
        if cached.exists():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{sha256}.partial-{uuid.uuid4().hex}")
        try:
            self.fs.get_file(self._path(key), str(partial))
            found = file_sha256(partial)
            if found != sha256:
                raise StorageError(
                    f"{key} in {self.url} does not match its recorded digest (sha256 {found[:12]}..., "
                    f"expected {sha256[:12]}...): it was changed or damaged after it was stored"
                )
            os.replace(partial, cached)  # concurrent fetches of one object: the last rename wins, same bytes
        except FileNotFoundError as exc:
            raise StorageError(f"{key} is not in {self.url}") from exc
        except OSError as exc:
            raise StorageError(f"could not read {key} from {self.url}: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return cached

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing if it is gone already); cached copies stay until the cache is swept."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))
