"""Real e-commerce data through the API and the CLI (skipped when ../shared/data is absent)."""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

from shared.config import Settings
from tests.support.data import HOMEDEPOT, SCIENTIFIC, needs_homedepot, needs_scientific
from tests.support.processes import cli_env, recforge
from tests.support.world import World


def homedepot_truth() -> dict[str, int]:
    """Counts read from the file with the standard library, independently of the importer."""
    with HOMEDEPOT.open(encoding="iso-8859-1", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "rows": len(rows),
        "queries": len({r["search_term"] for r in rows}),
        "items": len({r["product_uid"] for r in rows}),
    }


def scientific_truth() -> dict[str, int]:
    items = (SCIENTIFIC / "Scientific.text").read_text().splitlines()[1:]
    users = set()
    for name in ("Scientific.train.inter", "Scientific.valid.inter"):
        for line in (SCIENTIFIC / name).read_text().splitlines()[1:]:
            users.add(line.split("\t", 1)[0])
    return {"items": len(items), "users": len(users)}


@needs_homedepot
async def test_homedepot_through_the_api(world: World) -> None:
    truth = homedepot_truth()
    response = await world.call(
        "member",
        "POST",
        "/api/v1/projects/search-a/datasets",
        files=[("file", (HOMEDEPOT.name, io.BytesIO(HOMEDEPOT.read_bytes())))],
        data={"format": "homedepot"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["rows"], body["queries"], body["items"]) == (truth["rows"], truth["queries"], truth["items"])
    assert body["tables"] == {"catalog": truth["items"], "relevance": truth["rows"]}
    assert body["encoding"] == "iso-8859-1"
    assert sum(body["splits"]["groups"].values()) == truth["queries"]


@needs_scientific
async def test_amazon_scientific_through_the_api(world: World) -> None:
    truth = scientific_truth()
    files = [
        ("file", (p.name, io.BytesIO(p.read_bytes())))
        for p in sorted(SCIENTIFIC.iterdir())
        if p.name.startswith("Scientific.")
    ]
    response = await world.call(
        "member", "POST", "/api/v1/projects/search-a/datasets", files=files, data={"format": "unisrec"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "sequences"
    assert (body["items"], body["users"]) == (truth["items"], truth["users"]) == (4385, 8442)
    stats = (await world.call("member", "GET", f"/api/v1/dataset-versions/{body['version_id']}/stats")).json()
    assert stats["stats"]["history_length"]["max"] <= 50


def _data_import(settings: Settings, url: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(settings, RECFORGE_API_URL=url, RECFORGE_API_KEY=key)
    return recforge("data", "import", *args, env=env, timeout=300)


async def test_cli_imports_and_reports_errors(
    world: World, settings: Settings, api_server: str, tmp_path: Path
) -> None:
    key = world.keys["member"]
    good = tmp_path / "products.csv"
    good.write_text("product_id,title,brand\np1,Drill,Makita\np2,Saw,Bosch\n")
    result = _data_import(settings, api_server, key, str(good), "--project", "search-a", "--kind", "catalog")
    assert result.returncode == 0, result.stderr
    assert "Imported: dataset products version 1" in result.stdout
    assert "items" in result.stdout and " 2" in result.stdout

    again = _data_import(settings, api_server, key, str(good), "-p", "search-a", "--kind", "catalog")
    assert again.returncode == 0 and "Already imported" in again.stdout
    quiet = _data_import(
        settings, api_server, key, str(good), "-p", "search-a", "--kind", "catalog", "--quiet"
    )
    assert quiet.returncode == 0
    listed_versions = (await world.call("member", "GET", "/api/v1/projects/search-a/datasets")).json()[
        "items"
    ]
    assert quiet.stdout == listed_versions[0]["latest_version"]["id"] + "\n"  # the id alone, for $(...)

    bad = tmp_path / "judgments.csv"
    bad.write_text("query,product_id,grade\ndrill,p1,3\nsaw,p2,x\n,p1,1\n")
    failed = _data_import(settings, api_server, key, str(bad), "-p", "search-a", "--kind", "relevance")
    assert failed.returncode == 1
    assert "grade is not a number" in failed.stderr and "query is missing" in failed.stderr
    assert "HTTP 422" in failed.stderr

    # a whole-file problem is one line, printed once, naming what to do
    for args, message in (
        ([str(good), "-p", "search-a"], "say which kind of data the csv file holds with --kind"),
        ([str(good), "-p", "search-a", "--kind", "relevance", "--name", "products"],
         "dataset 'products' holds catalog data; to import relevance data use --kind relevance with a new --name"),
    ):  # fmt: skip
        refused = _data_import(settings, api_server, key, *args)
        assert refused.returncode == 1
        assert refused.stderr.count(message) == 1, refused.stderr
        assert "first 1 of" not in refused.stderr  # no table repeating the message

    nokey = recforge(
        "data", "import", str(good), "-p", "search-a", env=cli_env(settings, RECFORGE_API_URL=api_server)
    )
    assert nokey.returncode == 1 and "RECFORGE_API_KEY" in nokey.stderr

    listed = recforge(
        "data",
        "list",
        "-p",
        "search-a",
        env=cli_env(settings, RECFORGE_API_URL=api_server, RECFORGE_API_KEY=key),
    )
    assert listed.returncode == 0 and "products" in listed.stdout


@needs_homedepot
async def test_cli_imports_homedepot(world: World, settings: Settings, api_server: str) -> None:
    truth = homedepot_truth()
    result = _data_import(
        settings,
        api_server,
        world.keys["member"],
        str(HOMEDEPOT),
        "--project",
        "search-a",
        "--format",
        "homedepot",
    )
    assert result.returncode == 0, result.stderr
    lines = {tuple(line.split()[:1]): line.split() for line in result.stdout.splitlines() if line.strip()}
    assert lines[("rows",)][-1] == f"{truth['rows']:,}"
    assert lines[("items",)][-1] == f"{truth['items']:,}"
    assert lines[("queries",)][-1] == f"{truth['queries']:,}"
