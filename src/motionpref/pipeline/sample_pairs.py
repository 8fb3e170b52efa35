"""Stage sample_pairs: two motions per prompt from the supervised policy, different seeds, temperature 1.2."""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import MODELS, PREFS, REPORTS, StageContext
from motionpref.pipeline.train_policy import POLICY_DIR

READS = ("data", "pairs")


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    import numpy as np

    from motionpref.io import atomic_dir, npy_bytes, write_bytes, write_json
    from motionpref.models.generator import MotionGenerator
    from motionpref.models.policy import MotionPolicy
    from motionpref.models.vqvae import MotionVQVAE
    from motionpref.prefs.pairs import directory_hash, render_previews, sample_pairs, write_pairs
    from motionpref.prefs.prompts import read_prompts

    cfg = params.pairs
    prompts = read_prompts(ctx.path(PREFS, "prompts.parquet"))
    mean, std = ctx.dataset(params.data).stats()
    policy_dir = ctx.path(MODELS, POLICY_DIR)
    generator = MotionGenerator(
        MotionPolicy.load(policy_dir), MotionVQVAE.load(ctx.path(MODELS, "vqvae")), mean, std, cfg.sampling
    )
    with atomic_dir(ctx.path(PREFS, "motions")) as tmp:

        def store(name: str, features: np.ndarray) -> str:
            write_bytes(tmp / name, npy_bytes(np.asarray(features, np.float32)))
            return f"{PREFS}/motions/{name}"  # where it will be once the folder is in place

        table, stats = sample_pairs(
            prompts, generator, cfg.temperature, params.stage_seed("sample_pairs"), directory_hash(policy_dir), store
        )
    with atomic_dir(ctx.path(PREFS, "previews")) as tmp:
        names = render_previews(table, ctx.root, tmp, cfg.previews)
    table.loc[: len(names) - 1, "preview"] = [f"{PREFS}/previews/{name}" for name in names]
    write_pairs(table, ctx.path(PREFS, "pairs.parquet"))
    write_json(ctx.path(REPORTS, "pairs_stats.json"), stats)
    return stats
