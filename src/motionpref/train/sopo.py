"""SoPo, semi-online preference optimisation (Tan et al. 2024, arXiv:2412.05095), for the token policy.

Each step pairs the dataset motion x_w of a training caption c (preferred, offline) with K samples of the current
policy (online). Which line implements what, checked against the authors' release (github.com/Xiaofeng-Tan/SoPo,
``GaussianDiffusion.training_losses`` in ``diffusion/gaussian_diffusion.py``, shipped there as bytecode only; K = 2
there, an MDM whose log-ratio is the Diffusion-DPO MSE difference):

- the scorer's score R = cos / 2 + 0.5 in [0, 1], for text-motion and motion-motion pairs alike (TMR's
  ``get_score_vector``, used for both in the release);
- the unpreferred motion x_l = the online sample with the lowest R(c, x) (release:
  ``torch.where(score_1 <= score_2, sample_1, sample_2)``);
- valuable unpreferred: R(c, x_l) < tau, tau = 0.45 in the paper (release: ``mask_l = torch.lt(losing_score, 0.45)``);
- S(x_w) = min over the online (unpreferred) samples x_l^k of R(x_w, x_l^k), the paper's Eq. 14 (release:
  ``probability = torch.min(score_mm_1, score_mm_2)``); ``s_w = "max"`` takes the closest sample instead;
- beta_w = beta (C - S(x_w)), C = 2, beta = 1 (release: ``(2 - probability)``), so beta_w runs over
  [beta (C - 1), beta C];
- the loss -log sigma(beta_w rho_w - 1[valuable] beta rho_l), rho = log pi_theta / pi_ref (release, line 1561:
  ``-log(sigmoid(-((2 - probability) * (l_w - ref_w) - mask_l * (l_l - ref_l))))``, where the diffusion
  ``-(l - ref)`` is the log-ratio).

Variants, as the paper's ablation (the valuable-unpreferred filter and the reweighting, each on or off):

- ``dsopo``: plain semi-online pairs (the loser always trains, beta everywhere);
- ``usopo``: the valuable-unpreferred filter alone (no valuable sample: only the preferred term trains);
- ``sopo_no_vu``: the reweighting beta_w alone;
- ``sopo``: both.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from motionpref.config import SoPoConfig
from motionpref.distributed import bare_model, gather_rows, sharded_generator, share_to_train
from motionpref.models.generator import MotionGenerator
from motionpref.models.retrieval import RetrievalModel, cosine_to_score
from motionpref.progress import track
from motionpref.train.losses import sopo_loss, sopo_weight
from motionpref.train.policy import PolicyExample
from motionpref.train.preference import FinetuneJob, pair_logprobs

FILTERED = ("usopo", "sopo")  # variants with the valuable-unpreferred filter
REWEIGHTED = ("sopo_no_vu", "sopo")  # variants with beta_w
# Step metrics whose summary is the run's extreme rather than the last epoch's mean.
EXTREMES = {"beta_w_min": min, "beta_w_max": max}


def semi_online_pairs(
    text: torch.Tensor,
    preferred: torch.Tensor,
    samples: torch.Tensor,
    valid: torch.Tensor,
    tau: float,
    s_w: str = "min",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick each caption's unpreferred sample from unit-norm retrieval embeddings.

    ``text`` (B, d) caption embeddings, ``preferred`` (B, d) dataset-motion embeddings, ``samples`` (B, K, d)
    online-sample embeddings, ``valid`` (B, K) which samples decoded to a motion. Returns ``loser`` (B,) the
    index of the lowest score cos/2 + 0.5 to the caption, ``score`` (B,) that score, ``valuable`` (B,) score < tau
    and ``similarity`` (B,) S(x_w): the score cos/2 + 0.5 of the dataset motion to its least similar valid sample
    (``s_w="min"``, Eq. 14) or to its most similar one (``s_w="max"``). A caption without a valid sample gets
    score inf, loser 0 (meaningless: the caller masks it), valuable False, similarity 0 (so beta_w = beta C).
    """
    if s_w not in ("min", "max"):
        raise ValueError(f"s_w must be 'min' or 'max', got {s_w!r}")
    scores = cosine_to_score(torch.einsum("bd,bkd->bk", text, samples)).masked_fill(~valid, float("inf"))
    score, loser = scores.min(dim=1)
    any_valid = valid.any(dim=1)
    valuable = any_valid & (score < tau)
    closeness = cosine_to_score(torch.einsum("bd,bkd->bk", preferred, samples))
    if s_w == "min":
        extreme = closeness.masked_fill(~valid, float("inf")).min(dim=1).values
    else:
        extreme = closeness.masked_fill(~valid, float("-inf")).max(dim=1).values
    similarity = torch.where(any_valid, extreme, torch.zeros_like(score))
    return loser, score, valuable, similarity


@dataclass
class SoPoData:
    """The sampler of the policy to finetune (``generator.policy``, sampling with ``config.sampling``), the
    retrieval scorer, and the training clips: ``examples[i]`` a clip's captions and codes (the preferred
    answer), ``motions[i]`` its un-normalised features (for S(x_w))."""

    generator: MotionGenerator
    scorer: RetrievalModel
    examples: Sequence[PolicyExample]
    motions: Sequence[np.ndarray]


def run(job: FinetuneJob, config: SoPoConfig, data: SoPoData) -> dict[str, float]:
    """Finetune ``data.generator.policy`` in place with SoPo (beta ``job.beta``) and save it (adapters merged)
    to ``job.out_dir``.

    Under ``accelerate launch`` each process draws its share of every step's online samples
    (``distributed.sharded_generator``) and holds them all, so every process picks the same pairs; it trains on its
    share of the pairs, the loss weighted by ``share_weight`` under DDP, and the metrics gather every share's rows.
    Only the main process saves.

    Logs every step under ``sopo/``: the loss, its two terms (``preferred_term`` beta_w rho_w and
    ``unpreferred_term`` 1[valuable] beta rho_l, batch means), beta_w's batch mean / min / max, the share of
    captions with a valuable unpreferred sample, the unpreferred and best online scores, S(x_w), the invalid-sample
    rate and the preferred log-ratio rho_w. Returns the last epoch's means of those, but ``beta_w_min`` /
    ``beta_w_max`` over the whole run, plus ``first_loss`` (the first step's, log 2: policy = reference),
    ``steps`` and ``epochs``.
    """
    policy_generator, scorer, examples, motions = data.generator, data.scorer, data.examples, data.motions
    beta = job.require_beta("sopo")
    if len(examples) != len(motions):
        raise ValueError(f"{len(examples)} examples but {len(motions)} motions")
    if not examples:
        raise ValueError("sopo: no training examples")
    policy = policy_generator.policy
    torch.manual_seed(job.seed)
    rng = random.Random(job.seed)
    reference, params, optimiser = job.start(policy, config.lr, config.weight_decay)
    accel = job.accelerator
    preferred_embeddings = scorer.encode_motion(list(motions)).cpu()

    per_epoch = min(config.captions_per_epoch or len(examples), len(examples))
    step = 0
    last: dict[str, float] = {}
    extremes: dict[str, float] = {}
    first_loss = float("nan")
    for epoch in range(1, config.epochs + 1):
        order = rng.sample(range(len(examples)), per_epoch)
        sums: dict[str, float] = {}
        batches = range(0, per_epoch, config.batch_size)
        for begin in track(batches, f"sopo epoch {epoch}", len(batches)):
            rows = order[begin : begin + config.batch_size]
            captions = [rng.choice(examples[i].captions) for i in rows]
            seeds = [rng.randrange(2**31) for _ in range(len(rows) * config.k)]
            policy.model.eval()
            with bare_model(policy_generator.policy, accel):  # a DDP wrapper has no generate
                generation = sharded_generator(policy_generator, accel).generate(
                    [c for c in captions for _ in range(config.k)], seeds
                )
            policy.model.train()
            valid = torch.tensor([f is not None for f in generation.features]).view(len(rows), config.k)
            sample_emb = torch.zeros(len(rows) * config.k, preferred_embeddings.shape[1])
            kept = [i for i, f in enumerate(generation.features) if f is not None]
            if kept:
                sample_emb[kept] = scorer.encode_motion([generation.features[i] for i in kept]).cpu()
            text_emb = scorer.encode_text(captions).cpu()
            loser, score, valuable, similarity = semi_online_pairs(
                text_emb,
                preferred_embeddings[rows],
                sample_emb.view(len(rows), config.k, -1),
                valid,
                config.tau,
                config.s_w,
            )
            if config.variant not in FILTERED:
                valuable = valid.any(dim=1)  # no filter: the worst valid sample always trains
            # A caption without any valid sample keeps its own motion as a stand-in loser, masked out by valuable.
            loser_codes = [
                generation.codes[r * config.k + int(loser[r])] if valid[r].any() else list(examples[i].codes)
                for r, i in enumerate(rows)
            ]
            preferred_codes = [examples[i].codes for i in rows]
            if config.variant in REWEIGHTED:
                beta_w = sopo_weight(similarity, beta, config.c)
            else:
                beta_w = torch.full_like(similarity, beta)
            # every process holds the whole batch's pairs; each trains on its share of them
            part, counted, weight = share_to_train(range(len(rows)), accel)
            mine = [captions[r] for r in part]
            with bare_model(policy, accel):  # no training pass: the reference must not join DDP's collectives
                ref_w = reference.logprobs(mine, [preferred_codes[r] for r in part])
                ref_l = reference.logprobs(mine, [loser_codes[r] for r in part])
            pw, pl = pair_logprobs(policy, mine, [preferred_codes[r] for r in part], [loser_codes[r] for r in part])
            device = pw.device
            losses = sopo_loss(
                pw, ref_w.to(device), pl, ref_l.to(device), beta_w[part].to(device), beta, valuable[part].to(device)
            )
            optimiser.zero_grad(set_to_none=True)
            accel.backward(losses.mean() * weight)
            accel.clip_grad_norm_(params, config.grad_clip)
            optimiser.step()
            step += 1
            loss = gather_rows(losses.detach(), counted, accel).mean()
            rho_w = gather_rows(pw.detach().cpu() - ref_w, counted, accel)
            rho_l = gather_rows(pl.detach().cpu() - ref_l, counted, accel)
            preferred_term = beta_w * rho_w
            unpreferred_term = torch.where(valuable, beta * rho_l, torch.zeros_like(rho_l))
            has_valid = valid.any(dim=1)
            best = cosine_to_score(torch.einsum("bd,bkd->bk", text_emb, sample_emb.view(len(rows), config.k, -1)))
            metrics = {
                "loss": loss.item(),
                "preferred_term": preferred_term.mean().item(),
                "unpreferred_term": unpreferred_term.mean().item(),
                "beta_w": beta_w.mean().item(),
                "beta_w_min": beta_w.min().item(),
                "beta_w_max": beta_w.max().item(),
                "valuable_fraction": valuable.float().mean().item(),
                "unpreferred_score": score[has_valid].mean().item() if has_valid.any() else float("nan"),
                "best_sample_score": best.masked_fill(~valid, 0).max(dim=1).values.mean().item(),
                "similarity": similarity.mean().item(),
                "invalid_rate": 1.0 - valid.float().mean().item(),
                "preferred_logratio": rho_w.mean().item(),
            }
            if step == 1:
                first_loss = metrics["loss"]
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * len(rows)
                if k in EXTREMES:
                    extremes[k] = EXTREMES[k](extremes.get(k, v), v)
                job.log(f"sopo/{k}", v, step)
        last = {k: v / per_epoch for k, v in sums.items()}
    job.finish(policy)
    return {**last, **extremes, "first_loss": first_loss, "steps": float(step), "epochs": float(config.epochs)}
