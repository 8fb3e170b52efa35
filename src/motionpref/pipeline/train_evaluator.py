"""Stage train_evaluator: the Guo et al. 2022 text-motion matching model the metrics embed with.

``evaluator.init: t2m`` loads the published checkpoint instead of training one. Under ``accelerate launch`` every
process trains on its share of each batch (``train.evaluator``); the main one alone saves the model, scores the
validation set with it and writes the report.
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.evaluate.metrics import evaluate_model, ground_truth_sample_fn
    from motionpref.io import write_json
    from motionpref.models.evaluator import Evaluator
    from motionpref.train.evaluator import train_evaluator

    cfg = params.evaluator
    spec = ctx.dataset(params.data)
    val = spec.load("val")
    out = ctx.path(artifacts.EVALUATOR)
    seed = params.stage_seed("train_evaluator")
    metrics: dict[str, Any] = {}
    if cfg.init == "t2m":
        if ctx.is_main:
            dataset = "kit" if params.data.skeleton_name == "kit" else "t2m"
            Evaluator.from_t2m(cfg.checkpoints_dir, cfg.glove_dir, dataset).save(out)  # type: ignore[arg-type]
    else:
        model_config = cfg.model.model_copy(update={"feature_dim": spec.skeleton.feature_dim})
        metrics = train_evaluator(
            spec.load("train"),
            val,
            model_config,
            cfg.train,
            seed,
            out,
            ctx.run.log_metric,
            spec.skeleton,
            accel=ctx.accelerator,
        )
    if not ctx.is_main:  # the model is the main process's to save and score
        return metrics
    # how well the evaluator tells the validation motions apart: the ceiling of every model's R-precision
    evaluator = Evaluator.load(out)
    sizes = params.evaluate.sizes.model_copy(
        update={
            "mm_num_samples": 0,
            "replications": 3,
            "diversity_times": min(params.evaluate.sizes.diversity_times, len(val) - 1),
        }
    )
    if len(val) >= sizes.r_precision_batch:
        gt = evaluate_model(ground_truth_sample_fn(val), val, evaluator, sizes, seed)
        metrics.update({f"val_gt_{k}": v["mean"] for k, v in gt.items() if k != "replications"})
    write_json(ctx.path(artifacts.stage_report("train_evaluator")), metrics)
    return metrics


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
