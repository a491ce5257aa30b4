"""The web console in process: sign-in, the session cookie and its end, CSRF on every form, roles (a
viewer gets no edit control, and a forged request is refused anyway), every page rendering, errors as
pages. The same flows in a real browser are tests/console/test_browser.py."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.config import Settings
from shared.models import Event, Impression, ModelVersion, TrainingJob
from tests.support.world import World

PAGES = ["", "/data", "/training", "/models", "/loop", "/online", "/audit", "/tasks?status=todo"]


def _cookie(response: httpx.Response, name: str) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            return header
    return None


class Browsers:
    """Browsers of their own (each with its own cookie jar) on the test's API."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.opened: list[httpx.AsyncClient] = []

    def new(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=self.world.client._transport, base_url="http://api")
        self.opened.append(client)
        return client

    async def signed_in(self, who: str) -> httpx.AsyncClient:
        """A browser signed in as ``who``, as a person does it: the form, its token, the key."""
        browser = self.new()
        page = await browser.get("/ui/login")
        assert page.status_code == 200
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        assert token is not None
        done = await browser.post(
            "/ui/login", data={"api_key": self.world.keys[who], "login_token": token.group(1), "next": "/ui/"}
        )
        assert done.status_code == 303, done.text
        assert browser.cookies.get("recforge_session")
        return browser


@pytest.fixture
async def browsers(world: World) -> AsyncIterator[Browsers]:
    made = Browsers(world)
    yield made
    for client in made.opened:
        await client.aclose()


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


async def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_it(browsers: Browsers) -> None:
    browser = browsers.new()
    page = await browser.get("/ui/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    done = await browser.post(
        "/ui/login", data={"api_key": browsers.world.keys["owner"], "login_token": token}
    )
    assert done.status_code == 303 and done.headers["location"] == "/ui/"
    cookie = _cookie(done, "recforge_session")
    assert cookie is not None
    attributes = cookie.lower()
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/ui" in attributes
    assert browsers.world.keys["owner"] not in cookie  # the cookie is a session token, not the key
    stolen = cookie.split(";")[0].split("=", 1)[1]

    home = await browser.get("/ui/")
    assert home.status_code == 200 and "search-a" in home.text
    assert "default-src 'self'" in home.headers["content-security-policy"]
    assert home.headers["x-frame-options"] == "DENY"

    out = await browser.post("/ui/logout", data={"csrf_token": csrf_of(home)})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert not browser.cookies.get("recforge_session")
    replay = browsers.new()  # the old cookie, replayed: the session is gone on the server too
    replay.cookies.set("recforge_session", stolen, domain="api.local", path="/ui")
    again = await replay.get("/ui/", headers={"Cookie": f"recforge_session={stolen}"})
    assert again.status_code == 303 and again.headers["location"].startswith("/ui/login")


async def test_sign_in_refusals_say_what_to_do(browsers: Browsers) -> None:
    browser = browsers.new()
    page = await browser.get("/ui/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    wrong = await browser.post("/ui/login", data={"api_key": "rf_nope", "login_token": token})
    assert wrong.status_code == 401 and "recforge keys create" in wrong.text
    token = re.search(r'name="login_token" value="([^"]+)"', wrong.text).group(1)  # type: ignore[union-attr]
    service = await browser.post(
        "/ui/login", data={"api_key": browsers.world.keys["service"], "login_token": token}
    )
    assert service.status_code == 403 and "service keys cannot sign in" in service.text
    forged = await browser.post(  # a sign-in posted from elsewhere carries no login token of ours
        "/ui/login", data={"api_key": browsers.world.keys["owner"], "login_token": "x"}
    )
    assert forged.status_code == 422 and _cookie(forged, "recforge_session") is None


async def test_pages_need_a_session_and_keep_where_you_were_going(browsers: Browsers) -> None:
    answer = await browsers.new().get("/ui/projects/search-a/models")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fprojects%2Fsearch-a%2Fmodels"


async def test_every_page_renders_for_the_owner_with_its_forms(browsers: Browsers) -> None:
    owner = await browsers.signed_in("owner")
    for path in PAGES:
        page = await owner.get(f"/ui/projects/search-a{path}")
        assert page.status_code == 200, (path, page.text[:500])
    board = await owner.get("/ui/projects/search-a")
    for action in ("/tasks", "/members", "/milestones"):
        assert f'action="/ui/projects/search-a{action}"' in board.text
    # a project of someone else's answers 404 as a page, like the API
    other = await owner.get("/ui/projects/search-b")
    assert other.status_code == 404 and "project not found" in other.text
    assert other.headers["content-type"].startswith("text/html")


async def test_a_viewer_sees_no_edit_control_and_a_forged_post_is_refused(browsers: Browsers) -> None:
    world = browsers.world
    owner = await browsers.signed_in("owner")
    board = await owner.get("/ui/projects/search-a")
    created = await owner.post(
        "/ui/projects/search-a/tasks", data={"csrf_token": csrf_of(board), "title": "Label 200 queries"}
    )
    assert created.status_code == 303
    tasks = await world.call("owner", "GET", "/api/v1/projects/search-a/tasks")
    task_id = tasks.json()["items"][0]["id"]

    viewer = await browsers.signed_in("viewer")
    for path in [p for p in PAGES if p != "/audit"]:
        page = await viewer.get(f"/ui/projects/search-a{path}")
        assert page.status_code == 200, path
        forms = re.findall(r'<form method="post" action="([^"]+)"', page.text)
        assert forms == ["/ui/logout"], (path, forms)  # sign-out is the one form a viewer gets
    audit = await viewer.get("/ui/projects/search-a/audit")
    assert audit.status_code == 403  # the audit log is not a viewer's to read, as in the API

    page = await viewer.get("/ui/projects/search-a")
    forged = await viewer.post(
        f"/ui/tasks/{task_id}/move", data={"csrf_token": csrf_of(page), "status": "in_progress"}
    )
    assert forged.status_code == 403 and "may not create or change tasks" in forged.text
    assert (await world.call("owner", "GET", f"/api/v1/tasks/{task_id}")).json()["status"] == "todo"


async def test_csrf_is_checked_on_every_state_change(browsers: Browsers) -> None:
    owner = await browsers.signed_in("owner")
    other = await browsers.signed_in("owner")  # a second session of the same person
    page = await other.get("/ui/projects/search-a")
    for token in (None, "forged", csrf_of(page)):  # none, made up, another session's
        data = {"title": "sneaky"} | ({"csrf_token": token} if token else {})
        refused = await owner.post("/ui/projects/search-a/tasks", data=data)
        assert refused.status_code == 403 and "security token" in refused.text
    tasks = await browsers.world.call("owner", "GET", "/api/v1/projects/search-a/tasks")
    assert tasks.json()["items"] == []


async def test_an_illegal_move_shows_the_apis_409_message(browsers: Browsers) -> None:
    owner = await browsers.signed_in("owner")
    csrf = csrf_of(await owner.get("/ui/projects/search-a"))
    await owner.post("/ui/projects/search-a/tasks", data={"csrf_token": csrf, "title": "Ship"})
    listed = await browsers.world.call("owner", "GET", "/api/v1/projects/search-a/tasks")
    task_id = listed.json()["items"][0]["id"]
    illegal = await owner.post(f"/ui/tasks/{task_id}/move", data={"csrf_token": csrf, "status": "done"})
    assert illegal.status_code == 409
    assert "a task cannot move from todo to done" in illegal.text
    assert "Sign out" in illegal.text  # the error page keeps the person's menu
    assert '<a href="/ui/projects/search-a#board">Back</a>' in illegal.text
    legal = await owner.post(f"/ui/tasks/{task_id}/move", data={"csrf_token": csrf, "status": "in_progress"})
    assert legal.status_code == 303
    moved = await owner.get(legal.headers["location"].split("#")[0])
    assert "moved to in progress" in moved.text  # the flash message, shown once
    assert "moved to in progress" not in (await owner.get("/ui/projects/search-a")).text


async def test_members_are_added_by_email_and_unknown_people_are_named(browsers: Browsers) -> None:
    owner = await browsers.signed_in("owner")
    csrf = csrf_of(await owner.get("/ui/projects/search-a"))
    added = await owner.post(
        "/ui/projects/search-a/members",
        data={"csrf_token": csrf, "user": "outsider@example.com", "role": "member"},
    )
    assert added.status_code == 303
    members = (await browsers.world.call("owner", "GET", "/api/v1/projects/search-a/members")).json()
    assert any(m["email"] == "outsider@example.com" and m["role"] == "member" for m in members)
    nobody = await owner.post(
        "/ui/projects/search-a/members", data={"csrf_token": csrf, "user": "ghost@example.com"}
    )
    assert nobody.status_code == 422 and "ghost@example.com" in nobody.text


async def test_a_revoked_key_ends_its_console_sessions(browsers: Browsers) -> None:
    world = browsers.world
    member = await browsers.signed_in("member")
    assert (await member.get("/ui/")).status_code == 200
    keys = await world.call("admin", "GET", f"/api/v1/keys?user_id={world.users['member']}")
    assert keys.status_code == 200, keys.text
    revoked = await world.call("admin", "DELETE", f"/api/v1/keys/{keys.json()['items'][0]['id']}")
    assert revoked.status_code == 204, revoked.text
    assert (await member.get("/ui/")).status_code == 303


async def test_a_project_is_created_from_the_console(browsers: Browsers) -> None:
    maintainer = await browsers.signed_in("maintainer")
    csrf = csrf_of(await maintainer.get("/ui/"))
    bad = await maintainer.post("/ui/projects", data={"csrf_token": csrf, "slug": "Not A Slug", "name": "x"})
    assert bad.status_code == 422 and "slug" in bad.text
    slug = f"p-{uuid.uuid4().hex[:6]}"
    made = await maintainer.post(
        "/ui/projects",
        data={
            "csrf_token": csrf,
            "slug": slug,
            "name": "Recs",
            "goal_metric": "ndcg@10",
            "goal_value": "0.4",
        },
    )
    assert made.status_code == 303 and made.headers["location"] == f"/ui/projects/{slug}"
    page = await maintainer.get(made.headers["location"])
    assert page.status_code == 200 and "ndcg@10 &gt;= 0.4" in page.text


async def test_the_detail_pages_show_a_job_a_version_beside_its_baselines_and_a_comparison(
    browsers: Browsers, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    world = browsers.world
    project_id = uuid.UUID(world.projects["search-a"]["id"])
    async with sessionmaker() as session:
        job = TrainingJob(
            project_id=project_id,
            job_type="bi_encoder",
            status="running",
            progress={
                "phase": "train", "step": 40, "total_steps": 100, "loss": 0.52, "eta_s": 75,
                "phases": [{"phase": "loading data", "at": "2026-12-06T07:00:00+00:00"},
                           {"phase": "train", "at": "2026-12-06T07:00:03+00:00"}],
                "loss_curve": [[1, 1.2], [20, 0.8], [40, 0.52]],
            },
        )  # fmt: skip
        versions = [
            ModelVersion(
                project_id=project_id, version=n, task_type="bi_encoder", base_model="m",
                artifacts={"model": {"path": "model.onnx"}},
                metrics={"ndcg@10": 0.6 + n / 10, "mrr@10": 0.5, "loss": 0.3},
                baselines={"bm25": {"ndcg@10": 0.41, "mrr@10": 0.33}, "zero_shot": {"ndcg@10": 0.52}},
            )
            for n in (1, 2)
        ]  # fmt: skip
        session.add_all([job, *versions])
        await session.commit()
    owner = await browsers.signed_in("owner")

    page = await owner.get(f"/ui/jobs/{job.id}")
    assert page.status_code == 200, page.text
    assert 'value="40"' in page.text and "1 min 15 s" in page.text and "loading data" in page.text
    assert f'data-stream="/ui/jobs/{job.id}/events"' in page.text  # followed live while it runs
    assert page.text.count("<polyline") == 1
    loss = await owner.get(f"/ui/jobs/{job.id}/loss")
    assert loss.status_code == 200 and loss.text.startswith('<svg class="chart" id="loss-chart"')
    assert 'action="/ui/jobs/' in page.text and "Cancel job" in page.text

    page = await owner.get(f"/ui/model-versions/{versions[1].id}")
    assert page.status_code == 200, page.text
    headers = re.findall(r'<th scope="col">([^<]+)</th>', page.text.split('id="metrics"')[1])
    assert headers[:4] == ["Metric", "v2", "bm25", "zero-shot"]
    assert "<title>bm25: 0.41</title>" in page.text and "Promote to production" in page.text

    compare = await owner.get(f"/ui/projects/search-a/compare?a={versions[0].id}&b={versions[1].id}")
    assert compare.status_code == 200 and "+0.1000" in compare.text

    viewer = await browsers.signed_in("viewer")
    page = await viewer.get(f"/ui/model-versions/{versions[1].id}")
    assert page.status_code == 200 and "Promote to production" not in page.text
    page = await viewer.get(f"/ui/jobs/{job.id}")
    assert "Cancel job" not in page.text


async def test_a_dataset_version_page_shows_stats_lineage_and_import_errors(browsers: Browsers) -> None:
    world = browsers.world
    owner = await browsers.signed_in("owner")
    page = await owner.get("/ui/projects/search-a/data")
    csrf = csrf_of(page)
    bad = await owner.post(
        "/ui/projects/search-a/data",
        files={"file": ("judgments.csv", b"query,product_id,grade\ndrill,p1,lots\n")},
        data={"csrf_token": csrf, "kind": "relevance"},
    )
    assert bad.status_code == 422 and "judgments.csv row 1: " in bad.text  # the bad row, named
    forged = await owner.post(
        "/ui/projects/search-a/data",
        files={"file": ("judgments.csv", b"query,product_id,grade\ndrill,p1,1\n")},
        data={"kind": "relevance"},
    )
    assert forged.status_code == 403
    good = await owner.post(
        "/ui/projects/search-a/data",
        files={"file": ("judgments.csv", b"query,product_id,grade\ndrill,p1,1\nsaw,p2,3\nsaw,p1,0\n")},
        data={"csrf_token": csrf, "kind": "relevance"},
    )
    assert good.status_code == 303, good.text
    version = await owner.get(good.headers["location"])
    assert version.status_code == 200 and "stored as version 1" in version.text
    assert "Nothing has trained on it yet." in version.text
    data = await owner.get("/ui/projects/search-a/data")
    assert "rejected" in data.text and "created" in data.text
    listed = await world.call("owner", "GET", "/api/v1/projects/search-a/datasets")
    assert [d["name"] for d in listed.json()["items"]] == ["judgments"]


def test_a_run_page_shows_steps_gate_figures_and_the_judges_looks() -> None:
    from services.api.console.web import templates
    from services.api.pipelines.schemas import RunRead

    now = "2026-12-06T07:00:00+00:00"
    run = RunRead.model_validate(
        {
            "id": uuid.uuid4(), "pipeline_id": uuid.uuid4(), "project_id": uuid.uuid4(), "number": 3,
            "trigger": "manual", "status": "canary", "step": "canary",
            "steps": [{"name": "gate", "status": "succeeded", "started_at": now, "finished_at": now,
                       "detail": "passed"},
                      {"name": "canary", "status": "running", "started_at": now}],
            "links": {}, "outcome": None, "canary_started_at": now, "created_at": now, "updated_at": now,
            "finished_at": None, "decided_by": None,
            "gate": {"passed": True, "reason": "passed the gate", "checks": [
                {"metric": "ndcg@10", "check": "max_drop", "passed": True, "reason": "ndcg@10 0.71 >= 0.70",
                 "candidate": 0.71, "production": 0.705}]},
            "judge": {"looks": [{"look": 1, "decision": "wait", "p_better": 0.03, "p_worse": 0.9, "level": 0.0125,
                                 "candidate": {"requests": 600, "rate": 1.5}, "primary": {"requests": 610, "rate": 1.4}}],
                      "latest": {"decision": "wait", "reason": "no difference at 0.0125 yet (p=0.03)"}},
        }
    )  # fmt: skip

    class Ctx:
        project = type("P", (), {"slug": "search-a", "name": "Search"})()
        role = None

    html = templates.get_template("run.html").render(
        user=None, csrf="", flash=None, title="run", ctx=Ctx(), can={}, run=run, pipeline=None,
        waiting=False, going=True, section="loop",
    )  # fmt: skip
    assert "ndcg@10 0.71 &gt;= 0.70" in html and "0.705" in html
    assert "610 / 600" in html and "no difference at 0.0125 yet" in html


def test_charts_cover_their_data_and_escape_their_text() -> None:
    from services.api.console import charts

    line = charts.line_chart(
        [charts.Series("<v1>", [(1.0, 2.41), (2.0, 2.2), (3.0, 1.7)])],
        title="loss & more",
        y_label="loss",
        limits=[(0.5, "goal")],
    )
    ticks = [float(t) for t in re.findall(r'class="tick">([-\d.]+)</text>', str(line))]
    assert max(ticks) >= 2.41 and min(ticks) <= 0  # the axis holds every point
    assert "&lt;v1&gt;" in line and "loss &amp; more" in line and "<v1>" not in line
    empty = charts.line_chart([], title="nothing", y_label="x")
    assert "No data yet" in empty
    bars = charts.bar_chart([("ndcg@10", [("v1", 0.7), ("bm25", 0.4)])], title="t")
    assert bars.count("<rect") == 4  # two legend keys, two bars


async def test_the_online_page_draws_each_versions_metrics_from_impressions_and_events(
    browsers: Browsers, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    project_id = uuid.UUID(browsers.world.projects["search-a"]["id"])
    now = dt.datetime.now(dt.UTC)
    async with sessionmaker() as session:
        versions = [
            ModelVersion(project_id=project_id, version=n, task_type="bi_encoder", base_model="m")
            for n in (1, 2)
        ]
        session.add_all(versions)
        await session.flush()
        for i in range(40):
            version = versions[i % 2]
            served = now - dt.timedelta(hours=i % 3 + 1)
            session.add(
                Impression(project_id=project_id, request_id=f"r{i}", endpoint="recommend",
                           model_version_id=version.id, query="drill", product_ids=["p1", "p2", "p3"],
                           latency_ms=12.0 + i, served_at=served)
            )  # fmt: skip
            if i % 4 == 0:
                session.add(
                    Event(project_id=project_id, model_version_id=version.id, request_id=f"r{i}",
                          event_type="click", product_id="p2", position=2, occurred_at=served)
                )  # fmt: skip
        await session.commit()
    owner = await browsers.signed_in("owner")
    page = await owner.get("/ui/projects/search-a/online?bucket=hour&days=1")
    assert page.status_code == 200, page.text
    assert page.text.count('data-series="v1"') == 3 and page.text.count('data-series="v2"') == 3  # 3 charts
    rows = re.findall(r"<tr><td>[^<]+UTC</td><td>(v\d)</td><td>(\d+)</td>", page.text)
    assert sum(int(n) for _, n in rows) == 40 and {v for v, _ in rows} == {"v1", "v2"}


async def test_a_member_role_is_changed_and_the_last_owner_kept(browsers: Browsers) -> None:
    world = browsers.world
    owner = await browsers.signed_in("owner")
    csrf = csrf_of(await owner.get("/ui/projects/search-a"))
    changed = await owner.post(
        f"/ui/projects/search-a/members/{world.users['member']}",
        data={"csrf_token": csrf, "role": "maintainer"},
    )
    assert changed.status_code == 303
    members = (await world.call("owner", "GET", "/api/v1/projects/search-a/members")).json()
    assert {m["email"]: m["role"] for m in members}["member@example.com"] == "maintainer"
    last = await owner.post(
        f"/ui/projects/search-a/members/{world.users['owner']}", data={"csrf_token": csrf, "role": "viewer"}
    )
    assert last.status_code == 409 and "owner" in last.text


async def test_signing_in_again_ends_the_browsers_previous_session(browsers: Browsers) -> None:
    browser = await browsers.signed_in("owner")
    first = browser.cookies.get("recforge_session")
    page = await browser.get("/ui/login")  # a signed-in browser is sent home, not to the form
    assert page.status_code == 303
    browser.cookies.delete("recforge_session")
    browser.cookies.set("recforge_session", str(first), path="/ui")
    form = await browsers.new().get("/ui/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    again = await browser.post(
        "/ui/login",
        data={"api_key": browsers.world.keys["owner"], "login_token": token},
        headers={"Cookie": f"recforge_session={first}; recforge_login={token}"},
    )
    assert again.status_code == 303
    replay = browsers.new()
    old = await replay.get("/ui/", headers={"Cookie": f"recforge_session={first}"})
    assert old.status_code == 303 and old.headers["location"].startswith("/ui/login")


async def test_console_uploads_take_files_past_the_json_body_limit(
    browsers: Browsers, settings: Settings
) -> None:
    owner = await browsers.signed_in("owner")
    csrf = csrf_of(await owner.get("/ui/projects/search-a/data"))
    rows = ["query,product_id,grade"]
    size = 0
    q = 0
    while size < settings.max_body_bytes + 100_000:
        line = f"a rather long query about cordless drills number {q},p{q % 50},{q % 4}"
        rows.append(line)
        size += len(line) + 1
        q += 1
    body = ("\n".join(rows) + "\n").encode()
    made = await owner.post(
        "/ui/projects/search-a/data",
        files={"file": ("big.csv", body)},
        data={"csrf_token": csrf, "kind": "relevance"},
    )
    assert made.status_code == 303, made.text[:500]


async def test_text_the_database_cannot_store_is_an_error_page(browsers: Browsers) -> None:
    owner = await browsers.signed_in("owner")
    csrf = csrf_of(await owner.get("/ui/projects/search-a"))
    refused = await owner.post(
        "/ui/projects/search-a/tasks", data={"csrf_token": csrf, "title": "nul\x00here"}
    )
    assert refused.status_code == 422 and refused.headers["content-type"].startswith("text/html")


def test_a_diverged_loss_is_left_off_the_chart() -> None:
    from services.api.console import charts

    drawn = charts.line_chart(
        [charts.Series("loss", [(1.0, 2.0), (2.0, float("inf")), (3.0, float("nan")), (4.0, 1.5)])],
        title="loss",
        y_label="loss",
    )
    assert drawn.count(",") == 2  # two points in the polyline


async def test_abandoning_a_unit_of_work_drops_its_notices_and_runs_its_undo(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    from shared.db import abandon, after_commit, on_rollback, unit_of_work

    happened: list[str] = []

    async def notice() -> None:
        happened.append("notice")

    async with unit_of_work(sessionmaker) as session:
        after_commit(session, notice)
        on_rollback(session, lambda: happened.append("undone"))
        await abandon(session)
    assert happened == ["undone"]
