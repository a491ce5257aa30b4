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
