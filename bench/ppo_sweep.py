"""A small sweep of PPO's lr / steps / LoRA on the workspace models, to choose ``algo.ppo``'s CPU default.

Each setting runs ``motionpref.train.ppo.run`` as ``finetune@rlhf`` does (the SFT policy ``data/models/policy_sft``,
the reward model ``data/models/reward``, the training captions of ``data/prefs/preferences.parquet``; every other
field from ``params.yaml``'s ``algo.ppo``), one at a time, each logged as an MLflow run of the experiment
``ppo_sweep``. A held-out quality check follows each run: one sample per validation-split caption (fixed seeds,
``algo.ppo.sampling``), scored by the reward model; the same check on the SFT policy is the baseline.

    python bench/ppo_sweep.py [--setting NAME:LR:STEPS:LORA ...] [--mini-batch-size M] [--ppo-epochs E] [--threads N]

Writes ``reports/bench/ppo_sweep.json`` (keeping the rows of settings run before under other names): per setting
steps, lr, lora, batch shape, seconds, the last step's KL, score mean and invalid rate, and the held-out reward mean
and invalid rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from motionpref.config import load_params
from motionpref.io import write_json
from motionpref.models.generator import MotionGenerator
from motionpref.models.policy import MotionPolicy
from motionpref.models.reward import RewardModel
from motionpref.models.vqvae import MotionVQVAE
from motionpref.pipeline import artifacts
from motionpref.tracking import tracking_uri
from motionpref.train import ppo
from motionpref.train.preference import FinetuneJob, preference_pairs, read_preferences

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = ["full_1e-5:1e-5:6:false", "full_1e-4:1e-4:6:false", "lora_5e-4:5e-4:6:true"]


def parse_setting(text: str) -> dict:
    name, lr, steps, lora = text.split(":")
    if lora not in ("true", "false"):
        raise ValueError(f"{text}: LORA must be true or false")
    return {"name": name, "lr": float(lr), "steps": int(steps), "lora": lora == "true"}


def held_out(generator: MotionGenerator, reward: RewardModel, captions: list[str]) -> dict[str, float]:
    """Reward-model mean score of one sample per caption (valid samples only) and the invalid share."""
    samples = generator.generate(captions, list(range(len(captions))), decode=False)
    keep = [i for i, ok in enumerate(samples.valid) if ok]
    prompts = [generator.policy.prompt(captions[i]) for i in keep]
    scores = reward.score(prompts, [samples.codes[i] for i in keep]) if keep else torch.zeros(0)
    return {
        "val_reward_mean": scores.mean().item() if keep else float("nan"),
        "val_invalid_rate": samples.n_invalid / len(captions),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", help="NAME:LR:STEPS:LORA (repeatable)")
    parser.add_argument("--mini-batch-size", type=int, help="instead of algo.ppo.mini_batch_size, for every setting")
    parser.add_argument("--ppo-epochs", type=int, help="instead of algo.ppo.ppo_epochs, for every setting")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = [parse_setting(s) for s in args.setting or DEFAULT_SETTINGS]

    import mlflow

    params = load_params(ROOT / "params.yaml")
    base = params.algo.ppo
    shape = {"mini_batch_size": args.mini_batch_size, "ppo_epochs": args.ppo_epochs}
    base = base.model_copy(update={k: v for k, v in shape.items() if v is not None})
    path = ROOT / artifacts.PREFERENCES
    prefs = read_preferences(path)
    train = sorted({p.caption for p in preference_pairs(prefs, "train", str(path))})
    val = sorted({p.caption for p in preference_pairs(prefs, "val", str(path))})
    from motionpref.pipeline import StageContext

    mean, std = StageContext(ROOT, None).dataset(params.data).stats()  # type: ignore[arg-type]
    vqvae = MotionVQVAE.load(ROOT / artifacts.VQVAE)

    def generator() -> MotionGenerator:
        return MotionGenerator(MotionPolicy.load(ROOT / artifacts.POLICY_SFT), vqvae, mean, std, base.sampling)

    reward = RewardModel.load(ROOT / artifacts.REWARD)
    results: dict = {"train_captions": len(train), "val_captions": len(val), "sft": held_out(generator(), reward, val)}
    print("sft", results["sft"], flush=True)
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment("ppo_sweep")
    # a rerun keeps the earlier settings' rows, replacing those it runs again (one sweep may span several calls)
    out = ROOT / "reports/bench/ppo_sweep.json"
    earlier = json.loads(out.read_text())["settings"] if out.is_file() else []
    names = {s["name"] for s in settings}
    results["settings"] = [row for row in earlier if row["name"] not in names]
    for setting in settings:
        config = base.model_copy(update={k: setting[k] for k in ("lr", "steps", "lora")})
        gen = generator()
        with mlflow.start_run(run_name=setting["name"]), tempfile.TemporaryDirectory() as policy_dir:
            mlflow.log_params({**setting, **{k: v for k, v in config.model_dump().items() if k != "sampling"}})
            job = FinetuneJob(
                seed=0,
                lora=params.algo.lora,
                out_dir=Path(policy_dir),
                log_metric=lambda name, value, step: mlflow.log_metric(name, value, step=step),
            )
            start = time.perf_counter()
            metrics = ppo.run(job, config, ppo.PPOData(gen, reward.score, reward.model, train))
            seconds = time.perf_counter() - start
            quality = held_out(gen, reward, val)
            mlflow.log_metrics({**quality, "seconds": seconds})
        row = {
            **setting,
            "batch_size": config.batch_size,
            "mini_batch_size": config.mini_batch_size,
            "ppo_epochs": config.ppo_epochs,
            "seconds": round(seconds, 1),
            "final_kl": metrics["kl"],
            "score_mean_first": metrics["score_mean_first"],
            "score_mean_last": metrics["score_mean"],
            "invalid_rate_last": metrics["invalid_rate"],
            "approx_kl_last": metrics["approx_kl"],
            **quality,
        }
        results["settings"].append(row)
        print(row, flush=True)
        write_json(out, results)


if __name__ == "__main__":
    main()
