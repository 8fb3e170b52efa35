"""Stage train_policy: the supervised (SFT) text-to-motion policy the preference methods start from.

``policy.init: scratch`` trains a tiny T5 (or ``arch: causal`` decoder) on the dataset's tokens;
``motiongpt`` loads a MotionGPT checkpoint and saves it in our layout.
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.io import write_json
    from motionpref.models.policy import MotionPolicy
    from motionpref.models.vqvae import MotionVQVAE
    from motionpref.train.policy import evaluate_policy, load_examples, train_policy

    cfg = params.policy
    spec = ctx.dataset(params.data)
    codebook_size = MotionVQVAE.load(ctx.path(artifacts.VQVAE)).codebook_size
    train = load_examples(spec.load("train"), ctx.path(artifacts.TOKENS), codebook_size)
    val = load_examples(spec.load("val"), ctx.path(artifacts.TOKENS), codebook_size)
    out = ctx.path(artifacts.POLICY_SFT)
    seed = params.stage_seed("train_policy")
    if cfg.init == "motiongpt":
        policy, _ = MotionPolicy.from_motiongpt(cfg.checkpoint, cfg.t5_dir, codebook_size)  # type: ignore[arg-type]
        policy.save(out)
        metrics = {f"val_{k}": v for k, v in evaluate_policy(policy, val).items()}
    else:
        model_config = cfg.model.model_copy(update={"codebook_size": codebook_size})
        captions = [c for ex in train for c in ex.captions]
        policy = MotionPolicy.from_scratch(model_config, captions, seed=seed)
        metrics = train_policy(policy, train, val, cfg.train, seed, out, ctx.run.log_metric, ctx.accelerator)
    metrics["parameters"] = sum(p.numel() for p in policy.model.parameters())
    if ctx.is_main:
        write_json(ctx.path(artifacts.stage_report("train_policy")), metrics)
    return metrics


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
