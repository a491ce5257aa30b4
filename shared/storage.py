"""Object storage for datasets, checkpoints, artifacts and catalog indexes: a folder (``file:///path``)
or an S3-compatible bucket (``s3://bucket/prefix``: AWS S3, MinIO, Ceph), through fsspec (s3fs for S3).

Objects are addressed by a key (a relative path such as ``datasets/<project>/<version>/catalog.parquet``)
and verified by their sha256, which the database row that names them records.

Each process works on files in its *workspace*, a local folder where key ``K`` lives at
``<workspace>/K``. For a folder store the workspace is the folder itself, so writing a file there is
storing it. For a bucket the workspace is a local mirror (``DATA_DIR/cache/store``) backed by a cache
keyed by content (``DATA_DIR/cache/objects/<sha256[:2]>/<sha256>``): ``fetch`` downloads an object once,
checks it against its digest, and links it into the workspace under its key (so a model's tokenizer files
sit beside its graph); ``publish`` uploads what a job wrote into the workspace.

- No reader ever sees part of an object: into a folder ``put`` writes a temporary file beside the key and
  renames it; into S3 an object appears only when its upload completes (a multipart upload too). The row
  that names a key is committed after ``put``/``publish`` returns, so a reader that finds the row finds
  the whole object.
- A download that does not match its digest is refused and not kept.

S3 settings come from the usual places: ``RECFORGE_S3_ENDPOINT_URL`` (MinIO, Ceph, a test server) and
botocore's own chain for the region and the credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, a profile, an instance role)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import fsspec

from shared.config import Settings
from shared.errors import AppError, ConfigurationError
from shared.files import sha256_file
from shared.projects import as_id

log = logging.getLogger("recforge.storage")


class StorageError(AppError):
    status_code = 503
    error = "storage_error"


@dataclass(frozen=True)
class Stored:
    key: str
    sha256: str
    size: int


def checked_key(key: str) -> str:
    """A relative key without '..' or an absolute part: nothing outside the store's root."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key:
        raise ValueError(f"not a storage key: {key!r} (a relative path, no '..')")
    return str(path)


def key_id(key: str, index: int) -> uuid.UUID | None:
    """The id that part ``index`` of a key names, for a key of a file below it (``datasets/<project>/
    <version>/x.parquet``: index 2 is the version's), else None."""
    parts = key.split("/")
    return as_id(parts[index]) if len(parts) > index + 1 else None


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s content in one rename (a hard link where the filesystem allows)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            os.link(source, partial)
        except OSError:
            shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


class ObjectStore:
    """One store: a folder, or a bucket with a prefix and this process's workspace and cache of it."""

    def __init__(
        self, url: str, cache_dir: Path, *, endpoint_url: str | None = None, workspace: Path | None = None
    ) -> None:
        parsed = urlparse(url)
        self.url = url
        self.cache_dir = cache_dir
        self.is_local = parsed.scheme in ("", "file")
        if self.is_local:
            self.root = str(Path(parsed.path if parsed.scheme else url).resolve())
            self.fs: Any = fsspec.filesystem("file")
            self.workspace = Path(self.root)
        elif parsed.scheme == "s3":
            if not parsed.netloc:
                raise ConfigurationError(f"RECFORGE_STORAGE_URL {url!r} names no bucket: s3://bucket/prefix")
            self.root = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
            options: dict[str, Any] = (
                {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}
            )
            # a fresh client per store (s3fs's instance cache would share one across event loops), and no
            # cached listings: other machines add and remove keys
            self.fs = fsspec.filesystem(
                "s3",
                skip_instance_cache=True,
                use_listings_cache=False,
                config_kwargs={"connect_timeout": 10, "retries": {"max_attempts": 3, "mode": "standard"}},
                **options,
            )
            self.workspace = workspace or cache_dir / "store"
        else:
            raise ConfigurationError(
                f"RECFORGE_STORAGE_URL {url!r}: use file:///path (a folder) or s3://bucket/prefix"
            )

    def check(self) -> None:
        """Fail at start, saying what to do, when the store cannot be used: a bucket that does not exist
        or that these credentials cannot read; a folder that cannot be made."""
        if self.is_local:
            try:
                self.workspace.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"RECFORGE_STORAGE_URL {self.url!r}: cannot use the folder: {exc}"
                ) from exc
            return
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.info(bucket)
        except FileNotFoundError as exc:
            raise ConfigurationError(
                f"RECFORGE_STORAGE_URL {self.url!r}: the bucket {bucket!r} does not exist; create it "
                f"(aws s3 mb s3://{bucket}, or mc mb) or name another"
            ) from exc
        except PermissionError as exc:
            raise ConfigurationError(
                f"RECFORGE_STORAGE_URL {self.url!r}: these credentials may not read the bucket {bucket!r}: "
                f"{exc}"
            ) from exc
        except Exception as exc:  # credentials missing, endpoint unreachable
            raise ConfigurationError(
                f"RECFORGE_STORAGE_URL {self.url!r}: cannot reach the bucket ({type(exc).__name__}: "
                f"{exc}); check RECFORGE_S3_ENDPOINT_URL and the credentials (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY or the machine's role)"
            ) from exc

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    def _path(self, key: str) -> str:
        return f"{self.root}/{checked_key(key)}"

    def local(self, key: str) -> Path:
        """Where ``key`` lives in this process's workspace (it may not be there yet: see ``fetch``)."""
        return self.workspace / checked_key(key)

    def key_of(self, path: Path) -> str:
        """The key of a file in the workspace."""
        return path.resolve().relative_to(self.workspace.resolve()).as_posix()

    def _cached(self, sha256: str) -> Path:
        return self.cache_dir / "objects" / sha256[:2] / sha256

    # -- writing ------------------------------------------------------------------------------------

    def put(self, local: Path, key: str, *, cache: bool = True) -> Stored:
        """Publish ``local`` as ``key`` (replacing what the key held): readers see all of it or none.
        A bucket's object is also kept in this process's cache unless ``cache`` is False."""
        sha256, size = sha256_file(local), local.stat().st_size
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
                cached = self._cached(sha256)
                if cache and not cached.exists():  # this process need not download what it wrote
                    _link_or_copy(local, cached)
        except OSError as exc:
            raise StorageError(f"could not store {key} in {self.url}: {exc}") from exc
        return Stored(key=key, sha256=sha256, size=size)

    def publish(self, keys: Iterable[str]) -> None:
        """Store the workspace's files of ``keys``: for a folder they are stored already; for a bucket
        each is uploaded (before the row that names them is committed)."""
        if self.is_local:
            return
        for key in keys:
            self.put(self.local(key), key)

    # -- reading ------------------------------------------------------------------------------------

    def fetch(self, key: str, sha256: str | None) -> Path:
        """The workspace's path of ``key`` holding content ``sha256``: a folder's own file, or the
        bucket's object, downloaded once into the cache, checked against the digest, linked in."""
        target = self.local(key)
        if self.is_local:
            if not target.exists():
                raise StorageError(f"{key} is not in {self.url}")
            return target
        if sha256 is None:
            raise StorageError(f"{key} has no recorded digest: objects in {self.url} are read by digest")
        cached = self._cached(sha256)
        if target.exists() and cached.exists() and os.path.samefile(target, cached):
            os.utime(cached)  # the cache is trimmed least recently used first
            return target
        if not cached.exists():
            self._download(key, sha256, cached)
        _link_or_copy(cached, target)
        return target

    def _download(self, key: str, sha256: str, cached: Path) -> None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{sha256}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.fs.get_file(self._path(key), str(partial))
            found = sha256_file(partial)
            if found != sha256:
                raise StorageError(
                    f"{key} in {self.url} does not match its recorded digest (sha256 {found[:12]}..., "
                    f"expected {sha256[:12]}...): it was changed or damaged after it was stored"
                )
            os.replace(partial, cached)  # concurrent fetches of one object: the last rename wins, same bytes
            log.info("fetched an object", extra={"key": key, "bytes": cached.stat().st_size})
        except FileNotFoundError as exc:
            raise StorageError(f"{key} is not in {self.url}") from exc
        except OSError as exc:
            raise StorageError(f"could not read {key} from {self.url}: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)

    def fetch_all(self, entries: Iterable[dict[str, Any]]) -> None:
        """Fetch every file entry (``{"path": key, "sha256": ...}``) into the workspace."""
        for entry in entries:
            self.fetch(str(entry["path"]), entry.get("sha256"))

    def forget(self, key: str, sha256: str) -> None:
        """Drop this machine's copies of an object (the workspace's and the cache's), not the object."""
        if not self.is_local:
            self.local(key).unlink(missing_ok=True)
            self._cached(sha256).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def read_bytes(self, key: str) -> bytes | None:
        """A small object's content (None if there is none), for pointers such as a checkpoint's."""
        try:
            data: bytes = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None
        return data

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a folder of keys; "" for all)."""
        return sorted(self.modified(prefix))

    def modified(self, prefix: str) -> dict[str, float]:
        """Every key under ``prefix`` with the time it was stored (seconds since the epoch)."""
        try:
            base = self._path(prefix) if prefix else self.root
            found: dict[str, dict[str, Any]] = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        root = f"{self.root}/"
        return {str(path).removeprefix(root): _stored_at(info) for path, info in found.items()}

    # -- removing -----------------------------------------------------------------------------------

    def trim(self, max_bytes: int) -> int:
        """Keep this machine's copies of a bucket's objects under ``max_bytes``: the least recently
        fetched go first, with their workspace links (a model already loaded keeps its memory; a later
        fetch downloads it again). Files a job wrote and has not stored yet are not the cache's and stay.
        Returns the bytes freed. A folder store holds the data itself: never trimmed."""
        if self.is_local:
            return 0
        paths: dict[int, list[Path]] = {}
        objects: list[tuple[float, int, int]] = []  # (last used, inode, bytes)
        for root in (self.cache_dir / "objects", self.workspace):  # objects first: only they are trimmed
            for folder, _, names in os.walk(root):
                for name in names:
                    path = Path(folder, name)
                    try:
                        info = path.stat()
                    except FileNotFoundError:
                        continue
                    if root != self.workspace:
                        objects.append((info.st_mtime, info.st_ino, info.st_size))
                        paths[info.st_ino] = [path]
                    elif info.st_ino in paths:  # a key linked to a cached object (not a job's new file)
                        paths[info.st_ino].append(path)
        total = sum(size for _, _, size in objects)
        freed = 0
        for _, inode, size in sorted(objects):
            if total - freed <= max_bytes:
                break
            for path in paths[inode]:
                path.unlink(missing_ok=True)
            freed += size
        if freed:
            log.info("trimmed the object cache", extra={"freed_bytes": freed, "kept_bytes": total - freed})
        return freed

    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing if it is gone already); cached copies stay until the cache is swept."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))
        if not self.is_local:
            self.local(key).unlink(missing_ok=True)

    def delete_tree(self, prefix: str) -> None:
        """Remove every key under ``prefix``, and the workspace's copies."""
        local = self.local(prefix)
        if local.is_dir():
            shutil.rmtree(local, ignore_errors=True)
        if not self.is_local:
            for key in self.keys(prefix):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self._path(key))


def _stored_at(info: dict[str, Any]) -> float:
    when = info.get("LastModified") or info.get("mtime") or info.get("created") or 0.0
    return float(when.timestamp()) if hasattr(when, "timestamp") else float(when)


@functools.lru_cache(maxsize=8)
def _store(url: str, cache_dir: Path, endpoint_url: str | None) -> ObjectStore:
    return ObjectStore(url, cache_dir, endpoint_url=endpoint_url)


def object_store(settings: Settings) -> ObjectStore:
    """The store the settings name (``RECFORGE_STORAGE_URL``; unset: the data directory itself)."""
    return _store(settings.storage_location, settings.cache_dir, settings.s3_endpoint_url)


def folder_store(path: Path) -> ObjectStore:
    """A store in a local folder (benchmarks and tools that work outside the services)."""
    return ObjectStore(f"file://{path.resolve()}", path / ".cache")
