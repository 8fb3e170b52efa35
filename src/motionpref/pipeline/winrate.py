"""Stage winrate@<model>: a finetuned model (``data/models/policy_<model>``) against the supervised one on
held-out preference prompts, at several temperatures, judged by the simulated labelers (or the retrieval scorer
with ``labels.labeler: ai``); writes reports/winrate/<model>.{json,md,png}.

Held out means not in the train split of preferences.parquet (the pairs DPO and RLHF finetune on): the val
split and the prompts whose pairs were skipped or never labelled.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts

ITEM = "model"


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.evaluate.winrate import (
        flat_metrics,
        held_out_prompts,
        train_prompt_ids,
        winrate_study,
        write_reports,
    )
    from motionpref.models.generator import MotionGenerator
    from motionpref.models.policy import MotionPolicy
    from motionpref.models.retrieval import RetrievalModel
    from motionpref.models.vqvae import MotionVQVAE
    from motionpref.prefs.judges import make_judge
    from motionpref.prefs.prompts import read_prompts

    cfg = params.winrate
    name = ctx.item
    assert name is not None
    if not ctx.path(artifacts.policy(name)).is_dir():
        raise FileNotFoundError(f"{artifacts.policy(name)}: no model for winrate@{name}; run finetune@{name} first")
    seed = params.stage_seed(f"winrate:{params.algo.seed}")
    prompts_path = ctx.path(artifacts.PROMPTS)
    prompts = held_out_prompts(
        read_prompts(prompts_path), train_prompt_ids(ctx.path(artifacts.PREFERENCES)), cfg.prompts, seed
    )
    spec = ctx.dataset(params.data)
    scorer = partial(RetrievalModel.load, ctx.path(artifacts.RETRIEVAL))
    judge = make_judge(params.labels, prompts, spec.skeleton, scorer, str(prompts_path))
    mean, std = spec.stats()
    vqvae = MotionVQVAE.load(ctx.path(artifacts.VQVAE))

    def generator(model: str) -> MotionGenerator:
        return MotionGenerator(MotionPolicy.load(ctx.path(artifacts.policy(model))), vqvae, mean, std, cfg.sampling)

    study = winrate_study(generator("sft"), {name: generator(name)}, prompts, cfg.temperatures, judge, seed)
    paths = [ctx.path(artifacts.winrate_report(name, ext)) for ext in ("json", "md", "png")]
    write_reports(study, *paths)
    for path in paths[1:]:
        ctx.run.log_artifact(path)
    return flat_metrics(study)


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
