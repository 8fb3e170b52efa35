"""Each preference loss against a hand computation in plain Python math on a few hand-picked log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from motionpref.train.losses import (
    dpo_sigmoid_loss,
    hinge_loss,
    implicit_rewards,
    ipo_loss,
    kto_pair_loss,
    log_ratio_margin,
    preference_loss,
    sft_loss,
    sopo_loss,
    sopo_weight,
)

# Three pairs with log-ratios rho_w = (0.5, -1, 1), rho_l = (-1, 0.5, -2), so h = rho_w - rho_l = (1.5, -1.5, 3).
POLICY_W = [-3.0, -5.0, -1.0]
POLICY_L = [-4.0, -2.0, -6.0]
REF_W = [-3.5, -4.0, -2.0]
REF_L = [-3.0, -2.5, -4.0]
H = [1.5, -1.5, 3.0]
BETA = 0.5


def t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def logs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return t(POLICY_W), t(POLICY_L), t(REF_W), t(REF_L)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def assert_close(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.shape == (len(expected),)
    torch.testing.assert_close(actual, t(expected), rtol=0, atol=1e-12)


# kto_pair on these pairs: mean(rho_w) = (0.5 - 1 + 1) / 3 = 1/6 > 0 is kept as z_w; mean(rho_l) = (-1 + 0.5 - 2) / 3
# < 0 is clamped to z_l = 0. Per pair: ((1 - sigma(beta (rho_w - z_l))) + (1 - sigma(beta (z_w - rho_l)))) / 2.
RHO_W, RHO_L = [0.5, -1.0, 1.0], [-1.0, 0.5, -2.0]
KTO_Z_W, KTO_Z_L = 1.0 / 6.0, 0.0
KTO_EXPECTED = [
    ((1 - sigmoid(BETA * (rw - KTO_Z_L))) + (1 - sigmoid(BETA * (KTO_Z_W - rl)))) / 2
    for rw, rl in zip(RHO_W, RHO_L, strict=True)
]


def test_log_ratio_margin() -> None:
    assert_close(log_ratio_margin(*logs()), H)


def test_dpo_sigmoid() -> None:
    # -log sigma(beta h) = log(1 + exp(-beta h))
    expected = [math.log(1.0 + math.exp(-BETA * h)) for h in H]
    assert_close(dpo_sigmoid_loss(*logs(), beta=BETA), expected)


def test_dpo_sigmoid_label_smoothing() -> None:
    eps = 0.2
    expected = [-(1 - eps) * math.log(sigmoid(BETA * h)) - eps * math.log(sigmoid(-BETA * h)) for h in H]
    assert_close(dpo_sigmoid_loss(*logs(), beta=BETA, label_smoothing=eps), expected)
    # With eps = 1/2 the label carries no information: the loss is symmetric in h.
    half = dpo_sigmoid_loss(*logs(), beta=BETA, label_smoothing=0.5)
    assert half[0].item() == pytest.approx(half[1].item(), abs=1e-12)


def test_ipo() -> None:
    # (h - 1 / (2 beta))^2 with 1 / (2 beta) = 1: (0.5^2, 2.5^2, 2^2)
    assert_close(ipo_loss(*logs(), beta=BETA), [0.25, 6.25, 4.0])


def test_hinge() -> None:
    # max(0, 1 - beta h): 1 - 0.75, 1 + 0.75, and 1 - 1.5 < 0 clipped
    assert_close(hinge_loss(*logs(), beta=BETA), [0.25, 1.75, 0.0])


def test_kto_pair_positive_chosen_mean_negative_rejected_mean() -> None:
    loss = kto_pair_loss(*logs(), beta=BETA)
    assert_close(loss, KTO_EXPECTED)
    # trl 0.8 concatenated the B chosen and B rejected terms and averaged the 2B of them.
    terms = [1 - sigmoid(BETA * (rw - KTO_Z_L)) for rw in RHO_W] + [1 - sigmoid(BETA * (KTO_Z_W - rl)) for rl in RHO_L]
    assert loss.mean().item() == pytest.approx(sum(terms) / len(terms), abs=1e-12)


def test_kto_pair_negative_chosen_mean_positive_rejected_mean() -> None:
    # rho_w = (-1, -0.5): mean -0.75 clamped to 0; rho_l = (0.4, 0.2): mean 0.3 kept.
    policy_w, ref_w = t([-2.0, -1.5]), t([-1.0, -1.0])
    policy_l, ref_l = t([-3.6, -0.8]), t([-4.0, -1.0])
    z_w, z_l = 0.0, 0.3
    beta = 0.1
    expected = [
        ((1 - sigmoid(beta * (rw - z_l))) + (1 - sigmoid(beta * (z_w - rl)))) / 2
        for rw, rl in zip([-1.0, -0.5], [0.4, 0.2], strict=True)
    ]
    assert_close(kto_pair_loss(policy_w, policy_l, ref_w, ref_l, beta=beta), expected)


def test_kto_pair_reference_point_couples_the_batch() -> None:
    # The reference point is a batch statistic: one pair's loss moves when another pair's log-ratio does.
    policy_w, policy_l, ref_w, ref_l = logs()
    before = kto_pair_loss(policy_w, policy_l, ref_w, ref_l, beta=BETA)
    after = kto_pair_loss(policy_w + t([0.0, 0.0, 3.0]), policy_l, ref_w, ref_l, beta=BETA)
    assert after[0].item() != pytest.approx(before[0].item(), abs=1e-6)


def test_implicit_rewards_are_detached() -> None:
    policy = t([-1.0, -3.0]).requires_grad_()
    rewards = implicit_rewards(policy, t([-2.0, -2.5]), beta=0.1)
    assert_close(rewards, [0.1, -0.05])
    assert not rewards.requires_grad


def test_sopo_weight() -> None:
    # beta (C - S): 0.5 (2 - 0.2), 0.5 (2 - 0.9), and C = 3 for the last
    assert_close(sopo_weight(t([0.2, 0.9]), beta=0.5), [0.9, 0.55])
    assert_close(sopo_weight(t([0.5]), beta=0.5, c=3.0), [1.25])


def test_sopo_loss_valuable_and_not() -> None:
    # rho_w = (0.5, -1), rho_l = (-1, 0.5); beta_w = (0.9, 0.55), beta = 0.5
    policy_w, ref_w = t([-3.0, -5.0]), t([-3.5, -4.0])
    policy_l = t([-4.0, -2.0]).requires_grad_()
    ref_l = t([-3.0, -2.5])
    beta_w = t([0.9, 0.55])
    kwargs = {"policy_w": policy_w, "ref_w": ref_w, "policy_l": policy_l, "ref_l": ref_l, "beta_w": beta_w}
    valuable = sopo_loss(**kwargs, beta=0.5, valuable=torch.tensor([True, True]))
    assert_close(valuable.detach(), [-math.log(sigmoid(0.9 * 0.5 + 0.5)), -math.log(sigmoid(0.55 * -1.0 - 0.25))])
    mixed = sopo_loss(**kwargs, beta=0.5, valuable=torch.tensor([True, False]))
    # The second pair's online sample is not valuable: only the preferred term, -log sigma(beta_w rho_w).
    assert_close(mixed.detach(), [-math.log(sigmoid(0.9 * 0.5 + 0.5)), -math.log(sigmoid(0.55 * -1.0))])
    (grad,) = torch.autograd.grad(mixed.sum(), policy_l)
    assert grad[0].item() != 0.0 and grad[1].item() == 0.0


def test_sopo_with_constant_weight_and_all_valuable_is_dpo() -> None:
    policy_w, policy_l, ref_w, ref_l = logs()
    everywhere = torch.full_like(policy_w, BETA)
    valuable = torch.ones(3, dtype=torch.bool)
    sopo = sopo_loss(policy_w, ref_w, policy_l, ref_l, beta_w=everywhere, beta=BETA, valuable=valuable)
    torch.testing.assert_close(sopo, dpo_sigmoid_loss(policy_w, policy_l, ref_w, ref_l, beta=BETA))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sigmoid", [math.log(1.0 + math.exp(-BETA * h)) for h in H]),
        ("ipo", [0.25, 6.25, 4.0]),
        ("hinge", [0.25, 1.75, 0.0]),
        ("kto", KTO_EXPECTED),
    ],
)
def test_preference_loss_dispatch(name: str, expected: list[float]) -> None:
    assert_close(preference_loss(name, *logs(), beta=BETA), expected)  # type: ignore[arg-type]


def test_preference_loss_label_smoothing_reaches_sigmoid() -> None:
    eps = 0.1
    expected = [-(1 - eps) * math.log(sigmoid(BETA * h)) - eps * math.log(sigmoid(-BETA * h)) for h in H]
    assert_close(preference_loss("sigmoid", *logs(), beta=BETA, label_smoothing=eps), expected)


@pytest.mark.parametrize("name", ["ipo", "hinge", "kto"])
def test_preference_loss_rejects_label_smoothing_off_sigmoid(name: str) -> None:
    with pytest.raises(ValueError, match=f"label_smoothing applies to the sigmoid loss only, not '{name}'"):
        preference_loss(name, *logs(), beta=BETA, label_smoothing=0.1)  # type: ignore[arg-type]


def test_preference_loss_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown preference loss 'dpo'; expected sigmoid, ipo, hinge or kto"):
        preference_loss("dpo", *logs(), beta=BETA)  # type: ignore[arg-type]


def test_sft_loss_is_the_token_mean_nll_of_the_chosen_answers() -> None:
    # answers of 4, 6 and 2 tokens with summed log-probabilities -3, -5, -1: -(-9) / 12 per token
    assert sft_loss(t(POLICY_W), t([4.0, 6.0, 2.0])).item() == pytest.approx(9.0 / 12.0)
