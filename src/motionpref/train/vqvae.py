"""Training of the motion VQ-VAE as T2M-GPT's ``train_vq.py`` (and MotionGPT's VAE stage) does it.

Random windows of normalised training clips, AdamW, a linear warm-up then step decay, loss =
reconstruction + commit * commitment + vel * velocity. Evaluation reconstructs whole clips and
reports joint-space error (MPJPE, mm), codebook usage and perplexity.

Under ``accelerate launch`` every process draws each global batch of windows whole and trains on its share
(``motionpref.distributed``), its loss weighted so that DDP's mean gradient is the whole batch's; the quantiser
sums its code statistics over the processes and resets dead codes from the whole batch's latents, so every
process holds the codebook one process would. The main process validates and saves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from motionpref.config import LaunchConfig, VQVAETrainConfig
from motionpref.distributed import accelerator, gather_rows, reduce_sum, share_to_train
from motionpref.io import atomic_dir
from motionpref.models.vqvae import MotionVQVAE, VQVAEConfig, perplexity_of_counts, tokenize
from motionpref.motion.features import recover_joints
from motionpref.motion.skeleton import HUMANML3D, Skeleton
from motionpref.progress import track

if TYPE_CHECKING:
    from accelerate import Accelerator

LogMetric = Callable[[str, float, int], None]


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1_smooth(X, X_re) over normalised features: the first term of T2M-GPT's L_re (Zhang et al. 2023)."""
    return F.smooth_l1_loss(pred, target)


def velocity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1_smooth(V(X), V(X_re)), V(X) = [x_2 - x_1, ..., x_T - x_{T-1}]: T2M-GPT's velocity term of L_re.

    Inputs (B, T, D). The paper defines V on the features as here; its code (``forward_vel``) applies
    the term to the root-relative joint-position slice instead.
    """
    return F.smooth_l1_loss(pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1])


def vqvae_loss(
    pred: torch.Tensor, target: torch.Tensor, commit_loss: torch.Tensor, commit: float, vel: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L1_smooth(X, X_re) + vel * L_vel + commit * ||Z - sg(Z_q)||^2 (T2M-GPT's L_vq with L_re).

    The codebook term ||sg(Z) - Z_q||^2 is absent: the codebook follows an EMA of the latents instead.
    """
    rec = reconstruction_loss(pred, target)
    v = velocity_loss(pred, target)
    loss = rec + commit * commit_loss + vel * v
    return loss, {
        "loss": loss.item(),
        "recon": rec.item(),
        "commit": commit_loss.item(),
        "velocity": v.item(),
    }


def lr_factor(step: int, warmup_steps: int, milestones: Sequence[int], gamma: float) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1) / (warmup + 1)`` (T2M-GPT ``update_lr_warm_up``), then ``gamma`` per
    milestone passed, milestones counted from the end of the warm-up as T2M-GPT's MultiStepLR does.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    after = step - warmup_steps
    return gamma ** sum(after >= m for m in milestones)


def normalise_clips(clips: Sequence[np.ndarray], mean: np.ndarray, std: np.ndarray) -> list[np.ndarray]:
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    out = []
    for i, clip in enumerate(clips):
        clip = np.asarray(clip, dtype=np.float32)
        if clip.ndim != 2 or clip.shape[1] != mean.shape[0]:
            raise ValueError(f"clip {i}: expected features (T, {mean.shape[0]}), got shape {clip.shape}")
        out.append((clip - mean) / std)
    return out


def _sample_windows(clips: list[np.ndarray], batch: int, window: int, rng: np.random.Generator) -> torch.Tensor:
    # As T2M-GPT's VQ dataset: a clip uniformly at random, then a window at a uniform offset in it.
    idx = rng.integers(0, len(clips), size=batch)
    starts = [int(rng.integers(0, len(clips[i]) - window + 1)) for i in idx]
    return torch.from_numpy(np.stack([clips[i][s : s + window] for i, s in zip(idx, starts, strict=True)]))


@dataclass(frozen=True)
class _SharedWindows:
    """The global batch of windows this process trains a share of, as its quantiser sees it
    (``models.vqvae.SharedBatch``); a stand-in share (``counted`` False) adds nothing to it."""

    accel: Accelerator
    counted: bool

    def sum(self, stats: torch.Tensor) -> torch.Tensor:
        return self.accel.reduce(stats if self.counted else torch.zeros_like(stats), reduction="sum")

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        # back on x's device: the reset's randperm must draw from the generator one process would use
        return gather_rows(x, self.counted, self.accel).to(x.device)


def mpjpe(pred_joints: np.ndarray, true_joints: np.ndarray, align_root: bool = True) -> float:
    """Mean per-joint position error, in the joints' unit: mean over frames and joints of ||p - q||_2.

    With ``align_root`` both skeletons are first translated so joint 0 (the pelvis) is at the origin,
    as MotionGPT's reconstruction metrics (``MRMetrics``, ``align_root=True``) do.
    """
    if pred_joints.shape != true_joints.shape:
        raise ValueError(f"joint arrays differ in shape: {pred_joints.shape} vs {true_joints.shape}")
    if align_root:
        pred_joints = pred_joints - pred_joints[..., :1, :]
        true_joints = true_joints - true_joints[..., :1, :]
    return float(np.linalg.norm(pred_joints - true_joints, axis=-1).mean())


@torch.no_grad()
def evaluate_vqvae(
    model: MotionVQVAE,
    clips_normalised: Sequence[np.ndarray],
    mean: np.ndarray,
    std: np.ndarray,
    skeleton: Skeleton = HUMANML3D,
) -> dict[str, float]:
    """Reconstruct whole clips (cropped to a multiple of 4 frames) and measure the VQ-VAE.

    Returns ``recon_loss`` (smooth L1, normalised features), ``mpjpe_mm`` (root-aligned) and
    ``mpjpe_global_mm`` (joints recovered from un-normalised features, metres -> mm), ``codebook_usage``
    (fraction of codes used at least once over all clips) and ``perplexity`` of that code histogram.
    """
    if not clips_normalised:
        raise ValueError("evaluate_vqvae: no clips")
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    was_training = model.training
    model.eval()
    counts = torch.zeros(model.codebook_size)
    rec, err, err_global, frames = 0.0, 0.0, 0.0, 0
    try:
        for clip in clips_normalised:
            usable = len(clip) // model.downsample * model.downsample
            if usable == 0:
                continue
            x = torch.from_numpy(np.ascontiguousarray(clip[:usable], dtype=np.float32))[None]
            codes = model.encode(x)
            recon = model.decode(codes)
            counts += torch.bincount(codes.flatten(), minlength=model.codebook_size).float()
            rec += reconstruction_loss(recon, x).item() * usable
            true_j = recover_joints(x[0].numpy() * std32 + mean32, skeleton)
            pred_j = recover_joints(recon[0].numpy() * std32 + mean32, skeleton)
            err += mpjpe(pred_j, true_j, align_root=True) * usable
            err_global += mpjpe(pred_j, true_j, align_root=False) * usable
            frames += usable
    finally:
        model.train(was_training)
    if frames == 0:
        raise ValueError(f"evaluate_vqvae: every clip is shorter than {model.downsample} frames")
    return {
        "recon_loss": rec / frames,
        "mpjpe_mm": 1000.0 * err / frames,
        "mpjpe_global_mm": 1000.0 * err_global / frames,
        "codebook_usage": float((counts > 0).float().mean()),
        "perplexity": float(perplexity_of_counts(counts)),
    }


def train_vqvae(
    train_features: Sequence[np.ndarray],
    val_features: Sequence[np.ndarray],
    mean: np.ndarray,
    std: np.ndarray,
    model_config: VQVAEConfig,
    train_config: VQVAETrainConfig,
    seed: int,
    out_dir: str | Path,
    log_metric: LogMetric | None = None,
    skeleton: Skeleton = HUMANML3D,
    accel: Accelerator | None = None,
) -> dict[str, float]:
    """Train a VQ-VAE on un-normalised clips (T, D) normalised here with the dataset ``mean``/``std``.

    Clips shorter than ``train_config.window`` are not sampled. Saves the model to ``out_dir``
    (``MotionVQVAE.load`` reads it) and returns the last logged training losses (``train_*``),
    ``evaluate_vqvae`` on ``val_features`` (``val_*``) and ``seconds_per_step``.

    Under ``accelerate launch`` (``accel`` of several processes) each process trains on its share of every
    global batch of windows (module docstring); the main one alone validates and saves, so only its answer
    has the ``val_*`` metrics.
    """
    if model_config.feature_dim != len(mean):
        raise ValueError(f"model feature_dim {model_config.feature_dim} != len(mean) {len(mean)}")
    if train_config.window % model_config.downsample:
        raise ValueError(
            f"VQVAETrainConfig.window ({train_config.window}) must be a multiple of {model_config.downsample}"
        )
    train = [c for c in normalise_clips(train_features, mean, std) if len(c) >= train_config.window]
    if not train:
        raise ValueError(f"no training clip has at least window={train_config.window} frames")
    val = normalise_clips(val_features, mean, std)

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    accel = accel or accelerator(LaunchConfig())
    bare = MotionVQVAE(model_config).train()
    optimiser = torch.optim.AdamW(
        bare.parameters(), lr=train_config.lr, betas=(0.9, 0.99), weight_decay=train_config.weight_decay
    )
    model, optimiser = accel.prepare(bare, optimiser)
    # the same windows of every batch each step (a contiguous share), and what its mean weighs in the batch's
    part, counted, weight = share_to_train(range(train_config.batch_size), accel)
    mine = slice(part[0], part[-1] + 1)
    if accel.num_processes > 1:
        bare.quantizer.shared_batch = _SharedWindows(accel, counted)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: lr_factor(s, train_config.warmup_steps, train_config.lr_milestones, train_config.gamma),
    )
    running: dict[str, float] = {}
    last: dict[str, float] = {}
    start = time.perf_counter()
    for step in track(range(train_config.steps), description="train vqvae", total=train_config.steps):
        # the whole global batch is drawn in every process, so it does not depend on how many share it
        x = _sample_windows(train, train_config.batch_size, train_config.window, rng)[mine].to(accel.device)
        recon, commit_loss, perplexity = model(x)
        loss, parts = vqvae_loss(recon, x, commit_loss, train_config.commit, train_config.vel)
        optimiser.zero_grad(set_to_none=True)
        accel.backward(loss * weight)
        optimiser.step()
        scheduler.step()
        # the global batch's means: each share's weighted as its loss is
        parts = {k: reduce_sum(v * weight, accel) / accel.num_processes for k, v in parts.items()}
        parts["perplexity"] = perplexity.item()  # of the whole batch's codes already
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + v
        if (step + 1) % train_config.log_every == 0 or step + 1 == train_config.steps:
            n = (step % train_config.log_every) + 1
            last = {k: v / n for k, v in running.items()}
            running = {}
            if log_metric is not None:
                for k, v in last.items():
                    log_metric(f"vqvae/train_{k}", v, step + 1)
                log_metric("vqvae/lr", optimiser.param_groups[0]["lr"], step + 1)
    seconds_per_step = (time.perf_counter() - start) / train_config.steps
    bare.quantizer.shared_batch = None
    model = bare.cpu()  # validated, saved and used to tokenise on the CPU

    metrics = {f"train_{k}": v for k, v in last.items()}
    metrics["seconds_per_step"] = seconds_per_step
    if not accel.is_main_process:
        return metrics
    if val:
        val_metrics = evaluate_vqvae(model, val, mean, std, skeleton)
        metrics.update({f"val_{k}": v for k, v in val_metrics.items()})
        if log_metric is not None:
            for k, v in val_metrics.items():
                log_metric(f"vqvae/val_{k}", v, train_config.steps)
    model.eval().save(out_dir)
    return metrics


def write_tokens(
    model: MotionVQVAE,
    names: Sequence[str],
    features: Sequence[np.ndarray],
    mean: np.ndarray,
    std: np.ndarray,
    out_dir: str | Path,
) -> int:
    """Write ``<out_dir>/<name>.npy`` (int64 codes (N,)) for every clip; the folder is replaced as a whole.

    Clips are normalised with the dataset statistics and their tail past a multiple of 4 frames is
    cropped (``tokenize``). Returns the number of files written.
    """
    if len(names) != len(features):
        raise ValueError(f"{len(names)} names but {len(features)} clips")
    if len(set(names)) != len(names):
        raise ValueError("clip names must be unique: each names one token file")
    clips = normalise_clips(features, mean, std)
    with atomic_dir(out_dir) as tmp:
        for name, clip in track(zip(names, clips, strict=True), description="tokenize", total=len(names)):
            if "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"clip name {name!r} is not a plain file stem")
            np.save(tmp / f"{name}.npy", tokenize(model, clip), allow_pickle=False)
    return len(names)
