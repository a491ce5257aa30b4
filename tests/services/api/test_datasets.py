"""The dataset API against real Postgres and the Parquet store: imports, validation, versions, splits."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.config import Settings
from shared.datasets import catalog
from shared.models import Dataset, DatasetImport, DatasetVersion, Project
from tests.factories import create_model_version
from tests.support.data import CATALOG_CSV, interactions_csv, relevance_csv
from tests.support.world import World

P = "/api/v1/projects/search-a"


async def upload(
    w: World,
    files: list[tuple[str, bytes | str]],
    who: str = "member",
    project: str = "search-a",
    **fields: Any,
) -> httpx.Response:
    parts = [
        ("file", (name, io.BytesIO(data.encode() if isinstance(data, str) else data))) for name, data in files
    ]
    return await w.call(
        who,
        "POST",
        f"/api/v1/projects/{project}/datasets",
        files=parts,
        data={k: str(v) for k, v in fields.items()},
    )


async def counts(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    async with sessionmaker() as session:
        datasets = (await session.execute(select(func.count()).select_from(Dataset))).scalar_one()
        versions = (await session.execute(select(func.count()).select_from(DatasetVersion))).scalar_one()
    return datasets, versions


async def test_catalog_csv_import(world: World, settings: Settings) -> None:
    response = await upload(world, [("products.csv", CATALOG_CSV)], kind="catalog")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created"] is True
    assert (body["name"], body["kind"], body["format"], body["version"]) == ("products", "catalog", "csv", 1)
    assert body["rows"] == 4 and body["items"] == 4 and body["tables"] == {"catalog": 4}

    version = (await world.call("viewer", "GET", f"/api/v1/dataset-versions/{body['version_id']}")).json()
    table = pq.read_table(settings.data_dir / version["tables"]["catalog"]["path"])
    rows = {r["product_id"]: r for r in table.to_pylist()}
    assert rows["p1"]["price"] == 99.5 and rows["p1"]["in_stock"] is True
    assert json.loads(rows["p1"]["attributes"]) == {"voltage": "18V"}
    assert rows["p3"]["in_stock"] is False and rows["p3"]["description"] is None
    assert table.schema.field("price").type == pa.float64()

    dataset = (await world.call("viewer", "GET", f"/api/v1/datasets/{body['id']}")).json()
    assert dataset["version_count"] == 1 and dataset["latest_version"]["id"] == body["version_id"]
    stats = (await world.call("viewer", "GET", f"/api/v1/dataset-versions/{body['version_id']}/stats")).json()
    assert stats["stats"]["products"] == 4 and stats["stats"]["categories"] == 4
    assert set(stats["stats"]["text_length_chars"]["catalog.title"]) >= {"p50", "p90", "p99", "max"}


async def test_identical_content_returns_the_same_version(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    first = await upload(world, [("judgments.csv", relevance_csv())], kind="relevance")
    assert first.status_code == 201, first.text
    again = await upload(world, [("renamed.csv", relevance_csv())], kind="relevance", name="judgments")
    assert again.status_code == 200, again.text
    assert again.json()["created"] is False
    assert again.json()["version_id"] == first.json()["version_id"]
    assert await counts(sessionmaker) == (1, 1)

    changed = await upload(world, [("judgments.csv", relevance_csv(queries=41))], kind="relevance")
    assert changed.status_code == 201 and changed.json()["version"] == 2
    assert changed.json()["id"] == first.json()["id"]
    versions = (await world.call("viewer", "GET", f"/api/v1/datasets/{first.json()['id']}/versions")).json()
    assert [v["version"] for v in versions["items"]] == [2, 1]
    page = (
        await world.call("viewer", "GET", f"/api/v1/datasets/{first.json()['id']}/versions?limit=1")
    ).json()
    assert [v["version"] for v in page["items"]] == [2] and page["next_cursor"]
    rest = await world.call(
        "viewer",
        "GET",
        f"/api/v1/datasets/{first.json()['id']}/versions?limit=1&cursor={page['next_cursor']}",
    )
    assert [v["version"] for v in rest.json()["items"]] == [1]
    imports = (await world.call("owner", "GET", f"{P}/dataset-imports")).json()["items"]
    assert [i["status"] for i in imports] == ["created", "duplicate", "created"]


async def test_three_bad_rows_answer_422_and_store_nothing(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    csv = (
        "query,product_id,grade\n"
        "drill,p1,3\n"
        "hammer,p2,high\n"  # row 2: not a number
        ",p3,1\n"  # row 3: no query
        "hose,p4,2\n"
        "bulb,p1,-1\n"  # row 5: negative grade
    )
    response = await upload(world, [("bad.csv", csv)], kind="relevance")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["error_count"] == 3
    named = [(e["row"], e["column"]) for e in detail["errors"]]
    assert named == [(2, "grade"), (3, "query"), (5, "grade")]
    assert "not a number" in detail["errors"][0]["reason"] and detail["errors"][0]["value"] == "high"
    assert await counts(sessionmaker) == (0, 0)
    assert not any((settings.data_dir / "datasets").glob(f"{world.projects['search-a']['id']}/*"))

    report = await world.call("member", "GET", f"/api/v1/dataset-imports/{detail['import_id']}")
    assert report.status_code == 200
    assert report.json()["status"] == "rejected" and report.json()["error_count"] == 3
    assert report.json()["errors"] == detail["errors"]
    outsider = await world.call("outsider", "GET", f"/api/v1/dataset-imports/{detail['import_id']}")
    assert outsider.status_code == 404


async def test_errors_are_capped_at_100_but_all_counted(world: World) -> None:
    csv = "text,label\n" + "".join(f"text {i},\n" for i in range(250))
    response = await upload(world, [("intents.csv", csv)], kind="labeled_text")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["error_count"] == 250 and len(detail["errors"]) == 100
    assert [e["row"] for e in detail["errors"][:3]] == [1, 2, 3]


async def test_missing_columns_and_unknown_products(world: World) -> None:
    response = await upload(world, [("j.csv", "query,grade\nq,1\n")], kind="relevance")
    assert response.status_code == 422
    assert "missing column(s) product_id" in response.json()["message"]

    assert (await upload(world, [("products.csv", CATALOG_CSV)], kind="catalog")).status_code == 201
    dangling = "user_id,product_id,event,timestamp\nu1,p1,click,2026-01-01\nu1,p9,view,2026-01-02\n"
    response = await upload(world, [("events.csv", dangling)], kind="interactions")
    assert response.status_code == 422
    (error,) = response.json()["detail"]["errors"]
    assert (error["row"], error["column"], error["value"]) == (2, "product_id", "p9")
    assert "not in the catalog" in error["reason"]


async def test_splits_never_share_a_group(world: World, settings: Settings) -> None:
    assert (await upload(world, [("products.csv", CATALOG_CSV)], kind="catalog")).status_code == 201
    for name, data, kind, group in (
        ("judgments.csv", relevance_csv(queries=200), "relevance", "query"),
        ("events.csv", interactions_csv(users=200), "interactions", "user_id"),
    ):
        response = await upload(world, [(name, data)], kind=kind, split_seed=7)
        assert response.status_code == 201, response.text
        body = response.json()
        splits = body["splits"]
        assert splits["by"] == group and splits["seed"] == 7
        assert sum(splits["rows"].values()) == body["rows"]
        assert all(splits["groups"][s] > 0 for s in ("train", "valid", "test"))
        version = (await world.call("member", "GET", f"/api/v1/dataset-versions/{body['version_id']}")).json()
        table = pq.read_table(settings.data_dir / version["tables"][kind]["path"])
        owners: dict[str, set[str]] = {}
        for row in table.select([group, "split"]).to_pylist():
            owners.setdefault(row[group], set()).add(row["split"])
        assert all(len(s) == 1 for s in owners.values())

        # the same seed gives the same assignment; another seed another one
        again = await upload(world, [(name, data)], kind=kind, split_seed=7, name=f"{kind}-copy")
        copy = (
            await world.call("member", "GET", f"/api/v1/dataset-versions/{again.json()['version_id']}")
        ).json()
        assert pq.read_table(settings.data_dir / copy["tables"][kind]["path"])["split"] == table["split"]
        other = await upload(world, [(name, data)], kind=kind, split_seed=8, name=f"{kind}-other")
        assert (
            other.json()["splits"]["rows"] != splits["rows"]
            or other.json()["splits"]["groups"] != splits["groups"]
        )


async def test_encoding_is_detected_or_declared(world: World, settings: Settings) -> None:
    text = "product_id,title\nx1,Caf\u00e9 table 36 in. \u00b0 r\u00e9sistant\nx2,Na\u00efve lamp\n"
    latin = text.encode("iso-8859-1")
    detected = await upload(world, [("legacy.csv", latin)], kind="catalog")
    assert detected.status_code == 201, detected.text
    assert detected.json()["encoding"] in {"iso-8859-1", "cp1252", "iso-8859-15"}
    declared = await upload(
        world, [("declared.csv", latin)], kind="catalog", encoding="latin-1", name="declared"
    )
    assert declared.json()["encoding"] == "iso-8859-1"
    version = (
        await world.call("member", "GET", f"/api/v1/dataset-versions/{declared.json()['version_id']}")
    ).json()
    titles = pq.read_table(settings.data_dir / version["tables"]["catalog"]["path"])["title"].to_pylist()
    assert titles == ["Caf\u00e9 table 36 in. \u00b0 r\u00e9sistant", "Na\u00efve lamp"]
    bad = await upload(world, [("x.csv", latin)], kind="catalog", encoding="klingon", name="x")
    assert bad.status_code == 422 and "unknown encoding" in bad.json()["message"]


async def test_jsonl_and_parquet(world: World) -> None:
    lines = [{"text": f"where is my order {i}", "label": "order_status"} for i in range(5)]
    lines += [{"text": f"i want a refund {i}", "label": "refund"} for i in range(3)]
    jsonl = "\n".join(json.dumps(line) for line in lines) + "\n"
    response = await upload(world, [("intents.jsonl", jsonl)], kind="labeled_text")
    assert response.status_code == 201, response.text
    stats = (
        await world.call("member", "GET", f"/api/v1/dataset-versions/{response.json()['version_id']}/stats")
    ).json()
    assert stats["stats"]["labels"] == {"order_status": 5, "refund": 3}

    broken = '{"text": "a", "label": "b"}\n{"text": "c", "label": \n'
    response = await upload(world, [("broken.jsonl", broken)], kind="labeled_text", name="broken")
    assert response.status_code == 422
    assert [e["row"] for e in response.json()["detail"]["errors"]] == [2]

    buffer = io.BytesIO()
    pq.write_table(
        pa.table(
            {
                "user_id": ["u1", "u2"],
                "history": [["p1", "p2"], ["p3"]],
                "next_item": ["p3", "p4"],
            }
        ),
        buffer,
    )
    response = await upload(world, [("seqs.parquet", buffer.getvalue())], kind="sequences")
    assert response.status_code == 201, response.text
    assert response.json()["users"] == 2


async def test_bad_requests(world: World) -> None:
    no_kind = await upload(world, [("data.csv", CATALOG_CSV)])
    assert no_kind.status_code == 422
    assert no_kind.json()["message"] == (
        "say which kind of data the csv file holds with --kind (the form's kind field): "
        "catalog, relevance, interactions, sequences, labeled_text"
    )
    wrong_type = await upload(world, [("data.xlsx", b"PK")], kind="catalog")
    assert wrong_type.status_code == 422
    bad_field = await upload(
        world, [("data.csv", CATALOG_CSV)], kind="catalog", valid_fraction=0.6, test_fraction=0.5
    )
    assert bad_field.status_code == 422
    unknown = await upload(world, [("data.csv", CATALOG_CSV)], kind="catalog", colour="red")
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "colour"]
    not_multipart = await world.call("member", "POST", f"{P}/datasets", json={"kind": "catalog"})
    assert not_multipart.status_code == 415
    empty = await upload(world, [("empty.csv", b"")], kind="catalog")
    assert empty.status_code == 422
    other_kind = await upload(world, [("products.csv", CATALOG_CSV)], kind="catalog")
    assert other_kind.status_code == 201
    clash = await upload(world, [("products.csv", relevance_csv())], kind="relevance")
    assert clash.status_code == 409
    assert clash.json()["message"] == (
        "dataset 'products' holds catalog data; to import relevance data use --kind relevance with a "
        "new --name (the form's kind and name fields)"
    )


async def test_upload_limit_answers_413(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    from asgi_lifespan import LifespanManager

    from services.api.app import create_app

    small = settings.model_copy(update={"max_upload_mb": 1})
    app = create_app(small)
    big = CATALOG_CSV + "".join(
        f"q{i},Product number {i} with a long title,,,,1,yes,\n" for i in range(40_000)
    )
    assert len(big) > 1024 * 1024
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            response = await client.post(
                f"{P}/datasets",
                headers=world.as_("member"),
                files=[("file", ("big.csv", io.BytesIO(big.encode())))],
                data={"kind": "catalog"},
            )
            assert response.status_code == 413, response.text

            async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
                boundary = b"XyZ"
                yield (
                    b"--"
                    + boundary
                    + b'\r\nContent-Disposition: form-data; name="file"; filename="b.csv"\r\n\r\n'
                )
                for _ in range(40):
                    yield b"x" * 65536
                yield b"\r\n--" + boundary + b"--\r\n"

            streamed = await client.post(
                f"{P}/datasets",
                headers={**world.as_("member"), "Content-Type": "multipart/form-data; boundary=XyZ"},
                content=chunks(),
            )
            assert streamed.status_code == 413, streamed.text
    assert await counts(sessionmaker) == (0, 0)


async def test_who_may_import(world: World) -> None:
    assert (await upload(world, [("c.csv", CATALOG_CSV)], who="viewer", kind="catalog")).status_code == 403
    assert (await upload(world, [("c.csv", CATALOG_CSV)], who="outsider", kind="catalog")).status_code == 404
    assert (await upload(world, [("c.csv", CATALOG_CSV)], who="service", kind="catalog")).status_code == 403
    created = await upload(world, [("c.csv", CATALOG_CSV)], who="member", kind="catalog")
    assert created.status_code == 201
    for path in (
        f"/api/v1/datasets/{created.json()['id']}",
        f"/api/v1/dataset-versions/{created.json()['version_id']}",
    ):
        assert (await world.call("viewer", "GET", path)).status_code == 200
        assert (await world.call("owner_b", "GET", path)).status_code == 404
    listing = (await world.call("viewer", "GET", f"{P}/datasets")).json()
    assert [d["name"] for d in listing["items"]] == ["c"]


async def test_errors_report_and_lineage_of_a_version(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await upload(world, [("events.csv", interactions_csv())], kind="interactions")
    assert response.status_code == 201
    version_id = response.json()["version_id"]
    report = (await world.call("member", "GET", f"/api/v1/dataset-versions/{version_id}/errors")).json()
    assert report["status"] == "created" and report["errors"] == [] and report["error_count"] == 0
    assert any("no catalog" in w for w in report["warnings"])

    async with sessionmaker() as session:
        project = await session.get(Project, uuid.UUID(world.projects["search-a"]["id"]))
        assert project is not None
        model = await create_model_version(session, project=project)
        model.dataset_version_id = uuid.UUID(version_id)
        await session.commit()
    lineage = (await world.call("member", "GET", f"/api/v1/dataset-versions/{version_id}/lineage")).json()
    assert [m["id"] for m in lineage["model_versions"]] == [str(model.id)]


async def test_services_read_the_catalog_from_the_store(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    assert (await upload(world, [("products.csv", CATALOG_CSV)], kind="catalog")).status_code == 201
    async with sessionmaker() as session:
        version = await catalog.latest_catalog_version(session, uuid.UUID(world.projects["search-a"]["id"]))
        assert version is not None
        assert (
            await catalog.latest_catalog_version(session, uuid.UUID(world.projects["search-b"]["id"])) is None
        )
    table = catalog.read_catalog(settings, version, ["product_id", "title"])
    assert table.column("product_id").to_pylist() == ["p1", "p2", "p3", "p4"]


async def test_imports_history_records_every_attempt(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await upload(world, [("c.csv", CATALOG_CSV)], kind="catalog")
    await upload(world, [("c.csv", "product_id,title\n,\n")], kind="catalog", name="broken")
    rejected = (await world.call("member", "GET", f"{P}/dataset-imports?status=rejected")).json()["items"]
    assert len(rejected) == 1 and rejected[0]["dataset_name"] == "broken"
    async with sessionmaker() as session:
        statuses = sorted((await session.execute(select(DatasetImport.status))).scalars())
    assert statuses == ["created", "rejected"]


async def test_slow_uploads_hold_no_database_connection(world: World, settings: Settings) -> None:
    """Four uploads whose bodies have not arrived yet, on a pool of two connections: other requests are
    answered at once, because the key and role checks give their connection back before the body is
    read (and nothing holds one while the files are parsed)."""
    from asgi_lifespan import LifespanManager

    from services.api.app import create_app

    app = create_app(settings.model_copy(update={"db_pool_size": 1}))  # one connection, one overflow
    arrived = asyncio.Event()

    def body(n: int) -> Any:
        async def chunks() -> Any:
            yield b'--XyZ\r\nContent-Disposition: form-data; name="kind"\r\n\r\ncatalog\r\n'
            yield b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="catalog.csv"\r\n\r\n'
            await arrived.wait()
            yield (CATALOG_CSV + f"p{n + 10},Spare part {n},,,,1,yes,\n").encode()
            yield b"\r\n--XyZ--\r\n"

        return chunks()

    headers = {**world.as_("member"), "Content-Type": "multipart/form-data; boundary=XyZ"}
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=60) as client:
            uploads = [
                asyncio.create_task(client.post(f"{P}/datasets", headers=headers, content=body(n)))
                for n in range(4)
            ]
            await asyncio.sleep(1.0)  # each is past its key check, waiting for its body
            listed = await asyncio.wait_for(client.get("/api/v1/projects", headers=world.as_("member")), 5)
            assert listed.status_code == 200
            arrived.set()
            answers = await asyncio.gather(*uploads)
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    assert sorted(a.json()["version"] for a in answers) == [1, 2, 3, 4]


async def test_errors_about_a_file_never_show_where_the_server_keeps_it(
    world: World, settings: Settings
) -> None:
    for name, body in (("items.parquet", b"PAR1 this is not parquet"), ("broken.jsonl", b'{"a": 1\n')):
        response = await world.call(
            "member",
            "POST",
            f"{P}/datasets",
            files=[("file", (name, io.BytesIO(body)))],
            data={"kind": "catalog"},
        )
        assert response.status_code == 422, response.text
        assert str(settings.data_dir) not in response.text and "/uploads/" not in response.text, response.text
        assert name in response.text


async def test_an_api_start_removes_what_killed_imports_left(world: World, settings: Settings) -> None:
    import os
    import time

    from asgi_lifespan import LifespanManager

    from services.api.app import create_app

    kept_version = (
        await world.call(
            "member", "POST", f"{P}/datasets", files=[("file", ("c.csv", io.BytesIO(CATALOG_CSV.encode())))],
            data={"kind": "catalog"},
        )
    ).json()["version_id"]  # fmt: skip
    project = world.projects["search-a"]["id"]
    root = settings.data_dir
    stale = [
        root / "uploads" / "0123abcd",
        root / "datasets" / project / ".staging-x-1234abcd",
        root / "datasets" / project / str(uuid.uuid4()),  # written, never committed
    ]
    fresh = root / "uploads" / "fedc4321"  # another api process may be receiving it now
    for folder in (*stale, fresh):
        (folder / "part").mkdir(parents=True, exist_ok=True)
    then = time.time() - 7200
    for folder in stale:
        os.utime(folder, (then, then))
    os.utime(root / "datasets" / project / kept_version, (then, then))
    async with LifespanManager(create_app(settings)):
        pass
    assert not any(folder.exists() for folder in stale)
    assert fresh.exists() and (root / "datasets" / project / kept_version).exists()
