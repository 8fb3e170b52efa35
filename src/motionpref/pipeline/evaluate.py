"""Stage evaluate@<model>: the T2M metrics (Guo et al. 2022) of a model on the test split, mean and 95%
interval over replications, plus the synthetic judge's score of its samples.

``gt`` scores the test motions themselves, the "Real motion" row; any other item names a policy folder
``data/models/policy_<item>`` (``sft`` is the supervised one).
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts

ITEM = "model"


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    import numpy as np

    from motionpref.evaluate.metrics import evaluate_model, ground_truth_sample_fn
    from motionpref.io import write_json
    from motionpref.models.evaluator import Evaluator

    item = ctx.item
    assert item is not None
    cfg = params.evaluate
    spec = ctx.dataset(params.data)
    test = spec.load("test")
    evaluator = Evaluator.load(ctx.path(artifacts.EVALUATOR))
    seed = params.stage_seed("evaluate")  # one seed for every model: they see the same captions and crops
    counter: dict[str, int] = {}
    if item == "gt":
        sample_fn = ground_truth_sample_fn(test)
    else:
        from motionpref.models.generator import MotionGenerator
        from motionpref.models.policy import MotionPolicy
        from motionpref.models.vqvae import MotionVQVAE

        policy_dir = ctx.path(artifacts.policy(item))
        if not policy_dir.is_dir():
            raise FileNotFoundError(f"{policy_dir}: no policy for evaluate@{item}")
        mean, std = spec.stats()
        generator = MotionGenerator(
            MotionPolicy.load(policy_dir),
            MotionVQVAE.load(ctx.path(artifacts.VQVAE)),
            mean,
            std,
            cfg.sampling,
        )
        sample_fn = generator.sample_fn(counter)
    result = evaluate_model(sample_fn, test, evaluator, cfg.sizes, seed)
    metrics: dict[str, Any] = {k: v for k, v in result.items() if k != "replications"}
    if counter:
        metrics["invalid_rate"] = counter["invalid_first"] / max(counter["samples"], 1)
        metrics["invalid_after_retries"] = counter["invalid"]
    if params.data.source == "synthetic" and cfg.judge_texts:
        from motionpref.evaluate.judged import JudgedPrompt, judge_samples
        from motionpref.synth.world import read_programs

        programs = read_programs(ctx.path(artifacts.DATASET))
        rng = np.random.default_rng(seed)
        picked = rng.permutation(len(test))[: cfg.judge_texts]
        prompts = [
            JudgedPrompt(test[i].captions[0].text, programs[test[i].source_id][0], len(test[i].features))
            for i in picked
            if test[i].name == test[i].source_id  # whole clips: a caption's time span would cut the program
        ]
        metrics.update(judge_samples(sample_fn, prompts, seed, spec.skeleton))
    report = {"model": item, "metrics": metrics, "replications": result["replications"]}
    write_json(ctx.path(artifacts.model_metrics(item)), report)
    return metrics


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
