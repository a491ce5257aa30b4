"""shared.storage against a folder and against a real S3-protocol server (moto's, in its own process):
what is put is fetched whole and checked, no reader sees part of an object, a damaged object is refused,
keys stay inside the store."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.errors import ConfigurationError
from shared.files import sha256_file
from shared.storage import ObjectStore, StorageError
from tests.support.s3 import s3_server


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return ObjectStore(f"file://{tmp_path / 'store'}", tmp_path / "cache")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"recforge-{uuid.uuid4().hex[:8]}"
    made = ObjectStore(f"s3://{bucket}/prefix", tmp_path / "cache", endpoint_url=endpoint)
    made.fs.mkdir(bucket)
    return made


def _file(tmp_path: Path, name: str, body: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(body)
    return path


def test_what_is_put_is_fetched_whole_and_checked(store: ObjectStore, tmp_path: Path) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    stored = store.put(_file(tmp_path, "data.parquet", body), "datasets/p/d/v1/data.parquet")
    assert stored.size == len(body) and stored.sha256 == sha256_file(tmp_path / "data.parquet")
    assert store.exists("datasets/p/d/v1/data.parquet")
    fetched = store.fetch("datasets/p/d/v1/data.parquet", stored.sha256)
    assert fetched.read_bytes() == body
    again = store.fetch("datasets/p/d/v1/data.parquet", stored.sha256)
    assert again == fetched  # cached (or the folder's own file)
    store.delete("datasets/p/d/v1/data.parquet")
    store.delete("datasets/p/d/v1/data.parquet")  # gone already: nothing to do
    assert not store.exists("datasets/p/d/v1/data.parquet")
    with pytest.raises(StorageError, match="is not in"):
        store.fetch("datasets/p/d/v1/missing.parquet", "1" * 64)


def test_a_replaced_object_is_never_seen_in_part(store: ObjectStore, tmp_path: Path) -> None:
    first = store.put(_file(tmp_path, "a", b"first version" * 1000), "artifacts/m/model.onnx")
    second = store.put(_file(tmp_path, "b", b"second" * 5000), "artifacts/m/model.onnx")
    assert store.fetch("artifacts/m/model.onnx", second.sha256).read_bytes() == b"second" * 5000
    assert first.sha256 != second.sha256
    if store.is_local:  # no temporary file is left beside the key
        assert [p.name for p in Path(store.root, "artifacts/m").iterdir()] == ["model.onnx"]


def test_an_object_changed_after_it_was_stored_is_refused(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"recforge-{uuid.uuid4().hex[:8]}"
    store = ObjectStore(f"s3://{bucket}", tmp_path / "cache", endpoint_url=s3_endpoint)
    store.fs.mkdir(bucket)
    stored = store.put(_file(tmp_path, "x", b"the real index" * 100), "indexes/p/index.usearch")
    store.fs.pipe_file(f"{bucket}/indexes/p/index.usearch", b"tampered")
    reader = ObjectStore(f"s3://{bucket}", tmp_path / "reader", endpoint_url=s3_endpoint)  # another machine
    with pytest.raises(StorageError, match="does not match its recorded digest"):
        reader.fetch("indexes/p/index.usearch", stored.sha256)
    assert not [p for p in (tmp_path / "reader").rglob("*") if p.is_file()]  # nothing of it is kept


def test_the_writer_reads_its_own_objects_without_downloading_them(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"recforge-{uuid.uuid4().hex[:8]}"
    store = ObjectStore(f"s3://{bucket}", tmp_path / "cache", endpoint_url=s3_endpoint)
    store.fs.mkdir(bucket)
    written = store.local("artifacts/p/v/model.onnx")
    written.parent.mkdir(parents=True)
    written.write_bytes(b"graph" * 100)
    store.publish(["artifacts/p/v/model.onnx"])
    assert store.keys("artifacts") == ["artifacts/p/v/model.onnx"]
    store.fs.rm_file(f"{bucket}/artifacts/p/v/model.onnx")  # a download would now fail
    assert store.fetch("artifacts/p/v/model.onnx", sha256_file(written)).read_bytes() == b"graph" * 100
    store.delete_tree("artifacts/p")
    assert not written.exists() and store.keys("artifacts") == []


def test_one_content_under_two_keys_is_cached_once(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"recforge-{uuid.uuid4().hex[:8]}"
    store = ObjectStore(f"s3://{bucket}/x", tmp_path / "cache", endpoint_url=s3_endpoint)
    store.fs.mkdir(bucket)
    source = _file(tmp_path, "same", b"shared bytes" * 64)
    a, b = store.put(source, "k/a", cache=False), store.put(source, "k/b", cache=False)
    first, second = store.fetch("k/a", a.sha256), store.fetch("k/b", b.sha256)
    assert first == store.local("k/a") and second == store.local("k/b")  # each under its key
    assert first.read_bytes() == second.read_bytes() == source.read_bytes()
    assert len([p for p in (tmp_path / "cache" / "objects").rglob("*") if p.is_file()]) == 1


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "", "a\\b"])
def test_keys_stay_inside_the_store(key: str, tmp_path: Path) -> None:
    store = ObjectStore(f"file://{tmp_path}", tmp_path / "cache")
    with pytest.raises(ValueError, match="not a storage key"):
        store.put(_file(tmp_path, "f", b"x"), key)


def test_a_storage_url_of_another_kind_says_what_is_taken(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"file:///path .* or s3://bucket/prefix"):
        ObjectStore("gs://bucket/x", tmp_path)
    with pytest.raises(ConfigurationError, match="names no bucket"):
        ObjectStore("s3:///x", tmp_path)


def test_the_cache_is_trimmed_least_recently_used_first(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"recforge-{uuid.uuid4().hex[:8]}"
    store = ObjectStore(f"s3://{bucket}", tmp_path / "cache", endpoint_url=s3_endpoint)
    store.fs.mkdir(bucket)
    stored = {
        key: store.put(_file(tmp_path, key.replace("/", "-"), os.urandom(1000)), key, cache=False)
        for key in ("v/old.onnx", "v/used.onnx", "v/new.onnx")
    }
    for key in stored:
        store.fetch(key, stored[key].sha256)
        time.sleep(0.05)
    store.fetch("v/old.onnx", stored["v/old.onnx"].sha256)  # used again: now the newest
    unstored = store.local("v/written-by-a-job.onnx")
    unstored.write_bytes(b"x" * 5000)  # a job's file not stored yet: not the cache's to trim
    assert store.trim(2000) == 1000
    assert not store.local("v/used.onnx").exists()  # the least recently used, with its workspace link
    assert store.local("v/old.onnx").exists() and store.local("v/new.onnx").exists() and unstored.exists()
    assert store.fetch("v/used.onnx", stored["v/used.onnx"].sha256).exists()  # downloaded again
    assert ObjectStore(f"file://{tmp_path / 'folder'}", tmp_path / "c").trim(0) == 0


def test_a_store_that_cannot_be_used_stops_the_service_at_start(s3_endpoint: str, tmp_path: Path) -> None:
    missing = ObjectStore(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x", tmp_path, endpoint_url=s3_endpoint)
    with pytest.raises(ConfigurationError, match="does not exist; create it"):
        missing.check()
    unreachable = ObjectStore("s3://bucket/x", tmp_path, endpoint_url="http://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match="cannot reach the bucket"):
        unreachable.check()
    ObjectStore(f"file://{tmp_path / 'new'}", tmp_path / "cache").check()  # a folder is made
    assert (tmp_path / "new").is_dir()
