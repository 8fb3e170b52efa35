"""Supervised text-to-motion training of the language-model policy (MotionGPT's instruction-tuned t2m task).

Each step pairs every clip's motion tokens with one of its captions drawn at random, written into one of the
policy's instruction templates drawn at random, and minimises the token-mean cross-entropy of the answer
(start, codes, end, ``</s>``). Validation uses every caption with the default (sampling) template, once per
epoch; the checkpoint with the lowest validation loss is the one kept.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from motionpref.config import LaunchConfig, PolicyTrainConfig
from motionpref.distributed import accelerator, bare_model, reduce_sum, share_to_train, share_weight
from motionpref.models.policy import MotionPolicy
from motionpref.progress import track

if TYPE_CHECKING:
    from accelerate import Accelerator

    from motionpref.motion.dataset import Entry

LogMetric = Callable[[str, float, int], None]


@dataclass(frozen=True)
class PolicyExample:
    """One clip for the policy: its captions and its motion codes (from ``data/tokens/<name>.npy``)."""

    name: str
    captions: tuple[str, ...]
    codes: tuple[int, ...]


def load_examples(entries: Sequence[Entry], tokens_dir: str | Path, codebook_size: int) -> list[PolicyExample]:
    """Pair each dataset entry's captions with ``<tokens_dir>/<entry.name>.npy`` (int64 codes (N,))."""
    tokens_dir = Path(tokens_dir)
    examples = []
    for entry in entries:
        path = tokens_dir / f"{entry.name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no motion tokens for dataset entry {entry.name!r} (train_vqvae)")
        codes = np.load(path, allow_pickle=False)
        if codes.ndim != 1 or not np.issubdtype(codes.dtype, np.integer) or codes.size == 0:
            raise ValueError(f"{path}: expected a non-empty 1-D integer array, got {codes.dtype} {codes.shape}")
        out_of_range = codes[(codes < 0) | (codes >= codebook_size)]
        if out_of_range.size:
            raise ValueError(f"{path}: code {int(out_of_range[0])} outside [0, {codebook_size})")
        captions = tuple(c.text for c in entry.captions)
        if not captions:
            raise ValueError(f"dataset entry {entry.name!r} has no caption")
        examples.append(PolicyExample(entry.name, captions, tuple(int(c) for c in codes)))
    return examples


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def evaluate_policy(policy: MotionPolicy, examples: Sequence[PolicyExample], batch_size: int = 64) -> dict[str, float]:
    """Token-mean cross-entropy and next-token accuracy of the answers, every caption, default template."""
    pairs = [(policy.prompt(c), ex.codes) for ex in examples for c in ex.captions]
    if not pairs:
        raise ValueError("evaluate_policy: no validation examples")
    was_training = policy.model.training
    policy.model.eval()
    nll = correct = tokens = 0.0
    for rows in _batches(len(pairs), batch_size):
        scores = policy.token_scores([pairs[i][0] for i in rows], [pairs[i][1] for i in rows])
        nll -= scores.logprobs.sum().item()
        correct += scores.correct.sum().item()
        tokens += scores.mask.sum().item()
    policy.model.train(was_training)
    return {"loss": nll / tokens, "token_acc": correct / tokens}


def train_policy(
    policy: MotionPolicy,
    train: Sequence[PolicyExample],
    val: Sequence[PolicyExample],
    config: PolicyTrainConfig,
    seed: int,
    out_dir: str | Path,
    log_metric: LogMetric | None = None,
    accel: Accelerator | None = None,
) -> dict[str, float]:
    """Fine-tune ``policy`` in place on (caption, codes) pairs; keep the best-validation checkpoint in
    ``out_dir`` (``MotionPolicy.load`` reads it) and leave ``policy`` holding those weights.

    Under ``accelerate launch`` (``accel`` of several processes) each process trains on its share of every global
    batch (``motionpref.distributed``) and only the main one saves; validation runs whole in each.

    Returns ``train_loss``/``train_token_acc`` (mean over the last epoch), ``val_loss``/``val_token_acc`` of
    the best epoch, ``best_epoch`` (1-based), ``epochs`` run and ``steps``.
    """
    if not train:
        raise ValueError("train_policy: no training examples")
    if not val:
        raise ValueError("train_policy: no validation examples (the best checkpoint is chosen on them)")
    for ex in (*train, *val):
        if max(ex.codes) >= policy.codebook_size:
            raise ValueError(f"example {ex.name!r}: code {max(ex.codes)} >= codebook {policy.codebook_size}")
    torch.manual_seed(seed)
    rng = random.Random(seed)  # caption and template choices
    order_gen = torch.Generator().manual_seed(seed)
    accel = accel or accelerator(LaunchConfig())
    optimiser = torch.optim.AdamW(
        policy.model.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay
    )
    bare = policy.model
    policy.model, optimiser = accel.prepare(policy.model, optimiser)
    model = policy.model
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimiser, min(config.warmup_steps, total_steps), total_steps)

    step = 0
    best: dict[str, float] = {}
    best_state: dict[str, torch.Tensor] = {}
    last: dict[str, float] = {}
    epoch = 0
    while step < total_steps:
        epoch += 1
        model.train()
        order = torch.randperm(len(train), generator=order_gen).tolist()
        nll_sum = correct_sum = token_sum = 0.0
        for rows in track(_batches(len(order), config.batch_size), description=f"policy epoch {epoch}"):
            # the whole global batch's captions and templates are drawn in every process, so they do not depend
            # on how many processes share it
            batch = [
                (policy.prompt(rng.choice(train[order[i]].captions), rng.choice(policy.templates)), order[i])
                for i in rows
            ]
            part, counted, _ = share_to_train(batch, accel)
            scores = policy.token_scores([p for p, _ in part], [train[i].codes for _, i in part])
            n_tokens = scores.mask.sum().item() if counted else 0
            tokens = reduce_sum(n_tokens, accel)
            loss = -scores.logprobs.sum() / scores.mask.sum() * share_weight(n_tokens, tokens, accel)
            optimiser.zero_grad(set_to_none=True)
            accel.backward(loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimiser.step()
            scheduler.step()
            step += 1
            batch_loss = reduce_sum(loss.item(), accel) / accel.num_processes  # the global batch's token mean
            nll_sum += batch_loss * tokens
            correct_sum += reduce_sum(scores.correct.sum().item() if counted else 0, accel)
            token_sum += tokens
            if log_metric is not None:
                log_metric("policy/train_loss", batch_loss, step)
                log_metric("policy/lr", scheduler.get_last_lr()[0], step)
            if step >= total_steps:
                break
        last = {"train_loss": nll_sum / token_sum, "train_token_acc": correct_sum / token_sum}
        with bare_model(policy, accel):  # whole in every process: not a training pass, no collective
            val_metrics = evaluate_policy(policy, val, config.eval_batch_size)
        if log_metric is not None:
            log_metric("policy/epoch_train_loss", last["train_loss"], step)
            log_metric("policy/val_loss", val_metrics["loss"], step)
            log_metric("policy/val_token_acc", val_metrics["token_acc"], step)
        if not best or val_metrics["loss"] < best["val_loss"]:
            best = {"val_loss": val_metrics["loss"], "val_token_acc": val_metrics["token_acc"]}
            best["best_epoch"] = float(epoch)
            # Kept on CPU rather than saved each time: one write at the end, however often val improves.
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in bare.state_dict().items()}
    policy.model = bare
    policy.model.load_state_dict(best_state)
    policy.model.eval()
    if accel.is_main_process:
        policy.save(out_dir)
    return {**last, **best, "epochs": float(epoch), "steps": float(step)}
