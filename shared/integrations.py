"""What the ML lifecycle says on a linked Jira issue: the words of each event's comment, shared by the api
(pipeline runs' events) and the trainer (a job that fails)."""

from __future__ import annotations

from typing import Any

from shared.models.enums import WebhookEvent

LIFECYCLE = {
    WebhookEvent.job_failed: "A training job failed",
    WebhookEvent.gate_refused: "The gate refused a candidate",
    WebhookEvent.promoted: "A model version was promoted",
    WebhookEvent.rolled_back: "A canary was rolled back",
    WebhookEvent.budget_exhausted: "A run was skipped: the compute budget is exhausted",
}


def lifecycle_comment(event: WebhookEvent, data: dict[str, Any]) -> str:
    lines = [f"RecForge: {LIFECYCLE[event]}."]
    for name in ("reason", "error", "message", "status"):
        if data.get(name):
            lines.append(f"{name}: {data[name]}")
    for name in ("run_id", "job_id", "model_version_id", "candidate_version_id", "production_version_id"):
        if data.get(name):
            lines.append(f"{name.replace('_', ' ')}: {data[name]}")
    return "\n".join(lines)
