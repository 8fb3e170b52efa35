"""Stage generate_prompts: new prompts unlike the training captions (the paper had an LLM write them), each
program's prompts in one split (``prompts.split``): pairs come from train and val, the win rates from test."""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.io import write_json
    from motionpref.prefs.prompts import generate_prompts, write_prompts

    cfg = params.prompts
    world_only = [b for b in ("synthetic", "familiar") if cfg.counts.get(b)]
    if params.data.source != "synthetic" and world_only:
        raise ValueError(
            f"prompts.counts: the {' and '.join(world_only)} backend(s) need data.source synthetic; "
            "use recombine or llm"
        )
    result = generate_prompts(
        ctx.path(artifacts.DATASET),
        cfg.counts,
        seed=params.stage_seed("generate_prompts"),
        near_threshold=cfg.near_threshold,
        max_candidates_factor=cfg.max_candidates_factor,
        reference_splits=cfg.reference_splits,
        example_split=cfg.example_split,
        min_count=cfg.min_count,
        llm=cfg.llm,
        split=cfg.split,
    )
    write_prompts(result.table, ctx.path(artifacts.PROMPTS))
    write_json(ctx.path(artifacts.stage_report("prompts_stats")), result.stats)
    return result.stats


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
