"""Stage evaluate@<model>: the T2M metrics (Guo et al. 2022) of a model on the test split, mean and 95%
interval over replications, plus the synthetic judge's score of its samples.

``gt`` scores the test motions themselves, the "Real motion" row; any other item names a policy folder
``data/models/policy_<item>``: a token policy (``sft`` is the supervised one) or a diffusion policy (``mdm``,
``mld`` and their finetuned ones), sampled with ``diffusion.<family>.sampling`` at the reference crops' lengths
as MDM and MLD evaluate; a diffusion sample is always a motion, so its ``invalid_rate`` is 0 and it has no
``retried`` column.

A model's primary numbers are those of its first samples, as MotionGPT's protocol scores them: a sample that
never closes its motion is not drawn again but scored as the dataset's mean pose held for ``data.min_len`` frames
(``MotionGenerator.fallback_motion``), so the failure counts against the model. Preference tuning can fail
more first samples than supervised training (DPO about twice as many), and resampling would hide exactly
that. The numbers with each invalid first sample resampled up to ``evaluate.sampling.retries`` times follow as
a secondary column, ``retried``, from the same sampling pass: the valid first samples are shared and only the
invalid ones are drawn again.

``reports/metrics/<model>.json``: ``{"model", "metrics": {metric: {mean, ci95}, ..., "invalid_rate", "judge",
"judge_quality", "realism"}, "replications": {metric: [values]}, "retried": {"metrics": {..., "invalid_after_retries"},
"replications": {...}}}``; ``invalid_rate`` is the share of first samples that were invalid, ``invalid_after_retries``
the count still invalid after the retries; ``gt`` has no ``retried``.
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.distributed import reduce_counter, sharded_sample_fn
from motionpref.pipeline import StageContext, artifacts

ITEM = "model"
COUNTS = ("samples", "invalid_first", "invalid")  # what a generator's sample_fn counts


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
        from motionpref.models import diffusion
        from motionpref.models.diffusion_generator import DiffusionGenerator
        from motionpref.models.generator import MotionGenerator
        from motionpref.models.policy import MotionPolicy
        from motionpref.models.vqvae import MotionVQVAE

        policy_dir = ctx.path(artifacts.policy(item))
        if not policy_dir.is_dir():
            raise FileNotFoundError(f"{policy_dir}: no policy for evaluate@{item}")
        mean, std = spec.stats()
        if diffusion.is_diffusion_policy(policy_dir):
            policy = diffusion.load_policy(policy_dir)
            sampling = getattr(params.diffusion, policy.family).sampling
            generator: DiffusionGenerator | MotionGenerator = DiffusionGenerator(policy, mean, std, sampling)
        else:
            generator = MotionGenerator(
                MotionPolicy.load(policy_dir),
                MotionVQVAE.load(ctx.path(artifacts.VQVAE)),
                mean,
                std,
                cfg.sampling,
                fallback_frames=params.data.min_len,
            )
        # under accelerate launch each process draws its share of every batch of samples (each from its own seed)
        # and all of them score the whole set; the main one writes
        sample_fn = sharded_sample_fn(generator.sample_fn(counter), ctx.accelerator)
    result = evaluate_model(sample_fn, test, evaluator, cfg.sizes, seed)
    # before the judge draws samples of its own
    invalid = reduce_counter(counter, COUNTS, ctx.accelerator) if item != "gt" else {}
    judged = None
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
        judged = judge_samples(sample_fn, prompts, seed, spec.skeleton)
    report = model_report(item, result, invalid, judged)
    if ctx.is_main:
        write_json(ctx.path(artifacts.model_metrics(item)), report)
    return {**report["metrics"], **({"retried": report["retried"]["metrics"]} if "retried" in report else {})}


def model_report(
    item: str,
    result: dict[str, Any],
    invalid: dict[str, int],
    judged: tuple[dict[str, Any], dict[str, Any] | None] | None,
) -> dict[str, Any]:
    """The ``reports/metrics/<model>.json`` object (layout in the module docstring) from ``evaluate_model``'s
    ``result``, the generator's ``invalid`` counts of the metrics' samples (``MotionGenerator.sample_fn``; empty
    for ``gt``) and ``judge_samples``' (first, retried) scores, None without the judge."""

    def column(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k not in ("replications", "retried")}

    metrics = column(result)
    if invalid:
        metrics["invalid_rate"] = invalid["invalid_first"] / max(invalid["samples"], 1)
    if judged is not None:
        metrics.update(judged[0])
    report: dict[str, Any] = {"model": item, "metrics": metrics, "replications": result["replications"]}
    if "retried" in result:
        retried = column(result["retried"])
        if invalid:
            retried["invalid_after_retries"] = invalid["invalid"]
        if judged is not None and judged[1] is not None:
            retried.update(judged[1])
        report["retried"] = {"metrics": retried, "replications": result["retried"]["replications"]}
    return report


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
