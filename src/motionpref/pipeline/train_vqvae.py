"""Stage train_vqvae: the motion tokenizer, and every dataset entry tokenised into data/tokens/.

With ``policy.init: motiongpt`` the VQ-VAE is MotionGPT's own (its checkpoint's ``vae.*`` weights), since
the language model only understands that codebook.

Under ``accelerate launch`` the processes train on shares of every batch of windows (``train.vqvae``); the main
process alone validates, saves and tokenises (one clip at a time, on the CPU, as in one process).
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params, VQVAEConfig
from motionpref.pipeline import StageContext, artifacts

SPLITS = ("train", "val", "test")


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.io import write_json
    from motionpref.models.checkpoint import check_state_dict
    from motionpref.models.policy import MOTIONGPT_VAE_PREFIX, load_motiongpt_state
    from motionpref.models.vqvae import MotionVQVAE
    from motionpref.train.vqvae import evaluate_vqvae, train_vqvae, write_tokens

    spec = ctx.dataset(params.data)
    entries = {split: spec.load(split) for split in SPLITS}
    mean, std = spec.stats()
    out = ctx.path(artifacts.VQVAE)
    if params.policy.init == "motiongpt":
        if not ctx.is_main:  # a copy of a checkpoint: nothing to share
            return {}
        checkpoint = params.policy.checkpoint
        model = MotionVQVAE(VQVAEConfig.real(spec.skeleton.feature_dim))
        state = {
            k.removeprefix(MOTIONGPT_VAE_PREFIX): v
            for k, v in load_motiongpt_state(checkpoint).items()  # type: ignore[arg-type]
            if k.startswith(MOTIONGPT_VAE_PREFIX)
        }
        check_state_dict(model, state, where=f"{checkpoint} (keys under '{MOTIONGPT_VAE_PREFIX}')")
        model.load_state_dict(state)
        model.save(out)
        val = [(e.features - mean) / std for e in entries["val"]]
        metrics = {f"val_{k}": v for k, v in evaluate_vqvae(model.eval(), val, mean, std, spec.skeleton).items()}
    else:
        model_config = params.vqvae.model.model_copy(update={"feature_dim": spec.skeleton.feature_dim})
        metrics = train_vqvae(
            [e.features for e in entries["train"]],
            [e.features for e in entries["val"]],
            mean,
            std,
            model_config,
            params.vqvae.train,
            seed=params.stage_seed("train_vqvae"),
            out_dir=out,
            log_metric=ctx.run.log_metric,
            skeleton=spec.skeleton,
            accel=ctx.accelerator,
        )
        if not ctx.is_main:
            return metrics
    model = MotionVQVAE.load(out)
    everything = [e for split in SPLITS for e in entries[split]]
    metrics["tokenised_entries"] = write_tokens(
        model, [e.name for e in everything], [e.features for e in everything], mean, std, ctx.path(artifacts.TOKENS)
    )
    write_json(ctx.path(artifacts.stage_report("train_vqvae")), metrics)
    return metrics


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
