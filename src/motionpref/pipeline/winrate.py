"""Stage winrate@<model>: a finetuned model (``data/models/policy_<model>``) against the model it started from
(``artifacts.base_model``: the supervised token policy, or the pretrained ``mdm`` / ``mld``) on held-out prompts,
judged by the simulated labelers (or the retrieval scorer with ``labels.labeler: ai``); writes
reports/winrate/<model>.{json,md,png}. A token policy is compared at each of ``winrate.temperatures``; a
diffusion policy, which has no temperature, in one cell at ``diffusion.<family>.sampling``, each prompt at a
length drawn from the val clips' lengths with the prompt's seed (the same for both models).

Held out means the test split of prompts.parquet: programs that no pair, so no preference, was sampled for.
The pool (at most ``winrate.prompts`` of them, a seeded subset) is drawn from the prompts alone, so it does not
change when labels do, and the stage does not read preferences.parquet.

Under ``accelerate launch`` each process samples its share of the prompts of every cell, each motion from its
prompt's seed (``distributed.sharded_generator``), and every process judges the gathered motions whole; the main
process writes the reports: the study one process makes.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from motionpref.config import Params
from motionpref.distributed import sharded_generator
from motionpref.pipeline import StageContext, artifacts

ITEM = "model"


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.evaluate.winrate import flat_metrics, held_out_prompts, winrate_study, write_reports
    from motionpref.models.diffusion import load_policy
    from motionpref.models.diffusion_generator import DiffusionGenerator
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
    table = read_prompts(prompts_path)
    prompts = held_out_prompts(table, cfg.prompts, seed, str(prompts_path))
    spec = ctx.dataset(params.data)
    scorer = partial(RetrievalModel.load, ctx.path(artifacts.RETRIEVAL))
    judge = make_judge(params.labels, prompts, spec.skeleton, scorer, str(prompts_path))
    mean, std = spec.stats()
    base = artifacts.base_model(name)

    if base == "sft":
        vqvae = MotionVQVAE.load(ctx.path(artifacts.VQVAE))
        temperatures = cfg.temperatures

        def generator(model: str) -> MotionGenerator | DiffusionGenerator:
            policy = MotionPolicy.load(ctx.path(artifacts.policy(model)))
            return MotionGenerator(policy, vqvae, mean, std, cfg.sampling, fallback_frames=params.data.min_len)

    else:
        # a diffusion sampler has no temperature: one cell, at diffusion.<family>.sampling
        sampling = getattr(params.diffusion, base).sampling
        lengths = [e.length for e in spec.load("val")]
        temperatures = [1.0]

        def generator(model: str) -> MotionGenerator | DiffusionGenerator:
            policy = load_policy(ctx.path(artifacts.policy(model)))
            return DiffusionGenerator(policy, mean, std, sampling, lengths=lengths)

    base_sampler, sampler = (sharded_generator(generator(m), ctx.accelerator) for m in (base, name))
    study = winrate_study(base_sampler, {name: sampler}, prompts, temperatures, judge, seed)
    study["baseline"] = base
    study["test_prompts"] = int((table["split"] == "test").sum())  # the pool ``prompts`` was drawn from
    if not ctx.is_main:
        return flat_metrics(study)
    paths = [ctx.path(artifacts.winrate_report(name, ext)) for ext in ("json", "md", "png")]
    write_reports(study, *paths)
    for path in paths[1:]:
        ctx.run.log_artifact(path)
    return flat_metrics(study)


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
