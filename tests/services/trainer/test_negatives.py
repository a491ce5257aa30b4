"""The bi-encoder's negatives: mined ones never a positive or an excluded product; excluded products
never a negative in the batch; a resumed job draws from the same mined pool; the popularity correction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.trainer.control import JobControl
from services.trainer.finetune.bi_encoder import MINE_POOL, BiEncoderTask
from tests.support.models import tiny_bert

PRODUCTS = {f"p{i}": f"{kind} model {i}" for i, kind in enumerate(["drill", "saw", "lamp", "hose"] * 10)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_bert(tmp_path_factory.mktemp("tiny")))


def _task(model_dir: str, **kw: object) -> BiEncoderTask:
    examples = [
        ("drill model 0 | saw model 1", "p2", 1.0),
        ("cordless drill", "p4", 1.0),
        ("cordless drill", "p8", 0.7),
    ]
    exclude = {"drill model 0 | saw model 1": {"p0", "p1", "p2"}}
    return BiEncoderTask(model_dir, examples, PRODUCTS, 32, exclude=exclude, **kw)  # type: ignore[arg-type]


def test_mined_negatives_skip_positives_and_excluded_products(model_dir: str, tmp_path: Path) -> None:
    task = _task(model_dir, hard_negatives=2)
    control = JobControl()
    task.mine(torch.device("cpu"), control, tmp_path / "negatives.json")
    assert control.snapshot()[1]["phase"] == "mine_negatives"
    history = task.negatives["drill model 0 | saw model 1"]
    assert len(history) == MINE_POOL
    assert not {"drill model 0", "saw model 1", "lamp model 2"} & set(history)
    assert not {"drill model 4", "drill model 8"} & set(task.negatives["cordless drill"])

    # a resumed job reads the same pool back instead of mining with its trained model
    again = _task(model_dir, hard_negatives=2)
    again.mine(torch.device("cpu"), JobControl(), tmp_path / "negatives.json")
    assert again.negatives == task.negatives

    loss = task.loss(task.examples, torch.device("cpu"))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()


def test_excluded_products_are_never_negatives_in_the_batch(model_dir: str) -> None:
    task = _task(model_dir)
    task.mine(torch.device("cpu"), JobControl(), Path("/nonexistent/never-written.json"))  # 0: no mining
    assert task.negatives == {}
    # the history query's positive is lamp model 2; a batch where another pair's product is in its history
    batch = [("drill model 0 | saw model 1", "lamp model 2", 1.0), ("cordless drill", "drill model 0", 1.0)]
    task.texts.add([text for pair in batch for text in pair[:2]])
    with torch.no_grad():
        blocked = task.loss(batch, torch.device("cpu"))
        task.exclude["drill model 0 | saw model 1"] = set()
        open_ = task.loss(batch, torch.device("cpu"))
    # with drill model 0 blocked, the history query's only competitor is gone: its loss is 0, so the mean drops
    assert blocked.item() < open_.item()


def test_popularity_correction_lowers_each_column_by_its_products_log_share(model_dir: str) -> None:
    examples = [(f"user {i}", "p2", 1.0) for i in range(6)] + [("user 9", "p3", 1.0)]
    plain = BiEncoderTask(model_dir, examples, PRODUCTS, 32)
    corrected = BiEncoderTask(model_dir, examples, PRODUCTS, 32, popularity_correction=True)
    share = corrected.log_share
    assert plain.log_share == {} and set(share) == set(PRODUCTS.values())
    assert share["lamp model 2"] > share["hose model 3"] > share["drill model 0"]
    # a pair whose product is popular now faces its rarer negatives raised: its loss goes up (the other
    # pair weighs next to nothing, so the batch loss is the popular pair's)
    batch = [("user 0", "lamp model 2", 1.0), ("user 9", "hose model 3", 1e-6)]
    for task in (plain, corrected):
        task.texts.add([text for pair in batch for text in pair[:2]])
    with torch.no_grad():
        assert (
            corrected.loss(batch, torch.device("cpu")).item() > plain.loss(batch, torch.device("cpu")).item()
        )
