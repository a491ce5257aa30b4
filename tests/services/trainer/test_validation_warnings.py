"""A job whose metrics come from a handful of validation queries, users or texts says so in its result."""

from __future__ import annotations

from services.trainer.evaluation import validation_warnings
from shared.models.enums import DatasetKind, JobType


def test_fewer_than_20_validation_queries_users_or_texts_are_warned_about() -> None:
    [queries] = validation_warnings(
        JobType.bi_encoder, DatasetKind.relevance, {"ndcg@10": 0.5, "queries": 12}
    )
    assert queries == (
        "the metrics come from 12 validation queries, fewer than 20: they are mostly noise; import more "
        "data, or a larger valid_fraction, before comparing versions on them"
    )
    [users] = validation_warnings(JobType.bi_encoder, DatasetKind.sequences, {"queries": 5})
    assert users.startswith("the metrics come from 5 validation users,")
    per_class = {"a": {"support": 4}, "b": {"support": 3}}
    [texts] = validation_warnings(JobType.classifier, DatasetKind.labeled_text, {"per_class": per_class})
    assert texts.startswith("the metrics come from 7 validation texts,")


def test_20_or_more_are_not() -> None:
    assert validation_warnings(JobType.cross_encoder, DatasetKind.relevance, {"queries": 20}) == []
    per_class = {"a": {"support": 15}, "b": {"support": 5}}
    assert validation_warnings(JobType.classifier, DatasetKind.labeled_text, {"per_class": per_class}) == []
