"""Offline preference optimisation of the policy on labelled pairs: DPO and its variants (IPO, hinge, KTO).

The reference is frozen, so its log-probabilities of every training and validation answer are computed once
before the first step. Each epoch ends with a validation pass (loss, preference accuracy of the implicit
reward, per degree) and, when the data carries a ``val_score``, the policy's score on held-out motion metrics;
the epoch best by ``select_by`` is the one kept. The paper kept the epoch with the best HumanML3D validation
metrics (``val_metric``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import get_linear_schedule_with_warmup

from motionpref.config import DPOConfig
from motionpref.distributed import bare_model, reduce_sum, share_to_train, share_weight
from motionpref.models.policy import MotionPolicy
from motionpref.progress import track
from motionpref.train.losses import implicit_rewards, preference_loss, sft_loss
from motionpref.train.preference import (
    FinetuneJob,
    PreferencePair,
    Reference,
    ValScore,
    pair_logprobs,
    trainable_state,
)


@dataclass
class DPOData:
    """The policy to finetune and its labelled pairs: ``train`` to learn from, ``val`` to validate on.

    ``val_score`` (higher is better) scores the policy after every epoch; ``select_by: val_metric`` needs it.
    """

    policy: MotionPolicy
    train: Sequence[PreferencePair]
    val: Sequence[PreferencePair]
    val_score: ValScore | None = None


def logprob_reduction(config: DPOConfig) -> str:
    """IPO scores answers by their mean token log-probability by default (``ipo_form: mean``: trl 0.8, with which
    the paper ran it, and trl since) or, with ``ipo_form: sum``, by log pi(y | x) itself as every other loss
    does. Per token, the target margin 1 / (2 beta) is 5 nats at beta 0.1, which the policy never nears: the
    squared loss then acts as a linear one."""
    return config.ipo_form if config.loss == "ipo" else "sum"


def batch_logprobs(
    policy: MotionPolicy, pairs: Sequence[PreferencePair], reduction: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The policy's log-probabilities of each pair's chosen and rejected answer under ``reduction``, plus the
    chosen answers' summed log-probabilities and lengths (for the SFT term) from the same forward pass."""
    sum_w, sum_l = pair_logprobs(
        policy, [p.caption for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs], "sum"
    )
    len_w, len_l = (
        torch.tensor([len(policy.target_ids(a)) for a in answers], dtype=sum_w.dtype, device=sum_w.device)
        for answers in ([p.chosen for p in pairs], [p.rejected for p in pairs])
    )
    if reduction == "mean":
        return sum_w / len_w, sum_l / len_l, sum_w, len_w
    return sum_w, sum_l, sum_w, len_w


def dpo_objective(
    config: DPOConfig,
    policy_w: torch.Tensor,
    policy_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    sum_w: torch.Tensor,
    len_w: torch.Tensor,
    beta: float,
    pair_weight: float = 1.0,
    token_weight: float = 1.0,
) -> torch.Tensor:
    """The batch loss: the DPO-family loss, plus ``config.sft_weight`` times the NLL of the chosen answers (RPO).

    A launched process passes the share weights (``distributed.share_weight``) of its pairs and of its chosen
    answers' tokens, so that DDP's mean of the processes' gradients is the global batch's."""
    loss = preference_loss(config.loss, policy_w, policy_l, ref_w, ref_l, beta, config.label_smoothing).mean()
    loss = loss * pair_weight
    if config.sft_weight:
        loss = loss + config.sft_weight * sft_loss(sum_w, len_w) * token_weight
    return loss


def reference_logprobs(
    reference: Reference, pairs: Sequence[PreferencePair], reduction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    captions = [p.caption for p in pairs]
    return (
        reference.logprobs(captions, [p.chosen for p in pairs], reduction),
        reference.logprobs(captions, [p.rejected for p in pairs], reduction),
    )


def pair_accuracy(margin: torch.Tensor) -> torch.Tensor:
    """1 where the implicit reward ranks the chosen answer first, 0 where it ranks it last, 1/2 on a tie (the
    reference itself ties every pair: it scores 0.5, not 0)."""
    return (margin > 0).float() + 0.5 * (margin == 0).float()


@torch.no_grad()
def evaluate_pairs(
    policy: MotionPolicy,
    pairs: Sequence[PreferencePair],
    ref: tuple[torch.Tensor, torch.Tensor],
    config: DPOConfig,
    beta: float,
) -> dict[str, float]:
    """Mean loss, preference accuracy (implicit reward of the chosen answer above the rejected one) and
    reward margin, overall and per degree."""
    was_training = policy.model.training
    policy.model.eval()
    losses, correct, margins = [], [], []
    for begin in range(0, len(pairs), config.batch_size):
        chunk = pairs[begin : begin + config.batch_size]
        pw, pl, sum_w, len_w = (t.cpu() for t in batch_logprobs(policy, chunk, logprob_reduction(config)))
        rw, rl = ref[0][begin : begin + len(chunk)], ref[1][begin : begin + len(chunk)]
        losses.append(dpo_objective(config, pw, pl, rw, rl, sum_w, len_w, beta).expand(len(chunk)))
        margin = implicit_rewards(pw, rw, beta) - implicit_rewards(pl, rl, beta)
        margins.append(margin)
        correct.append(pair_accuracy(margin))
    policy.model.train(was_training)
    loss, acc, margin = torch.cat(losses), torch.cat(correct), torch.cat(margins)
    out = {"loss": loss.mean().item(), "accuracy": acc.mean().item(), "margin": margin.mean().item()}
    degrees = [p.degree for p in pairs]
    for degree in sorted(set(degrees)):
        mask = torch.tensor([d == degree for d in degrees])
        out[f"accuracy_{degree}"] = acc[mask].mean().item()
    return out


def run(job: FinetuneJob, config: DPOConfig, data: DPOData) -> dict[str, float]:
    """Finetune ``data.policy`` in place with the DPO-family loss ``config.loss`` and ``job.beta``; save the
    epoch best by ``config.select_by`` (adapters merged) to ``job.out_dir`` and leave the policy holding it.

    Returns the best epoch's validation metrics (``val_*``; ``val_metric`` is ``data.val_score``'s, when given),
    ``best_epoch``, the last epoch's train loss and accuracy, and the preference validation metrics before
    training (``val0_*``: the reference itself).
    """
    policy, train, val = data.policy, data.train, data.val
    beta = job.require_beta("dpo")
    if not train or not val:
        raise ValueError(f"dpo needs training and validation pairs (got {len(train)} and {len(val)})")
    if config.select_by == "val_metric" and data.val_score is None:
        raise ValueError(
            "dpo: select_by val_metric needs a val_score (the finetune stage builds it from the evaluator); "
            "pass one, or set algo.dpo.select_by to val_loss or val_accuracy"
        )
    torch.manual_seed(job.seed)
    reference, params, optimiser = job.start(policy, config.lr, config.weight_decay)
    accel = job.accelerator
    reduction = logprob_reduction(config)
    # passes that do not train run on the bare model, whole in every launched process (no collective to join)
    with bare_model(policy, accel):
        ref_train = reference_logprobs(reference, train, reduction)
        ref_val = reference_logprobs(reference, val, reduction)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.epochs * steps_per_epoch
    scheduler = get_linear_schedule_with_warmup(optimiser, min(config.warmup_steps, total), total)

    selected = config.select_by.removeprefix("val_")
    higher_is_better = selected in ("accuracy", "metric")
    with bare_model(policy, accel):
        initial = evaluate_pairs(policy, val, ref_val, config, beta)
    best: dict[str, float] = {}
    best_state: dict[str, torch.Tensor] = {}
    rng = random.Random(job.seed)
    step = 0
    last: dict[str, float] = {}
    for epoch in range(1, config.epochs + 1):
        policy.model.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        loss_sum = acc_sum = 0.0
        for begin in track(range(0, len(order), config.batch_size), f"{config.loss} epoch {epoch}", steps_per_epoch):
            rows = order[begin : begin + config.batch_size]
            part, counted, pair_weight = share_to_train(rows, accel)
            pw, pl, sum_w, len_w = batch_logprobs(policy, [train[i] for i in part], reduction)
            device = pw.device
            rw, rl = ref_train[0][part].to(device), ref_train[1][part].to(device)
            token_weight = 1.0
            if config.sft_weight:  # the SFT term is a token mean: weighted by this share's chosen tokens
                chosen_tokens = len_w.sum().item() if counted else 0
                token_weight = share_weight(chosen_tokens, reduce_sum(chosen_tokens, accel), accel)
            loss = dpo_objective(config, pw, pl, rw, rl, sum_w, len_w, beta, pair_weight, token_weight)
            optimiser.zero_grad(set_to_none=True)
            accel.backward(loss)
            accel.clip_grad_norm_(params, config.grad_clip)
            optimiser.step()
            scheduler.step()
            step += 1
            margin = implicit_rewards(pw, rw, beta) - implicit_rewards(pl, rl, beta)
            batch_loss = reduce_sum(loss.item(), accel) / accel.num_processes  # the global batch's loss
            loss_sum += batch_loss * len(rows)
            acc_sum += reduce_sum(pair_accuracy(margin).sum().item() if counted else 0, accel)
            job.log("dpo/train_loss", batch_loss, step)
            job.log("dpo/train_margin", reduce_sum(margin.sum().item() if counted else 0, accel) / len(rows), step)
        last = {"train_loss": loss_sum / len(train), "train_accuracy": acc_sum / len(train)}
        with bare_model(policy, accel):
            val_metrics = evaluate_pairs(policy, val, ref_val, config, beta)
        if data.val_score is not None:
            val_metrics["metric"] = job.score(policy, data.val_score)
        for k, v in val_metrics.items():
            job.log(f"dpo/val_{k}", v, step)
        job.log("dpo/epoch_train_loss", last["train_loss"], step)
        value = val_metrics[selected]
        # a trained epoch is always kept, even where the reference (a tie on every pair) scored better
        if not best or (value > best[f"val_{selected}"] if higher_is_better else value < best[f"val_{selected}"]):
            best = {f"val_{k}": v for k, v in val_metrics.items()}
            best["best_epoch"] = float(epoch)
            best_state = trainable_state(accel.unwrap_model(policy.model))
    job.finish(policy, best_state)
    initial = {f"val0_{k}": v for k, v in initial.items()}
    return {**last, **best, **initial, "epochs": float(config.epochs), "train_pairs": len(train)}
