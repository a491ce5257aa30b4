"""Feedback jobs over logged impressions and events: what they write, what they refuse, and the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pyarrow.parquet as pq
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.config import Settings
from shared.models import Event, Impression
from tests.support.processes import CLI, cli_env, recforge
from tests.support.training import make_worker, run_worker, upload
from tests.support.world import World

P = "/api/v1/projects/search-a"
NOW = dt.datetime.now(dt.UTC)
CATALOG = "product_id,title\n" + "".join(f"p{i},Product {i}\n" for i in range(6))
JUDGED = "query,product_id,grade\ndrill,p0,1\nsaw,p1,3\nsaw,p2,0\n"


async def _logs(
    world: World, sessionmaker: async_sessionmaker[AsyncSession], searches: int = 40
) -> uuid.UUID:
    """Searches for "drill" that showed p0..p3 in turns of order; p1 clicked and bought whenever shown
    first or second, p2 clicked at the top; plus the loss cases: an event for a request never served,
    one for a product not in the catalog, and a shopper's carts outside any search."""
    project_id = uuid.UUID((await world.call("member", "GET", P)).json()["id"])
    orders = [["p0", "p1", "p2", "p3"], ["p1", "p2", "p3", "p0"], ["p2", "p3", "p0", "p1"]]
    async with sessionmaker() as session:
        for n in range(searches):
            request = f"req-{n}"
            order = orders[n % 3]
            at = NOW - dt.timedelta(hours=2, seconds=n)
            session.add(
                Impression(project_id=project_id, request_id=request, endpoint="recommend", query="Drill ",
                           user_id=f"u{n % 4}", product_ids=order, latency_ms=5.0, served_at=at)
            )  # fmt: skip
            for product in order[:2]:
                if product == "p1" or (product == "p2" and order[0] == "p2"):
                    session.add(Event(project_id=project_id, request_id=request, event_type="click",
                                      product_id=product, user_id=f"u{n % 4}", occurred_at=at))  # fmt: skip
            if "p1" in order[:2]:
                session.add(Event(project_id=project_id, request_id=request, event_type="purchase",
                                  product_id="p1", user_id=f"u{n % 4}", occurred_at=at))  # fmt: skip
        session.add(Event(project_id=project_id, request_id="never-served", event_type="click",
                          product_id="p0", occurred_at=NOW - dt.timedelta(hours=1)))  # fmt: skip
        for minute, product in enumerate(["p4", "p5", "not-in-catalog"]):
            session.add(Event(project_id=project_id, event_type="cart", product_id=product, user_id="carter",
                              occurred_at=NOW - dt.timedelta(hours=1, minutes=-minute)))  # fmt: skip
        await session.commit()
    return project_id


def _window(**more: object) -> dict[str, object]:
    return {"from": (NOW - dt.timedelta(days=1)).isoformat(), "to": NOW.isoformat(), **more}


async def test_a_feedback_job_grades_pairs_writes_sequences_and_keeps_judgments(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await upload(world, "catalog.csv", CATALOG, "catalog")
    judged = await upload(world, "judged.csv", JUDGED, "relevance")
    await _logs(world, sessionmaker)
    response = await world.call(
        "member", "POST", f"{P}/feedback-jobs",
        json=_window(min_impressions=5, base_dataset_version_id=judged, name="shoppers"),
    )  # fmt: skip
    assert response.status_code == 202, response.text
    await run_worker(make_worker(settings))
    job = (await world.call("member", "GET", f"/api/v1/training-jobs/{response.json()['id']}")).json()
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert result["impressions"] == 40 and result["relevance"]["searches"] == 40
    written = {d["kind"]: d for d in result["dataset_versions"]}
    relevance, sequences = written["relevance"], written["sequences"]
    assert (relevance["name"], sequences["name"]) == ("shoppers", "shoppers-sequences")

    version = await world.call("member", "GET", f"/api/v1/dataset-versions/{relevance['dataset_version_id']}")
    body = version.json()
    assert (
        body["lineage"]["feedback_job_id"] == job["id"]
        and body["lineage"]["base_dataset_version_id"] == judged
    )
    rows = pq.read_table(settings.data_dir / body["tables"]["relevance"]["path"]).to_pylist()
    grades = {(r["query"], r["product_id"]): r["grade"] for r in rows}
    assert grades[("drill", "p0")] == 1.0  # the judgment wins over what shoppers did
    assert grades[("saw", "p1")] == 3.0 and ("saw", "p2") in grades  # judgments of other queries stay
    assert grades[("drill", "p1")] > grades[("drill", "p2")] > grades[("drill", "p3")]  # bought > clicked
    assert {r["split"] for r in rows} <= {"train", "valid", "test"}
    stats = (await world.call("member", "GET", f"/api/v1/dataset-versions/{body['id']}/stats")).json()
    assert stats["stats"]["sources"] == {"judgments": 3, "feedback": 3}

    seq = await world.call("member", "GET", f"/api/v1/dataset-versions/{sequences['dataset_version_id']}")
    seq_rows = pq.read_table(settings.data_dir / seq.json()["tables"]["sequences"]["path"]).to_pylist()
    carter = [r for r in seq_rows if r["user_id"] == "carter"]
    assert [(r["history"], r["next_item"]) for r in carter] == [
        (["p4"], "p5")
    ]  # the unknown product left out


async def test_feedback_jobs_refuse_what_cannot_work(
    world: World, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await upload(world, "catalog.csv", CATALOG, "catalog")
    catalog_version = (await world.call("member", "GET", f"{P}/datasets")).json()["items"][0][
        "latest_version"
    ]
    backwards = await world.call(
        "member", "POST", f"{P}/feedback-jobs", json=_window(**{"from": NOW.isoformat()})
    )
    assert backwards.status_code == 422 and "start must be before" in backwards.json()["message"]
    typo = await world.call("member", "POST", f"{P}/feedback-jobs", json=_window(min_impresions=3))
    assert typo.status_code == 422
    wrong_base = await world.call(
        "member", "POST", f"{P}/feedback-jobs", json=_window(base_dataset_version_id=catalog_version["id"])
    )
    assert wrong_base.status_code == 422 and "not catalog" in wrong_base.json()["message"]
    viewer = await world.call("viewer", "POST", f"{P}/feedback-jobs", json=_window())
    assert viewer.status_code == 403
    elsewhere = await world.call("member", "POST", f"{P}/training-jobs", json={"job_type": "feedback"})
    assert elsewhere.status_code == 422 and "feedback-jobs" in elsewhere.json()["message"]

    # an empty window runs, and fails saying what to change; nothing is written
    empty = await world.call("member", "POST", f"{P}/feedback-jobs", json=_window())
    await run_worker(make_worker(settings))
    job = (await world.call("member", "GET", f"/api/v1/training-jobs/{empty.json()['id']}")).json()
    assert job["status"] == "failed" and "widen the window" in job["error"]
    names = {d["name"] for d in (await world.call("member", "GET", f"{P}/datasets")).json()["items"]}
    assert "feedback" not in names


async def test_the_cli_queues_a_feedback_job_and_prints_what_it_wrote(
    world: World, settings: Settings, api_server: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await upload(world, "catalog.csv", CATALOG, "catalog")
    await _logs(world, sessionmaker)
    env = cli_env(settings, RECFORGE_API_URL=api_server, RECFORGE_API_KEY=world.keys["member"])
    bad = recforge("data", "feedback", "-p", "search-a", "--from", "last tuesday", env=env)
    assert bad.returncode != 0 and "is not an ISO 8601 time" in bad.stderr
    cli = await asyncio.create_subprocess_exec(
        *CLI, "data", "feedback", "-p", "search-a", "--days", "1", "--min-impressions", "5", "-q",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    for _ in range(100):
        if (await world.call("member", "GET", f"{P}/training-jobs")).json()["items"]:
            break
        await asyncio.sleep(0.2)
    await run_worker(make_worker(settings))
    stdout, stderr = await asyncio.wait_for(cli.communicate(), timeout=120)
    assert cli.returncode == 0, stderr.decode()
    [job] = (await world.call("member", "GET", f"{P}/training-jobs")).json()["items"]
    relevance = next(d for d in job["result"]["dataset_versions"] if d["kind"] == "relevance")
    assert stdout.decode().strip() == relevance["dataset_version_id"]
    shown = recforge("jobs", "watch", job["id"], env=env)
    assert shown.returncode == 0, shown.stderr
    assert "40 searches" in shown.stdout and "relevance  feedback new version 1" in shown.stdout
