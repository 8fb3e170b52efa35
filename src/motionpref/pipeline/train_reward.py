"""Stage train_reward: the Bradley-Terry reward model the RLHF (PPO) arm optimises against, initialised from
the SFT policy and trained on the labelled pairs (``data/prefs/preferences.parquet``)."""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import MODELS, PREFS, REPORTS, StageContext
from motionpref.pipeline.train_policy import POLICY_DIR

READS = ("reward",)
REWARD_DIR = "reward"
PREFERENCES = "preferences.parquet"


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.io import write_json
    from motionpref.models.policy import MotionPolicy
    from motionpref.models.reward import RewardModel
    from motionpref.train.preference import preference_pairs, read_preferences
    from motionpref.train.reward import train_reward

    prefs_path = ctx.path(PREFS, PREFERENCES)
    prefs = read_preferences(prefs_path)
    train = preference_pairs(prefs, "train", source=str(prefs_path))
    val = preference_pairs(prefs, "val", source=str(prefs_path))
    seed = params.stage_seed("train_reward")
    reward = RewardModel.from_policy(MotionPolicy.load(ctx.path(MODELS, POLICY_DIR)), seed=seed)
    metrics = train_reward(
        reward, train, val, params.reward.train, seed, ctx.path(MODELS, REWARD_DIR), ctx.run.log_metric
    )
    metrics["parameters"] = sum(p.numel() for p in reward.model.parameters())
    write_json(ctx.path(REPORTS, "train_reward.json"), metrics)
    return metrics
