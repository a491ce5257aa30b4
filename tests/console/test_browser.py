"""The web console in a real browser (Debian's Chromium, driven by Playwright) against a whole stack
(`recforge up`: api, worker, inference on embedded PostgreSQL and Redis), as the project's people use it:

1. An owner signs in, proposes a project, adds a member, creates a task and moves it across the board
   (an illegal move shows the API's 409 message in the page), imports a catalog and graded judgments,
   starts a fine-tune and watches its progress bar advance live (server-sent events, no reload), finds
   the new version's metrics beside the BM25 and zero-shot baselines, and promotes it.
2. The owner makes a labelling queue from the Labelling tab, grades its first pair with the key 2 and
   skips the second with s, a reason and Enter (digits typed in the reason stay in it), grades the last
   with a button, and closes the queue into a dataset version; a member who is not one of its labellers
   is refused the labelling screen.
3. A viewer signs in and finds no edit control on any page; a POST forged with the viewer's own session
   and CSRF token is refused, and nothing changed.
4. Signing out ends the session: the pages send the browser back to the sign-in form.

Each page is saved as a screenshot (RECFORGE_SCREENSHOTS, default artifacts/console/) and checked with
axe-core: no critical violation on any page."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.data import shop_data
from tests.support.models import tiny_bert
from tests.support.stack import Stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CHROMIUM = os.environ.get("RECFORGE_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("RECFORGE_SCREENSHOTS", Path(__file__).parents[2] / "artifacts" / "console"))

if not Path(CHROMIUM).exists():
    if os.environ.get("RECFORGE_REQUIRE_TOOLS"):
        raise RuntimeError(f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium package")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")
axe_module = pytest.importorskip("axe_playwright_python.sync_playwright")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("console"))
    try:
        yield running.up()
    finally:
        running.down()


@pytest.fixture(scope="module")
def people(stack: Stack) -> dict[str, dict[str, str]]:
    """Three people with a key each, made by the admin (as `recforge users create` and `keys create` do)."""
    found = {}
    for name in ("olivia", "vic", "ana"):
        user = stack.api(
            "POST", "/users", expect=201, json={"name": name.title(), "email": f"{name}@example.com"}
        )
        key = stack.api("POST", "/keys", expect=201, json={"user_id": user.json()["id"], "name": "browser"})
        found[name] = {"id": user.json()["id"], "key": key.json()["key"], "email": f"{name}@example.com"}
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


class Visitor:
    """One person's browser tab: pages by path, a screenshot and an axe-core check of each page seen."""

    def __init__(self, browser: Any, base: str, checked: dict[str, list[str]]):
        self.context = browser.new_context(base_url=base, viewport={"width": 1360, "height": 900})
        self.page = self.context.new_page()
        self.checked = checked

    def go(self, path: str) -> Any:
        response = self.page.goto(path)
        assert response is not None
        return response

    def look(self, name: str) -> None:
        """Save the page as ``name``.png and run axe-core on it."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        results = axe_module.Axe().run(self.page)
        violations = results.response["violations"]
        self.checked[name] = [f"{v['impact']}: {v['id']} ({len(v['nodes'])})" for v in violations]

    def sign_in(self, key: str) -> None:
        self.go("/ui/")
        assert "/ui/login" in self.page.url
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(re.compile(r".*/ui/$"))

    def forms(self) -> list[str]:
        return list(
            self.page.eval_on_selector_all("form[method=post]", "fs => fs.map(f => f.getAttribute('action'))")
        )


@pytest.fixture(scope="module")
def checked() -> Iterator[dict[str, list[str]]]:
    seen: dict[str, list[str]] = {}
    yield seen
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "axe.json").write_text(json.dumps(seen, indent=2))
    critical = {page: [v for v in found if v.startswith("critical")] for page, found in seen.items()}
    assert not any(critical.values()), f"axe-core found critical violations: {critical}"


def test_an_owner_runs_a_project_from_the_browser(
    stack: Stack,
    people: dict[str, dict[str, str]],
    browser: Any,
    checked: dict[str, list[str]],
    tmp_path: Path,
) -> None:
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    olivia = Visitor(browser, stack.api_url, checked)
    page = olivia.page
    olivia.go("/ui/")
    olivia.look("sign-in")
    olivia.sign_in(people["olivia"]["key"])

    # a project
    page.get_by_label("Name", exact=True).fill("Hardware search")
    page.get_by_label("Slug").fill("hardware")
    page.get_by_label("Goal metric").fill("ndcg@10")
    page.get_by_label("Goal value").fill("0.5")
    page.get_by_role("button", name="Create project").click()
    page.wait_for_url(re.compile(r".*/ui/projects/hardware$"))
    assert "Project Hardware search created." in page.content()

    # people: a member and a viewer, by email
    for who, role in (("ana", "member"), ("vic", "viewer")):
        page.get_by_label("Email or user id").fill(people[who]["email"])
        page.get_by_label("Role", exact=True).select_option(role)
        with page.expect_navigation():
            page.get_by_role("button", name="Add member").click()
        assert f"{who.title()} joined as {role}." in page.content()

    # a task across the board: todo -> in progress -> (illegal) done -> in review
    page.locator("summary", has_text="New task").click()
    page.locator("#t-title").fill("Label 300 queries")
    page.locator("#t-assignee").select_option(label="Ana")
    with page.expect_navigation():
        page.get_by_role("button", name="Create task").click()
    task = page.locator("li.task", has_text="Label 300 queries")
    assert task.locator("xpath=ancestor::section[1]").get_attribute("aria-labelledby") == "col-todo"

    def move(to: str) -> None:
        card = page.locator("li.task", has_text="Label 300 queries")
        card.get_by_role("combobox").select_option(to)
        card.get_by_role("combobox").press("Tab")  # the keyboard reaches the Move button
        page.keyboard.press("Enter")

    move("in_progress")
    page.wait_for_selector("#col-in_progress ~ ul li.task:has-text('Label 300 queries')")
    olivia.look("board")
    move("done")  # in progress -> done skips review: the API's 409, shown in the page
    alert = page.locator("#alert")
    alert.wait_for(state="visible")
    assert "409: a task cannot move from in_progress to done" in alert.inner_text()
    olivia.look("board-refused-move")
    move("in_review")
    page.wait_for_selector("#col-in_review ~ ul li.task:has-text('Label 300 queries')")

    # milestones and the audit log
    page.locator("#ms-title").fill("First model live")
    with page.expect_navigation():
        page.get_by_role("button", name="Add milestone").click()
    olivia.go("/ui/projects/hardware/audit")
    assert "task.update" in page.content() and "member.add" in page.content()
    olivia.look("audit")

    # data: a catalog, then graded judgments
    catalog, judgments = shop_data()
    for name, body, kind in (("catalog.csv", catalog, "catalog"), ("judgments.csv", judgments, "relevance")):
        olivia.go("/ui/projects/hardware/data")
        page.locator("summary", has_text="Import data").click()
        file = tmp_path / name
        file.write_text(body)
        page.get_by_label("File (CSV, JSON lines or Parquet)").set_input_files(str(file))
        page.get_by_label("Kind").select_option(kind)
        page.get_by_role("button", name="Import").click()
        page.wait_for_url(re.compile(r".*/ui/dataset-versions/.*"))
        assert "stored as version 1" in page.content()
    olivia.look("dataset-version")
    olivia.go("/ui/projects/hardware/data")
    olivia.look("data")

    # training, followed live
    tiny = tiny_bert(stack.root / "tiny")
    olivia.go("/ui/projects/hardware/training")
    page.get_by_label("Model", exact=True).select_option("bi_encoder")
    page.get_by_label("Training data").select_option(label="judgments v1 (relevance)")
    page.get_by_label("Base model").fill(str(tiny))
    page.get_by_label("Epochs").fill("100")
    page.get_by_label("At most steps").fill("400")
    page.get_by_label("Batch size").fill("16")
    page.get_by_label("Weights trained").select_option("lora")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r".*/ui/jobs/.*"))
    page.evaluate("window.__samePage = true")  # gone if the page reloads
    seen: list[float] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            value, total, same = page.evaluate(
                "(() => { const bar = document.getElementById('job-progress');"
                " return bar ? [bar.value, bar.max, window.__samePage === true] : [0, 0, false]; })()"
            )
        except sync_api.Error:  # the page is reloading itself: the job has ended
            break
        if not same:
            break
        if 0 < value < total and value not in seen:
            seen.append(value)
            if len(seen) == 3:
                olivia.look("job-running")
        time.sleep(0.2)
    if len(seen) < 2:
        page.screenshot(path=str(SHOTS / "job-not-live.png"), full_page=True)
    jobs = stack.api("GET", "/projects/hardware/training-jobs", expect=200).json()["items"]
    assert len(seen) >= 2 and seen == sorted(seen), f"the progress bar did not advance live: {seen}, {jobs}"
    assert jobs[0]["hyperparameters"]["adapter"] == "lora"  # the form's adapter reached the job
    # the page reloads itself once the job ends: the reloaded one no longer follows a stream
    page.wait_for_selector("#job:not([data-stream]) #job-status.succeeded", timeout=240_000)
    page.wait_for_load_state()
    olivia.look("job-done")
    assert page.locator("#job-phases li").count() >= 3  # loading data, train, evaluate, export ...
    assert page.locator("#loss-chart polyline").count() == 1

    # the version beside its baselines, then promoted
    page.get_by_role("link", name="The model version it made").click()
    page.wait_for_url(re.compile(r".*/ui/model-versions/.*"))
    headers = page.locator("#metrics thead th").all_inner_texts()
    assert headers[1] == "v1" and "bm25" in headers and "zero-shot" in headers, headers
    olivia.look("model-version")
    with page.expect_navigation():
        page.get_by_role("button", name="Promote to production").click()
    assert "This version is the retriever in production." in page.content()
    olivia.go("/ui/projects/hardware/models")
    assert "serving" in page.content()
    olivia.look("models")
    for name, path in (("projects", "/ui/"), ("project", "/ui/projects/hardware"), ("training", "/ui/projects/hardware/training"),
                       ("loop", "/ui/projects/hardware/loop"), ("online", "/ui/projects/hardware/online")):  # fmt: skip
        olivia.go(path)
        olivia.look(name)
    olivia.context.close()


def test_a_labeller_grades_pairs_with_the_keyboard_and_others_are_refused(
    stack: Stack, people: dict[str, dict[str, str]], browser: Any, checked: dict[str, list[str]]
) -> None:
    olivia = Visitor(browser, stack.api_url, checked)
    page = olivia.page
    olivia.sign_in(people["olivia"]["key"])
    olivia.go("/ui/projects/hardware")
    page.get_by_role("link", name="Labelling", exact=True).click()
    page.wait_for_url(re.compile(r".*/ui/projects/hardware/labeling$"))

    # a queue of three pairs, picked at random among the judgments' queries, for Olivia alone
    page.get_by_label("Name", exact=True).fill("Spot check")
    page.get_by_label("Pairs from").select_option(label="judgments v1")
    page.get_by_label("Strategy").select_option("random")
    page.get_by_label("Pairs to judge").fill("3")
    assert page.get_by_role("checkbox", name="Olivia").is_checked()
    assert not page.get_by_role("checkbox", name="Ana").is_checked()
    with page.expect_navigation():
        page.get_by_role("button", name="Create queue").click()
    assert "Queue “Spot check” is being built" in page.content()
    queue_id = stack.api("GET", "/projects/hardware/labeling-queues", expect=200).json()["items"][0]["id"]

    def opened() -> dict[str, Any] | None:
        queue = stack.api("GET", f"/labeling-queues/{queue_id}", expect=200).json()
        assert queue["status"] != "failed", queue["error"]
        return queue if queue["status"] == "open" else None

    wait_for("the queue's selection job to open it", opened, timeout=240, every=0.5)

    def answers() -> dict[str, tuple[str, int | None, str | None]]:
        """What the database holds of the queue's answers (read in a thread of its own: Playwright's
        event loop runs in this one)."""
        query = (
            "SELECT item_id, status, grade, skip_reason FROM labeling_assignments WHERE queue_id = $1::uuid"
        )
        with ThreadPoolExecutor(1) as pool:
            rows = pool.submit(stack.sql, query, queue_id).result(timeout=60)
        return {str(r["item_id"]): (r["status"], r["grade"], r["skip_reason"]) for r in rows}

    olivia.go("/ui/projects/hardware/labeling")
    row = page.locator(f"tr[data-queue='{queue_id}']")
    assert "open" in row.inner_text() and "3 waiting" in row.inner_text()
    olivia.look("labeling")
    row.get_by_role("link", name="Label").click()
    page.wait_for_url(re.compile(rf".*/ui/labeling-queues/{queue_id}/label$"))
    assert page.locator("#pair-h").inner_text() == "Pair 1 of 3"
    assert page.locator("#keys-hint").is_visible()  # console.js took the keys
    first = page.locator("#pair").get_attribute("data-item")
    olivia.look("labeling-screen")

    # 2 grades the pair: the next one comes
    with page.expect_navigation():
        page.keyboard.press("2")
    assert page.locator("#pair-h").inner_text() == "Pair 2 of 3"
    second = page.locator("#pair").get_attribute("data-item")
    assert second and first and second != first
    assert answers()[first] == ("labelled", 2, None)

    # s goes to the reason, whose digits are its own; Enter sends the skip
    page.keyboard.press("s")
    assert page.evaluate("document.activeElement.id") == "skip-reason"
    reason = "image 404, page 3 of 0 broken"
    page.keyboard.type(reason)
    assert page.locator("#skip-reason").input_value() == reason  # no s, and no grade sent
    assert page.locator("#pair").get_attribute("data-item") == second
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.locator("#pair-h").inner_text() == "Pair 3 of 3"
    assert answers()[second] == ("skipped", None, reason)

    # the buttons work as well (and without JavaScript)
    with page.expect_navigation():
        page.get_by_role("button", name="Grade 0").click()
    assert page.locator("#done-h").inner_text() == "All your pairs are answered"
    assert sorted(answers().values(), key=str) == sorted(
        [("labelled", 2, None), ("skipped", None, reason), ("labelled", 0, None)], key=str
    )
    olivia.look("labeling-done")

    # Ana, a member but not a labeller of the queue, has no Label link and is refused the screen
    ana = Visitor(browser, stack.api_url, checked)
    ana.sign_in(people["ana"]["key"])
    ana.go("/ui/projects/hardware/labeling")
    assert ana.page.locator(f"tr[data-queue='{queue_id}'] a[href$='/label']").count() == 0
    refused = ana.go(f"/ui/labeling-queues/{queue_id}/label")
    assert refused.status == 403
    assert "you are not a labeller of this queue" in ana.page.locator("#error-message").inner_text()
    ana.look("labeling-refused")
    ana.context.close()

    # closing writes the labels as a dataset version, linked from the queue
    page.get_by_role("link", name="Back to the labelling queues").click()
    page.wait_for_url(re.compile(r".*/ui/projects/hardware/labeling$"))
    with page.expect_navigation():
        row.get_by_role("button", name="Close").click()
    assert "Queue “Spot check” closed: its labels are labels v1." in page.content()
    assert "closed" in row.inner_text() and row.locator("a[href$='/label']").count() == 0
    olivia.look("labeling-closed")
    row.get_by_role("link", name="labels v1").click()
    page.wait_for_url(re.compile(r".*/ui/dataset-versions/.*"))
    assert queue_id in page.locator("#main").inner_text()  # its lineage names the queue
    olivia.context.close()


def test_a_viewer_sees_no_edit_control_and_a_forged_post_is_refused(
    stack: Stack, people: dict[str, dict[str, str]], browser: Any, checked: dict[str, list[str]]
) -> None:
    vic = Visitor(browser, stack.api_url, checked)
    vic.sign_in(people["vic"]["key"])
    pages = ["", "/data", "/labeling", "/training", "/models", "/loop", "/online"]
    for path in pages:
        vic.go(f"/ui/projects/hardware{path}")
        assert vic.forms() == ["/ui/logout"], (path, vic.forms())
        assert (
            vic.page.locator("button", has_text=re.compile("Move|Promote|Cancel|Import|Start")).count() == 0
        )
    vic.go("/ui/projects/hardware")
    vic.look("project-as-viewer")
    csrf = vic.page.locator("input[name=csrf_token]").first.get_attribute("value")
    task_id = stack.api("GET", "/projects/hardware/tasks", expect=200).json()["items"][0]["id"]
    forged = vic.page.request.post(
        f"{stack.api_url}/ui/tasks/{task_id}/move", form={"csrf_token": csrf or "", "status": "todo"}
    )
    assert forged.status == 403 and "may not create or change tasks" in forged.text()
    assert stack.api("GET", f"/tasks/{task_id}", expect=200).json()["status"] == "in_review"
    version = stack.api("GET", "/projects/hardware/model-versions", expect=200).json()["items"][0]["id"]
    promote = vic.page.request.post(
        f"{stack.api_url}/ui/model-versions/{version}/promote", form={"csrf_token": csrf or ""}
    )
    assert promote.status == 403

    # signing out ends the session
    vic.page.get_by_role("button", name="Sign out").click()
    vic.page.wait_for_url(re.compile(r".*/ui/login$"))
    vic.go("/ui/projects/hardware")
    assert "/ui/login" in vic.page.url
    vic.context.close()
