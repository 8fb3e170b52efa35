"""Calibrate SoPo's cut-off tau to this project's retrieval scorer.

The paper's tau = 0.45 is on TMR's score scale (cos / 2 + 0.5); our scorer is trained on other data and spreads
its scores differently, so the number does not carry over. This script measures what tau means here:

- samples K online motions (``algo.sopo.k``, ``algo.sopo.sampling``) from the SFT policy for ``--captions``
  seeded training captions (one caption of each of as many clips), scores each with the retrieval scorer and
  keeps each caption's lowest score among its valid samples, the SoPo unpreferred candidate;
- scores the same captions against their own dataset motion (matched) and against another clip's dataset
  motion (mismatched, a seeded derangement of the clips);
- picks tau = the median mismatched score (see ``pick_tau``) and reports the share of captions whose
  worst online sample falls below it, with the same share for the paper's 0.45 and for the tau in params.yaml.

    python bench/sopo_tau.py [--captions 300] [--seed 0] [--params params.yaml]

Writes ``reports/bench/sopo_tau.json``.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch

from motionpref.config import load_params
from motionpref.io import write_json
from motionpref.models.generator import MotionGenerator
from motionpref.models.policy import MotionPolicy
from motionpref.models.retrieval import RetrievalModel, cosine_to_score
from motionpref.models.vqvae import MotionVQVAE
from motionpref.motion.dataset import DatasetSpec
from motionpref.motion.skeleton import SKELETONS
from motionpref.progress import quiet_libraries

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "data" / "models"
OUT = ROOT / "reports" / "bench" / "sopo_tau.json"
PAPER_TAU = 0.45
QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


def pick_tau(mismatched: np.ndarray) -> float:
    """tau = the median score the scorer gives a caption paired with another clip's dataset motion: an online
    sample is a valuable loser when it matches its caption worse than a typical unrelated motion does, the
    reading of TMR's 0.45 (just under 0.5, the score of an orthogonal, unrelated pair) that is free of scale."""
    return float(np.median(mismatched))


def share_below(scores: np.ndarray, tau: float) -> float:
    return float(np.mean(scores < tau))


def quantiles(scores: np.ndarray) -> dict[str, float]:
    return {f"q{round(q * 100):02d}": float(np.quantile(scores, q)) for q in QUANTILES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    quiet_libraries()
    params = load_params(args.params)
    torch.set_num_threads(params.threads)
    config = params.algo.sopo
    spec = DatasetSpec(
        ROOT / "data" / "dataset", SKELETONS[params.data.skeleton_name], params.data.min_len, params.data.max_len
    )
    entries = spec.load("train")
    if args.captions > len(entries):
        raise SystemExit(f"--captions {args.captions}: the training split has {len(entries)} clips")
    mean, std = spec.stats()
    generator = MotionGenerator(
        MotionPolicy.load(MODELS / "policy_sft"), MotionVQVAE.load(MODELS / "vqvae"), mean, std, config.sampling
    )
    scorer = RetrievalModel.load(MODELS / "retrieval")

    rng = random.Random(args.seed)
    clips = rng.sample(range(len(entries)), args.captions)
    captions = [rng.choice(entries[i].captions).text for i in clips]
    others = clips[1:] + clips[:1]  # a derangement: every caption meets another clip's motion
    start = time.perf_counter()
    seeds = [rng.randrange(2**31) for _ in range(args.captions * config.k)]
    generation = generator.generate([c for c in captions for _ in range(config.k)], seeds)
    sampling_s = time.perf_counter() - start

    text = scorer.encode_text(captions).cpu()
    valid = torch.tensor([f is not None for f in generation.features]).view(args.captions, config.k)
    samples = torch.zeros(args.captions * config.k, text.shape[1])
    kept = [i for i, f in enumerate(generation.features) if f is not None]
    samples[kept] = scorer.encode_motion([generation.features[i] for i in kept]).cpu()
    online = cosine_to_score(torch.einsum("bd,bkd->bk", text, samples.view(args.captions, config.k, -1)))
    worst = online.masked_fill(~valid, float("inf")).min(dim=1).values[valid.any(dim=1)].numpy()
    motions = scorer.encode_motion([entries[i].features for i in clips]).cpu()
    matched = cosine_to_score((text * motions).sum(dim=1)).numpy()
    mismatched = cosine_to_score((text * motions[[clips.index(o) for o in others]]).sum(dim=1)).numpy()

    tau = pick_tau(mismatched)
    result = {
        "captions": args.captions,
        "k": config.k,
        "seed": args.seed,
        "invalid_rate": 1.0 - valid.float().mean().item(),
        "sampling_s": sampling_s,
        "worst_of_k": quantiles(worst),
        "all_online": quantiles(online[valid].numpy()),
        "matched": quantiles(matched),
        "mismatched": quantiles(mismatched),
        "tau": tau,
        "valuable_share": share_below(worst, tau),
        "valuable_share_at_paper_tau": share_below(worst, PAPER_TAU),
        "params_tau": config.tau,
        "valuable_share_at_params_tau": share_below(worst, config.tau),
    }
    write_json(OUT, result)
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
