"""LoRA adapters: what trains, what a checkpoint holds, that a resumed run and the exported model are the
trained one (a cross-encoder's new head included), and jobs through the queue."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from services.trainer.control import JobControl
from services.trainer.finetune.base import mean_pool
from services.trainer.finetune.bi_encoder import BiEncoderTask
from services.trainer.finetune.checkpoint import checkpoint_model, load_checkpoint
from services.trainer.finetune.cross_encoder import CrossEncoderTask
from services.trainer.finetune.loop import fit, seed_everything
from shared.config import Settings
from shared.models.enums import JobType
from shared.training import Hyperparameters, hyperparameter_problem
from tests.support.data import shop_data
from tests.support.models import tiny_bert
from tests.support.training import PROJECT as P
from tests.support.training import train, upload
from tests.support.world import World

PRODUCTS = {f"p{i}": f"{kind} model {i}" for i, kind in enumerate(["drill", "saw", "lamp", "hose"] * 8)}
EXAMPLES = [
    (f"{kind} for the house {i}", f"p{i}", float(i % 3) / 2)
    for i, kind in enumerate(["drill", "saw", "lamp", "hose"] * 8)
]
PAIRS = [("cordless drill", "drill model 0"), ("garden hose", "hose model 3"), ("lamp", "saw model 1")]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_bert(tmp_path_factory.mktemp("tiny")))


def _lora(**settings: object) -> Hyperparameters:
    return Hyperparameters.model_validate(
        {"adapter": "lora", "lora_r": 4, "batch_size": 8, "max_length": 16, "learning_rate": 1e-2, **settings}
    )


def _train(task: object, hp: Hyperparameters, work: Path) -> None:
    fit(task, hp, CPU, JobControl(), work, checkpoint_interval_s=0)  # type: ignore[arg-type]


def _scores(task: CrossEncoderTask) -> torch.Tensor:
    task.model.eval()
    with torch.no_grad():
        return task.logits([q for q, _ in PAIRS], [p for _, p in PAIRS], CPU)


def test_a_lora_cross_encoder_trains_its_head_and_keeps_it_in_the_checkpoint(
    base: str, tmp_path: Path
) -> None:
    seed_everything(1)
    hp = _lora(max_steps=6)
    task = CrossEncoderTask(base, EXAMPLES, PRODUCTS, 16, base_dir=base, adapter=hp)
    trainable = {name for name, p in task.model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in trainable)
    assert any("classifier" in name for name in trainable)  # the new head trains in full
    assert not any("word_embeddings" in name for name in trainable)  # the base model is frozen
    head_before = dict(task.model.named_parameters())
    head_before = {k: v.detach().clone() for k, v in head_before.items() if "classifier" in k}
    _train(task, hp, tmp_path / "work")
    after = dict(task.model.named_parameters())
    assert any(not torch.equal(after[k], v) for k, v in head_before.items())  # the head learned

    saved = tmp_path / "checkpoint"
    task.save(saved)
    names = {p.name for p in saved.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert "model.safetensors" not in names  # the adapter (and the head) alone
    expected = _scores(task)

    # loaded again on a freshly initialised head: the checkpoint's head wins
    seed_everything(99)
    again = CrossEncoderTask(str(saved), EXAMPLES, PRODUCTS, 16, base_dir=base, adapter=hp)
    torch.testing.assert_close(_scores(again), expected)

    # merged: a plain transformers model that scores as the adapter did
    merged_dir = tmp_path / "merged"
    task.save_merged(merged_dir)
    plain = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert not any("lora" in name for name, _ in plain.named_parameters())
    with torch.no_grad():
        batch = task.texts.pairs([q for q, _ in PAIRS], [p for _, p in PAIRS], CPU)
        torch.testing.assert_close(plain(**batch).logits.squeeze(-1), expected, atol=1e-5, rtol=1e-4)


def test_a_lora_bi_encoder_resumes_from_an_adapter_checkpoint(base: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    hp = _lora(max_steps=5)
    task = BiEncoderTask(base, EXAMPLES, PRODUCTS, 16, base_dir=base, adapter=hp)
    # a bi-encoder pools tokens itself: no adapter on the pooler, whose weights would get no gradient
    assert not any("pooler" in n for n, p in task.model.named_parameters() if p.requires_grad)
    _train(task, hp, work)
    saved = checkpoint_model(work)
    assert saved is not None and (saved / "adapter_config.json").is_file()
    state, _ = load_checkpoint(work)
    assert state is not None and state["step"] == 4  # the last step's model is the result, not a checkpoint
    size = sum(p.stat().st_size for p in saved.iterdir() if p.name.startswith("adapter"))
    assert size < sum(p.stat().st_size for p in Path(base).glob("*.safetensors"))

    longer = _lora(max_steps=7)
    resumed = BiEncoderTask(str(saved), EXAMPLES, PRODUCTS, 16, base_dir=base, adapter=longer)
    result = fit(resumed, longer, CPU, JobControl(), work, checkpoint_interval_s=3600)
    assert result.resumed_from_step == 4 and result.steps == 7


def test_query_tower_only_embeds_products_with_the_base_model(base: str, tmp_path: Path) -> None:
    hp = _lora(max_steps=6, query_tower_only=True)
    task = BiEncoderTask(base, EXAMPLES, PRODUCTS, 16, base_dir=base, adapter=hp)
    _train(task, hp, tmp_path / "work")
    texts = list(PRODUCTS.values())[:5]
    task.texts.add(texts)
    plain = AutoModel.from_pretrained(base).eval()
    task.model.eval()
    with torch.no_grad():
        batch = task.texts.batch(texts, CPU)
        base_vectors = mean_pool(plain(**batch).last_hidden_state, batch["attention_mask"])
        torch.testing.assert_close(task.encode_products(texts, CPU), base_vectors)
        assert not torch.allclose(task.encode(texts, CPU), base_vectors, atol=1e-4)  # the query side learned


def test_adapter_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="applies with adapter: lora"):
        Hyperparameters.model_validate({"lora_r": 4})
    with pytest.raises(ValueError, match="last names"):
        Hyperparameters.model_validate({"adapter": "lora", "target_modules": ["encoder.layer.0"]})
    assert Hyperparameters().peak_learning_rate == 5e-5
    assert Hyperparameters(adapter="lora").peak_learning_rate == 2e-4
    assert Hyperparameters(adapter="lora", learning_rate=1e-3).peak_learning_rate == 1e-3
    tower = Hyperparameters(adapter="lora", query_tower_only=True)
    assert hyperparameter_problem(JobType.cross_encoder, tower) is not None
    assert hyperparameter_problem(JobType.bi_encoder, tower) is None
    assert hyperparameter_problem(JobType.export, Hyperparameters(adapter="lora")) is not None


def test_targets_that_match_nothing_say_what_to_name(base: str) -> None:
    hp = _lora(target_modules=["attention_out"])
    with pytest.raises(ValueError, match="query, key, value, dense"):
        BiEncoderTask(base, EXAMPLES, PRODUCTS, 16, base_dir=base, adapter=hp)


async def test_lora_jobs_run_through_the_queue(world: World, settings: Settings, tiny_model: Path) -> None:
    await world.call("owner", "PATCH", P, json={"budget": {"cpu_hours": 10, "gpu_hours": 0}})
    catalog, judgments = shop_data()
    await upload(world, "catalog.csv", catalog, "catalog")
    version = await upload(world, "judgments.csv", judgments, "relevance")
    refused = await world.call(
        "member",
        "POST",
        f"{P}/training-jobs",
        json={
            "job_type": "cross_encoder",
            "dataset_version_id": version,
            "hyperparameters": {"adapter": "lora", "query_tower_only": True},
        },
    )
    assert refused.status_code == 422 and "query_tower_only" in refused.text, refused.text
    lora = {"adapter": "lora", "lora_r": 4, "max_steps": 10, "batch_size": 16, "max_length": 24}
    versions = await train(
        world,
        settings,
        [
            {
                "job_type": job_type,
                "dataset_version_id": version,
                "base_model": str(tiny_model),
                "hyperparameters": lora,
            }
            for job_type in ("bi_encoder", "cross_encoder")
        ],
    )
    for version_id in versions:
        model = (await world.call("member", "GET", f"/api/v1/model-versions/{version_id}")).json()
        assert model["hyperparameters"]["adapter"] == "lora"
        export = model["compute"]["export"]
        assert export["parity_max_abs_diff"] <= 1e-4  # the merged model's graph against torch
        adapter = model["artifacts"]["adapter"]
        assert adapter["kind"] == "lora" and adapter["r"] == 4
        files = adapter["files"]
        assert set(files) == {"adapter_config.json", "adapter_model.safetensors"}
        for entry in files.values():
            assert (settings.data_dir / entry["path"]).stat().st_size == entry["bytes"]
        graph = settings.data_dir / model["artifacts"]["model"]["path"]
        assert files["adapter_model.safetensors"]["bytes"] < graph.stat().st_size
