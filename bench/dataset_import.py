"""How long a dataset import takes: the in-process pipeline, and end to end through the API.

    python bench/dataset_import.py ../shared/data/homedepot/relevance_dev.csv --format homedepot
    python bench/dataset_import.py PATH --format homedepot --api-url http://127.0.0.1:8000 \\
        --api-key "$RECFORGE_API_KEY" --project my-project

The pipeline run parses, validates, splits, describes and writes Parquet to a temporary folder. The
API run uploads the file(s) with a fresh name each repeat (so no run is answered as a duplicate) and
times the request; it needs a running API and a key that may import into the project."""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from shared.datasets import storage
from shared.datasets.formats import DataFormat, ImportOptions
from shared.datasets.pipeline import prepare
from shared.datasets.splits import SplitSpec
from shared.storage import folder_store


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def pipeline(files: list[Path], fmt: DataFormat, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            prepared = prepare(files, ImportOptions(fmt), SplitSpec())
            storage.write_version(folder_store(Path(tmp)), "v", prepared.tables)
            times.append(time.perf_counter() - started)
    print(
        f"rows {prepared.row_count:,}; tables "
        + ", ".join(f"{k} {v.num_rows:,}" for k, v in prepared.tables.items())
    )
    return times


def through_api(
    files: list[Path], fmt: DataFormat, url: str, key: str, project: str, repeats: int
) -> list[float]:
    times = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
        for _ in range(repeats):
            parts = [("file", (f.name, f.read_bytes())) for f in files]
            data = {"format": fmt.value, "name": f"bench-{uuid.uuid4().hex[:8]}"}
            started = time.perf_counter()
            response = client.post(f"/api/v1/projects/{project}/datasets", files=parts, data=data)
            times.append(time.perf_counter() - started)
            response.raise_for_status()
            body = response.json()
    print(f"rows {body['rows']:,}; items {body['items']}; queries {body['queries']}; users {body['users']}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="a file, or a folder of a multi-file format")
    parser.add_argument("--format", type=DataFormat, required=True, choices=list(DataFormat))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--api-url")
    parser.add_argument("--api-key")
    parser.add_argument("--project")
    args = parser.parse_args()
    files = _files(args.path)
    size = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"{args.path} ({size:.1f} MB), {platform.processor() or platform.machine()}, repeats {args.repeats}"
    )
    if args.api_url:
        if not (args.api_key and args.project):
            parser.error("--api-url needs --api-key and --project")
        times = through_api(files, args.format, args.api_url, args.api_key, args.project, args.repeats)
        label = "API (upload + validate + store + commit)"
    else:
        times = pipeline(files, args.format, args.repeats)
        label = "pipeline (parse + validate + split + stats + Parquet)"
    print(f"{label}: median {statistics.median(times):.2f} s, min {min(times):.2f} s, max {max(times):.2f} s")


if __name__ == "__main__":
    main()
