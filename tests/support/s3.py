"""A real S3-protocol server for the tests: moto's standalone server (`moto_server`), in a process of its
own on a free port, with the test credentials botocore reads from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.support.processes import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "recforge-test",
    "AWS_SECRET_ACCESS_KEY": "recforge-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def s3_server() -> Iterator[str]:
    """The server's endpoint URL while the block runs; the credentials are set in os.environ meanwhile."""
    port = free_port()
    # its request log goes to a file: a pipe nobody reads would fill and stall the server
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed below, after the server has stopped)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(endpoint, timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise AssertionError(f"moto_server did not start: {log.read().decode(errors='replace')}")
            time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
