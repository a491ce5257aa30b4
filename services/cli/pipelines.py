"""`recforge pipelines`: continuous-learning pipelines (what retrains a role, when, on what data, and
how a candidate proves itself before it serves) and their runs, through the API."""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.table import Table

from services.cli.client import API_KEY_HELP, API_URL_HELP, api_client, response_error
from services.cli.console import console, err_console, fail, load_settings
from shared.models.enums import DeploymentRole, JobType, RunStatus
from shared.training import parse_assignment

app = typer.Typer(
    help="Continuous-learning pipelines: retrain a role on a schedule or on new data, gate the "
    "candidate on a golden set, canary it and promote it (through the API).",
    no_args_is_help=True,
)
runs_app = typer.Typer(
    help="A pipeline's runs: list, show, watch, approve, reject, cancel.", no_args_is_help=True
)
app.add_typer(runs_app, name="runs")

ApiUrl = Annotated[str | None, typer.Option("--api-url", help=API_URL_HELP)]
ApiKey = Annotated[str | None, typer.Option("--api-key", help=API_KEY_HELP)]
Project = Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")]
ProjectForName = Annotated[
    str | None,
    typer.Option("--project", "-p", help="The project, when PIPELINE is a name rather than an id."),
]
PipelineRef = Annotated[
    str, typer.Argument(metavar="PIPELINE", help="A pipeline id (or its name, with --project).")
]
RunId = Annotated[str, typer.Argument(metavar="RUN", help="A pipeline run id.")]
RUNS_LISTED = "recforge pipelines runs list -p PROJECT"
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")]
Reason = Annotated[str, typer.Option(help="Why (kept on the run and in the audit log).")]

API = "/api/v1"


class FineTune(StrEnum):
    """The job types a pipeline trains with."""

    bi_encoder = JobType.bi_encoder.value
    cross_encoder = JobType.cross_encoder.value
    classifier = JobType.classifier.value


# what a fine-tune of each job type serves as: the role a pipeline retrains
ROLE_OF_JOB = {
    FineTune.bi_encoder: DeploymentRole.retriever,
    FineTune.cross_encoder: DeploymentRole.reranker,
    FineTune.classifier: DeploymentRole.classifier,
}
RULE_CHECKS = ("at_least", "at_most", "max_drop", "min_gain")
RULE_HELP = (
    'A gate rule (repeatable): "METRIC CHECK VALUE [CHECK VALUE ...]", CHECK one of at_least, at_most '
    "(absolute), max_drop, min_gain (against production), or the word beat_baselines; e.g. "
    '"ndcg@10 max_drop 0.01" or "catalog_ndcg@10 at_least 0.3 beat_baselines".'
)
GOING = {RunStatus.running, RunStatus.awaiting_approval, RunStatus.canary, RunStatus.promoting}
# `watch` ends with the run: 0 promoted, 1 failed or cancelled, 3 ended without a promotion by design
# (refused at the gate or by a person, rolled back by the judge, skipped). Not 2: click's usage errors.
EXIT_CODES = {
    RunStatus.promoted: 0,
    RunStatus.failed: 1,
    RunStatus.cancelled: 1,
    RunStatus.refused: 3,
    RunStatus.rolled_back: 3,
    RunStatus.skipped: 3,
}
DONE_STEP = ("succeeded", "failed", "skipped")


# -- what every command here shares -----------------------------------------------------------------


def api_error(response: httpx.Response) -> NoReturn:
    """The API's error as one line on stderr (`error: HTTP 422: training.dataset: no dataset named 'x'
    in this project`), then exit 1. ``client.response_error`` prints each field of a 422 on a line of
    its own before a generic message; here the fields are the message."""
    try:
        body: Any = response.json()
    except ValueError:
        response_error(response)
    if not isinstance(body, dict):
        response_error(response)
    message = str(body.get("message") or body.get("error") or body)
    detail = body.get("detail")
    fields: list[str] = []
    for item in detail if isinstance(detail, list) else []:
        if not isinstance(item, dict):
            continue
        loc = [str(part) for part in item.get("loc", [])]
        where = ".".join(loc[1:] if loc[:1] == ["body"] else loc)
        text = f"{where}: {item.get('msg')}" if where else str(item.get("msg"))
        if text not in fields and text not in message and item.get("msg") != message:
            fields.append(text)
    shown = "; ".join(fields[:5]) + (f"; and {len(fields) - 5} more" if len(fields) > 5 else "")
    if response.status_code == 422 and shown:
        message = shown  # the fields say what the generic "The request is invalid" does not
    elif shown:
        message = f"{message} ({shown})"
    fail(f"HTTP {response.status_code}: {message}")


def expect(response: httpx.Response, *codes: int) -> Any:
    """The answer's JSON when its status is one of ``codes``; else the API's error, and exit 1."""
    if response.status_code not in codes:
        api_error(response)
    return response.json() if response.content else None


def get(client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> Any:
    """The JSON of a GET that must answer 200 (else the API's error in one line, and exit 1)."""
    return expect(client.get(path, params=params), 200)


def checked_id(text: str, what: str, listed_by: str) -> str:
    """``text`` when it is an id; else a clear error (not the API's 422 on the path)."""
    if not _is_uuid(text):
        fail(f"{text!r} is not a {what} id: `{listed_by}` lists them")
    return text


def print_json(answer: Any) -> None:
    console.print_json(json.dumps(answer))


def confirm(question: str, yes: bool) -> None:
    """Ask ``question`` on the terminal unless --yes; with no terminal to ask on, refuse (exit 1)."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question.rstrip('?')}: there is no terminal to confirm on; pass --yes to do it anyway")
    if not typer.confirm(question, default=False, err=True):
        fail("not confirmed: nothing was changed")


def when(timestamp: str | None, empty: str = "-") -> str:
    return timestamp[:19].replace("T", " ") if timestamp else empty


def read_document(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` ('-': stdin); YAML too for .yaml/.yml files when PyYAML is
    installed (it comes with the trainer's libraries; JSON needs nothing)."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    found: Any
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            fail(f"{path} is YAML, and PyYAML is not installed here: give the same content as JSON")
        try:
            found = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            fail(f"{path} is not valid YAML: {str(exc).splitlines()[0]}")
    else:
        try:
            found = json.loads(text)
        except ValueError as exc:
            fail(f"{path} is not valid JSON: {exc}")
    if not isinstance(found, dict):
        fail(f"{path} must hold one object (the request's body), not {type(found).__name__}")
    return found


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def pipeline_id(client: httpx.Client, ref: str, project: str | None) -> str:
    """The id of the pipeline ``ref`` names: an id as is, a name looked up in ``project``."""
    if _is_uuid(ref):
        return ref
    if project is None:
        fail(f"{ref!r} is not a pipeline id: give its id, or its name with --project")
    for pipeline in get(client, f"{API}/projects/{project}/pipelines"):
        if pipeline["name"] == ref:
            return str(pipeline["id"])
    fail(f"project {project} has no pipeline named {ref!r} (`recforge pipelines list -p {project}`)")


# -- specs, as people read and write them -------------------------------------------------------------


def parse_rule(text: str) -> dict[str, Any]:
    """``"ndcg@10 max_drop 0.01 beat_baselines"`` -> ``{"metric": "ndcg@10", "max_drop": 0.01,
    "beat_baselines": True}``."""
    words = text.split()
    example = 'e.g. --rule "ndcg@10 max_drop 0.01"'
    if not words:
        fail(f"--rule is empty: {example}")
    rule: dict[str, Any] = {"metric": words[0]}
    rest = iter(words[1:])
    for word in rest:
        if word == "beat_baselines":
            rule["beat_baselines"] = True
        elif word in RULE_CHECKS:
            try:
                rule[word] = float(next(rest))
            except (StopIteration, ValueError):
                rule[word] = math.nan
            if not math.isfinite(rule[word]):
                fail(f"--rule {text!r}: {word} takes a number ({example})")
        else:
            fail(
                f"--rule {text!r}: {word!r} is not a check; the checks are "
                f"{', '.join(RULE_CHECKS)} VALUE and beat_baselines ({example})"
            )
    if len(rule) == 1:
        fail(f"--rule {text!r} checks nothing: {example}")
    return rule


def rule_text(rule: dict[str, Any]) -> str:
    """A gate rule in --rule's syntax."""
    parts = [str(rule["metric"])]
    parts += [f"{name} {rule[name]:g}" for name in RULE_CHECKS if rule.get(name) is not None]
    if rule.get("beat_baselines"):
        parts.append("beat_baselines")
    return " ".join(parts)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def triggers_text(triggers: dict[str, Any], next_tick: str | None = None) -> str:
    parts = []
    if triggers.get("cron"):
        tick = f", next {when(next_tick)} UTC" if next_tick else ""
        parts.append(f"cron {triggers['cron']}{tick}")
    if triggers.get("dataset"):
        parts.append(f"each new version of {triggers['dataset']}")
    if triggers.get("min_new_events"):
        parts.append(f"{triggers['min_new_events']:,} new shopper events")
    if drop := triggers.get("ctr_drop"):
        parts.append(
            f"CTR@{drop['k']} {_number(drop['percent'])}% below its first {_number(drop['baseline_days'])} "
            f"days (last {_number(drop['window_hours'])} h, {drop['min_requests']:,} requests)"
        )
    return "; ".join(parts) or "none (runs start by hand)"


def training_text(training: dict[str, Any]) -> str:
    if training.get("dataset_version_id"):
        data = f"dataset version {training['dataset_version_id']}"
    elif training.get("dataset"):
        data = f"the latest version of {training['dataset']}"
    else:
        data = ""
    if feedback := training.get("feedback"):
        merged = f", merged with {data}" if feedback.get("merge_base") and data else ""
        data = (
            f"shoppers' feedback of the last {_number(feedback['days'])} days (written as "
            f"{feedback['name']}, pairs shown {feedback['min_impressions']}+ times){merged}"
        )
    return f"{training['job_type']} on {data}"


def rollout_text(rollout: dict[str, Any]) -> str:
    if not rollout["canary_percent"]:
        return "no canary: a candidate that passed is promoted at once"
    hours = rollout["max_duration_s"] / 3600
    latency = rollout.get("max_latency_p99_ratio")
    return (
        f"{rollout['canary_percent']}% canary judged on {rollout['metric']} (k={rollout['k']}, "
        f"alpha {_number(rollout['alpha'])}), {rollout['min_requests']:,} requests per arm before each of "
        f"{rollout['max_looks']} looks, at most {hours:g} h; inconclusive: {rollout['on_inconclusive']}"
        + (f"; rolled back when p99 latency exceeds {_number(latency)}x production's" if latency else "")
    )


def _facts() -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def print_pipeline(pipeline: dict[str, Any]) -> None:
    console.print(f"Pipeline {pipeline['name']} ({pipeline['role']}, {pipeline['status']})", highlight=False)
    table = _facts()
    training = pipeline["training"]
    gate = pipeline.get("gate")
    hyper = ", ".join(
        f"{k}={_number(v)}" for k, v in (training.get("hyperparameters") or {}).items() if v is not None
    )
    approval = (
        f"required, from a {pipeline['approver_role']} or above"
        if pipeline["require_approval"]
        else "not required"
    )
    rows: list[tuple[str, str]] = [
        ("id", pipeline["id"]),
        ("owner", pipeline["owner_id"]),
        ("triggers", triggers_text(pipeline["triggers"], pipeline.get("next_cron_tick"))),
        ("training", training_text(training)),
        ("  base model", training.get("base_model") or "the default"),
        ("  hyperparameters", hyper or "the defaults"),
        ("  compute limit", f"{_number(training['compute_limit_hours'])} h per job"),
        ("gate", f"golden set {gate['golden_dataset_version_id']}" if gate else "none: every candidate"),
    ]
    for rule in (gate or {}).get("rules", []):
        rows.append(("  rule", rule_text(rule)))
    rows += [
        ("approval", approval),
        ("rollout", rollout_text(pipeline["rollout"])),
        ("created", when(pipeline["created_at"])),
        ("updated", when(pipeline["updated_at"])),
    ]
    if pipeline.get("milestone_id"):
        rows.append(("milestone", pipeline["milestone_id"]))
    if pipeline.get("description"):
        rows.append(("description", pipeline["description"]))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def short(text: str | None, width: int = 60) -> str:
    if not text:
        return "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def print_run(run: dict[str, Any], pipeline_name: str | None = None) -> None:
    console.print(
        f"Run #{run['number']} of {pipeline_name or run['pipeline_id']}: {run['status']}"
        + (f" ({run['step']})" if run.get("step") and run["status"] in GOING else ""),
        highlight=False,
    )
    table = _facts()
    rows: list[tuple[str, str]] = [
        ("id", run["id"]),
        ("pipeline", run["pipeline_id"]),
        ("trigger", run["trigger"]),
        ("created", when(run["created_at"])),
        ("finished", when(run.get("finished_at"), "not yet")),
    ]
    if run.get("canary_started_at"):
        rows.append(("canary since", when(run["canary_started_at"])))
    if run.get("decided_by"):
        rows.append(("decided by", run["decided_by"]))
    if run.get("outcome"):
        rows.append(("outcome", run["outcome"]))
    for name, value in sorted((run.get("links") or {}).items()):
        if isinstance(value, dict):  # e.g. gate_job_ids: {arm: job id}
            shown = "\n".join(f"{arm}: {ident}" for arm, ident in value.items())
        elif isinstance(value, list):
            shown = "\n".join(str(v) for v in value)
        else:
            shown = str(value)
        rows.append((name.replace("_", " "), shown or "-"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if run.get("steps"):
        steps = Table("step", "status", "started", "finished", "detail")
        for step in run["steps"]:
            steps.add_row(
                step["name"],
                step["status"],
                when(step.get("started_at")),
                when(step.get("finished_at")),
                step.get("detail") or "",
            )
        console.print(steps)
    gate = run.get("gate") or {}
    if gate.get("checks"):
        checks = Table("gate check", "passed", title=f"Gate: {'passed' if gate.get('passed') else 'refused'}")
        for check in gate["checks"]:
            checks.add_row(check.get("reason", "-"), "yes" if check.get("passed") else "no")
        console.print(checks)
    judge = run.get("judge") or {}
    looks = judge.get("looks") or []
    if looks:
        table = Table("look", "decision", "reason", title="Canary judge")
        for look in looks:
            table.add_row(str(look.get("look", "-")), str(look.get("decision", "-")), look.get("reason", ""))
        console.print(table)
    elif judge.get("latest"):
        console.print(f"Canary judge: {judge['latest'].get('reason', '')}", highlight=False)


# -- pipelines ------------------------------------------------------------------------------------


def _hyperparameters(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        try:
            name, value = parse_assignment(pair)
        except ValueError as exc:
            fail(f"--set {exc}")
        values[name] = value
    return values


def _body_from_flags(
    *,
    name: str | None,
    role: DeploymentRole | None,
    job_type: FineTune | None,
    dataset: str | None,
    dataset_version: str | None,
    feedback_days: float | None,
    base_model: str | None,
    set_: list[str],
    compute_limit_hours: float | None,
    cron: str | None,
    trigger_dataset: str | None,
    min_new_events: int | None,
    golden: str | None,
    rules: list[str],
    canary_percent: int | None,
    require_approval: bool,
    description: str | None,
) -> dict[str, Any]:
    if not name:
        fail("give --name (and --job-type, and the data), or the whole body with --file")
    if job_type is None and role is None:
        fail("give --job-type (bi_encoder, cross_encoder or classifier) or --role")
    if job_type is None:
        assert role is not None
        job_type = next(job for job, served in ROLE_OF_JOB.items() if served == role)
    sources = [s for s in (dataset, dataset_version, feedback_days) if s is not None]
    if len(sources) != 1:
        fail("give one of --dataset NAME, --dataset-version ID or --feedback-days D: the training data")
    training: dict[str, Any] = {"job_type": job_type.value, "hyperparameters": _hyperparameters(set_)}
    if dataset is not None:
        training["dataset"] = dataset
    if dataset_version is not None:
        training["dataset_version_id"] = dataset_version
    if feedback_days is not None:
        training["feedback"] = {"days": feedback_days}
    if base_model is not None:
        training["base_model"] = base_model
    if compute_limit_hours is not None:
        training["compute_limit_hours"] = compute_limit_hours
    triggers: dict[str, Any] = {}
    for key, value in (("cron", cron), ("dataset", trigger_dataset), ("min_new_events", min_new_events)):
        if value is not None:
            triggers[key] = value
    body: dict[str, Any] = {
        "name": name,
        "role": (role or ROLE_OF_JOB[job_type]).value,
        "training": training,
        "triggers": triggers,
        "require_approval": require_approval,
    }
    if rules and golden is None:
        fail("--rule needs --golden VERSION: the golden set the rules are checked on")
    if golden is not None:
        if not rules:
            fail('--golden needs at least one --rule, e.g. --rule "ndcg@10 max_drop 0.01"')
        body["gate"] = {"golden_dataset_version_id": golden, "rules": [parse_rule(r) for r in rules]}
    if canary_percent is not None:
        body["rollout"] = {"canary_percent": canary_percent}
    if description is not None:
        body["description"] = description
    return body


@app.command("create")
def create(
    project: Project,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="The whole request body (PipelineCreate, see /docs) as JSON ('-': stdin), or YAML "
            "(.yaml/.yml) where PyYAML is installed. Instead of the options below.",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name, unique in the project.")] = None,
    role: Annotated[
        DeploymentRole | None,
        typer.Option(help="The role it retrains (default: the one --job-type trains)."),
    ] = None,
    job_type: Annotated[
        FineTune | None,
        typer.Option(
            "--job-type",
            help="bi_encoder (retriever), cross_encoder (reranker) or classifier (default: the role's).",
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Train on the latest version of this dataset when a run starts.")
    ] = None,
    dataset_version: Annotated[
        str | None, typer.Option("--dataset-version", help="Train on this dataset version, always.")
    ] = None,
    feedback_days: Annotated[
        float | None,
        typer.Option(
            "--feedback-days", min=0, help="Train on shoppers' feedback over this many days (a feedback job)."
        ),
    ] = None,
    base_model: Annotated[str | None, typer.Option(help="A local folder or hub id (default MiniLM).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="A hyperparameter, NAME=VALUE (repeatable), e.g. max_steps=200."),
    ] = None,
    compute_limit_hours: Annotated[
        float | None, typer.Option(help="The most compute each training job may use (default 1).")
    ] = None,
    cron: Annotated[
        str | None, typer.Option(help='Start a run on this schedule (UTC), e.g. "0 3 * * *".')
    ] = None,
    trigger_dataset: Annotated[
        str | None, typer.Option("--on-new-version", help="Start a run on each new version of this dataset.")
    ] = None,
    min_new_events: Annotated[
        int | None,
        typer.Option("--min-new-events", min=1, help="Start a run after this many new shopper events."),
    ] = None,
    golden: Annotated[
        str | None,
        typer.Option(help="The golden set's dataset version: data training never sees, for the gate."),
    ] = None,
    rule: Annotated[list[str] | None, typer.Option("--rule", help=RULE_HELP)] = None,
    canary_percent: Annotated[
        int | None,
        typer.Option(min=0, max=99, help="Canary share of traffic (default 10; 0: promote at once)."),
    ] = None,
    require_approval: Annotated[
        bool, typer.Option("--require-approval", help="A maintainer approves each candidate first.")
    ] = False,
    description: Annotated[str | None, typer.Option(help="What the pipeline is for.")] = None,
    as_json: AsJson = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the new pipeline's id, for $(...).")
    ] = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Save a pipeline: what retrains a role, when, on what data, and how a candidate proves itself.

    Triggers (none: only `recforge pipelines run` starts a run), training, a gate of rules on a golden
    set, approval and a canary. The API checks it all now, so a pipeline that saves can run.

    The common case with options, e.g. `--name nightly --job-type bi_encoder --dataset judgments
    --cron "0 3 * * *" --golden VERSION --rule "ndcg@10 max_drop 0.01" --canary-percent 50
    --set max_steps=200`; everything else (feedback windows, the judge, CTR-drop triggers) with --file.
    """
    flags = (name, role, job_type, dataset, dataset_version, feedback_days, base_model, set_,
             compute_limit_hours, cron, trigger_dataset, min_new_events, golden, rule, canary_percent,
             description)  # fmt: skip
    if file is not None:
        if any(flag is not None for flag in flags) or require_approval:
            fail("give the pipeline with --file or with options, not both")
        body = read_document(file)
    else:
        body = _body_from_flags(
            name=name,
            role=role,
            job_type=job_type,
            dataset=dataset,
            dataset_version=dataset_version,
            feedback_days=feedback_days,
            base_model=base_model,
            set_=set_ or [],
            compute_limit_hours=compute_limit_hours,
            cron=cron,
            trigger_dataset=trigger_dataset,
            min_new_events=min_new_events,
            golden=golden,
            rules=rule or [],
            canary_percent=canary_percent,
            require_approval=require_approval,
            description=description,
        )
    settings = load_settings()
    with api_client(settings, url, key) as client:
        pipeline = expect(client.post(f"{API}/projects/{project}/pipelines", json=body), 201)
    if as_json:
        print_json(pipeline)
    elif quiet:
        console.print(pipeline["id"], highlight=False)
    else:
        err_console.print(f"Created pipeline {pipeline['name']}", highlight=False)
        print_pipeline(pipeline)


@app.command("list")
def list_(project: Project, as_json: AsJson = False, url: ApiUrl = None, key: ApiKey = None) -> None:
    """The project's pipelines with their full ids, triggers and next cron tick."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        pipelines = get(client, f"{API}/projects/{project}/pipelines")
    if as_json:
        print_json(pipelines)
        return
    if not pipelines:
        err_console.print("No pipelines yet: create one with `recforge pipelines create`.")
        return
    table = Table("name", "id", "role", "status", "training", "triggers", "next cron tick")
    table.columns[1].no_wrap = True  # ids are pasted into later commands whole
    for pipeline in pipelines:
        table.add_row(
            pipeline["name"],
            pipeline["id"],
            pipeline["role"],
            pipeline["status"],
            pipeline["training"]["job_type"],
            triggers_text(pipeline["triggers"]),
            when(pipeline.get("next_cron_tick")),
        )
    console.print(table)


@app.command("show")
def show(
    pipeline: PipelineRef,
    project: ProjectForName = None,
    as_json: AsJson = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """One pipeline: its triggers (and the next cron tick), training, gate rules, approval and rollout."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        found = get(client, f"{API}/pipelines/{pipeline_id(client, pipeline, project)}")
    if as_json:
        print_json(found)
    else:
        print_pipeline(found)


@app.command("update")
def update(
    pipeline: PipelineRef,
    file: Annotated[
        Path,
        typer.Option(
            "--file",
            "-f",
            help="The changes (PipelineUpdate, see /docs) as JSON ('-': stdin) or YAML: only the fields "
            'given change, and a spec given is replaced whole, e.g. {"triggers": {"cron": "0 4 * * *"}}.',
        ),
    ],
    project: ProjectForName = None,
    as_json: AsJson = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Change a pipeline; a run going on keeps the specs it started with."""
    body = read_document(file)
    settings = load_settings()
    with api_client(settings, url, key) as client:
        ident = pipeline_id(client, pipeline, project)
        changed = expect(client.patch(f"{API}/pipelines/{ident}", json=body), 200)
    if as_json:
        print_json(changed)
        return
    err_console.print(f"Updated pipeline {changed['name']}", highlight=False)
    print_pipeline(changed)


def _set_status(pipeline: str, project: str | None, verb: str, as_json: bool, url: str | None,
                key: str | None) -> None:  # fmt: skip
    settings = load_settings()
    with api_client(settings, url, key) as client:
        ident = pipeline_id(client, pipeline, project)
        found = expect(client.post(f"{API}/pipelines/{ident}/{verb}"), 200)
    if as_json:
        print_json(found)
        return
    tick = f"; next cron tick {when(found['next_cron_tick'])} UTC" if found.get("next_cron_tick") else ""
    console.print(f"Pipeline {found['name']} ({found['id']}): {found['status']}{tick}", highlight=False)


@app.command("pause")
def pause(
    pipeline: PipelineRef,
    project: ProjectForName = None,
    as_json: AsJson = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Stop the pipeline's triggers firing (a run going on goes on; `run` still starts one by hand)."""
    _set_status(pipeline, project, "pause", as_json, url, key)


@app.command("resume")
def resume(
    pipeline: PipelineRef,
    project: ProjectForName = None,
    as_json: AsJson = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Let the triggers fire again; cron ticks missed while paused do not, the next one does."""
    _set_status(pipeline, project, "resume", as_json, url, key)


@app.command("delete")
def delete(
    pipeline: PipelineRef,
    project: ProjectForName = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (needed without a terminal).")] = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Delete a pipeline and the record of its runs.

    What the runs trained and deployed stays. A run going on must be cancelled first. Asks first unless
    --yes (without a terminal, --yes is needed)."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        found = get(client, f"{API}/pipelines/{pipeline_id(client, pipeline, project)}")
        confirm(f"Delete pipeline {found['name']} ({found['id']}) and the record of its runs?", yes)
        expect(client.delete(f"{API}/pipelines/{found['id']}"), 204)
    console.print(f"Deleted pipeline {found['name']} ({found['id']})", highlight=False)


@app.command("run")
def run(
    pipeline: PipelineRef,
    project: ProjectForName = None,
    note: Annotated[str | None, typer.Option(help="Why (kept on the run).")] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", help="Follow the run until it ends; exit codes as `recforge pipelines runs watch`."
        ),
    ] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between looks with --watch.")] = 2.0,
    as_json: AsJson = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the new run's id, for $(...).")
    ] = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Start a run now, of a paused pipeline too.

    The controller moves it on within seconds. A pipeline runs one at a time: while a run of it is going
    this answers an error (cancel that run, or watch it)."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        ident = pipeline_id(client, pipeline, project)
        body = {"note": note} if note is not None else None
        started = expect(client.post(f"{API}/pipelines/{ident}/run", json=body), 202)
        if as_json:
            print_json(started)
        elif quiet:
            console.print(started["id"], highlight=False)
        else:
            err_console.print(f"Started run #{started['number']}: {started['id']}", highlight=False)
            if not watch:
                print_run(started)
        if not watch:
            return
        finished = watch_run(client, started["id"], interval)
    _end_watch(finished, quiet or as_json)


# -- runs -----------------------------------------------------------------------------------------


def _step_line(step: dict[str, Any]) -> str:
    at = step.get("finished_at") if step["status"] in DONE_STEP else step.get("started_at")
    clock = when(at)[11:] if at else "--:--:--"
    detail = f"  {step['detail']}" if step.get("detail") else ""
    return f"{clock}  {step['name']:<9} {step['status']:<9}{detail}"


def watch_run(client: httpx.Client, run_id: str, interval: float = 2.0) -> dict[str, Any]:
    """Poll the run every ``interval`` s and print each step as it starts and ends (on stderr) until the
    run ends; return the last answer. Ctrl-C stops watching, not the run."""
    seen: dict[int, str] = {}
    status = None
    try:
        while True:
            found: dict[str, Any] = get(client, f"{API}/pipeline-runs/{run_id}")
            for index, step in enumerate(found.get("steps") or []):
                if seen.get(index) != step["status"]:
                    seen[index] = step["status"]
                    err_console.print(_step_line(step), highlight=False)
            if found["status"] != status:
                status = found["status"]
                if status == RunStatus.awaiting_approval:
                    err_console.print(
                        f"waiting for approval: `recforge pipelines runs approve {run_id}` "
                        f"(or `reject {run_id}`)",
                        highlight=False,
                    )
            if RunStatus(found["status"]) not in GOING:
                return found
            time.sleep(interval)
    except KeyboardInterrupt:
        err_console.print(
            f"Stopped watching; the run goes on (`recforge pipelines runs watch {run_id}`)", highlight=False
        )
        raise typer.Exit(130) from None


def _end_watch(run: dict[str, Any], quiet: bool) -> NoReturn:
    status = RunStatus(run["status"])
    line = f"run #{run['number']} {status.value}: {run.get('outcome') or '-'}"
    code = EXIT_CODES.get(status, 1)
    if code == 1:
        fail(line)
    (err_console if quiet else console).print(line, highlight=False)
    raise typer.Exit(code)


def _pipeline_names(client: httpx.Client, project: str) -> dict[str, str]:
    return {p["id"]: p["name"] for p in get(client, f"{API}/projects/{project}/pipelines")}


@runs_app.command("list")
def runs_list(
    project: Project,
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", help="Only this pipeline's runs (its id or name).")
    ] = None,
    status: Annotated[
        list[RunStatus] | None, typer.Option(help="Only runs in this status (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, newest first.")] = 50,
    as_json: AsJson = False,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """The project's pipeline runs, newest first, with their full ids."""
    settings = load_settings()
    params: dict[str, Any] = {"status": [s.value for s in status or []]}
    runs: list[dict[str, Any]] = []
    more = False
    with api_client(settings, url, key) as client:
        names = _pipeline_names(client, project)
        if pipeline is not None:
            params["pipeline_id"] = pipeline_id(client, pipeline, project)
        while True:
            params["limit"] = min(200, limit - len(runs))
            page = get(client, f"{API}/projects/{project}/pipeline-runs", params)
            runs += page["items"]
            more = bool(page.get("next_cursor"))
            if not more or len(runs) >= limit:
                break
            params["cursor"] = page["next_cursor"]
    if as_json:
        print_json(runs)
        return
    if not runs:
        err_console.print("No runs yet: start one with `recforge pipelines run PIPELINE`.")
        return
    table = Table("id", "#", "pipeline", "trigger", "status", "step", "outcome", "created")
    table.columns[0].no_wrap = True  # ids are pasted into later commands whole
    for found in runs:
        table.add_row(
            found["id"],
            str(found["number"]),
            names.get(found["pipeline_id"], found["pipeline_id"]),
            found["trigger"],
            found["status"],
            found.get("step") or "-",
            short(found.get("outcome")),
            when(found["created_at"]),
        )
    console.print(table)
    if more:
        err_console.print(f"The newest {len(runs)} runs; --limit N shows more.")


def _names_of(client: httpx.Client, run: dict[str, Any]) -> str | None:
    response = client.get(f"{API}/pipelines/{run['pipeline_id']}")
    return str(response.json()["name"]) if response.status_code == 200 else None


@runs_app.command("show")
def runs_show(run_id: RunId, as_json: AsJson = False, url: ApiUrl = None, key: ApiKey = None) -> None:
    """One run: its steps, what it made, the gate's checks, the canary's looks and the outcome."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        found = get(client, f"{API}/pipeline-runs/{checked_id(run_id, 'run', RUNS_LISTED)}")
        name = None if as_json else _names_of(client, found)
    if as_json:
        print_json(found)
    else:
        print_run(found, name)


@runs_app.command("watch")
def runs_watch(
    run_id: RunId,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between looks.")] = 2.0,
    url: ApiUrl = None,
    key: ApiKey = None,
) -> None:
    """Follow a run until it ends: each step as it starts and ends, then the outcome.

    Steps go to stderr, the outcome to stdout. Exit code 0 when the run promoted its candidate, 1 when
    it failed or was cancelled, 3 when it ended without a promotion by design (refused at the gate or
    by a person, rolled back by the canary judge, skipped). Ctrl-C stops watching; the run goes on."""
    settings = load_settings()
    with api_client(settings, url, key) as client:
        finished = watch_run(client, checked_id(run_id, "run", RUNS_LISTED), interval)
    _end_watch(finished, quiet=False)


def _decide(run_id: str, verb: str, body: dict[str, Any] | None, as_json: bool, url: str | None,
            key: str | None) -> None:  # fmt: skip
    settings = load_settings()
    with api_client(settings, url, key) as client:
        ident = checked_id(run_id, "run", RUNS_LISTED)
        found = expect(client.post(f"{API}/pipeline-runs/{ident}/{verb}", json=body), 200)
    if as_json:
        print_json(found)
        return
    step = f" ({found['step']})" if found.get("step") and RunStatus(found["status"]) in GOING else ""
    outcome = f": {found['outcome']}" if found.get("outcome") else ""
    console.print(f"run #{found['number']} {found['id']}: {found['status']}{step}{outcome}", highlight=False)


@runs_app.command("approve")
def runs_approve(
    run_id: RunId, reason: Reason = "", as_json: AsJson = False, url: ApiUrl = None, key: ApiKey = None
) -> None:
    """Let a run waiting for approval go on (to its canary, or to promotion).

    Needs the pipeline's approver role or above."""
    _decide(run_id, "approve", {"reason": reason} if reason else None, as_json, url, key)


@runs_app.command("reject")
def runs_reject(
    run_id: RunId, reason: Reason = "", as_json: AsJson = False, url: ApiUrl = None, key: ApiKey = None
) -> None:
    """End a run waiting for approval: nothing is deployed.

    Needs the pipeline's approver role or above."""
    _decide(run_id, "reject", {"reason": reason} if reason else None, as_json, url, key)


@runs_app.command("cancel")
def runs_cancel(run_id: RunId, as_json: AsJson = False, url: ApiUrl = None, key: ApiKey = None) -> None:
    """End a run going on.

    Its queued or running jobs are cancelled, and a canary serving is taken down (production keeps all
    traffic)."""
    _decide(run_id, "cancel", None, as_json, url, key)
