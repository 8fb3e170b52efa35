"""evaluate@<model>'s primary numbers are the first samples': a generator's invalid first sample is scored as the
standing pose, the retried column comes from the same pass, and the metrics file holds both, labelled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import motionpref.evaluate.judged as judged_module
from motionpref.config import SamplingConfig
from motionpref.evaluate.judged import JudgedPrompt, judge_samples
from motionpref.evaluate.metrics import METRICS, evaluate_model, ground_truth_sample_fn
from motionpref.models.generator import RETRY_SEED_STRIDE, MotionGenerator
from motionpref.models.vqvae import MotionVQVAE, VQVAEConfig
from motionpref.motion.features import extract_features, recover_joints
from motionpref.pipeline.evaluate import model_report
from motionpref.synth.animate import animate
from motionpref.synth.judge import judge, judged_joints
from motionpref.synth.programs import make_segment, program
from tests.test_generator import K, ScriptedPolicy
from tests.test_metrics import SIZES, D, tiny_setup

assert RETRY_SEED_STRIDE % 3 == 1  # so a seed that is 0 mod 3 (invalid) retries with one that is 1 mod 3 (valid)


def generator(policy: ScriptedPolicy, retries: int) -> MotionGenerator:
    torch.manual_seed(0)
    vqvae = MotionVQVAE(VQVAEConfig(feature_dim=D, nb_code=K, code_dim=8, width=8, depth=1)).eval()
    mean, std = np.zeros(D, np.float32), np.ones(D, np.float32)
    sampling = SamplingConfig(retries=retries)
    return MotionGenerator(policy, vqvae, mean, std, sampling, fallback_frames=40)  # type: ignore[arg-type]


def sampled(policy: ScriptedPolicy) -> int:
    return sum(len(seeds) for seeds in policy.calls)


# A standing figure has a singular embedding covariance, on which scipy's sqrtm warns.
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_an_invalid_first_sample_counts_against_the_model_and_retries_only_fill_the_second_column():
    entries, evaluator = tiny_setup()
    never_retried = ScriptedPolicy(lambda s: s % 3 == 0)
    retried = ScriptedPolicy(lambda s: s % 3 == 0)
    counter: dict[str, int] = {}
    first = evaluate_model(generator(never_retried, 0).sample_fn(), entries, evaluator, SIZES, seed=5)
    both = evaluate_model(generator(retried, 2).sample_fn(counter), entries, evaluator, SIZES, seed=5)

    assert counter["invalid_first"] > 0 and counter["invalid"] == 0  # every invalid first sample retried well
    # primary: exactly the run that never retries, the failures scored as they came
    assert {k: both[k] for k in METRICS} == {k: first[k] for k in METRICS}
    assert both["replications"] == first["replications"]
    # the retries changed the second column only, and sampled nothing but the invalid first samples again
    assert both["retried"]["r_precision_top1"] != both["r_precision_top1"]
    assert sampled(retried) == sampled(never_retried) + counter["invalid_first"]
    assert [c for c in retried.calls if c in never_retried.calls] == never_retried.calls  # same captions, seeds
    invalid_first = [s for c in never_retried.calls for s in c if s % 3 == 0]
    resampled = [s for c in retried.calls if c not in never_retried.calls for s in c]
    assert sorted(resampled) == sorted(s + RETRY_SEED_STRIDE for s in invalid_first)


def test_the_judge_scores_first_samples_and_rejudges_only_the_resampled_ones(monkeypatch: pytest.MonkeyPatch):
    prog = program(make_segment("wave", count=2))
    good = extract_features(animate(prog, np.random.default_rng(0)))
    standing = np.tile(good[:1], (40, 1))
    prompts = [JudgedPrompt("wave twice", prog, len(good))] * 3
    recovered: list[int] = []
    monkeypatch.setattr(judged_module, "judged_joints", lambda f, s: recovered.append(len(f)) or judged_joints(f, s))

    def sample_fn(captions, lengths, seeds):  # the second first sample failed; its retry gave the good motion
        return [good, standing, good], {1: good}

    first, again = judge_samples(sample_fn, prompts, seed=0)
    good_score, standing_score = judge(prog, recover_joints(good)), judge(prog, recover_joints(standing))
    assert good_score > standing_score
    assert first["judge"]["mean"] == pytest.approx((2 * good_score + standing_score) / 3)
    assert again is not None and again["judge"]["mean"] == pytest.approx(good_score)
    assert len(recovered) == 4  # three first samples, one retried
    assert judge_samples(lambda c, n, s: [good] * len(c), prompts, seed=0)[1] is None


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_the_metrics_file_holds_first_samples_as_primary_and_the_retried_column_labelled():
    entries, evaluator = tiny_setup()
    real = evaluate_model(ground_truth_sample_fn(entries), entries, evaluator, SIZES, seed=0)
    policy = ScriptedPolicy(lambda s: s % 3 == 0)
    counter: dict[str, int] = {}
    result = evaluate_model(generator(policy, 2).sample_fn(counter), entries, evaluator, SIZES, seed=0)
    judge_first = {"judge": {"mean": 0.2, "ci95": 0.1}}
    judge_retried = {"judge": {"mean": 0.3, "ci95": 0.1}}
    report = model_report("dpo", result, counter, (judge_first, judge_retried))

    assert set(report) == {"model", "metrics", "replications", "retried"} and report["model"] == "dpo"
    assert set(report["metrics"]) == {*METRICS, "invalid_rate", "judge"}
    assert report["metrics"]["invalid_rate"] == counter["invalid_first"] / counter["samples"] > 0
    assert report["metrics"]["fid"] == result["fid"] and report["metrics"]["judge"] == judge_first["judge"]
    assert report["replications"] == result["replications"]
    assert set(report["retried"]) == {"metrics", "replications"}
    assert set(report["retried"]["metrics"]) == {*METRICS, "invalid_after_retries", "judge"}
    assert report["retried"]["metrics"]["invalid_after_retries"] == counter["invalid"] == 0
    assert report["retried"]["metrics"]["judge"] == judge_retried["judge"]
    assert report["retried"]["replications"] == result["retried"]["replications"]

    gt = model_report("gt", real, {}, (judge_first, None))
    assert set(gt) == {"model", "metrics", "replications"} and set(gt["metrics"]) == {*METRICS, "judge"}
