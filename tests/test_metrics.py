from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from motionpref.evaluate.metrics import (
    METRICS,
    EvalSizes,
    activation_statistics,
    batched_r_precision,
    confidence_interval,
    diversity,
    euclidean_distance_matrix,
    evaluate_model,
    fid,
    frechet_distance,
    ground_truth_sample_fn,
    matching_score,
    multimodality,
    r_precision,
)
from motionpref.models.evaluator import Evaluator, EvaluatorConfig, build_vocab
from motionpref.motion.text import Caption

D = 263


def test_distance_matrix():
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    b = np.array([[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(euclidean_distance_matrix(a, b), [[5, np.sqrt(2), 0], [np.sqrt(13), 0, np.sqrt(2)]])


def test_r_precision_of_perfect_and_known_mismatches():
    emb = np.random.default_rng(0).standard_normal((5, 4))
    np.testing.assert_array_equal(r_precision(emb, emb.copy(), 3), [1.0, 1.0, 1.0])
    # 1-d: texts 0, 10, 20; motions 0, 21, 9. Text 0's motion is the nearest; text 1 (10) has
    # motions 0 (d 10) and 9 (d 1) closer than its own 21 (d 11): rank 3; text 2 (20) has 21 closer: rank 2.
    t = np.array([[0.0], [10.0], [20.0]])
    m = np.array([[0.0], [21.0], [9.0]])
    np.testing.assert_allclose(r_precision(t, m, 3), [1 / 3, 2 / 3, 1.0])
    assert matching_score(t, m) == pytest.approx((0 + 11 + 11) / 3)


def test_r_precision_of_a_permutation():
    # motions are the texts with the first two swapped
    t = np.arange(4.0)[:, None] * 10
    perm = np.array([1, 0, 2, 3])
    m = t[perm]
    # texts 0 and 1 each have the other's motion (d 0) closer than their own (d 10): found at top-2
    np.testing.assert_allclose(r_precision(t, m, 3), [0.5, 1.0, 1.0])


def test_batched_r_precision_drops_the_partial_batch():
    t = np.array([[0.0], [10.0], [0.0], [10.0], [99.0]])
    m = np.array([[0.0], [10.0], [10.0], [0.0], [0.0]])  # batch 1 perfect, batch 2 swapped, 5th dropped
    top, dist = batched_r_precision(t, m, batch_size=2, top_k=2)
    np.testing.assert_allclose(top, [0.5, 1.0])
    assert dist == pytest.approx((0 + 10) / 2)
    with pytest.raises(ValueError, match="batch_size=32"):
        batched_r_precision(t, m, batch_size=32)


def test_fid_of_identical_sets_is_zero():
    emb = np.random.default_rng(0).standard_normal((200, 6))
    assert fid(emb, emb.copy()) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_closed_form():
    # 1-d: N(0, 1) vs N(3, 4): 9 + 1 + 4 - 2 * sqrt(4) = 10
    assert frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([3.0]), np.array([[4.0]])) == pytest.approx(
        10.0
    )
    # commuting covariances R diag(a) R^T, R diag(b) R^T: ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2
    rot = np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))[0]
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    mu1, mu2 = np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 1.0])
    expected = 1 + 4 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 4) ** 2
    got = frechet_distance(mu1, rot @ np.diag(a) @ rot.T, mu2, rot @ np.diag(b) @ rot.T)
    assert got == pytest.approx(expected, rel=1e-6)


def test_fid_of_sampled_gaussians_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20000, 2))
    y = rng.standard_normal((20000, 2)) * 2 + np.array([1.0, -1.0])
    # ||mu1 - mu2||^2 = 2, plus (sqrt 1 - sqrt 4)^2 = 1 per dimension: 4
    assert fid(x, y) == pytest.approx(4.0, abs=0.1)
    mean, cov = activation_statistics(y)
    np.testing.assert_allclose(mean, [1, -1], atol=0.05)
    np.testing.assert_allclose(cov, 4 * np.eye(2), atol=0.15)


def test_diversity_by_hand():
    emb = np.array([[0.0], [1.0], [3.0], [6.0]])
    rng = np.random.default_rng(3)
    first = rng.choice(4, 3, replace=False)
    second = rng.choice(4, 3, replace=False)
    expected = np.mean([abs(emb[i, 0] - emb[j, 0]) for i, j in zip(first, second, strict=True)])
    assert diversity(emb, 3, np.random.default_rng(3)) == pytest.approx(expected)
    assert diversity(np.ones((5, 2)), 4, rng) == 0.0
    with pytest.raises(ValueError, match="more than times=4"):
        diversity(emb, 4, rng)


def test_multimodality_by_hand():
    emb = np.array([[[0.0], [2.0], [5.0]], [[1.0], [1.0], [4.0]]])  # 2 texts x 3 generations
    rng = np.random.default_rng(4)
    first = rng.choice(3, 2, replace=False)
    second = rng.choice(3, 2, replace=False)
    expected = np.mean([abs(emb[c, i, 0] - emb[c, j, 0]) for c in range(2) for i, j in zip(first, second, strict=True)])
    assert multimodality(emb, 2, np.random.default_rng(4)) == pytest.approx(expected)
    assert multimodality(np.zeros((3, 4, 2)), 3, rng) == 0.0
    with pytest.raises(ValueError, match="more than times=3"):
        multimodality(emb, 3, rng)


def test_confidence_interval():
    mean, ci = confidence_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert ci == pytest.approx(1.96 * np.sqrt(1.25) / 2)
    assert confidence_interval([7.0]) == (7.0, 0.0)


# ---------------------------------------------------------------------------------- the driver


@dataclass
class Clip:
    features: np.ndarray
    captions: list[Caption]


def tiny_setup(n: int = 40):
    rng = np.random.default_rng(0)
    words = ["walk", "jump", "run", "wave", "sit"]
    entries = [
        Clip(
            rng.standard_normal((int(rng.integers(20, 44)), D)).astype(np.float32),
            [Caption(f"person {words[i % 5]} {i}", ["person/NOUN", f"{words[i % 5]}/VERB", f"{i}/NUM"])],
        )
        for i in range(n)
    ]
    cfg = EvaluatorConfig(
        dim_word=8, dim_text_hidden=8, dim_coemb_hidden=8, dim_movement_enc_hidden=8, dim_movement_latent=8,
        dim_motion_hidden=8, max_motion_length=48,
    )  # fmt: skip
    torch.manual_seed(0)
    evaluator = Evaluator(cfg, build_vocab([c for e in entries for c in e.captions]))
    return entries, evaluator.eval()


SIZES = EvalSizes(
    replications=2, r_precision_batch=8, diversity_times=10, mm_num_samples=4, mm_num_repeats=3, mm_times=2
)


def test_ground_truth_sample_fn_returns_the_captioned_clip():
    entries, _ = tiny_setup()
    sample = ground_truth_sample_fn(entries)
    out = sample(["person jump 6", "person walk 0"], [16, 400], [1, 2])
    clip6 = entries[6].features
    start = int(np.flatnonzero((clip6 == out[0][0]).all(axis=1))[0])
    np.testing.assert_array_equal(out[0], clip6[start : start + 16])
    assert len(out[1]) == len(entries[0].features) // 4 * 4  # asked for more than the clip has
    with pytest.raises(KeyError, match="no entry has the caption"):
        sample(["nobody"], [8], [0])


def test_evaluate_model_reports_every_metric_and_is_deterministic():
    entries, evaluator = tiny_setup()
    real = ground_truth_sample_fn(entries)
    result = evaluate_model(real, entries, evaluator, SIZES, seed=0)
    assert set(METRICS) <= set(result)
    for k in METRICS:
        values = result["replications"][k]
        assert len(values) == 2
        mean, ci = confidence_interval(values)
        assert result[k] == {"mean": pytest.approx(mean), "ci95": pytest.approx(ci)}
    tops = [result[f"r_precision_top{k}"]["mean"] for k in (1, 2, 3)]
    assert 0 <= tops[0] <= tops[1] <= tops[2] <= 1
    assert evaluate_model(real, entries, evaluator, SIZES, seed=0) == result


def test_an_evaluation_of_k_replications_is_the_first_k_of_a_longer_one():
    # what report.compare.stable_replications rests on: replication r draws from the seed's r-th word alone
    entries, evaluator = tiny_setup()
    real = ground_truth_sample_fn(entries)
    three = evaluate_model(real, entries, evaluator, SIZES.model_copy(update={"replications": 3}), seed=4)
    two = evaluate_model(real, entries, evaluator, SIZES, seed=4)
    assert {k: v[:2] for k, v in three["replications"].items()} == two["replications"]
    assert three["replications"]["r_precision_top1"][2] != three["replications"]["r_precision_top1"][0]


# A collapsed generator has a singular embedding covariance, on which scipy's sqrtm warns.
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_evaluate_model_separates_collapsed_motions_from_real_ones():
    entries, evaluator = tiny_setup()
    real = evaluate_model(ground_truth_sample_fn(entries), entries, evaluator, SIZES, seed=1)

    def collapsed(captions, lengths, seeds):  # one fixed motion whatever the text, length or seed
        return [np.zeros((20, D), np.float32) for _ in lengths]

    bad = evaluate_model(collapsed, entries, evaluator, SIZES, seed=1)
    assert bad["fid"]["mean"] > 10 * real["fid"]["mean"]
    assert bad["diversity"]["mean"] < 1e-4 < real["diversity"]["mean"]
    assert bad["multimodality"]["mean"] < 1e-4 < real["multimodality"]["mean"]


def test_evaluate_model_checks_the_sample_fn():
    entries, evaluator = tiny_setup()

    def wrong_dim(captions, lengths, seeds):
        return [np.zeros((n, 10), np.float32) for n in lengths]

    with pytest.raises(ValueError, match=r"sample_fn motion 0 .*expected un-normalised features"):
        evaluate_model(wrong_dim, entries, evaluator, SIZES, seed=0)
    with pytest.raises(ValueError, match="returned 0 motions"):
        evaluate_model(lambda c, n, s: [], entries, evaluator, SIZES, seed=0)
    with pytest.raises(ValueError, match="r_precision_batch=32"):
        evaluate_model(wrong_dim, entries[:10], evaluator, EvalSizes(), seed=0)
    with pytest.raises(ValueError, match="mm_num_repeats"):
        EvalSizes(mm_num_repeats=5, mm_times=10)


# ------------------------------------------------------------------------ first samples and the retried column


def _with_failures(real, fails):
    """``real`` (a sample_fn) with the motion of every seed for which ``fails`` holds replaced by a standing pose."""

    def sample(captions, lengths, seeds):
        motions = real(captions, lengths, seeds)
        return [np.zeros((40, D), np.float32) if fails(s) else m for m, s in zip(motions, seeds, strict=True)]

    return sample


def test_the_retried_column_rescores_only_the_resampled_motions():
    entries, evaluator = tiny_setup()
    real = ground_truth_sample_fn(entries)
    first_fn = _with_failures(real, lambda s: s % 4 == 0)  # what a model gives first
    retried_fn = _with_failures(real, lambda s: s % 8 == 0)  # the same, half of its failures fixed by retries
    asked = {"captions": 0, "retried": 0}

    def both(captions, lengths, seeds):
        asked["captions"] += len(captions)
        again = retried_fn(captions, lengths, seeds)
        resampled = {i: again[i] for i, s in enumerate(seeds) if s % 4 == 0}
        asked["retried"] += len(resampled)
        return first_fn(captions, lengths, seeds), resampled

    embedded: list[int] = []
    embed_motions = evaluator.embed_motions
    evaluator.embed_motions = lambda motions, batch=32: embedded.append(len(motions)) or embed_motions(motions, batch)
    result = evaluate_model(both, entries, evaluator, SIZES, seed=3)
    with_retried = sum(embedded)
    embedded.clear()
    first = evaluate_model(first_fn, entries, evaluator, SIZES, seed=3)
    assert asked["retried"] > 0 and sum(embedded) + asked["retried"] == with_retried  # only those embedded again
    evaluator.embed_motions = embed_motions

    retried = result.pop("retried")
    assert result == first  # the primary numbers are the first samples', failures scored as they came
    full = evaluate_model(retried_fn, entries, evaluator, SIZES, seed=3)  # a whole second pass, for reference
    assert set(retried) == set(full)
    for k in METRICS:
        assert retried[k] == pytest.approx(full[k], rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(retried["replications"][k], full["replications"][k], rtol=1e-5, atol=1e-6)
    assert retried["fid"]["mean"] < first["fid"]["mean"]  # the resampled motions are real ones
    assert "retried" not in evaluate_model(real, entries, evaluator, SIZES, seed=3)  # gt has none


def test_evaluate_model_checks_retried_motions():
    entries, evaluator = tiny_setup()
    real = ground_truth_sample_fn(entries)

    def out_of_range(captions, lengths, seeds):
        return real(captions, lengths, seeds), {len(captions): np.zeros((40, D), np.float32)}

    with pytest.raises(ValueError, match="retried indices .* out of range"):
        evaluate_model(out_of_range, entries, evaluator, SIZES, seed=0)

    def wrong_dim(captions, lengths, seeds):
        return real(captions, lengths, seeds), {0: np.zeros((40, 10), np.float32)}

    with pytest.raises(ValueError, match=r"sample_fn retried motion 0 .*expected un-normalised features"):
        evaluate_model(wrong_dim, entries, evaluator, SIZES, seed=0)
