"""Closed vocabularies of the schema; each becomes a CHECK constraint on its column."""

from __future__ import annotations

from enum import StrEnum


class KeyRole(StrEnum):
    admin = "admin"  # global administrator
    user = "user"  # acts as its user, through project memberships
    service = "service"  # machine caller scoped to one project


class ProjectStatus(StrEnum):
    proposed = "proposed"
    active = "active"
    paused = "paused"
    done = "done"
    archived = "archived"


class ProjectRole(StrEnum):
    owner = "owner"
    maintainer = "maintainer"
    member = "member"
    viewer = "viewer"


class TaskStatus(StrEnum):
    todo = "todo"
    in_progress = "in_progress"
    in_review = "in_review"
    done = "done"
    blocked = "blocked"


class TaskPriority(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    urgent = "urgent"


class MilestoneStatus(StrEnum):
    open = "open"
    closed = "closed"


class DatasetKind(StrEnum):
    catalog = "catalog"
    relevance = "relevance"
    interactions = "interactions"
    sequences = "sequences"
    labeled_text = "labeled_text"


class ImportStatus(StrEnum):
    created = "created"  # a new dataset version
    duplicate = "duplicate"  # identical content: the existing version was returned
    rejected = "rejected"  # validation failed: no version, the errors are kept


class JobType(StrEnum):
    bi_encoder = "bi_encoder"
    cross_encoder = "cross_encoder"
    classifier = "classifier"
    evaluate = "evaluate"
    export = "export"
    index_catalog = "index"  # "index" would shadow str.index
    feedback = "feedback"  # impressions and events -> a dataset version
    labeling = "labeling"  # a labelling queue's pairs chosen from a pool by a strategy


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class ModelTaskType(StrEnum):
    bi_encoder = "bi_encoder"
    cross_encoder = "cross_encoder"
    classifier = "classifier"


class ModelStatus(StrEnum):
    candidate = "candidate"
    staging = "staging"
    production = "production"
    retired = "retired"


class DeploymentRole(StrEnum):
    retriever = "retriever"
    reranker = "reranker"
    classifier = "classifier"


class EventType(StrEnum):
    impression = "impression"
    click = "click"
    cart = "cart"
    purchase = "purchase"


def values(enum: type[StrEnum]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


class RuleAction(StrEnum):
    pin = "pin"  # put the product at `position` for the query
    boost = "boost"  # multiply the rank score of matching products by `weight`
    bury = "bury"  # move matching products after all others
    hide = "hide"  # never return matching products
    hide_out_of_stock = "hide_out_of_stock"  # never return products marked out of stock


class PipelineStatus(StrEnum):
    active = "active"
    paused = "paused"


class RunStatus(StrEnum):
    """A pipeline run's state; the first four are a run still going (at most one per pipeline)."""

    running = "running"  # collecting feedback, training or gating
    awaiting_approval = "awaiting_approval"
    canary = "canary"  # the candidate serves part of the traffic; the judge watches
    promoting = "promoting"
    promoted = "promoted"
    refused = "refused"  # the gate said no, or a person rejected it
    rolled_back = "rolled_back"
    skipped = "skipped"  # never started: another run was going, or the budget would not allow it
    failed = "failed"
    cancelled = "cancelled"


class RunStep(StrEnum):
    collect = "collect"  # a feedback job turns the window's impressions and events into data
    train = "train"
    gate = "gate"  # the candidate and production scored on the golden set, rules applied
    approve = "approve"  # a person's yes
    canary = "canary"
    judge = "judge"  # the arms compared on online metrics
    promote = "promote"
    rollback = "rollback"


class TriggerKind(StrEnum):
    cron = "cron"
    dataset = "dataset"  # a new version of a named dataset
    events = "events"  # at least N new shopper events since the last run
    ctr_drop = "ctr_drop"  # the production version's online CTR fell against its first days
    manual = "manual"


class WebhookEvent(StrEnum):
    run_started = "run.started"
    run_finished = "run.finished"
    gate_refused = "gate.refused"
    promoted = "model.promoted"
    rolled_back = "model.rolled_back"
    approval_requested = "approval.requested"
    budget_exhausted = "budget.exhausted"
    job_failed = "job.failed"
    test = "test"


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"  # every attempt refused


class LabelingStatus(StrEnum):
    """A labelling queue's state: its selection job picks the pairs (building), people label them (open),
    closing writes the labels as a dataset version (closed); a selection that failed leaves it failed."""

    building = "building"
    open = "open"
    closed = "closed"
    failed = "failed"


class LabelingStrategy(StrEnum):
    random = "random"  # the control
    uncertainty = "uncertainty"  # the deployed cross-encoder's least sure pairs
    committee = "committee"  # the pairs the rankers disagree most about


class LabelingPool(StrEnum):
    dataset = "dataset"  # a relevance dataset version's queries
    impressions = "impressions"  # the queries shoppers searched for


class AssignmentPolicy(StrEnum):
    round_robin = "round_robin"
    least_loaded = "least_loaded"  # to whoever has the fewest pairs waiting in the project's open queues


class AssignmentStatus(StrEnum):
    pending = "pending"
    labelled = "labelled"
    skipped = "skipped"


class JiraAction(StrEnum):
    create_issue = "create_issue"
    transition = "transition"
    update = "update"  # summary, assignee
    comment = "comment"


class OutboxStatus(StrEnum):
    pending = "pending"
    done = "done"
    failed = "failed"  # every attempt refused, or nothing to do it on (no linked issue)


class GitProvider(StrEnum):
    github = "github"
    gitlab = "gitlab"
