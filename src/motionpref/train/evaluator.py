"""Training of the T2M evaluator from scratch, in the two stages of Guo et al. 2022 (text-to-motion
``train_decomp_v3.py`` then ``train_tex_mot_match.py``):

1. the movement autoencoder (``MovementConvEncoder`` + ``MovementConvDecoder``) on random windows,
   L1 reconstruction + sparsity + smoothness of the movement latents;
2. the text and motion encoders, contrastively, on (caption, clip) pairs with the movement encoder
   frozen: a positive term on matched pairs and a margin term on the batch shifted by a random offset.

The evaluator's own mean/std are computed here from the training clips and saved with it.

Across launched processes (``motionpref.distributed``) every process draws each global batch whole (rows, windows,
captions, crops, the shift, the movement encoder's dropout masks) and embeds its contiguous share of it. The
autoencoder's loss is a mean over rows, weighted by ``share_weight``; the matching loss pairs each text with another
row's motion, so the embeddings are gathered with autograd (``gather_with_grad``) and every process computes the
whole batch's loss. Gradients are averaged over the processes (``average_gradients``), so every process takes the
step one process takes; only the main one saves.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from motionpref.config import EvaluatorTrainConfig, LaunchConfig
from motionpref.distributed import (
    accelerator,
    average_gradients,
    gather_with_grad,
    reduce_sum,
    share_to_train,
)
from motionpref.models.evaluator import (
    N_CONTACTS,
    CaptionedClip,
    Evaluator,
    EvaluatorConfig,
    MovementConvDecoder,
    build_vocab,
    random_crop,
)
from motionpref.motion.dataset import compute_mean_std
from motionpref.motion.skeleton import HUMANML3D, Skeleton
from motionpref.progress import track

if TYPE_CHECKING:
    from accelerate import Accelerator

LogMetric = Callable[[str, float, int], None]


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, label: torch.Tensor, margin: float) -> torch.Tensor:
    """Hadsell, Chopra & LeCun 2006, eq. 4 (the original's ``ContrastiveLoss``), d = ||a - b||_2 per row:

    L = mean_i [ (1 - y_i) d_i^2 + y_i max(0, margin - d_i)^2 ],  y = 0 for matched, 1 for mismatched pairs.
    """
    d = F.pairwise_distance(a, b)
    return ((1 - label) * d.pow(2) + label * torch.clamp(margin - d, min=0.0).pow(2)).mean()


def matching_loss(
    text_emb: torch.Tensor, motion_emb: torch.Tensor, shift: int, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, positive, negative) loss of ``TextMotionMatchTrainer.backward``: text i is a positive
    with motion i and a negative with motion (i + shift) mod B."""
    if not 1 <= shift < len(text_emb):
        raise ValueError(f"shift must be in [1, {len(text_emb) - 1}], got {shift}")
    zeros = torch.zeros(len(text_emb), device=text_emb.device)
    pos = contrastive_loss(text_emb, motion_emb, zeros, margin)
    neg = contrastive_loss(text_emb, torch.roll(motion_emb, -shift, dims=0), zeros + 1, margin)
    return pos + neg, pos, neg


def movement_ae_loss(
    recon: torch.Tensor,
    motions: torch.Tensor,
    latents: torch.Tensor,
    lambda_sparsity: float,
    lambda_smooth: float,
) -> torch.Tensor:
    """``DecompTrainerV3.backward``: L1(recon, x) + l_sp * mean|z| + l_sm * L1(z[t+1], z[t])."""
    rec = F.l1_loss(recon, motions)
    sparsity = latents.abs().mean()
    smooth = F.l1_loss(latents[:, 1:], latents[:, :-1])
    return rec + lambda_sparsity * sparsity + lambda_smooth * smooth


def _pair_batch(
    model: Evaluator,
    entries: Sequence[CaptionedClip],
    idx: Sequence[int],
    rng: np.random.Generator,
    rows: slice = slice(None),
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]]:
    # A random caption of each clip and a random T2M crop of it, then the evaluator's normalisation; drawn for the
    # whole batch, batched for its ``rows`` (a process's share) on the model's device.
    captions = [entries[i].captions[int(rng.integers(len(entries[i].captions)))] for i in idx]
    crops = [random_crop(entries[i].features, model.config.unit_length, rng) for i in idx]
    device = model.mean.device
    motions, lengths = model.motion_batch(crops[rows])
    return tuple(t.to(device) for t in model.text_batch(captions[rows])), (motions.to(device), lengths.to(device))


class _BatchDropout(nn.Module):
    """Dropout whose mask is drawn for the whole global batch of ``total`` rows in every process, as one process
    draws it (on a CPU the very draws and arithmetic of torch's own dropout), and applied to this process's
    ``rows`` of it: the masks, like the windows, do not depend on how many processes share the batch."""

    def __init__(self, p: float, rows: slice, total: int) -> None:
        super().__init__()
        self.p, self.rows, self.total = p, rows, total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        noise = x.new_empty((self.total, *x.shape[1:])).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * noise[self.rows]


@contextmanager
def _batch_dropout(module: nn.Module, rows: slice, total: int) -> Iterator[None]:
    """``module``'s dropout layers replaced by ``_BatchDropout`` for the duration."""
    found = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()]
    swapped = [(parent, name, child) for parent, name, child in found if isinstance(child, nn.Dropout)]
    for parent, name, child in swapped:
        setattr(parent, name, _BatchDropout(child.p, rows, total))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _check_entries(entries: Sequence[CaptionedClip], name: str, config: EvaluatorConfig) -> None:
    dim = config.feature_dim
    for i, e in enumerate(entries):
        if e.features.ndim != 2 or e.features.shape[1] != dim:
            raise ValueError(f"{name}[{i}]: expected features (T, {dim}), got shape {e.features.shape}")
        if len(e.features) < config.unit_length:
            raise ValueError(f"{name}[{i}]: has {len(e.features)} frames, fewer than unit_length={config.unit_length}")
        if not e.captions:
            raise ValueError(f"{name}[{i}]: has no caption")


@torch.no_grad()
def validation_losses(
    model: Evaluator, entries: Sequence[CaptionedClip], batch_size: int, margin: float, seed: int
) -> dict[str, float]:
    """Mean matching losses and mean matched / shifted-pair distances over ``entries`` in batches of
    ``min(batch_size, len(entries))`` (a last partial batch dropped, as the original's ``drop_last``),
    negatives shifted by one, captions and crops drawn from ``seed``."""
    if len(entries) < 2:
        raise ValueError(f"validation needs at least 2 entries, got {len(entries)}")
    model.eval()
    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, len(entries))
    sums = {"loss": 0.0, "loss_pos": 0.0, "loss_neg": 0.0, "dist_pos": 0.0, "dist_neg": 0.0}
    n_batches = len(entries) // batch_size
    for b in range(n_batches):
        text, (motions, lengths) = _pair_batch(model, entries, range(b * batch_size, (b + 1) * batch_size), rng)
        t, m = model.embed_text(*text), model.embed_motion(motions, lengths)
        loss, pos, neg = matching_loss(t, m, 1, margin)
        sums["loss"] += loss.item()
        sums["loss_pos"] += pos.item()
        sums["loss_neg"] += neg.item()
        sums["dist_pos"] += F.pairwise_distance(t, m).mean().item()
        sums["dist_neg"] += F.pairwise_distance(t, torch.roll(m, -1, 0)).mean().item()
    return {k: v / max(n_batches, 1) for k, v in sums.items()}


def _train_movement_autoencoder(
    model: Evaluator,
    clips: list[np.ndarray],
    cfg: EvaluatorTrainConfig,
    rng: np.random.Generator,
    log_metric: LogMetric | None,
    accel: Accelerator,
) -> float:
    decoder = MovementConvDecoder(
        model.config.dim_movement_latent, model.config.dim_movement_enc_hidden, model.config.feature_dim
    ).to(accel.device)
    params = list(model.movement_encoder.parameters()) + list(decoder.parameters())
    optimiser = torch.optim.Adam(params, lr=cfg.decomp_lr)
    model.movement_encoder.train()
    usable = [c for c in clips if len(c) >= cfg.decomp_window]
    if not usable:
        raise ValueError(f"no training clip has decomp_window={cfg.decomp_window} frames")
    # every term of the loss is a mean over rows of one size: the share's mean, weighted, is its part of the batch's
    mine, _, weight = share_to_train(range(cfg.batch_size), accel)
    rows = slice(mine[0], mine[-1] + 1)
    last = float("nan")
    steps = track(range(cfg.decomp_steps), description="evaluator: movement AE", total=cfg.decomp_steps)
    with _batch_dropout(model.movement_encoder, rows, cfg.batch_size):
        for step in steps:
            idx = rng.integers(0, len(usable), size=cfg.batch_size)
            starts = [int(rng.integers(0, len(usable[i]) - cfg.decomp_window + 1)) for i in idx]
            windows = [usable[i][s : s + cfg.decomp_window] for i, s in zip(idx, starts, strict=True)]
            x = torch.from_numpy(np.stack(windows[rows])).to(accel.device)
            latents = model.movement_encoder(x[..., :-N_CONTACTS])
            loss = movement_ae_loss(decoder(latents), x, latents, cfg.lambda_sparsity, cfg.lambda_smooth) * weight
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(params, accel)
            optimiser.step()
            last = reduce_sum(loss.item(), accel) / accel.num_processes  # the global batch's loss
            if log_metric is not None and (step + 1) % cfg.log_every == 0:
                log_metric("evaluator/movement_ae_loss", last, step + 1)
    return last


def train_evaluator(
    train: Sequence[CaptionedClip],
    val: Sequence[CaptionedClip],
    model_config: EvaluatorConfig,
    train_config: EvaluatorTrainConfig,
    seed: int,
    out_dir: str | Path,
    log_metric: LogMetric | None = None,
    skeleton: Skeleton = HUMANML3D,
    accel: Accelerator | None = None,
) -> dict[str, float]:
    """Train an evaluator with learned word vectors on (caption, un-normalised clip) entries.

    Its mean/std are HumanML3D-style statistics of the training clips (``compute_mean_std``), its
    vocabulary the training captions' lemmas. The weights with the lowest validation loss (checked
    every ``eval_every`` steps and at the end) are saved to ``out_dir`` (``Evaluator.load`` reads it).

    Under ``accelerate launch`` (``accel`` of several processes) each process trains on its share of every global
    batch (the module's docstring) and only the main one saves; validation runs whole in each.
    Returns final training losses, the best validation losses (``val_*``) and ``seconds_per_step``.
    """
    if model_config.word_vectors != "learned":
        raise ValueError("train_evaluator trains learned word vectors; use Evaluator.from_t2m for GloVe")
    if model_config.feature_dim != skeleton.feature_dim:
        raise ValueError(f"model feature_dim {model_config.feature_dim} != {skeleton.name} {skeleton.feature_dim}")
    if len(train) < train_config.batch_size:
        raise ValueError(f"need at least batch_size={train_config.batch_size} training entries, got {len(train)}")
    _check_entries(train, "train", model_config)
    _check_entries(val, "val", model_config)

    accel = accel or accelerator(LaunchConfig())
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean, std = compute_mean_std([e.features for e in train], skeleton)
    model = Evaluator(model_config, build_vocab([c for e in train for c in e.captions], train_config.min_word_count))
    model.set_stats(mean, std)
    model.to(accel.device)
    normalised = [(np.asarray(e.features, np.float32) - mean) / std for e in train]

    metrics: dict[str, float] = {}
    if train_config.decomp_steps:
        metrics["movement_ae_loss"] = _train_movement_autoencoder(
            model, normalised, train_config, rng, log_metric, accel
        )
    model.movement_encoder.requires_grad_(False)

    text_params = list(model.word_emb.parameters()) + list(model.text_encoder.parameters())
    motion_params = list(model.motion_encoder.parameters())
    trained = [p for p in text_params + motion_params if p.requires_grad]
    optimiser = torch.optim.Adam(trained, lr=train_config.lr)
    mine = share_to_train(range(train_config.batch_size), accel).rows
    rows = slice(mine[0], mine[-1] + 1)
    val_seed = int(rng.integers(2**31))
    best = {"loss": float("inf")}
    best_state = copy.deepcopy(model.state_dict())
    running = {"loss": 0.0, "loss_pos": 0.0, "loss_neg": 0.0}
    start = time.perf_counter()
    for step in track(
        range(train_config.match_steps), description="evaluator: matching", total=train_config.match_steps
    ):
        model.text_encoder.train()
        model.motion_encoder.train()
        model.movement_encoder.eval()  # frozen and without dropout, as the original's train_mode
        idx = rng.choice(len(train), size=train_config.batch_size, replace=False)
        text, (motions, lengths) = _pair_batch(model, train, idx, rng, rows)
        # the negatives are other rows' motions: the whole batch's loss, from every share's embeddings
        t = gather_with_grad(model.embed_text(*text), train_config.batch_size, accel)
        m = gather_with_grad(model.embed_motion(motions, lengths), train_config.batch_size, accel)
        # Shifts from 1: the original's randint(0, B - 1) can draw 0 and pair each text with its own motion.
        shift = int(rng.integers(1, train_config.batch_size))
        loss, pos, neg = matching_loss(t, m, shift, train_config.margin)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(trained, accel)
        torch.nn.utils.clip_grad_norm_([p for p in text_params if p.requires_grad], train_config.grad_clip)
        torch.nn.utils.clip_grad_norm_(motion_params, train_config.grad_clip)
        optimiser.step()
        for k, v in (("loss", loss), ("loss_pos", pos), ("loss_neg", neg)):
            running[k] += v.item()
        done = step + 1
        if done % train_config.log_every == 0 or done == train_config.match_steps:
            n = (step % train_config.log_every) + 1
            for k in running:
                metrics[f"train_{k}"] = running[k] / n
                if log_metric is not None:
                    log_metric(f"evaluator/train_{k}", running[k] / n, done)
            running = dict.fromkeys(running, 0.0)
        if val and (done % train_config.eval_every == 0 or done == train_config.match_steps):
            current = validation_losses(model, val, train_config.batch_size, train_config.margin, val_seed)
            if log_metric is not None:
                for k, v in current.items():
                    log_metric(f"evaluator/val_{k}", v, done)
            if current["loss"] < best["loss"]:
                best = {**current, "step": float(done)}
                best_state = copy.deepcopy(model.state_dict())
    metrics["seconds_per_step"] = (time.perf_counter() - start) / max(train_config.match_steps, 1)
    if val and train_config.match_steps:
        model.load_state_dict(best_state)
        metrics.update({f"val_{k}": v for k, v in best.items()})
    if accel.is_main_process:
        model.eval().save(out_dir)
    return metrics
