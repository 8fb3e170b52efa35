"""SoPo, semi-online preference optimisation (Tan et al. 2024), for the token policy.

Each step pairs the dataset motion of a training caption (preferred, offline) with the policy's own samples
(online): K samples per caption are scored by the retrieval scorer, the lowest-scored is the unpreferred
motion, and it counts as "valuable" only when its score is below tau. Variants, as the paper's ablation:

- ``dsopo``: plain semi-online pairs (the loser always trains, beta everywhere);
- ``usopo``: the valuable-unpreferred filter alone (no valuable sample: only the preferred term trains);
- ``sopo_no_vu``: the reweighting beta_w = beta (C - S(x_w)) alone;
- ``sopo``: both.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from motionpref.config import SoPoConfig
from motionpref.models.generator import MotionGenerator
from motionpref.models.retrieval import RetrievalModel, cosine_to_score
from motionpref.progress import track
from motionpref.train.losses import sopo_loss, sopo_weight
from motionpref.train.policy import PolicyExample
from motionpref.train.preference import FinetuneJob, pair_logprobs

FILTERED = ("usopo", "sopo")  # variants with the valuable-unpreferred filter
REWEIGHTED = ("sopo_no_vu", "sopo")  # variants with beta_w


def semi_online_pairs(
    text: torch.Tensor, preferred: torch.Tensor, samples: torch.Tensor, valid: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick each caption's unpreferred sample from unit-norm retrieval embeddings.

    ``text`` (B, d) caption embeddings, ``preferred`` (B, d) dataset-motion embeddings, ``samples`` (B, K, d)
    online-sample embeddings, ``valid`` (B, K) which samples decoded to a motion. Returns ``loser`` (B,) the
    index of the lowest TMR score cos/2 + 0.5, ``score`` (B,) that score, ``valuable`` (B,) score < tau and
    ``similarity`` (B,) S(x_w), the cosine of the dataset motion to its closest valid sample. A caption without
    a valid sample gets score inf, loser 0 (meaningless: the caller masks it), valuable False, similarity 0.
    """
    scores = cosine_to_score(torch.einsum("bd,bkd->bk", text, samples)).masked_fill(~valid, float("inf"))
    score, loser = scores.min(dim=1)
    any_valid = valid.any(dim=1)
    valuable = any_valid & (score < tau)
    cos = torch.einsum("bd,bkd->bk", preferred, samples).masked_fill(~valid, float("-inf"))
    similarity = torch.where(any_valid, cos.max(dim=1).values, torch.zeros_like(score))
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
    to ``job.out_dir``. Returns the last epoch's means: loss, the fraction of captions with a valuable unpreferred
    sample, the unpreferred and best online scores, S(x_w).
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
    preferred_embeddings = scorer.encode_motion(list(motions)).cpu()

    per_epoch = min(config.captions_per_epoch or len(examples), len(examples))
    step = 0
    last: dict[str, float] = {}
    for epoch in range(1, config.epochs + 1):
        order = rng.sample(range(len(examples)), per_epoch)
        sums: dict[str, float] = {}
        batches = range(0, per_epoch, config.batch_size)
        for begin in track(batches, f"sopo epoch {epoch}", len(batches)):
            rows = order[begin : begin + config.batch_size]
            captions = [rng.choice(examples[i].captions) for i in rows]
            seeds = [rng.randrange(2**31) for _ in range(len(rows) * config.k)]
            policy.model.eval()
            generation = policy_generator.generate([c for c in captions for _ in range(config.k)], seeds)
            policy.model.train()
            valid = torch.tensor([f is not None for f in generation.features]).view(len(rows), config.k)
            sample_emb = torch.zeros(len(rows) * config.k, preferred_embeddings.shape[1])
            kept = [i for i, f in enumerate(generation.features) if f is not None]
            if kept:
                sample_emb[kept] = scorer.encode_motion([generation.features[i] for i in kept]).cpu()
            text_emb = scorer.encode_text(captions).cpu()
            loser, score, valuable, similarity = semi_online_pairs(
                text_emb, preferred_embeddings[rows], sample_emb.view(len(rows), config.k, -1), valid, config.tau
            )
            if config.variant not in FILTERED:
                valuable = valid.any(dim=1)  # no filter: the worst valid sample always trains
            # A caption without any valid sample keeps its own motion as a stand-in loser, masked out by valuable.
            loser_codes = [
                generation.codes[r * config.k + int(loser[r])] if valid[r].any() else list(examples[i].codes)
                for r, i in enumerate(rows)
            ]
            preferred_codes = [examples[i].codes for i in rows]
            ref_w = reference.logprobs(captions, preferred_codes)
            ref_l = reference.logprobs(captions, loser_codes)
            pw, pl = pair_logprobs(policy, captions, preferred_codes, loser_codes)
            device = pw.device
            if config.variant in REWEIGHTED:
                beta_w = sopo_weight(similarity, beta, config.c)
            else:
                beta_w = torch.full_like(similarity, beta)
            loss = sopo_loss(
                pw, ref_w.to(device), pl, ref_l.to(device), beta_w.to(device), beta, valuable.to(device)
            ).mean()
            optimiser.zero_grad(set_to_none=True)
            job.accelerator.backward(loss)
            job.accelerator.clip_grad_norm_(params, config.grad_clip)
            optimiser.step()
            step += 1
            has_valid = valid.any(dim=1)
            best = cosine_to_score(torch.einsum("bd,bkd->bk", text_emb, sample_emb.view(len(rows), config.k, -1)))
            metrics = {
                "loss": loss.item(),
                "valuable_fraction": valuable.float().mean().item(),
                "unpreferred_score": score[has_valid].mean().item() if has_valid.any() else float("nan"),
                "best_sample_score": best.masked_fill(~valid, 0).max(dim=1).values.mean().item(),
                "similarity": similarity.mean().item(),
                "beta_w": beta_w.mean().item(),
                "invalid_rate": 1.0 - valid.float().mean().item(),
                "preferred_logratio": (pw.detach().cpu() - ref_w).mean().item(),
            }
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * len(rows)
                job.log(f"sopo/{k}", v, step)
        last = {k: v / per_epoch for k, v in sums.items()}
    job.finish(policy)
    return {**last, "steps": float(step), "epochs": float(config.epochs)}
