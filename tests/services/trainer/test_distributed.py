"""Fine-tuning on several processes: real torchrun, real gloo, two processes on the CPU.

The models here have dropout off. Each process draws its own dropout masks, so with dropout on two
processes cannot reproduce one process's run; with it off they compute the same function of the same
batches, and what is left between them is the order floating-point sums are taken in (each process pads
its share to its own longest text; gradients are summed across processes), about 1e-7 of a loss. So the
runs are compared step by step with a tight tolerance, LOSS_TOLERANCE on the loss curve (the smoothed
loss the job reports, rounded to 5 decimals), far below what a real difference makes: a process that
saw only its own share's negatives has a loss 0.3 to 0.7 away (the probe below)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from services.trainer import evaluation
from services.trainer.control import JobCancelled, JobControl, StopReason
from services.trainer.finetune.base import resolve_base_model
from services.trainer.finetune.bi_encoder import BiEncoderTask
from services.trainer.finetune.checkpoint import checkpoint_model
from services.trainer.finetune.distributed import (
    PAYLOAD,
    RUN_DIR,
    DistributedTrainingFailed,
    fit_distributed,
)
from services.trainer.finetune.loop import TrainResult, fit, seed_everything
from services.trainer.jobs.finetune import FineTuneSpec, train_and_export
from services.trainer.runner import charge_scale
from shared.datasets.examples import Examples
from shared.models.enums import JobType
from shared.training import DEFAULT_BASE_MODEL, Hyperparameters
from tests.support.distributed import fails_in_process_1, shop, without_dropout
from tests.support.models import tiny_bert

LOSS_TOLERANCE = 1e-4  # float32 throughout (mixed_precision=False): bf16's rounding would hide a slip
METRIC_TOLERANCE = 0.005
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    source = tiny_bert(tmp_path_factory.mktemp("tiny"))
    return str(without_dropout(str(source), tmp_path_factory.mktemp("tiny-no-dropout")))


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> str:
    source = resolve_base_model(DEFAULT_BASE_MODEL)
    return str(without_dropout(source, tmp_path_factory.mktemp("minilm-no-dropout")))


def _build(examples: Examples, **options: Any) -> functools.partial[BiEncoderTask]:
    """A picklable bi-encoder factory, as train_and_export hands one to the processes."""
    return functools.partial(
        BiEncoderTask,
        examples=examples.train,
        product_text=examples.product_text,
        max_length=32,
        **options,
    )


def _score(task: BiEncoderTask, examples: Examples) -> float:
    return evaluation.task_validation_score(JobType.bi_encoder, examples, 32, task, CPU, JobControl())


def _one_process(
    build: functools.partial[BiEncoderTask], model_dir: str, hp: Hyperparameters, work: Path
) -> tuple[BiEncoderTask, TrainResult, list[list[float]]]:
    seed_everything(hp.seed)
    task = build(model_dir)
    task.mine(CPU, JobControl(), work / "negatives.json")
    control = JobControl()
    result = fit(task, hp, CPU, control, work, checkpoint_interval_s=1e9)
    return task, result, control.progress["loss_curve"]


def _close(curve: list[list[float]], reference: list[list[float]]) -> None:
    assert [step for step, _ in curve] == [step for step, _ in reference]
    worst = max(abs(a - b) for (_, a), (_, b) in zip(curve, reference, strict=True))
    assert worst <= LOSS_TOLERANCE, f"the loss curves differ by {worst} at worst"


def test_two_processes_train_as_one_on_the_same_global_batch(minilm: str, tmp_path: Path) -> None:
    """MiniLM, mined negatives, the popularity correction; 97 pairs in batches of 16, so each epoch
    has a batch of one pair, which leaves the second process without a pair of its own."""
    examples = shop(train_pairs=97)
    build = _build(examples, hard_negatives=1, popularity_correction=True)
    hp = Hyperparameters(max_steps=8, batch_size=16, max_length=32, learning_rate=1e-4, mixed_precision=False)
    one, one_result, one_curve = _one_process(build, minilm, hp, tmp_path / "one")

    seed_everything(hp.seed)
    task = build(minilm)
    task.mine(CPU, JobControl(), tmp_path / "two" / "negatives.json")
    control = JobControl()
    two = Hyperparameters.model_validate({**hp.model_dump(), "processes": 2})
    result = fit_distributed(
        task, build, minilm, two, CPU, control, tmp_path / "two", checkpoint_interval_s=1e9
    )

    assert (result.steps, result.processes, one_result.processes) == (8, 2, 1)
    _close(control.progress["loss_curve"], one_curve)
    assert result.final_loss == pytest.approx(one_result.final_loss, abs=LOSS_TOLERANCE)
    assert _score(task, examples) == pytest.approx(_score(one, examples), abs=METRIC_TOLERANCE)
    phases = [p["phase"] for p in control.progress["phases"]]
    assert phases == ["train"]  # rank 0's progress reached the job's control, once


def test_the_negatives_are_gathered_from_every_process(tiny: str, tmp_path: Path) -> None:
    """Each process's logits span the global batch's products, and the mean of the processes' losses is
    the one-process loss of the whole batch: for an even share, an uneven one and an empty one, with
    excluded products, the popularity correction and mined pools of different sizes."""
    out = tmp_path / "probe.json"
    subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"),
            *("-m", "tests.support.distributed", tiny, str(out)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    seen = json.loads(out.read_text())
    assert seen["16"]["plain_widths"] == [16, 16]  # in-batch negatives: the global batch, not the share
    assert seen["5"]["plain_widths"] == [6, 6]  # 3 + 2 products, the shorter share padded
    for size in ("16", "5", "1"):
        for model in ("bi", "cross"):
            assert seen[size][f"{model}_sharded"] == pytest.approx(seen[size][f"{model}_whole"], abs=1e-6)
        assert abs(seen[size]["bi_alone"] - seen[size]["bi_whole"]) > 0.1  # one share's negatives only
        assert seen[size]["mined_widths"][0] > seen[size]["plain_widths"][0]


def _ranks_of(work: Path) -> list[int]:
    """The processes still running from the distributed run in ``work`` (torchrun and its ranks)."""
    needle = str(work / RUN_DIR / PAYLOAD).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_a_cancelled_run_ends_promptly_and_resumes_from_its_checkpoint(tiny: str, tmp_path: Path) -> None:
    examples = shop()
    build = _build(examples)
    hp = Hyperparameters(
        max_steps=60, batch_size=16, max_length=32, learning_rate=1e-3, mixed_precision=False
    )
    _, _, reference = _one_process(build, tiny, hp, tmp_path / "one")
    two = Hyperparameters.model_validate({**hp.model_dump(), "processes": 2})
    work = tmp_path / "two"

    control = JobControl()
    outcome: list[BaseException] = []

    def train() -> None:
        try:
            fit_distributed(build(tiny), build, tiny, two, CPU, control, work, checkpoint_interval_s=0)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 90
    while control.progress.get("checkpoint_step", 0) < 3 and thread.is_alive():
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.05)
    asked = time.monotonic()
    control.stop_for(StopReason.cancelled)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert time.monotonic() - asked < 5
    assert len(outcome) == 1 and isinstance(outcome[0], JobCancelled)
    assert _ranks_of(work) == []

    resume = checkpoint_model(work)
    assert resume is not None
    task = build(str(resume))
    again = JobControl()
    result = fit_distributed(task, build, str(resume), two, CPU, again, work, checkpoint_interval_s=1e9)
    assert result.resumed_from_step >= 3 and result.steps == 60
    _close(again.progress["loss_curve"], [p for p in reference if p[0] > result.resumed_from_step])


def test_a_failing_process_fails_the_run_with_its_error(tiny: str, tmp_path: Path) -> None:
    hp = Hyperparameters(max_steps=5, batch_size=16, max_length=32, processes=2)
    examples = shop()
    started = time.monotonic()
    with pytest.raises(DistributedTrainingFailed) as failed:
        fit_distributed(
            BiEncoderTask(tiny, examples.train, examples.product_text, 16),
            fails_in_process_1,
            tiny,
            hp,
            CPU,
            JobControl(),
            tmp_path,
            checkpoint_interval_s=1e9,
        )
    message = str(failed.value)
    assert message.startswith("training process 1 of 2 failed: ValueError: process 1 cannot build its task")
    assert "Traceback" in message
    assert time.monotonic() - started < 60
    assert _ranks_of(tmp_path) == []


def test_a_cross_encoder_job_with_early_stopping_trains_on_two_processes(tiny: str, tmp_path: Path) -> None:
    """The job's whole path: the spec pickled for the processes, early stopping scored by rank 0 for
    all, the trained weights back in the job for evaluation and export; as one process would."""
    runs = {}
    for processes in (1, 2):
        hp = Hyperparameters(
            max_steps=6,
            batch_size=16,
            max_length=32,
            learning_rate=1e-3,
            early_stopping_patience=2,
            eval_every_steps=2,
            processes=processes,
            mixed_precision=False,
        )
        spec = FineTuneSpec(
            job_type=JobType.cross_encoder,
            base_model=tiny,
            hyperparameters=hp,
            examples=shop(),
            device=CPU,
            work_dir=tmp_path / f"work{processes}",
            out_dir=tmp_path / f"out{processes}",
            checkpoint_interval_s=1e9,
            int8_tolerance=1.0,
        )
        spec.work_dir.mkdir()
        runs[processes] = train_and_export(spec, JobControl())
    one, two = runs[1], runs[2]
    assert (one.train.processes, two.train.processes) == (1, 2)
    assert one.train.early_stopping is not None and two.train.early_stopping is not None
    evaluations = two.train.early_stopping["evaluations"]
    assert [e["step"] for e in evaluations] == [e["step"] for e in one.train.early_stopping["evaluations"]]
    for a, b in zip(evaluations, one.train.early_stopping["evaluations"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=METRIC_TOLERANCE)
    # the fp32 graphs (the int8 ones add their own quantisation noise to a tiny model)
    two_fp32, one_fp32 = two.export["fp32_metrics"], one.export["fp32_metrics"]
    assert two_fp32["ndcg@10"] == pytest.approx(one_fp32["ndcg@10"], abs=METRIC_TOLERANCE)
    assert (tmp_path / "out2" / "model.onnx").exists()


def test_the_global_batch_is_shared_evenly() -> None:
    from pydantic import ValidationError

    assert Hyperparameters(batch_size=32, processes=4).processes == 4
    with pytest.raises(ValidationError, match=r"batch_size \(30\) is the global batch.*multiple of 4"):
        Hyperparameters(batch_size=30, processes=4)


def test_a_distributed_fine_tune_is_charged_for_what_it_holds() -> None:
    assert charge_scale({}, gpu=False) == charge_scale({}, gpu=True) == 1
    assert charge_scale({"processes": 4}, gpu=False) == 1  # four processes share one machine's cores
    assert charge_scale({"processes": 4}, gpu=True) == 4  # one GPU each
    assert charge_scale({"processes": 2, "nodes": 3}, gpu=True) == 6
    assert charge_scale({"processes": 2, "nodes": 3}, gpu=False) == 3
