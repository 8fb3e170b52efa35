"""Training and preference finetuning of the diffusion policies (``models.diffusion``): MDM- and MLD-style.

``train_policy`` trains a policy from scratch on the dataset (MLD: its VAE first, then the latent denoiser on
the frozen VAE). ``run_sopo`` and ``run_modipo`` finetune one against a frozen copy of itself, the reference:

- **SoPo** (Tan et al. 2024, Eq. 15-16): for each training caption c, the dataset motion x_w (preferred,
  offline) and K samples of the current policy at x_w's length (online), scored by the retrieval scorer; the
  lowest-scored is the unpreferred x_l, valuable only when its score is below tau; beta_w = beta (C - S(x_w)).
  The selection and the variants are the token policy's (``train.sopo.semi_online_pairs``, ``FILTERED``,
  ``REWEIGHTED``); the loss is ``losses.sopo_loss`` on the diffusion log-ratio below.
- **MoDiPO** (Pappa et al. 2024): K samples per caption, the scorer's best against its worst, Diffusion-DPO
  (``losses.diffusion_dpo_loss``); offline (pairs drawn once from the pretrained policy) or online (drawn again
  from the current policy every epoch).
- **Diffusion-DPO on labelled pairs** (Wallace et al. 2023): two samples of the pretrained policy per caption,
  judged by the labelers or people (``sample_pairs@mdm`` .. ``ingest_labels@mdm``), ``run_diffusion_dpo``.

**The diffusion log-ratio.** For a pair at one timestep t and noise eps shared by policy and reference, the
log-ratio of a motion x is rho(x) = -(l_theta(x) - l_ref(x)), with l the per-sample denoising loss
(``models.diffusion.denoising_losses``): a policy that denoises x better than the reference makes x likelier.
The paper writes l in epsilon form, ||eps - eps_theta(x_t, t)||^2. MLD predicts epsilon, so its l is that.
MDM predicts x0, and its own loss is ||x0 - x0_theta||^2; the epsilon it implies, eps_hat = (x_t - sqrt(a_t)
x0_theta) / sqrt(1 - a_t), has ||eps - eps_hat||^2 = snr(t) ||x0 - x0_theta||^2 with snr(t) = a_t / (1 - a_t)
(``models.diffusion.snr``; tests/test_diffusion.py checks the identity). So MDM's x0-form log-ratio is
the paper's epsilon-form one weighted by 1 / snr(t) per timestep, a weighting the paper leaves to beta, and the
one the authors' released code runs (its MDM's ``training_losses`` differences). Both use it here.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from transformers import get_scheduler

from motionpref.config import DiffusionAlgoConfig, DiffusionSamplingConfig, DiffusionTrainConfig, LaunchConfig
from motionpref.distributed import (
    accelerator,
    average_gradients,
    gather_rows,
    reduce_sum,
    share_to_train,
    share_weight,
    shared_rows,
)
from motionpref.models.diffusion import DiffusionPolicy, MLDPolicy, denoising_losses, lengths_to_mask
from motionpref.models.retrieval import RetrievalModel, cosine_to_score
from motionpref.motion.dataset import Entry
from motionpref.progress import track
from motionpref.train.losses import diffusion_dpo_loss, sopo_loss, sopo_weight
from motionpref.train.preference import FinetuneJob, disable_dropout
from motionpref.train.sopo import FILTERED, REWEIGHTED, semi_online_pairs

if TYPE_CHECKING:
    from accelerate import Accelerator

LogMetric = Callable[[str, float, int], None]


@dataclass
class DiffusionExamples:
    """Training clips: ``motions[i]`` normalised (T, D) features, ``captions[i]`` its captions."""

    motions: Sequence[np.ndarray]
    captions: Sequence[Sequence[str]]

    def __post_init__(self) -> None:
        if len(self.motions) != len(self.captions):
            raise ValueError(f"{len(self.motions)} motions but {len(self.captions)} caption lists")
        if not self.motions:
            raise ValueError("no training clips")
        empty = [i for i, c in enumerate(self.captions) if not c]
        if empty:
            raise ValueError(f"training clip {empty[0]} has no caption")

    @classmethod
    def from_entries(cls, entries: Sequence[Entry], mean: np.ndarray, std: np.ndarray) -> DiffusionExamples:
        """Dataset entries, their features normalised with the dataset's statistics."""
        return cls(
            [((e.features - mean) / std).astype(np.float32) for e in entries],
            [[c.text for c in e.captions] for e in entries],
        )

    def __len__(self) -> int:
        return len(self.motions)

    def lengths(self) -> list[int]:
        return [len(m) for m in self.motions]


def pad(motions: Sequence[np.ndarray | Tensor]) -> tuple[Tensor, Tensor]:
    """(B, T, D) zero-padded float32 motions and their (B, T) frame mask."""
    lengths = [len(m) for m in motions]
    mask = lengths_to_mask(lengths)
    x = torch.zeros(len(motions), mask.shape[1], motions[0].shape[-1])
    for i, m in enumerate(motions):
        x[i, : lengths[i]] = torch.as_tensor(m, dtype=torch.float32)
    return x, mask


def length_batch(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[int]:
    """A random clip and the ``batch_size`` - 1 clips nearest it in length: padding to the batch's longest clip
    then wastes little, which on a CPU halves a step's cost (written here: no sampler in torch does this)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    size = min(batch_size, len(order))
    start = rng.randrange(len(order) - size + 1)
    return order[start : start + size]


class _Objective(nn.Module):
    """A training loss as the forward of a module that holds the parameters it trains: DDP all-reduces the
    gradients of a backward only when the loss went through its wrapper's forward."""

    def __init__(self, trained: nn.Module, loss: Callable[[list[int], torch.Generator], Tensor]) -> None:
        super().__init__()
        self.trained = trained
        self.loss = loss

    def forward(self, rows: list[int], generator: torch.Generator) -> Tensor:
        return self.loss(rows, generator)


def _fit(
    name: str,
    trained: nn.Module,
    loss_fn: Callable[[list[int], torch.Generator], Tensor],
    draw: Callable[[int, random.Random], list[int]],
    cfg: DiffusionTrainConfig,
    seed: int,
    log: LogMetric | None,
    accel: Accelerator,
) -> dict[str, float]:
    """AdamW over ``trained``'s trainable parameters, DDP across launched processes. ``loss_fn(rows, generator)``
    draws the global batch ``rows``' random choices and returns this process's share of its loss, weighted so
    that DDP's mean of the gradients is the batch's; every process draws the same ``rows``."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in trained.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # stepped here, not through accelerate: its prepared scheduler steps once per process
    schedule = get_scheduler(cfg.lr_schedule, optimiser, num_warmup_steps=0, num_training_steps=cfg.steps)
    model, optimiser = accel.prepare(_Objective(trained, loss_fn), optimiser)
    window: list[float] = []
    first = float("nan")
    for step in track(range(1, cfg.steps + 1), f"train {name}", cfg.steps):
        loss = model(draw(cfg.batch_size, rng), generator)
        batch_loss = reduce_sum(loss.item(), accel) / accel.num_processes  # the global batch's
        if not math.isfinite(batch_loss):
            raise FloatingPointError(f"{name}: the loss is {batch_loss} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        accel.backward(loss)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimiser.step()
        schedule.step()
        window.append(batch_loss)
        if step == 1:
            first = window[0]
        if step % cfg.log_every == 0 or step == cfg.steps:
            if log is not None:
                log(f"{name}/loss", float(np.mean(window)), step)
            last, window = float(np.mean(window)), []
    return {f"{name}_first_loss": first, f"{name}_loss": last, f"{name}_steps": float(cfg.steps)}


def encode_latents(
    policy: MLDPolicy, data: DiffusionExamples, batch_size: int, accel: Accelerator | None = None
) -> Tensor:
    """(N, latent_size, latent_dim) posterior means of the frozen VAE, one per clip, encoded in batches of
    similar length (``MLDPolicy.to_diffusion`` of each clip). Under ``accelerate launch`` each process encodes
    its share of the batches (``shared_rows``), each batch whole, so every process holds the latents one
    process encodes."""
    order = sorted(range(len(data)), key=lambda i: len(data.motions[i]))
    batches = [order[begin : begin + batch_size] for begin in range(0, len(order), batch_size)]

    @torch.no_grad()
    def encode(ids: list[int]) -> list[Tensor]:
        out = []
        for k in ids:
            x, mask = pad([data.motions[i] for i in batches[k]])
            out.append(policy.to_diffusion(x.to(policy.device), mask.to(policy.device))[0].cpu())
        return out

    shape = (len(data), policy.config.latent_size, policy.config.latent_dim)
    latents = torch.empty(shape, device=policy.device)
    encoded = shared_rows(len(batches), encode, accel or accelerator(LaunchConfig()))
    for rows, z in zip(batches, encoded, strict=True):
        latents[rows] = z.to(latents.device)
    return latents


def train_policy(
    policy: DiffusionPolicy,
    data: DiffusionExamples,
    train: DiffusionTrainConfig,
    seed: int,
    vae_train: DiffusionTrainConfig | None = None,
    log: LogMetric | None = None,
    accel: Accelerator | None = None,
) -> dict[str, float]:
    """Train ``policy`` in place on ``data`` (a random caption of each clip per step). An MLD policy first
    trains its VAE with ``vae_train`` (MLD's ``vae`` stage), then its denoiser and text encoder with the VAE
    frozen (its ``diffusion`` stage) on latents encoded once: the frozen VAE's forward was most of a step's cost,
    and its posterior mean never changes. Returns each stage's first and last logged loss.

    Under ``accelerate launch`` (``accel`` of several processes) every process draws each global batch whole (its
    clips, captions, timesteps, noise, dropped conditions, the VAE's posterior noise), computes the losses of its
    share (``distributed.share_to_train``) and DDP all-reduces the gradients: each share's mean is weighted by its
    rows over the batch's (``share_weight``; the per-sample denoising losses, the VAE's KL) or, for the VAE's
    reconstruction, a mean over the batch's valid frames, by its frames. The latents are encoded by shares of
    their batches. Every process ends with the same weights; only the caller's main process should save."""
    accel = accel or accelerator(LaunchConfig())
    policy.to(accel.device).train()
    lengths = data.lengths()
    caption_rng = random.Random(seed + 1)

    def by_length(size: int, rng: random.Random) -> list[int]:
        return length_batch(lengths, size, rng)

    def batch(rows: list[int]) -> tuple[Tensor, Tensor]:
        x, mask = pad([data.motions[i] for i in rows])
        return x.to(policy.device), mask.to(policy.device)

    def texts(rows: list[int]) -> list[str]:
        return [caption_rng.choice(data.captions[i]) for i in rows]

    out: dict[str, float] = {}
    latents: Tensor | None = None
    if isinstance(policy, MLDPolicy):
        if vae_train is None:
            raise ValueError("an MLD policy trains its VAE first: pass vae_train")
        mld = policy

        def vae_loss(rows: list[int], generator: torch.Generator) -> Tensor:
            # padded to the whole batch's longest clip and drawn for the whole batch: a row is encoded as in one
            # process
            x, mask = batch(rows)
            noise = torch.randn((len(rows), mld.config.latent_size, mld.config.latent_dim), generator=generator)
            part, _, row_weight = share_to_train(range(len(rows)), accel)
            frames = mask[part].sum().item() if row_weight else 0
            frame_weight = share_weight(frames, mask.sum().item(), accel)
            return mld.vae_loss(x[part], mask[part], None, noise[part], frame_weight, row_weight)

        out |= _fit("vae", policy.vae, vae_loss, by_length, vae_train, seed, log, accel)
        policy.vae.requires_grad_(False).eval()
        latents = encode_latents(policy, data, vae_train.batch_size, accel)

    def denoiser_loss(rows: list[int], generator: torch.Generator) -> Tensor:
        captions = texts(rows)
        x0, dmask = (latents[rows], None) if latents is not None else policy.to_diffusion(*batch(rows))
        t, drop, noise = policy.training_draws(tuple(x0.shape), generator)
        part, _, weight = share_to_train(range(len(rows)), accel)
        dmask = None if dmask is None else dmask[part]
        losses = policy.conditioned_losses(
            x0[part], dmask, [captions[i] for i in part], t[part], drop[part], noise[part]
        )
        return losses.mean() * weight

    def uniform(size: int, rng: random.Random) -> list[int]:  # latents have one shape: nothing to pad
        return [rng.randrange(len(data)) for _ in range(size)]

    draw = by_length if latents is None else uniform
    out |= _fit("denoiser", policy, denoiser_loss, draw, train, seed + 2, log, accel)
    policy.requires_grad_(True)
    return out


# ------------------------------------------------------------------------------------------ finetuning


@dataclass
class DiffusionFinetuneData:
    """What SoPo and MoDiPO finetune from: the pretrained ``policy`` (finetuned in place), the retrieval
    ``scorer`` (it reads un-normalised features: ``mean``/``std`` undo the dataset's normalisation), the
    training clips, and the sampler settings of the online samples."""

    policy: DiffusionPolicy
    scorer: RetrievalModel
    examples: DiffusionExamples
    mean: np.ndarray
    std: np.ndarray
    sampling: DiffusionSamplingConfig

    def features(self, x: Tensor, lengths: Sequence[int]) -> list[np.ndarray]:
        return [x[i, :n].cpu().numpy() * self.std + self.mean for i, n in enumerate(lengths)]


class _Finetune:
    """The shared machinery: dropout off, the text encoder (CLIP's stand-in) and MLD's VAE frozen, the reference
    a frozen copy, AdamW over the denoiser."""

    def __init__(self, job: FinetuneJob, data: DiffusionFinetuneData, cfg: DiffusionAlgoConfig) -> None:
        self.job, self.data, self.cfg = job, data, cfg
        policy = data.policy.to(job.device)
        disable_dropout(policy)  # nn.Dropout and nn.MultiheadAttention's float dropout alike
        policy.requires_grad_(False)
        self.denoiser = policy.model if hasattr(policy, "model") else policy.denoiser  # MDM | MLD
        self.denoiser.requires_grad_(True)
        self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.params = [p for p in self.denoiser.parameters() if p.requires_grad]
        self.optimiser = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.policy = policy
        self.generator = torch.Generator().manual_seed(job.seed)
        self.rng = random.Random(job.seed)
        self.step = 0
        self.sampling_seconds = 0.0

    def captions_for_epoch(self) -> list[int]:
        n = len(self.data.examples)
        return self.rng.sample(range(n), min(self.cfg.captions_per_epoch or n, n))

    def online_samples(self, model: DiffusionPolicy, captions: list[str], lengths: list[int], k: int) -> Tensor:
        """(B, K, T, D) normalised samples of ``model``, K per caption at the caption's length (timed: the
        preference-generation cost of SoPo's and MoDiPO's Table 1). Under ``accelerate launch`` each process
        draws its share of the B x K samples and every process gets them all: each is drawn from its own seed,
        so they are the samples one process draws (sampling is nearly all of a SoPo step's work; its update is
        replicated, MoDiPO's shared out by ``_dpo_epoch``)."""
        begin = time.perf_counter()
        seeds = [self.rng.randrange(2**31) for _ in range(len(captions) * k)]
        flat_captions = [c for c in captions for _ in range(k)]
        flat_lengths = [n for n in lengths for _ in range(k)]

        def draw(rows: list[int]) -> list[Tensor]:
            mine = [flat_lengths[i] for i in rows]
            out = model.sample(
                [flat_captions[i] for i in rows], mine, self.data.sampling, seeds=[seeds[i] for i in rows]
            )
            return [out[j, :n].cpu() for j, n in enumerate(mine)]

        x = pad(shared_rows(len(seeds), draw, self.job.accelerator))[0].to(model.device)
        self.sampling_seconds += time.perf_counter() - begin
        return x.view(len(captions), k, *x.shape[1:])

    def scores(self, captions: list[str], samples: Tensor, lengths: list[int]) -> tuple[Tensor, Tensor]:
        """Unit caption embeddings (B, d) and sample embeddings (B, K, d) of the scorer (timed with sampling)."""
        begin = time.perf_counter()
        b, k = samples.shape[:2]
        flat = self.data.features(samples.flatten(0, 1), [n for n in lengths for _ in range(k)])
        emb = self.data.scorer.encode_motion(flat).cpu().view(b, k, -1)
        text = self.data.scorer.encode_text(captions).cpu()
        self.sampling_seconds += time.perf_counter() - begin
        return text, emb

    def pair_losses(
        self,
        x_w: Tensor,
        x_l: Tensor,
        lengths: list[int],
        captions: list[str],
        lengths_l: list[int] | None = None,
        part: list[int] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Denoising losses of policy and reference on the preferred and unpreferred motions (normalised,
        padded to one length; ``lengths_l`` the unpreferred ones' when they differ), one timestep and noise per
        pair shared by both motions and both models: (B,) each, or of the pairs ``part`` only (a process's share),
        their encodings, timesteps and noise drawn for the whole batch first, so that a pair's are the same
        whatever the share."""
        policy, ref = self.policy, self.reference
        frames = x_w.shape[1]
        if x_l.shape[1] != frames:
            raise ValueError(f"preferred and unpreferred motions are padded to {frames} and {x_l.shape[1]} frames")
        mask_w = lengths_to_mask(lengths, frames).to(policy.device)
        mask_l = mask_w if lengths_l is None else lengths_to_mask(lengths_l, frames).to(policy.device)
        with torch.no_grad():
            z_w, dmask_w = policy.to_diffusion(x_w.to(policy.device), mask_w, self.generator)
            z_l, dmask_l = policy.to_diffusion(x_l.to(policy.device), mask_l, self.generator)
        b = len(captions)
        t = torch.randint(0, policy.config.diffusion_steps, (b,), generator=self.generator).to(policy.device)
        noise = torch.randn(z_w.shape, generator=self.generator).to(z_w)
        if part is not None:
            z_w, z_l, t, noise = (v[part] for v in (z_w, z_l, t, noise))
            dmask_w, dmask_l = (None if m is None else m[part] for m in (dmask_w, dmask_l))
            captions, b = [captions[i] for i in part], len(part)
        with torch.no_grad():
            cond = policy.condition(captions)
        z, both = torch.cat([z_w, z_l]), lambda v: torch.cat([v, v])
        m = torch.cat([dmask_w, dmask_l]) if dmask_w is not None and dmask_l is not None else None
        losses = denoising_losses(policy, z, m, both(cond), both(t), both(noise))
        with torch.no_grad():
            ref_losses = denoising_losses(ref, z, m, both(cond), both(t), both(noise))
        return losses[:b], losses[b:], ref_losses[:b], ref_losses[b:]

    def update(self, loss: Tensor) -> None:
        """One optimiser step on ``loss``'s gradients averaged over the processes (``average_gradients``): the
        same update in every process, the batch's gradient where each process's loss is its share's, weighted by
        ``share_weight``. Not DDP: the denoiser also samples, and a DDP wrapper's collectives on every forward
        would stall processes sampling shares of unequal sizes."""
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.params, self.job.accelerator)
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimiser.step()
        self.step += 1

    def finish(self) -> None:
        self.policy.requires_grad_(True).eval()
        if self.job.accelerator.is_main_process:
            self.policy.save(self.job.out_dir)


def _log_all(
    job: FinetuneJob, prefix: str, metrics: dict[str, float], step: int, sums: dict[str, float], n: int
) -> None:
    for key, value in metrics.items():
        sums[key] = sums.get(key, 0.0) + value * n
        job.log(f"{prefix}/{key}", value, step)


def run_sopo(job: FinetuneJob, cfg: DiffusionAlgoConfig, data: DiffusionFinetuneData, family: str) -> dict[str, float]:
    """Finetune ``data.policy`` with SoPo (variant ``cfg.sopo.variant``, K ``cfg.sopo.k[family]``) and save it to
    ``job.out_dir``. Logs per step under ``sopo/`` the loss, its preferred and unpreferred terms, beta_w (mean,
    min, max), the valuable share, the unpreferred and best online scores, S(x_w) and rho_w; returns the last
    epoch's means, beta_w's extremes over the run, ``first_loss`` (log 2: policy = reference) and the
    preference-generation time (sampling and scoring) in seconds, in total and per caption."""
    sopo = cfg.sopo
    k = sopo.k[family]
    run = _Finetune(job, data, cfg)
    examples = data.examples
    first_loss, extremes = float("nan"), {"beta_w_min": float("inf"), "beta_w_max": float("-inf")}
    captions_seen = 0
    order = run.captions_for_epoch()
    sums: dict[str, float] = {}
    batches = range(0, len(order), cfg.batch_size)
    for begin in track(batches, "sopo", len(batches)):
        rows = order[begin : begin + cfg.batch_size]
        captions = [run.rng.choice(list(examples.captions[i])) for i in rows]
        lengths = [len(examples.motions[i]) for i in rows]
        x_w, _ = pad([examples.motions[i] for i in rows])
        samples = run.online_samples(run.policy, captions, lengths, k)
        text, sample_emb = run.scores(captions, samples, lengths)
        preferred = data.scorer.encode_motion(data.features(x_w, lengths)).cpu()
        valid = torch.ones(len(rows), k, dtype=torch.bool)
        loser, score, valuable, similarity = semi_online_pairs(text, preferred, sample_emb, valid, sopo.tau, sopo.s_w)
        if sopo.variant not in FILTERED:
            valuable = torch.ones_like(valuable)
        beta_w = (
            sopo_weight(similarity, sopo.beta, sopo.c)
            if sopo.variant in REWEIGHTED
            else torch.full_like(similarity, sopo.beta)
        )
        x_l = samples[torch.arange(len(rows)), loser]
        l_w, l_l, r_w, r_l = run.pair_losses(x_w, x_l, lengths, captions)
        device = l_w.device
        # rho = -(l_theta - l_ref): sopo_loss takes log-probabilities, here the negated denoising losses
        loss = sopo_loss(
            -l_w, -r_w.to(device), -l_l, -r_l.to(device), beta_w.to(device), sopo.beta, valuable.to(device)
        )
        loss = loss.mean()
        run.update(loss)
        captions_seen += len(rows)
        rho_w, rho_l = -(l_w.detach() - r_w).cpu(), -(l_l.detach() - r_l).cpu()
        best = cosine_to_score(torch.einsum("bd,bkd->bk", text, sample_emb)).max(dim=1).values
        metrics = {
            "loss": loss.item(),
            "preferred_term": (beta_w * rho_w).mean().item(),
            "unpreferred_term": torch.where(valuable, sopo.beta * rho_l, torch.zeros_like(rho_l)).mean().item(),
            "beta_w": beta_w.mean().item(),
            "valuable_fraction": valuable.float().mean().item(),
            "unpreferred_score": score.mean().item(),
            "best_sample_score": best.mean().item(),
            "similarity": similarity.mean().item(),
            "preferred_logratio": rho_w.mean().item(),
        }
        extremes["beta_w_min"] = min(extremes["beta_w_min"], beta_w.min().item())
        extremes["beta_w_max"] = max(extremes["beta_w_max"], beta_w.max().item())
        if run.step == 1:
            first_loss = metrics["loss"]
        _log_all(job, "sopo", metrics, run.step, sums, len(rows))
    last = {key: value / max(captions_seen, 1) for key, value in sums.items()}
    run.finish()
    return {
        **last,
        **extremes,
        "first_loss": first_loss,
        "steps": float(run.step),
        "preference_seconds": run.sampling_seconds,
        "preference_seconds_per_caption": run.sampling_seconds / max(captions_seen, 1),
    }


@dataclass(frozen=True)
class DiffusionPair:
    """A preference pair of one caption: normalised (T, D) preferred and unpreferred motions (their lengths may
    differ) and, for MoDiPO's, the scorer's gap between them."""

    caption: str
    preferred: Tensor
    rejected: Tensor
    score_gap: float | None = None


def modipo_pairs(run: _Finetune, model: DiffusionPolicy, rows: Sequence[int], k: int) -> list[DiffusionPair]:
    """MoDiPO's preference set for ``rows``: per clip a random caption, K samples of ``model`` at the clip's
    length, the scorer's best (preferred) against its worst (unpreferred)."""
    examples = run.data.examples
    out = []
    for begin in range(0, len(rows), run.cfg.batch_size):
        chunk = rows[begin : begin + run.cfg.batch_size]
        captions = [run.rng.choice(list(examples.captions[i])) for i in chunk]
        lengths = [len(examples.motions[i]) for i in chunk]
        samples = run.online_samples(model, captions, lengths, k)
        text, emb = run.scores(captions, samples, lengths)
        score = cosine_to_score(torch.einsum("bd,bkd->bk", text, emb))
        best, worst = score.argmax(dim=1), score.argmin(dim=1)
        for j, n in enumerate(lengths):
            gap = float(score[j, best[j]] - score[j, worst[j]])
            out.append(DiffusionPair(captions[j], samples[j, best[j], :n], samples[j, worst[j], :n], gap))
    return out


def labelled_pairs(
    table: pd.DataFrame, root: Path, mean: np.ndarray, std: np.ndarray, split: str, source: str
) -> list[DiffusionPair]:
    """The ``split`` rows of a preference table of diffusion samples (``ingest_labels@mdm``'s: ``prompt``,
    ``chosen_features``, ``rejected_features``, paths of un-normalised (T, D) motions under ``root``), normalised."""
    missing = [c for c in ("pair_id", "prompt", "split", "chosen_features", "rejected_features") if c not in table]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}")
    part = table[table["split"] == split]
    if part.empty:
        raise ValueError(f"{source}: no preferences in split {split!r}; label more pairs (sample_pairs@mdm)")
    out = []
    for rec in part.itertuples(index=False):
        motions = []
        for path in (rec.chosen_features, rec.rejected_features):
            try:
                x = np.load(root / path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ValueError(f"{source}: pair {rec.pair_id!r}: cannot read {path}: {e}") from None
            if x.ndim != 2 or x.shape[1] != len(mean) or not len(x):
                expected = f"(T, {len(mean)})"
                raise ValueError(f"{source}: pair {rec.pair_id!r}: {path} has shape {x.shape}; expected {expected}")
            motions.append(torch.from_numpy(((x - mean) / std).astype(np.float32)))
        out.append(DiffusionPair(rec.prompt, *motions))
    return out


def _dpo_epoch(
    run: _Finetune, pairs: Sequence[DiffusionPair], beta: float, prefix: str, epoch: int
) -> tuple[dict[str, float], float | None]:
    """One shuffled pass of Diffusion-DPO over ``pairs``. Logs per step under ``prefix/`` the loss, the implicit
    accuracy (the policy denoises the preferred motion better, relative to the reference, than the unpreferred
    one), the margin and MoDiPO's score gap; returns the pass's means and the first step's loss (None after).

    Under ``accelerate launch`` each process computes its share of every batch's pairs (every process holds them
    all), its loss weighted by its pairs over the batch's (``share_weight``), so that the averaged gradient
    (``_Finetune.update``) is the batch's; the metrics are of the whole batch, its rows gathered."""
    accel = run.job.accelerator
    order = run.rng.sample(range(len(pairs)), len(pairs))
    sums: dict[str, float] = {}
    first_loss = None
    batches = range(0, len(order), run.cfg.batch_size)
    for begin in track(batches, f"{prefix} epoch {epoch}", len(batches)):
        chunk = [pairs[i] for i in order[begin : begin + run.cfg.batch_size]]
        x_w, _ = pad([p.preferred for p in chunk])
        x_l, _ = pad([p.rejected for p in chunk])
        frames = max(x_w.shape[1], x_l.shape[1])  # pad both to one length: the pair shares its noise
        x_w, x_l = (torch.nn.functional.pad(x, (0, 0, 0, frames - x.shape[1])) for x in (x_w, x_l))
        lengths_w, lengths_l = [len(p.preferred) for p in chunk], [len(p.rejected) for p in chunk]
        part, counted, weight = share_to_train(range(len(chunk)), accel)
        l_w, l_l, r_w, r_l = run.pair_losses(x_w, x_l, lengths_w, [p.caption for p in chunk], lengths_l, part)
        losses = diffusion_dpo_loss(l_w, l_l, r_w.to(l_w.device), r_l.to(l_w.device), beta)
        run.update(losses.mean() * weight)
        losses = gather_rows(losses.detach(), counted, accel)
        inside = gather_rows(((l_w.detach() - r_w) - (l_l.detach() - r_l)).cpu(), counted, accel)
        metrics = {
            "loss": losses.mean().item(),
            "accuracy": (inside < 0).float().mean().item(),
            "margin": (-0.5 * beta * inside).mean().item(),
        }
        gaps = [p.score_gap for p in chunk if p.score_gap is not None]
        if gaps:
            metrics["score_gap"] = float(np.mean(gaps))
        if run.step == 1:
            first_loss = metrics["loss"]
        _log_all(run.job, prefix, metrics, run.step, sums, len(chunk))
    return {key: value / len(order) for key, value in sums.items()}, first_loss


def run_modipo(
    job: FinetuneJob, cfg: DiffusionAlgoConfig, data: DiffusionFinetuneData, online: bool
) -> dict[str, float]:
    """Finetune ``data.policy`` with MoDiPO: Diffusion-DPO (beta ``job.beta``) on best-vs-worst pairs of K
    samples per caption, drawn once from the pretrained policy (the reference) or, ``online``, from the current
    policy at the start of every epoch, for that epoch's captions. Logs under ``modipo/`` (``_dpo_epoch``, which
    shares each batch's pairs across launched processes); returns the last epoch's means, ``first_loss`` (log 2),
    the steps and the preference-generation time."""
    beta = job.require_beta("modipo")
    run = _Finetune(job, data, cfg)
    last: dict[str, float] = {}
    first_loss: float | None = None
    fixed = None if online else run.captions_for_epoch()
    pairs: list[DiffusionPair] = []
    for epoch in range(1, cfg.modipo.epochs + 1):
        if online or not pairs:
            rows = run.captions_for_epoch() if online else fixed
            assert rows is not None
            run.policy.eval()
            pairs = modipo_pairs(run, run.policy if online else run.reference, rows, cfg.modipo.k)
        last, first = _dpo_epoch(run, pairs, beta, "modipo", epoch)
        first_loss = first if first_loss is None else first_loss
    run.finish()
    n_generated = len(pairs) * (cfg.modipo.epochs if online else 1)
    return {
        **last,
        "first_loss": float("nan") if first_loss is None else first_loss,
        "steps": float(run.step),
        "epochs": float(cfg.modipo.epochs),
        "preference_seconds": run.sampling_seconds,
        "preference_seconds_per_caption": run.sampling_seconds / max(n_generated, 1),
    }


def run_diffusion_dpo(
    job: FinetuneJob, cfg: DiffusionAlgoConfig, data: DiffusionFinetuneData, pairs: Sequence[DiffusionPair]
) -> dict[str, float]:
    """Finetune ``data.policy`` with Diffusion-DPO (beta ``job.beta``) on labelled ``pairs`` (``labelled_pairs``),
    every pair each of ``cfg.dpo.epochs`` epochs. Logs under ``dpo/`` (``_dpo_epoch``, which shares each batch's
    pairs across launched processes); returns the last epoch's means, ``first_loss`` (log 2), the steps and the
    pairs."""
    if not pairs:
        raise ValueError("Diffusion-DPO needs at least one labelled pair")
    beta = job.require_beta("diffusion dpo")
    run = _Finetune(job, data, cfg)
    first_loss: float | None = None
    last: dict[str, float] = {}
    for epoch in range(1, cfg.dpo.epochs + 1):
        last, first = _dpo_epoch(run, pairs, beta, "dpo", epoch)
        first_loss = first if first_loss is None else first_loss
    run.finish()
    return {
        **last,
        "first_loss": float("nan") if first_loss is None else first_loss,
        "steps": float(run.step),
        "epochs": float(cfg.dpo.epochs),
        "pairs": float(len(pairs)),
    }
