"""Stage train_retrieval: the TMR-style text-motion scorer (SoPo's reward, the AI labeler's judge).

A different architecture and seed from the evaluator, so no method ever optimises the metric we report. Under
``accelerate launch`` every process trains on its share of each batch (``train.retrieval``); the main one alone
saves the model and writes the report.
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.io import write_json
    from motionpref.train.retrieval import train_retrieval

    spec = ctx.dataset(params.data)
    train, val = spec.load("train"), spec.load("val")
    mean, std = spec.stats()
    groups = None
    if params.data.source == "synthetic":
        from motionpref.synth.world import read_programs

        # clips of one program describe the same motion: never each other's negatives
        programs = read_programs(ctx.path(artifacts.DATASET))
        groups = [programs[e.source_id][0].key() for e in train]
    metrics = train_retrieval(
        train,
        val,
        mean,
        std,
        ctx.path(artifacts.RETRIEVAL),
        model_config=params.retrieval.model,
        train_config=params.retrieval.train,
        seed=params.stage_seed("train_retrieval"),
        train_groups=groups,
        log_metric=ctx.run.log_metric,
        accel=ctx.accelerator,
    )
    if ctx.is_main:
        write_json(ctx.path(artifacts.stage_report("train_retrieval")), metrics)
    return metrics


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
