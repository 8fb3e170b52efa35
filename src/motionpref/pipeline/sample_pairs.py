"""Stage sample_pairs: two motions per train or val prompt from the supervised policy, different seeds,
temperature 1.2; the test prompts are left to the win rates."""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    import numpy as np

    from motionpref.io import atomic_dir, npy_bytes, write_bytes, write_json
    from motionpref.models.generator import MotionGenerator
    from motionpref.models.policy import MotionPolicy
    from motionpref.models.vqvae import MotionVQVAE
    from motionpref.prefs.pairs import directory_hash, render_previews, sample_pairs, write_pairs
    from motionpref.prefs.prompts import read_prompts

    cfg = params.pairs
    prompts = read_prompts(ctx.path(artifacts.PROMPTS))
    mean, std = ctx.dataset(params.data).stats()
    policy_dir = ctx.path(artifacts.POLICY_SFT)
    generator = MotionGenerator(
        MotionPolicy.load(policy_dir),
        MotionVQVAE.load(ctx.path(artifacts.VQVAE)),
        mean,
        std,
        cfg.sampling,
        fallback_frames=params.data.min_len,
    )
    with atomic_dir(ctx.path(artifacts.MOTIONS)) as tmp:

        def store(name: str, features: np.ndarray) -> str:
            write_bytes(tmp / name, npy_bytes(np.asarray(features, np.float32)))
            return f"{artifacts.MOTIONS}/{name}"  # where it will be once the folder is in place

        table, stats = sample_pairs(
            prompts,
            generator,
            cfg.sampling.temperature,
            params.stage_seed("sample_pairs"),
            directory_hash(policy_dir),
            store,
        )
    with atomic_dir(ctx.path(artifacts.PREVIEWS)) as tmp:
        names = render_previews(table, ctx.root, tmp, cfg.previews)
    table.loc[: len(names) - 1, "preview"] = [f"{artifacts.PREVIEWS}/{name}" for name in names]
    write_pairs(table, ctx.path(artifacts.PAIRS))
    write_json(ctx.path(artifacts.stage_report("pairs_stats")), stats)
    return stats


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
