"""The DVC stages as library functions: ``stages/<name>.py`` and ``motionpref <name>`` call ``run_stage``.

Each stage module exposes ``READS`` (the params sections it depends on, mirrored in dvc.yaml) and
``run(params, ctx) -> metrics``. ``run_stage`` parses params.yaml once, opens the stage's MLflow run, seeds
everything and hands the stage a ``StageContext``.
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from motionpref.config import DataConfig, Params, load_params
from motionpref.tracking import StageRun, project_root, stage_run

if TYPE_CHECKING:
    from motionpref.motion.dataset import DatasetSpec

# where the stages read and write, relative to the project root (dvc.yaml says the same)
DATASET = "data/dataset"
TOKENS = "data/tokens"
MODELS = "data/models"
PREFS = "data/prefs"
REPORTS = "reports"

# stage name (also its module under motionpref.pipeline) -> one-line help; in the pipeline's order
STAGES: dict[str, str] = {
    "prepare_data": "Build data/dataset/ in HumanML3D layout: the synthetic world, or link a real folder.",
    "train_vqvae": "Train the motion VQ-VAE (or take MotionGPT's) and tokenise the dataset into data/tokens/.",
    "train_evaluator": "Train the T2M evaluator (Guo et al. 2022) or load the published one.",
    "train_retrieval": "Train the TMR-style retrieval scorer SoPo and the AI labeler use (never the evaluator).",
    "train_policy": "Train the MotionGPT-style text-to-motion policy (or load a MotionGPT checkpoint).",
    "evaluate": "Score a model (gt = the test set itself) with the T2M metrics and the synthetic judge.",
    "generate_prompts": "Write new prompts unlike the training captions into data/prefs/prompts.parquet.",
    "sample_pairs": "Sample two motions per prompt from the SFT policy (temperature 1.2) into pairs.parquet.",
    "label": "Label the pairs with simulated labelers (the synthetic judge) or AI feedback (the retrieval scorer).",
    "ingest_labels": "Validate and resolve every judgment into data/prefs/preferences.parquet and statistics.",
    "train_reward": "Train the Bradley-Terry reward model (from the SFT policy) on the labelled pairs.",
    "finetune": "Preference-finetune the SFT policy: dpo (DPO family), rlhf (PPO) or sopo (semi-online DPO).",
    "winrate": "Finetuned vs supervised samples on held-out prompts at several temperatures, judged by labelers.",
    "report": "Compare every evaluated model with the supervised one (paired) and tabulate win rates.",
}
ITEM_STAGES = {"evaluate", "finetune", "winrate"}  # stages run once per item (`evaluate@sft`)


@dataclass
class StageContext:
    root: Path
    run: StageRun
    item: str | None = None

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def dataset(self, data: DataConfig) -> DatasetSpec:
        from motionpref.motion.dataset import DatasetSpec
        from motionpref.motion.skeleton import SKELETONS

        return DatasetSpec(
            self.path(DATASET), SKELETONS[data.skeleton_name], min_len=data.min_len, max_len=data.max_len
        )


def seed_everything(seed: int, threads: int) -> None:
    import torch

    from motionpref.progress import quiet_libraries

    quiet_libraries()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def stage_module(name: str) -> Any:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(f"motionpref.pipeline.{name}")


def run_stage(
    name: str, params_path: str | Path = "params.yaml", item: str | None = None, params: Params | None = None
) -> dict[str, Any]:
    module = stage_module(name)
    if (name in ITEM_STAGES) != (item is not None):
        raise ValueError(f"stage {name!r} " + ("needs an item" if item is None else "takes no item"))
    params = params or load_params(params_path)
    address = f"{name}@{item}" if item else name
    reads = {"profile": params.profile, "seed": params.seed, **params.section_dict(*module.READS)}
    seed_everything(params.seed, params.threads)
    with stage_run(address, params.experiment, reads) as run:
        ctx = StageContext(root=project_root(), run=run, item=item)
        metrics = module.run(params, ctx)
        run.log_metrics(metrics)
    return metrics
