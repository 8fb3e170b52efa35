"""Two processes under ``accelerate launch`` (gloo) train what one process trains: the reward model (trl's
RewardTrainer), PPO against it (finetune@rlhf) and the token policy's SoPo (finetune@sopo), each launched by
``launch.processes: 2`` through ``run_stage`` against the same stage in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from motionpref.models.policy import MotionPolicy
from motionpref.models.reward import RewardModel
from motionpref.pipeline import run_stage
from tests.distributed_fixtures import (
    LOSS_RTOL,
    WEIGHT_ATOL,
    Launched,
    assert_histories,
    in_project,
    kept,
    max_diff,
    one_and_two,
    set_smoke,
)

SFT = "data/models/policy_sft"


def _weights(runs: dict[int, Launched], out: str, load: Any) -> tuple[dict[str, torch.Tensor], ...]:
    return tuple(load(runs[n].outputs[out]).model.state_dict() for n in (1, 2))


def _assert_policies_agree(project: Path, runs: dict[int, Launched], out: str, loss: str) -> None:
    """The two runs' saved policies within WEIGHT_ATOL, while each moved from SFT, and its ``loss`` across steps,
    far more than the runs differ."""
    one, two = _weights(runs, out, MotionPolicy.load)
    assert max_diff(one, two) < WEIGHT_ATOL
    assert max_diff(one, MotionPolicy.load(project / SFT).model.state_dict()) > 10 * WEIGHT_ATOL
    losses = runs[1].history[loss]
    assert max(losses) - min(losses) > 100 * LOSS_RTOL * max(losses)


@pytest.mark.slow
def test_reward_model_in_two_processes_trains_what_one_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process reads each whole loader batch (7 pairs in batches of 4: shares of 2 + 2, then 2 + 1) and
    trains on its share, so the logged losses and the saved model are one process's."""

    def edit(params: dict[str, Any]) -> None:
        # two epochs for more steps; centring gives the head's bias a gradient: the Bradley-Terry loss sees only
        # r_w - r_l, so without it the bias's gradient is rounding noise, which Adam scales to lr-sized steps
        set_smoke(params, "reward.train", epochs=2)
        params["reward"]["train"]["center_rewards_coefficient"] = 0.01

    out = "data/models/reward"
    with kept(project, out, "reports/train_reward.json"):
        runs = one_and_two(project, monkeypatch, "train_reward", outputs=(out,), edit=edit)
    assert_histories(runs, ["reward/step_loss", "reward/step_accuracy", "reward/step_margin"])
    for key in ("reward/val_loss", "reward/train_loss", "reward/val_margin"):
        assert runs[2].metrics[key] == pytest.approx(runs[1].metrics[key], rel=LOSS_RTOL), key
    one, two = _weights(runs, out, RewardModel.load)
    sft = MotionPolicy.load(project / SFT).model.state_dict()
    diff = max_diff(one, two)
    moved = max(
        (one[k] - sft[k.removeprefix("transformer.")]).abs().max().item() for k in one if k.startswith("transformer.")
    )
    losses = runs[1].history["reward/step_loss"]
    assert diff < WEIGHT_ATOL and moved > 10 * WEIGHT_ATOL
    assert max(losses) - min(losses) > 100 * LOSS_RTOL * max(losses)


@pytest.mark.slow
def test_ppo_in_two_processes_trains_what_one_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process samples its share of every rollout (each sample from its own seed) and updates on its share of
    every mini-batch (8 captions, mini-batches of 3: uneven shares); the rollout's scores, advantages and
    whitening are the whole batch's, so the losses and the saved policy are one process's."""

    def edit(params: dict[str, Any]) -> None:
        # long enough answers that the tiny policy ends half its samples (24 tokens end none)
        ppo = dict(steps=2, batch_size=8, mini_batch_size=3, ppo_epochs=2, sampling={"max_new_tokens": 64})
        params["profiles"]["smoke"]["algo"]["ppo"].update(ppo)

    in_project(project, monkeypatch)
    if not (project / "data" / "models" / "reward").is_dir():
        run_stage("train_reward", project / "params.yaml")
    out = "data/models/policy_rlhf"
    with kept(project, out):
        runs = one_and_two(project, monkeypatch, "finetune", "rlhf", outputs=(out,), edit=edit)
    assert_histories(runs, ["ppo/policy_loss", "ppo/value_loss", "ppo/score_mean", "ppo/entropy", "ppo/approx_kl"])
    for name in ("ppo/invalid_rate", "ppo/length_mean"):
        assert runs[2].history[name] == runs[1].history[name]
    # KL to the reference is a difference of nearly equal log-probabilities: it agrees to their rounding
    assert runs[2].history["ppo/kl"] == pytest.approx(runs[1].history["ppo/kl"], rel=LOSS_RTOL, abs=1e-5)
    _assert_policies_agree(project, runs, out, "ppo/value_loss")


@pytest.mark.slow
def test_token_sopo_in_two_processes_trains_what_one_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process draws its share of every step's K online samples and trains on its share of the pairs, so
    the pairs, the losses and the saved policy are one process's."""
    out = "data/models/policy_sopo"
    with kept(project, out):
        runs = one_and_two(project, monkeypatch, "finetune", "sopo", outputs=(out,))
    assert_histories(runs, ["sopo/loss", "sopo/similarity", "sopo/best_sample_score"])
    # beta_w log pi / pi_ref: a difference of two sums of ~100 nats, which agree to their float32 rounding (the first
    # step's is 0 in one process, the policy being its reference, and 4e-6 in two)
    one, two = runs[1].history["sopo/preferred_term"], runs[2].history["sopo/preferred_term"]
    assert two == pytest.approx(one, rel=LOSS_RTOL, abs=1e-5)
    for name in ("sopo/valuable_fraction", "sopo/invalid_rate"):
        assert runs[2].history[name] == runs[1].history[name]
    _assert_policies_agree(project, runs, out, "sopo/loss")
