"""Stage sample_pairs@<policy>: two motions per train or val prompt from a policy, different seeds; the test
prompts are left to the win rates.

``sft``: the supervised token policy at the paper's temperature 1.2, into ``data/prefs/``. ``mdm``: the
pretrained diffusion policy (``train_diffusion@mdm``, its sampler ``diffusion.mdm.sampling``; a diffusion
sampler has no temperature), into ``data/prefs/mdm/``: preferences on diffusion samples, labelled by the same
labelers and app (``label@mdm``, ``motionpref label-app --policy mdm``) for Diffusion-DPO (``finetune@mdm_dpo``).

Under ``accelerate launch`` each process samples its share of every chunk of prompts, each motion from its own
seed (``distributed.sharded_generator``), and the main process, which gathers them all, writes the motions, the
table, the previews and the statistics: the pairs one process samples.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from motionpref.config import Params
from motionpref.distributed import sharded_generator
from motionpref.pipeline import StageContext, artifacts

if TYPE_CHECKING:
    from motionpref.models.diffusion_generator import DiffusionGenerator
    from motionpref.models.generator import MotionGenerator

ITEM = "policy"


def _generator(params: Params, ctx: StageContext, policy: str) -> tuple[MotionGenerator | DiffusionGenerator, float]:
    """The sampler of ``policy`` and the temperature its pairs are drawn at."""
    spec = ctx.dataset(params.data)
    mean, std = spec.stats()
    if policy == "sft":
        from motionpref.models.generator import MotionGenerator
        from motionpref.models.policy import MotionPolicy
        from motionpref.models.vqvae import MotionVQVAE

        sampling = params.pairs.sampling
        model = MotionPolicy.load(ctx.path(artifacts.POLICY_SFT))
        vqvae = MotionVQVAE.load(ctx.path(artifacts.VQVAE))
        generator = MotionGenerator(model, vqvae, mean, std, sampling, fallback_frames=params.data.min_len)
        return generator, sampling.temperature
    from motionpref.models.diffusion import load_policy
    from motionpref.models.diffusion_generator import DiffusionGenerator

    lengths = [e.length for e in spec.load("train")]  # a prompt's length is drawn from the training clips'
    sampling = getattr(params.diffusion, policy).sampling
    return DiffusionGenerator(load_policy(ctx.path(artifacts.policy(policy))), mean, std, sampling, lengths), 1.0


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    import numpy as np

    from motionpref.io import atomic_dir, npy_bytes, write_bytes, write_json
    from motionpref.prefs.pairs import directory_hash, render_previews, sample_pairs, write_pairs
    from motionpref.prefs.prompts import read_prompts

    policy = ctx.item
    assert policy is not None
    motions = artifacts.prefs_path(policy, artifacts.MOTIONS)
    previews = artifacts.prefs_path(policy, artifacts.PREVIEWS)
    prompts = read_prompts(ctx.path(artifacts.PROMPTS))
    generator, temperature = _generator(params, ctx, policy)
    with atomic_dir(ctx.path(motions)) if ctx.is_main else nullcontext(None) as tmp:

        def store(name: str, features: np.ndarray) -> str:
            if tmp is not None:
                write_bytes(tmp / name, npy_bytes(np.asarray(features, np.float32)))
            return f"{motions}/{name}"  # where it will be once the folder is in place

        table, stats = sample_pairs(
            prompts,
            sharded_generator(generator, ctx.accelerator),
            temperature,
            params.stage_seed("sample_pairs"),
            directory_hash(ctx.path(artifacts.policy(policy))),
            store,
        )
    if not ctx.is_main:
        return stats
    with atomic_dir(ctx.path(previews)) as tmp:
        names = render_previews(table, ctx.root, tmp, params.pairs.previews, ctx.dataset(params.data).skeleton)
    table.loc[: len(names) - 1, "preview"] = [f"{previews}/{name}" for name in names]
    write_pairs(table, ctx.path(artifacts.prefs_path(policy, artifacts.PAIRS)))
    write_json(ctx.path(artifacts.prefs_report("pairs_stats", policy)), stats)
    return stats


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
