"""Bad input: both OpenAPI specs fuzzed (schemathesis, positive and negative cases) against the real
processes of a stack. No request, however malformed, may answer 5xx: a bad request is a 4xx that says
what is wrong. Generation is derandomized and bounded, so a run is the same every time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode

from tests.support.stack import Stack, new_project, wait_for
from tests.support.world import bearer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack, without the pipeline controller and webhook sender: fuzzed pipelines must not train,
    and fuzzed webhook URLs must never be sent to."""
    running = Stack(tmp_path_factory.mktemp("fuzz"))
    try:
        yield running.up(RECFORGE_PIPELINE_CONTROLLER="false")
    finally:
        running.down()


EXAMPLES = 100  # per operation and generation mode (positive, negative)
REQUEST_TIMEOUT_S = 10  # an event stream is read this long, then cut
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same cases every run
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # report every case that failed, unshrunk
    suppress_health_check=list(HealthCheck),
)
STEER = 3  # of every 4 cases, 3 name the stack's real objects (a project, a task...) instead of random ids

SERVED = "fuzz-serve"  # a deployed retriever, for the inference fuzz; the api fuzz never names it
TARGET = "fuzz-api"  # the project the api fuzz steers to; it may archive, retire or delete its parts


@dataclass
class Targets:
    """Real values a case's fields are steered to, by field name (path parameters and JSON bodies)."""

    values: dict[str, list[Any]] = field(default_factory=dict)
    by_path: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # (path prefix, name)
    protected: set[str] = field(default_factory=set)  # key ids the fuzz must not revoke

    def choices(self, path: str, name: str) -> list[Any]:
        for (prefix, field_name), values in self.by_path.items():
            if field_name == name and path.startswith(prefix):
                return values
        return self.values.get(name, [])


@dataclass
class Findings:
    cases: int = 0
    failures: dict[tuple[str, str, int], str] = field(default_factory=dict)
    nothing_to_negate: list[str] = field(default_factory=list)  # no parameters or body to get wrong

    def report(self) -> str:
        return "\n\n".join(self.failures.values())


def _steered(cases: st.SearchStrategy[Case], targets: Targets) -> st.SearchStrategy[Case]:
    @st.composite
    def steer(draw: st.DrawFn) -> Case:
        case = draw(cases)
        if draw(st.integers(0, 3)) >= STEER:
            return case
        for name in list(case.path_parameters or {}):
            choices = targets.choices(case.path, name)
            if choices:
                case.path_parameters[name] = draw(st.sampled_from(choices))
        if isinstance(case.body, dict):
            for name in list(case.body):
                choices = targets.choices(case.path, name)
                if choices:
                    case.body[name] = draw(st.sampled_from(choices))
        return case

    return steer()


def _fuzz(
    schema: schemathesis.BaseSchema,
    base_url: str,
    headers: Callable[[Case], dict[str, str]],
    targets: Targets,
) -> Findings:
    findings = Findings()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ
            @given(_steered(operation.as_strategy(generation_mode=mode), targets))
            def one(case: Case) -> None:
                if case.path_parameters and str(case.path_parameters.get("key_id")) in targets.protected:
                    return
                sent = headers(case)
                response = case.call(base_url=base_url, headers=sent, timeout=REQUEST_TIMEOUT_S)
                findings.cases += 1
                if response.status_code >= 500:
                    where = (case.method, case.path, response.status_code)
                    findings.failures.setdefault(
                        where,
                        f"{case.method} {case.path} answered {response.status_code}: "
                        f"{response.content[:500]!r}\n    {case.as_curl_command(headers=sent, base_url=base_url)}",
                    )

            try:
                one()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                findings.nothing_to_negate.append(f"{operation.method.upper()} {operation.path}")
    return findings


def _fine_tune(stack: Stack, project: str, dataset: str, base_model: str, steps: int) -> str:
    """The id of the job: ``steps`` optimiser steps (0: the base model registered as it is)."""
    return str(
        stack.submit(
            project,
            job_type="bi_encoder",
            dataset_version_id=dataset,
            base_model=base_model,
            hyperparameters={"max_steps": steps, "batch_size": 16, "max_length": 32},
            compute_limit_hours=0.01,
        )["id"]
    )


def _ended(stack: Stack, job: str) -> dict[str, Any]:
    return stack.wait_job(job, timeout=240)


@pytest.fixture(scope="module")
def projects(stack: Stack, tiny: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """Both fuzz projects, their fine-tunes run at once: SERVED's deployed, TARGET's one registered and
    one failed (the jobs the api fuzz cancels, retries and streams)."""
    served_data, target_data = new_project(stack, SERVED), new_project(stack, TARGET)
    served_job = _fine_tune(stack, SERVED, served_data, str(tiny), steps=0)
    target_job = _fine_tune(stack, TARGET, target_data, str(tiny), steps=0)
    failed_job = _fine_tune(stack, TARGET, target_data, "nobody/no-such-model", steps=0)
    served, target, failed = (_ended(stack, j) for j in (served_job, target_job, failed_job))
    assert served["status"] == target["status"] == "succeeded", (served["error"], target["error"])
    assert failed["status"] == "failed"
    version = served["model_version_ids"][0]
    stack.api("POST", f"/model-versions/{version}/promote", expect=200, json={})
    # the fuzz's own fine-tunes stay small: each may reserve at most 18 s of the project's budget
    stack.api("PATCH", f"/projects/{TARGET}", expect=200, json={"budget": {"cpu_hours": 0.005}})
    yield {
        SERVED: {"dataset": served_data, "version": version},
        TARGET: {"dataset": target_data, "version": target["model_version_ids"][0], "jobs": [target, failed]},
    }


def _created(stack: Stack, path: str, body: dict[str, Any]) -> str:
    return str(stack.api("POST", path, expect=201, json=body).json()["id"])


@pytest.fixture(scope="module")
def api_targets(stack: Stack, projects: dict[str, dict[str, Any]]) -> Targets:
    target = projects[TARGET]
    project_id = stack.api("GET", f"/projects/{TARGET}", expect=200).json()["id"]
    user = _created(stack, "/users", {"name": "fuzzed", "email": "fuzzed@example.com"})
    stack.api("POST", f"/projects/{TARGET}/members", expect=201, json={"user_id": user, "role": "member"})
    milestone = _created(stack, f"/projects/{TARGET}/milestones", {"title": "fuzzed"})
    task = _created(stack, f"/projects/{TARGET}/tasks", {"title": "fuzzed", "milestone_id": milestone})
    rule = _created(stack, f"/projects/{TARGET}/merchandising-rules", {"action": "hide", "product_id": "p1"})
    datasets = stack.api("GET", f"/projects/{TARGET}/datasets", expect=200).json()["items"]
    imports = stack.api("GET", f"/projects/{TARGET}/dataset-imports", expect=200).json()["items"]
    protected = {k["id"] for k in stack.api("GET", "/keys", expect=200).json()["items"]}
    # keys the fuzz may revoke; the admin key it calls with, and the inference fuzz's, are never named
    spare = [_created(stack, "/keys", {"user_id": user, "name": f"spare-{n}"}) for n in range(2)]
    dataset_versions = [target["dataset"]]
    jobs = [j["id"] for j in target["jobs"]]
    return Targets(
        values={
            "project_id": [project_id, TARGET],
            "user_id": [user],
            "milestone_id": [milestone],
            "task_id": [task],
            "rule_id": [rule],
            "dataset_id": [d["id"] for d in datasets],
            "import_id": [i["id"] for i in imports],
            "job_id": jobs,
            "key_id": spare,
            "dataset_version_id": dataset_versions,
            "input_model_version_id": [target["version"]],
            "model_version_id": [target["version"]],
            "assignee_id": [user],
        },
        by_path={
            ("/api/v1/dataset-versions/", "version_id"): dataset_versions,
            ("/api/v1/model-versions/", "version_id"): [target["version"]],
        },
        protected=protected,
    )


@pytest.fixture(scope="module")
def serving_key(stack: Stack, projects: dict[str, dict[str, Any]]) -> str:
    key = stack.service_key(SERVED)

    def serves() -> bool:
        answer = stack.inference("POST", "/recommend", key, json={"project": SERVED, "query": "drill"})
        return answer.status_code == 200

    wait_for("the fuzz project's retriever to serve", serves)
    return key


def test_the_api_fuzz_finds_no_server_error(stack: Stack, api_targets: Targets) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json")
    found = _fuzz(schema, stack.api_url, lambda _: bearer(stack.admin), api_targets)
    assert found.cases > len(list(schema.get_all_operations())) * EXAMPLES
    assert not found.failures, found.report()


def test_the_inference_fuzz_finds_no_server_error(
    stack: Stack, projects: dict[str, dict[str, Any]], serving_key: str
) -> None:
    products = [f"p{i}" for i in range(60)]
    targets = Targets(
        values={
            "project": [SERVED, stack.api("GET", f"/projects/{SERVED}", expect=200).json()["id"]],
            "model": [SERVED],
            "product_ids": [products[:5], products[::7]],
            "history": [products[:3]],
        }
    )

    def headers(case: Case) -> dict[str, str]:
        # /models is for admins; everything else is called as the storefront would, with its service key
        return bearer(stack.admin if case.path == "/models" else serving_key)

    schema = schemathesis.openapi.from_url(f"{stack.inference_url}/openapi.json")
    found = _fuzz(schema, stack.inference_url, headers, targets)
    assert found.cases > len(list(schema.get_all_operations())) * EXAMPLES
    assert not found.failures, found.report()
