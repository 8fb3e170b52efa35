"""Preference losses as pure functions of per-sequence log-probabilities.

Every loss takes ``log pi(y | x)`` of the policy and the reference for the chosen (w) and rejected (l) answer,
tensors of shape ``(B,)``, and returns the per-pair loss ``(B,)``; the caller averages. Write
``rho_w = log pi(y_w|x) - log pi_ref(y_w|x)`` and ``rho_l`` likewise, and ``h = rho_w - rho_l``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossName = Literal["sigmoid", "ipo", "hinge", "kto"]


def log_ratio_margin(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor) -> Tensor:
    """h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))."""
    return (policy_w - ref_w) - (policy_l - ref_l)


def dpo_sigmoid_loss(
    policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float, label_smoothing: float = 0.0
) -> Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): -log sigma(beta h).

    With ``label_smoothing`` eps, conservative DPO (Mitchell 2023): the label is flipped with probability eps,
    -(1 - eps) log sigma(beta h) - eps log sigma(-beta h).
    """
    logits = beta * log_ratio_margin(policy_w, policy_l, ref_w, ref_l)
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo_loss(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17, the empirical loss with tau = beta): (h - 1 / (2 beta))^2.

    The IPO paper leaves open how an answer's log-probability is aggregated; trl divides it by the answer's length
    (0.8, which the motion paper ran, and 1.16 alike), the DPO trainer's default (``algo.dpo.ipo_form: mean``),
    while ``sum`` keeps log pi(y | x) itself. The caller aggregates: h is whatever margin its inputs make."""
    return (log_ratio_margin(policy_w, policy_l, ref_w, ref_l) - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float) -> Tensor:
    """SLiC-HF's calibration loss on the reference-normalised margin (Zhao et al. 2023, as trl's "hinge"):
    max(0, 1 - beta h)."""
    return torch.relu(1.0 - beta * log_ratio_margin(policy_w, policy_l, ref_w, ref_l))


def kto_pair_loss(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float) -> Tensor:
    """Paired KTO as trl 0.8's ``kto_pair`` ran it (Ethayarajh et al. 2024, eq. 8 with pairs).

    The reference point z is the batch's mean log-ratio, clamped at 0: z_w = max(0, mean(rho_w)) and
    z_l = max(0, mean(rho_l)). A chosen answer is pushed above the rejected reference point and a rejected one
    below the chosen reference point; trl concatenated the 2B terms and averaged them, so one pair's loss is
    the mean of its two terms: ((1 - sigma(beta (rho_w - z_l))) + (1 - sigma(beta (z_w - rho_l)))) / 2.
    """
    rho_w, rho_l = policy_w - ref_w, policy_l - ref_l
    z_w, z_l = rho_w.mean().clamp(min=0), rho_l.mean().clamp(min=0)
    chosen = 1.0 - torch.sigmoid(beta * (rho_w - z_l))
    rejected = 1.0 - torch.sigmoid(beta * (z_w - rho_l))
    return (chosen + rejected) / 2.0


def preference_loss(
    name: LossName,
    policy_w: Tensor,
    policy_l: Tensor,
    ref_w: Tensor,
    ref_l: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """The DPO-family loss ``name`` (per pair)."""
    if name == "sigmoid":
        return dpo_sigmoid_loss(policy_w, policy_l, ref_w, ref_l, beta, label_smoothing)
    if label_smoothing:
        raise ValueError(f"label_smoothing applies to the sigmoid loss only, not {name!r}")
    if name == "ipo":
        return ipo_loss(policy_w, policy_l, ref_w, ref_l, beta)
    if name == "hinge":
        return hinge_loss(policy_w, policy_l, ref_w, ref_l, beta)
    if name == "kto":
        return kto_pair_loss(policy_w, policy_l, ref_w, ref_l, beta)
    raise ValueError(f"unknown preference loss {name!r}; expected sigmoid, ipo, hinge or kto")


def sft_loss(policy_w_sum: Tensor, lengths: Tensor) -> Tensor:
    """RPO's negative log-likelihood term on the chosen answers (Pang et al. 2024, eq. 1), averaged per token
    over the batch as trl's ``loss_type="sft"`` does: -sum_i log pi(y_w^i | x^i) / sum_i |y_w^i|. Takes summed
    log-probabilities ``(B,)`` and answer lengths ``(B,)``; returns a scalar. Added to a preference loss it
    keeps the chosen answers likely, which DPO alone lets fall along with the rejected ones."""
    return -policy_w_sum.sum() / lengths.sum()


def implicit_rewards(policy: Tensor, ref: Tensor, beta: float) -> Tensor:
    """DPO's implicit reward beta (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al. 2023, eq. 5), detached."""
    return (beta * (policy - ref)).detach()


def sopo_weight(similarity: Tensor, beta: float, c: float = 2.0) -> Tensor:
    """SoPo's preferred-term coefficient beta_w = beta (C - S(x_w)) (Tan et al. 2024, Eq. 14), where S(x_w), a
    retrieval score in [0, 1] (cosine / 2 + 1/2), is the dataset motion's similarity to the online samples, the
    least similar one by default (the authors' code takes the min): the further the policy is from the dataset
    motion, the harder it is pulled towards it (beta_w runs from beta (C - 1) to beta C)."""
    return beta * (c - similarity)


def sopo_loss(
    policy_w: Tensor,
    ref_w: Tensor,
    policy_l: Tensor,
    ref_l: Tensor,
    beta_w: Tensor,
    beta: float,
    valuable: Tensor,
) -> Tensor:
    """SoPo for a token policy (Tan et al. 2024): a semi-online pair, the dataset motion w against the
    lowest-scored online sample l.

    valuable (the sample scores below tau): -log sigma(beta_w rho_w - beta rho_l), the DPO loss with the
    preferred term reweighted; otherwise only the preferred term trains, -log sigma(beta_w rho_w). ``beta_w``
    is ``(B,)`` (``sopo_weight``, or ``beta`` everywhere for the unweighted variants); ``valuable`` is a
    ``(B,)`` bool.
    """
    preferred = beta_w * (policy_w - ref_w)
    unpreferred = beta * (policy_l - ref_l)
    return -F.logsigmoid(preferred - torch.where(valuable, unpreferred, torch.zeros_like(unpreferred)))


def diffusion_dpo_loss(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float) -> Tensor:
    """Diffusion-DPO (Wallace et al. 2023, Eq. 14 as their code computes it), on per-sample denoising losses
    ``l(x) = ||target - prediction||^2`` (mean over elements) of the policy and the reference at ONE timestep and
    noise shared by the pair: -log sigma(-beta/2 ((l_theta(w) - l_ref(w)) - (l_theta(l) - l_ref(l)))).

    A lower denoising loss than the reference's plays the part of a higher log-likelihood: -(l_theta - l_ref)
    is the diffusion log-ratio rho, so this is DPO's -log sigma(beta/2 (rho_w - rho_l)). The paper's timestep
    weighting T omega(lambda_t) is absorbed in beta (their 5000 for Stable Diffusion)."""
    inside = (policy_w - ref_w) - (policy_l - ref_l)
    return -F.logsigmoid(-0.5 * beta * inside)


def bradley_terry_loss(
    chosen: Tensor, rejected: Tensor, margin: Tensor | None = None, center_coefficient: float | None = None
) -> Tensor:
    """Per-pair reward-model loss ``(B,)``: the Bradley-Terry negative log-likelihood (Ouyang et al. 2022, eq. 1)
    with Llama 2's margin (Touvron et al. 2023, eq. 2), -log sigma(r_w - r_l - m), plus, when a coefficient eta
    is given, the reward-centring term eta (r_w + r_l)^2 (Eisenstein et al. 2023). Its batch mean is exactly
    the objective trl's ``RewardTrainer.compute_loss`` optimises, so validation and training losses compare."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff)
    if center_coefficient is not None:
        loss = loss + center_coefficient * (chosen + rejected) ** 2
    return loss
