"""Stage finetune@<algo>: preference finetuning of the SFT policy into ``data/models/policy_<algo>``.

- ``dpo``: the DPO family (``algo.dpo.loss``: sigmoid | ipo | hinge | kto) on the labelled pairs;
- ``rlhf``: PPO against the reward model (``train_reward``), on the training split's prompts;
- ``sopo``: semi-online preference optimisation, dataset motions against the policy's own samples scored by the
  retrieval scorer.

Every algorithm is seeded from ``algo.seed`` (the finetuning replicate) as well as the global seed.
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import MODELS, PREFS, REPORTS, TOKENS, StageContext
from motionpref.pipeline.train_policy import POLICY_DIR

READS = ("data", "algo")
ALGORITHMS = ("dpo", "rlhf", "sopo")


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.io import write_json
    from motionpref.models.policy import MotionPolicy

    algo = ctx.item
    if algo not in ALGORITHMS:
        raise ValueError(f"finetune@{algo}: unknown algorithm; expected one of {', '.join(ALGORITHMS)}")
    cfg = params.algo
    seed = params.stage_seed(f"finetune@{algo}:{cfg.seed}")
    policy = MotionPolicy.load(ctx.path(MODELS, POLICY_DIR))
    out = ctx.path(MODELS, f"policy_{algo}")
    log = ctx.run.log_metric
    if algo == "dpo":
        from motionpref.train.dpo import train_dpo
        from motionpref.train.preference import filter_pairs, preference_pairs, read_preferences

        path = ctx.path(PREFS, "preferences.parquet")
        table = read_preferences(path)
        train = filter_pairs(preference_pairs(table, "train", str(path)), cfg.dpo.data, seed)
        val = preference_pairs(table, "val", str(path))
        metrics = train_dpo(policy, train, val, cfg.dpo, cfg.beta, cfg.lora, seed, out, log)
        metrics["train_pairs"] = len(train)
    elif algo == "rlhf":
        import torch
        from accelerate import Accelerator

        from motionpref.models.reward import RewardModel
        from motionpref.train.ppo import train_ppo
        from motionpref.train.preference import preference_pairs, read_preferences

        path = ctx.path(PREFS, "preferences.parquet")
        captions = sorted({p.caption for p in preference_pairs(read_preferences(path), "train", str(path))})
        reward = RewardModel.load(ctx.path(MODELS, "reward"))
        device = Accelerator(cpu=not torch.cuda.is_available()).device  # PPO runs on one device
        policy.model.to(device)
        reward.model.to(device)
        metrics = train_ppo(policy, reward.score, reward.model, captions, cfg.ppo, cfg.lora, seed, log)
        policy.save(out)
        metrics["prompts"] = len(captions)
    else:
        from motionpref.config import SamplingConfig
        from motionpref.models.generator import MotionGenerator
        from motionpref.models.retrieval import RetrievalModel
        from motionpref.models.vqvae import MotionVQVAE
        from motionpref.train.policy import load_examples
        from motionpref.train.sopo import train_sopo

        spec = ctx.dataset(params.data)
        vqvae = MotionVQVAE.load(ctx.path(MODELS, "vqvae"))
        entries = spec.load("train")
        examples = load_examples(entries, ctx.path(TOKENS), vqvae.codebook_size)
        mean, std = spec.stats()
        sampling = SamplingConfig(temperature=cfg.sopo.temperature, max_new_tokens=cfg.sopo.max_new_tokens)
        generator = MotionGenerator(policy, vqvae, mean, std, sampling)
        scorer = RetrievalModel.load(ctx.path(MODELS, "retrieval"))
        motions = [e.features for e in entries]
        metrics = train_sopo(generator, scorer, examples, motions, cfg.sopo, cfg.beta, cfg.lora, seed, out, log)
    write_json(ctx.path(REPORTS, "finetune", f"{algo}.json"), metrics)
    return metrics
