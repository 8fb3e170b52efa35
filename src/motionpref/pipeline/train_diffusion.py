"""Stage train_diffusion@<family>: the pretrained diffusion policy the diffusion half of SoPo finetunes,
``data/models/policy_<family>`` (``mdm`` or ``mld``).

``init: scratch`` trains a tiny policy here on the normalised training clips with a word-level text encoder
trained alongside (MLD: its VAE first, then the latent denoiser); ``init: mdm | mld`` loads the published
checkpoint (``diffusion.<family>.checkpoint``) with its frozen CLIP text tower (``text.clip_dir``) and saves it
in our layout. The evaluation is evaluate@<family>'s.

Under ``accelerate launch`` every process trains on its share of each global batch (``train.diffusion.train_policy``)
and only the main process saves the policy and writes the report.
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts

ITEM = "family"


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.io import write_json
    from motionpref.models.diffusion import MDMPolicy, MLDPolicy, build_text_encoder
    from motionpref.models.diffusion_loaders import load_mdm_checkpoint, load_mld_checkpoint
    from motionpref.train.diffusion import DiffusionExamples, train_policy

    family = ctx.item
    if family not in ("mdm", "mld"):
        raise ValueError(f"train_diffusion@{family}: unknown family; expected mdm or mld")
    cfg = getattr(params.diffusion, family)
    spec = ctx.dataset(params.data)
    entries = spec.load("train")
    mean, std = spec.stats()
    feature_dim = int(mean.shape[0])
    model_config = cfg.model.model_copy(update={"feature_dim": feature_dim})
    seed = params.stage_seed(f"train_diffusion@{family}")
    metrics: dict[str, Any] = {}
    if cfg.init != "scratch":
        assert cfg.checkpoint is not None
        text_encoder = build_text_encoder(cfg.text)
        load = load_mdm_checkpoint if family == "mdm" else load_mld_checkpoint
        policy = load(cfg.checkpoint, model_config, text_encoder)
    else:
        import torch

        torch.manual_seed(seed)
        captions = [c.text for e in entries for c in e.captions]
        text_encoder = build_text_encoder(cfg.text, captions)
        policy = MDMPolicy(model_config, text_encoder) if family == "mdm" else MLDPolicy(model_config, text_encoder)
        data = DiffusionExamples.from_entries(entries, mean, std)
        vae_train = getattr(cfg, "vae_train", None)
        metrics |= train_policy(policy, data, cfg.train, seed, vae_train, ctx.run.log_metric, ctx.accelerator)
    metrics["parameters"] = sum(p.numel() for p in policy.parameters())
    if ctx.is_main:
        policy.eval().save(ctx.path(artifacts.policy(family)))
        write_json(ctx.path(artifacts.stage_report(f"train_diffusion_{family}")), metrics)
    return metrics


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
