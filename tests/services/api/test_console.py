"""The web console in process: sign-in, the session cookie and its end, CSRF on every form, roles (a
viewer gets no edit control, and a forged request is refused anyway), every page rendering, errors as
pages. The same flows in a real browser are tests/console/test_browser.py."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.world import World

pytestmark = pytest.mark.asyncio

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
