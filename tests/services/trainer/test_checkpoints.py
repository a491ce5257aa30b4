"""What a job writes survives a kill at any moment: checkpoints swap in whole, mined negatives and cached
baselines are never half-written, and a checkpoint carries nothing torch would have to execute."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from services.trainer.control import JobControl
from services.trainer.finetune.bi_encoder import BiEncoderTask
from services.trainer.finetune.checkpoint import checkpoint_model, load_checkpoint, save_checkpoint
from shared.files import write_atomic, write_text_atomic
from tests.support.models import tiny_bert

PRODUCTS = {f"p{i}": f"{kind} model {i}" for i, kind in enumerate(["drill", "saw", "lamp", "hose"] * 10)}
EXAMPLES = [("cordless drill", "p0", 1.0), ("garden hose", "p3", 1.0), ("floor lamp", "p2", 1.0)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_bert(tmp_path_factory.mktemp("tiny")))


def test_a_save_after_a_kill_that_left_both_folders_succeeds(model_dir: str, tmp_path: Path) -> None:
    """Killed after the new checkpoint was renamed in but before the old one was removed."""
    import shutil

    task = BiEncoderTask(model_dir, EXAMPLES, PRODUCTS, 16)
    save_checkpoint(tmp_path, task, {"step": 3})
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "checkpoint.old")
    save_checkpoint(tmp_path, task, {"step": 7})
    state, _ = load_checkpoint(tmp_path)
    assert state is not None and state["step"] == 7
    assert checkpoint_model(tmp_path) == tmp_path / "checkpoint" / "model"
    assert not (tmp_path / "checkpoint.old").exists()


def test_checkpoints_load_without_running_code(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("this must not run",))

    (tmp_path / "checkpoint" / "model").mkdir(parents=True)
    torch.save({"step": 1, "payload": Payload()}, tmp_path / "checkpoint" / "state.pt")
    with pytest.raises(Exception, match=r"weights_only|Unsupported|WeightsUnpickler"):
        load_checkpoint(tmp_path)


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "negatives.json"
    write_text_atomic(target, '{"old": true}')

    def dies_halfway(handle: io.BufferedWriter) -> None:
        handle.write(b'{"new": ')
        raise KeyboardInterrupt  # as a kill would cut it short

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, dies_halfway)  # type: ignore[arg-type]
    assert target.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["negatives.json"]


def test_a_damaged_negatives_file_is_mined_again(model_dir: str, tmp_path: Path) -> None:
    cache = tmp_path / "negatives.json"
    cache.write_text('{"titles": ["drill model 0", "saw mo')  # cut short by a kill before atomic writes
    task = BiEncoderTask(model_dir, EXAMPLES, PRODUCTS, 16, hard_negatives=1)
    task.mine(torch.device("cpu"), JobControl(), cache)
    assert set(task.negatives) == {q for q, _, _ in EXAMPLES}
    assert '"negatives"' in cache.read_text()
