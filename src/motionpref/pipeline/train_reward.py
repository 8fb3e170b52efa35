"""Stage train_reward: the Bradley-Terry reward model the RLHF (PPO) arm optimises against, initialised from
the SFT policy and trained on the labelled pairs (``data/prefs/preferences.parquet``)."""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.io import write_json
    from motionpref.models.policy import MotionPolicy
    from motionpref.models.reward import RewardModel
    from motionpref.train.preference import preference_pairs, read_preferences
    from motionpref.train.reward import train_reward

    prefs_path = ctx.path(artifacts.PREFERENCES)
    prefs = read_preferences(prefs_path)
    train = preference_pairs(prefs, "train", source=str(prefs_path))
    val = preference_pairs(prefs, "val", source=str(prefs_path))
    seed = params.stage_seed(params.reward.stage_key())
    reward = RewardModel.from_policy(MotionPolicy.load(ctx.path(artifacts.POLICY_SFT)), seed=seed)
    metrics = train_reward(
        reward, train, val, params.reward.train, seed, ctx.path(artifacts.REWARD), ctx.run.log_metric
    )
    metrics["parameters"] = sum(p.numel() for p in reward.model.parameters())
    if ctx.is_main:
        write_json(ctx.path(artifacts.stage_report("train_reward")), metrics)
    return metrics


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
