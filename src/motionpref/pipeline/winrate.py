"""Stage winrate@<model>: a finetuned model (``data/models/policy_<model>``) against the supervised one on
held-out preference prompts, at several temperatures, judged by the simulated labelers (or the retrieval scorer
with ``labels.labeler: ai``); writes reports/winrate/<model>.{json,md,png}.

Held out means not in the train split of preferences.parquet (the pairs DPO and RLHF finetune on): the val
split and the prompts whose pairs were skipped or never labelled.
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import MODELS, PREFS, REPORTS, StageContext

# data: the dataset statistics and skeleton; algo: only algo.seed, the finetuning replicate being compared
READS = ("data", "winrate", "labels", "algo")


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.evaluate.winrate import (
        RetrievalFeedback,
        SimulatedLabelers,
        flat_metrics,
        held_out_prompts,
        train_prompt_ids,
        winrate_study,
        write_reports,
    )
    from motionpref.models.generator import MotionGenerator
    from motionpref.models.policy import MotionPolicy
    from motionpref.models.vqvae import MotionVQVAE
    from motionpref.prefs.prompts import read_prompts

    cfg = params.winrate
    name = ctx.item
    assert name is not None
    if not ctx.path(MODELS, f"policy_{name}").is_dir():
        raise FileNotFoundError(f"{MODELS}/policy_{name}: no model for winrate@{name}; run finetune@{name} first")
    seed = params.stage_seed(f"winrate:{params.algo.seed}")
    prompts_path = ctx.path(PREFS, "prompts.parquet")
    prompts = held_out_prompts(
        read_prompts(prompts_path), train_prompt_ids(ctx.path(PREFS, "preferences.parquet")), cfg.prompts, seed
    )
    spec = ctx.dataset(params.data)
    if params.labels.labeler == "simulated":
        judge = SimulatedLabelers.for_prompts(prompts, params.labels.simulated, spec.skeleton, str(prompts_path))
    else:
        from motionpref.models.retrieval import RetrievalModel

        scorer = RetrievalModel.load(ctx.path(MODELS, "retrieval"))
        judge = RetrievalFeedback(scorer, list(prompts["text"]), params.labels.ai)
    mean, std = spec.stats()
    vqvae = MotionVQVAE.load(ctx.path(MODELS, "vqvae"))

    def generator(model: str) -> MotionGenerator:
        return MotionGenerator(MotionPolicy.load(ctx.path(MODELS, f"policy_{model}")), vqvae, mean, std, cfg.sampling)

    study = winrate_study(generator("sft"), {name: generator(name)}, prompts, cfg.temperatures, judge, seed)
    paths = [ctx.path(REPORTS, "winrate", f"{name}.{ext}") for ext in ("json", "md", "png")]
    write_reports(study, *paths)
    for path in paths[1:]:
        ctx.run.log_artifact(path)
    return flat_metrics(study)
