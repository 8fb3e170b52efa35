from __future__ import annotations

import json
import math
import random
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch
from trl import RewardTrainer

from motionpref.config import RewardTrainConfig, parse_params
from motionpref.models.policy import MotionPolicy
from motionpref.models.reward import METADATA_FILE, RewardModel
from motionpref.pipeline import StageContext
from motionpref.prefs.labels import DEGREES
from motionpref.train.losses import bradley_terry_loss
from motionpref.train.preference import PreferencePair, preference_pairs
from motionpref.train.reward import evaluate_reward, preference_dataset, reward_config, train_reward
from tests.policies import ARCHS, CAPTIONS, K
from tests.policies import tiny_policy as tiny_policy_without_dropout

MARGINS = {"much_better": 3.0, "better": 2.0, "slightly_better": 1.0, "negligible": 0.0}
GOOD_CODE = 3  # the toy labeler prefers motions made of this code


# these tests train with dropout on, as a real SFT policy has it
tiny_policy = partial(tiny_policy_without_dropout, dropout=0.1)


@pytest.fixture(scope="module", params=ARCHS)
def policy(request: pytest.FixtureRequest) -> MotionPolicy:
    return tiny_policy(request.param)


def backbone(model: torch.nn.Module, arch: str, policy_side: bool) -> dict[str, torch.Tensor]:
    if arch == "t5":
        module = model if policy_side else model.transformer
        return {k: v for k, v in module.state_dict().items() if not k.startswith("lm_head.")}
    return model.model.state_dict()


def toy_table(n_train: int, n_val: int, seed: int = 0) -> pd.DataFrame:
    """Chosen = mostly GOOD_CODE, rejected = random other codes; degrees cycle so every split has all four."""
    rng = random.Random(seed)
    records = []
    for i in range(n_train + n_val):
        n = rng.randint(3, 6)
        chosen = [GOOD_CODE if rng.random() < 0.8 else rng.randrange(K) for _ in range(n)]
        rejected = [rng.choice([c for c in range(K) if c != GOOD_CODE]) for _ in range(rng.randint(3, 6))]
        degree = DEGREES[i % len(DEGREES)]
        records.append(
            {
                "pair_id": f"pair-{i:03d}",
                "prompt": CAPTIONS[i % len(CAPTIONS)],
                "chosen_tokens": chosen,
                "rejected_tokens": rejected,
                "degree": degree,
                "margin": MARGINS[degree],
                "split": "train" if i < n_train else "val",
            }
        )
    return pd.DataFrame.from_records(records)


def test_from_policy_copies_the_transformer_and_seeds_a_fresh_head(policy: MotionPolicy) -> None:
    reward = RewardModel.from_policy(policy, seed=0)
    theirs, ours = backbone(policy.model, policy.arch, True), backbone(reward.model, policy.arch, False)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    layer = (
        "encoder.block.0.layer.0.SelfAttention.q.weight" if policy.arch == "t5" else "layers.0.self_attn.q_proj.weight"
    )
    with torch.no_grad():  # a copy, not a view: training the reward model leaves the policy alone
        ours[layer].add_(1.0)
    assert not torch.equal(ours[layer], theirs[layer])

    prefix = "transformer." if policy.arch == "t5" else "model."
    head = {k: v for k, v in reward.model.state_dict().items() if not k.startswith(prefix)}
    assert head and all(k.startswith(("classification_head.", "score.")) for k in head)
    same = RewardModel.from_policy(policy, seed=0).model.state_dict()
    other = RewardModel.from_policy(policy, seed=1).model.state_dict()
    assert all(torch.equal(head[k], same[k]) for k in head)
    assert any(not torch.equal(head[k], other[k]) for k in head)
    assert reward.model.config.num_labels == 1 and reward.codebook_size == K and reward.arch == policy.arch
    dropouts = [m.p for m in reward.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert all(p == 0.0 for p in dropouts) and getattr(reward.model.config, "attention_dropout", 0.0) == 0.0


def test_input_ids_are_the_policy_layout(policy: MotionPolicy) -> None:
    reward = RewardModel.from_policy(policy)
    prompt = reward.prompt("a man walks forward")
    assert prompt == policy.prompt("a man walks forward")
    [ids] = reward.input_ids([prompt], [[1, 2, 3]])
    assert ids == policy.prompt_ids([prompt])[0] + policy.target_ids([1, 2, 3])
    with pytest.raises(ValueError, match="2 prompts but 1 code"):
        reward.input_ids([prompt, prompt], [[1]])
    with pytest.raises(ValueError, match=f"motion code {K} outside"):
        reward.input_ids([prompt], [[K]])


def test_score_shape_determinism_and_batch_independence(policy: MotionPolicy) -> None:
    reward = RewardModel.from_policy(policy)
    reward.model.train()
    prompts = [reward.prompt(c) for c in CAPTIONS[:3]]
    codes = [[1, 2], [5, 5, 5, 5, 5, 9, 0], [7]]
    scores = reward.score(prompts, codes)
    assert scores.shape == (3,) and scores.dtype == torch.float32 and not scores.requires_grad
    assert torch.equal(scores, reward.score(prompts, codes))
    one_by_one = reward.score(prompts, codes, batch_size=1)
    assert torch.allclose(scores, one_by_one, atol=1e-5)
    assert len(set(scores.tolist())) == 3  # the prompt and the motion both reach the head
    assert reward.model.training  # the caller's mode is restored


def test_save_load_round_trip(tmp_path: Path, policy: MotionPolicy) -> None:
    reward = RewardModel.from_policy(policy, seed=3)
    reward.save(tmp_path / "rm")
    loaded = RewardModel.load(tmp_path / "rm")
    prompts = [reward.prompt(c) for c in CAPTIONS]
    codes = [[1, 2], [3], [4, 5, 6], [0, 15]]
    assert torch.equal(loaded.score(prompts, codes), reward.score(prompts, codes))
    assert (loaded.arch, loaded.codebook_size, loaded.default_template) == (
        reward.arch,
        K,
        reward.default_template,
    )
    assert loaded.input_ids(prompts, codes) == reward.input_ids(prompts, codes)
    assert not list(tmp_path.glob(".rm.*"))  # no temp folder left behind


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"missing/{METADATA_FILE}: not found"):
        RewardModel.load(tmp_path / "missing")
    tiny_policy().save(tmp_path / "policy")
    with pytest.raises(FileNotFoundError, match=METADATA_FILE):  # a policy is not a reward model
        RewardModel.load(tmp_path / "policy")
    RewardModel.from_policy(tiny_policy()).save(tmp_path / "rm")
    meta_path = tmp_path / "rm" / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format": "other/9"}))
    with pytest.raises(ValueError, match="format 'other/9', expected 'motionpref.reward/1'"):
        RewardModel.load(tmp_path / "rm")
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "rm" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="rm/model.safetensors: not found"):
        RewardModel.load(tmp_path / "rm")


def test_bradley_terry_loss_by_hand() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    plain = bradley_terry_loss(chosen, rejected)
    assert plain.tolist() == pytest.approx([-math.log(sig(1.0)), -math.log(sig(-1.0))], abs=1e-6)
    margin = bradley_terry_loss(chosen, rejected, torch.tensor([3.0, 0.0]))
    assert margin.tolist() == pytest.approx([-math.log(sig(-2.0)), -math.log(sig(-1.0))], abs=1e-6)
    centred = bradley_terry_loss(chosen, rejected, None, center_coefficient=0.1)
    assert (centred - plain).tolist() == pytest.approx([0.1 * 9.0, 0.1 * 1.0], abs=1e-6)


def test_preference_pairs_and_their_errors() -> None:
    table = toy_table(6, 2)
    rows = preference_pairs(table, "val")
    assert [r.pair_id for r in rows] == ["pair-006", "pair-007"]
    assert rows[0] == PreferencePair(
        "pair-006",
        CAPTIONS[2],
        tuple(table.loc[6, "chosen_tokens"]),
        tuple(table.loc[6, "rejected_tokens"]),
        "better",
        2.0,
    )
    with pytest.raises(
        ValueError, match=r"prefs\.parquet: no preferences in split 'val' \(splits present: \['train'\]"
    ):
        preference_pairs(table[table["split"] == "train"], "val", source="prefs.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['margin'\]"):
        preference_pairs(table.drop(columns="margin"), "train")
    bad = table.copy()
    bad.loc[1, "degree"] = "amazing"
    with pytest.raises(ValueError, match="pair 'pair-001': degree 'amazing' is not one of"):
        preference_pairs(bad, "train")


@pytest.mark.parametrize("use_margin", [True, False])
def test_margin_column_reaches_trl_and_our_loss_is_its_objective(tmp_path: Path, use_margin: bool) -> None:
    reward = RewardModel.from_policy(tiny_policy("t5"), seed=0)
    rows = preference_pairs(toy_table(16, 0), "train")
    config = RewardTrainConfig(use_margin=use_margin)
    dataset = preference_dataset(reward, rows, config)
    assert ("margin" in dataset.column_names) == use_margin
    if use_margin:
        assert dataset["margin"] == [r.margin for r in rows]
    trainer = RewardTrainer(
        model=reward.model,
        args=reward_config(config, 0, tmp_path, steps_per_epoch=1),
        train_dataset=dataset,
        processing_class=reward.tokenizer,
    )
    theirs = trainer.evaluate(dataset)
    ours = evaluate_reward(reward, rows, config)
    assert ours["loss"] == pytest.approx(theirs["eval_loss"], rel=1e-5)
    assert ours["accuracy"] == pytest.approx(theirs["eval_accuracy"], abs=1e-6)
    without = evaluate_reward(reward, rows, config.model_copy(update={"use_margin": not use_margin}))
    assert (ours["loss"] > without["loss"]) == use_margin  # margins of 0..3 can only raise the loss
    assert {f"accuracy_{d}" for d in DEGREES} <= ours.keys() and {f"loss_{d}" for d in DEGREES} <= ours.keys()


@pytest.mark.parametrize("arch", ARCHS)
def test_training_learns_the_toy_preference(tmp_path: Path, arch: str) -> None:
    reward = RewardModel.from_policy(tiny_policy(arch), seed=0)
    table = toy_table(96, 32)
    train, val = preference_pairs(table, "train"), preference_pairs(table, "val")
    config = RewardTrainConfig(epochs=3, batch_size=16, lr=3e-3)
    assert evaluate_reward(reward, val, config)["accuracy"] < 0.9
    logged: list[tuple[str, float, int]] = []
    metrics = train_reward(reward, train, val, config, 0, tmp_path / "rm", lambda *a: logged.append(a))

    assert metrics["val_accuracy"] > 0.9 and metrics["epochs"] == 3 and metrics["steps"] == 18
    assert 1 <= metrics["best_epoch"] <= 3
    for degree in DEGREES:
        assert 0.0 <= metrics[f"val_accuracy_{degree}"] <= 1.0
        assert f"train_accuracy_{degree}" in metrics
    names = [name for name, _, _ in logged]
    for name in ("reward/val_loss", "reward/val_accuracy", "reward/train_accuracy", "reward/train_loss"):
        assert names.count(name) == 3, name  # once per epoch
    for degree in DEGREES:
        assert names.count(f"reward/val_accuracy_{degree}") == 3 and names.count(f"reward/val_loss_{degree}") == 3
    assert "reward/step_loss" in names
    val_losses = [value for name, value, _ in logged if name == "reward/val_loss"]
    assert metrics["val_loss"] == pytest.approx(min(val_losses))
    assert val_losses.index(min(val_losses)) + 1 == metrics["best_epoch"]
    # the saved model is the best epoch, and the object in hand holds the same weights
    loaded = RewardModel.load(tmp_path / "rm")
    assert evaluate_reward(loaded, val, config)["loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)
    assert not reward.model.training


def test_training_is_deterministic(tmp_path: Path) -> None:
    table = toy_table(32, 8)
    train, val = preference_pairs(table, "train"), preference_pairs(table, "val")
    config = RewardTrainConfig(epochs=1, batch_size=8, lr=1e-3)
    runs = []
    for name in ("a", "b"):
        reward = RewardModel.from_policy(tiny_policy("t5"), seed=5)
        runs.append(train_reward(reward, train, val, config, 7, tmp_path / name))
    assert runs[0] == runs[1]


def test_train_reward_rejects_bad_input(tmp_path: Path) -> None:
    reward = RewardModel.from_policy(tiny_policy("t5"))
    rows = preference_pairs(toy_table(4, 0), "train")
    config = RewardTrainConfig(epochs=1)
    with pytest.raises(ValueError, match="no validation pairs"):
        train_reward(reward, rows, [], config, 0, tmp_path / "rm")
    with pytest.raises(ValueError, match="no training pairs"):
        train_reward(reward, [], rows, config, 0, tmp_path / "rm")
    with pytest.raises(ValueError, match=r"pair-000.*> reward\.train\.max_length 8"):
        train_reward(reward, rows, rows, RewardTrainConfig(max_length=8), 0, tmp_path / "rm")
    with pytest.raises(ValueError, match=f"val pair 'x': motion code {K} outside"):
        train_reward(reward, rows, [PreferencePair("x", "a man", (K,), (1,), "better", 2.0)], config, 0, tmp_path)
    assert not (tmp_path / "rm").exists()


class RecordingRun:
    def __init__(self) -> None:
        self.metrics: list[tuple[str, float, int]] = []

    def log_metric(self, name: str, value: float, step: int) -> None:
        self.metrics.append((name, value, step))


def test_stage_trains_saves_and_reports(tmp_path: Path) -> None:
    from motionpref.pipeline import train_reward as stage

    tiny_policy("t5").save(tmp_path / "data/models/policy_sft")
    prefs_path = tmp_path / "data/prefs/preferences.parquet"
    prefs_path.parent.mkdir(parents=True)
    table = toy_table(16, 8)
    table[table["split"] == "train"].to_parquet(prefs_path)
    params = parse_params({"reward": {"train": {"epochs": 1, "batch_size": 8}}})
    run = RecordingRun()
    ctx = StageContext(root=tmp_path, run=run)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"data/prefs/preferences\.parquet: no preferences in split 'val'"):
        stage.run(params, ctx)

    table.to_parquet(prefs_path)
    metrics = stage.run(params, ctx)
    report = json.loads((tmp_path / "reports/train_reward.json").read_text())
    assert report == pytest.approx(metrics) and report["train_pairs"] == 16 and report["val_pairs"] == 8
    assert metrics["parameters"] > 0
    loaded = RewardModel.load(tmp_path / "data/models/reward")
    val = preference_pairs(table, "val")
    assert evaluate_reward(loaded, val, params.reward.train)["loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)
    assert ("reward/val_accuracy", metrics["val_accuracy"], 2) in run.metrics
