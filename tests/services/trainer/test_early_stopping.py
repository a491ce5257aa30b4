"""Early stopping in the shared training loop: evaluations every N steps, patience, the best weights kept,
and its state carried through a checkpoint to the run that resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.trainer.control import JobCancelled, JobControl
from services.trainer.finetune.bi_encoder import BiEncoderTask
from services.trainer.finetune.checkpoint import checkpoint_model
from services.trainer.finetune.loop import fit
from shared.training import Hyperparameters
from tests.support.models import tiny_bert

PRODUCTS = {f"p{i}": f"{kind} model {i}" for i, kind in enumerate(["drill", "saw", "lamp", "hose"] * 10)}
EXAMPLES = [(f"{PRODUCTS[f'p{i}'].split()[0]} for home {i}", f"p{i}", 1.0) for i in range(40)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_bert(tmp_path_factory.mktemp("tiny")))


def _task(model_dir: str) -> BiEncoderTask:
    return BiEncoderTask(model_dir, EXAMPLES, PRODUCTS, 16)


def _weights(task: BiEncoderTask) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


class Scripted:
    """An evaluator that returns the given scores in turn and keeps the weights it was shown."""

    def __init__(self, task: BiEncoderTask, scores: list[float]):
        self.task = task
        self.scores = list(scores)
        self.seen: list[dict[str, torch.Tensor]] = []

    def __call__(self) -> float:
        self.seen.append(_weights(self.task))
        return self.scores.pop(0)


def _hp(**values: object) -> Hyperparameters:
    base = {"epochs": 10, "batch_size": 4, "learning_rate": 1e-3, "max_length": 16, "warmup_ratio": 0}
    return Hyperparameters.model_validate({**base, **values})


def test_it_stops_after_patience_evaluations_without_improvement_and_keeps_the_best(
    model_dir: str, tmp_path: Path
) -> None:
    task = _task(model_dir)
    evaluate = Scripted(task, [0.5, 0.7, 0.6, 0.6, 0.9])
    hp = _hp(max_steps=40, early_stopping_patience=2, eval_every_steps=2)
    result = fit(
        task, hp, torch.device("cpu"), JobControl(), tmp_path, checkpoint_interval_s=1e9, evaluate=evaluate
    )
    assert result.steps == 8  # evaluations at 2 (best), 4 (best), 6 and 8 (no better): stop
    assert result.early_stopping is not None
    assert [e["step"] for e in result.early_stopping["evaluations"]] == [2, 4, 6, 8]
    assert result.early_stopping["stopped_early"] is True
    assert result.early_stopping["best_step"] == 4 and result.early_stopping["best_score"] == 0.7
    kept = _weights(task)
    assert all(torch.equal(kept[k], evaluate.seen[1][k]) for k in kept)  # the weights scored 0.7
    assert not all(torch.equal(kept[k], evaluate.seen[3][k]) for k in kept)


def test_while_it_improves_it_trains_to_the_end_and_scores_the_last_step(
    model_dir: str, tmp_path: Path
) -> None:
    task = _task(model_dir)
    evaluate = Scripted(task, [0.1, 0.2, 0.3, 0.4])
    hp = _hp(max_steps=7, early_stopping_patience=1, eval_every_steps=3)
    result = fit(
        task, hp, torch.device("cpu"), JobControl(), tmp_path, checkpoint_interval_s=1e9, evaluate=evaluate
    )
    assert result.steps == 7
    assert result.early_stopping is not None
    assert [e["step"] for e in result.early_stopping["evaluations"]] == [3, 6, 7]
    assert result.early_stopping["stopped_early"] is False and result.early_stopping["best_step"] == 7


def test_without_patience_nothing_is_evaluated(model_dir: str, tmp_path: Path) -> None:
    task = _task(model_dir)
    evaluate = Scripted(task, [])
    result = fit(task, _hp(max_steps=5), torch.device("cpu"), JobControl(), tmp_path, checkpoint_interval_s=1e9,
                 evaluate=evaluate)  # fmt: skip
    assert result.steps == 5 and result.early_stopping is None and evaluate.seen == []


def test_a_resumed_run_keeps_the_evaluations_and_best_weights_of_the_checkpoint(
    model_dir: str, tmp_path: Path
) -> None:
    hp = _hp(max_steps=40, early_stopping_patience=2, eval_every_steps=2)
    first = _task(model_dir)
    control = JobControl()
    scores = iter([0.5, 0.8])

    def evaluate_then_stop() -> float:
        score = next(scores)
        if score == 0.8:
            control.stop.set()  # the run dies after its second evaluation (checkpoint at every step)
        return score

    with pytest.raises(JobCancelled):
        fit(
            first,
            hp,
            torch.device("cpu"),
            control,
            tmp_path,
            checkpoint_interval_s=0,
            evaluate=evaluate_then_stop,
        )
    best = _weights(first)  # the weights scored 0.8, at step 4

    resumed = checkpoint_model(tmp_path)
    assert resumed is not None
    second = _task(str(resumed))  # as a resumed job does: from the checkpoint's model
    evaluate = Scripted(second, [0.6, 0.7])
    result = fit(
        second, hp, torch.device("cpu"), JobControl(), tmp_path, checkpoint_interval_s=1e9, evaluate=evaluate
    )
    assert result.resumed_from_step == 4 and result.steps == 8
    assert result.early_stopping is not None
    assert [e["score"] for e in result.early_stopping["evaluations"]] == [0.5, 0.8, 0.6, 0.7]
    assert result.early_stopping["best_step"] == 4 and result.early_stopping["stopped_early"] is True
    kept = _weights(second)
    assert all(torch.equal(kept[k], best[k]) for k in kept)


def test_max_steps_is_the_number_of_steps_whatever_epochs_says(model_dir: str, tmp_path: Path) -> None:
    """40 examples in batches of 16 are 3 steps an epoch: 7 steps pass over the data 2⅓ times, although
    epochs says 1; without max_steps, epochs counts the passes."""
    hp = Hyperparameters.model_validate({**_hp().model_dump(), "epochs": 1, "batch_size": 16, "max_steps": 7})
    result = fit(
        _task(model_dir), hp, torch.device("cpu"), JobControl(), tmp_path / "a", checkpoint_interval_s=1e9
    )
    assert (result.steps, result.epochs_run) == (7, 2.333)
    hp = Hyperparameters.model_validate({**hp.model_dump(), "epochs": 2, "max_steps": None})
    result = fit(
        _task(model_dir), hp, torch.device("cpu"), JobControl(), tmp_path / "b", checkpoint_interval_s=1e9
    )
    assert (result.steps, result.epochs_run) == (6, 2.0)
