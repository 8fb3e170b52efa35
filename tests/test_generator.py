from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from motionpref.config import SamplingConfig
from motionpref.models.generator import RETRY_SEED_STRIDE, MotionGenerator, Samples
from motionpref.models.policy import SampleBatch
from motionpref.models.vqvae import MotionVQVAE, VQVAEConfig

D, K = 7, 16


class ScriptedPolicy:
    """Samples by seed: a bad seed (in the set, or for which the predicate holds) gives no motion tokens, any
    other the codes [seed % K] * 3."""

    def __init__(self, bad: set[int] | Callable[[int], bool]) -> None:
        self.bad = bad if callable(bad) else bad.__contains__
        self.calls: list[list[int]] = []

    def sample(
        self, captions, seeds, temperature, top_k, top_p, max_new_tokens, batch_size, constrained
    ) -> SampleBatch:
        self.calls.append(list(seeds))
        codes = [[] if self.bad(s) else [s % K] * 3 for s in seeds]
        return SampleBatch(token_ids=[[0]] * len(seeds), codes=codes, valid=[not self.bad(s) for s in seeds])


@pytest.fixture()
def vqvae() -> MotionVQVAE:
    return MotionVQVAE(VQVAEConfig(feature_dim=D, nb_code=K, code_dim=8, width=8, depth=1)).eval()


def make(policy: ScriptedPolicy, vqvae: MotionVQVAE, retries: int = 2, fallback_frames: int = 40) -> MotionGenerator:
    mean, std = np.full(D, 2.0, np.float32), np.full(D, 3.0, np.float32)
    sampling = SamplingConfig(retries=retries)
    return MotionGenerator(policy, vqvae, mean, std, sampling, fallback_frames=fallback_frames)  # type: ignore[arg-type]


def test_features_are_decoded_and_unnormalised(vqvae: MotionVQVAE) -> None:
    gen = make(ScriptedPolicy(set()), vqvae).generate(["walk", "jump"], [1, 2])
    import torch

    expected = vqvae.decode(torch.tensor([[1, 1, 1]]))[0].detach().numpy() * 3.0 + 2.0
    np.testing.assert_allclose(gen.features[0], expected, rtol=1e-5, atol=1e-5)
    assert gen.features[0].shape == (12, D) and gen.codes == [[1, 1, 1], [2, 2, 2]]
    assert gen.attempts == [1, 1] and gen.n_invalid == gen.n_invalid_first == 0


def test_invalid_samples_are_retried_with_new_seeds_then_counted(vqvae: MotionVQVAE) -> None:
    # seed 5 fails once and succeeds on its retry; seed 9 fails every time
    bad = {5, 9, 9 + RETRY_SEED_STRIDE, 9 + 2 * RETRY_SEED_STRIDE}
    policy = ScriptedPolicy(bad)
    gen = make(policy, vqvae).generate(["a", "b", "c"], [4, 5, 9])
    assert policy.calls == [[4, 5, 9], [5 + RETRY_SEED_STRIDE, 9 + RETRY_SEED_STRIDE], [9 + 2 * RETRY_SEED_STRIDE]]
    assert gen.attempts == [1, 2, 3]
    assert gen.seeds == [4, 5 + RETRY_SEED_STRIDE, 9 + 2 * RETRY_SEED_STRIDE]
    assert gen.features[2] is None and gen.features[1] is not None
    assert gen.n_invalid_first == 2 and gen.n_invalid == 1


def test_sample_fn_scores_an_invalid_first_sample_as_the_standing_pose_for_fallback_frames(vqvae) -> None:
    # seed 5 fails first and succeeds on its retry; seed 9 fails every time
    bad = {5, 9, 9 + RETRY_SEED_STRIDE, 9 + 2 * RETRY_SEED_STRIDE}
    policy = ScriptedPolicy(bad)
    counter: dict[str, int] = {}
    out = make(policy, vqvae, fallback_frames=40).sample_fn(counter)(["a", "b", "c"], [196, 24, 8], [4, 5, 9])
    standing = np.full((40, D), 2.0, np.float32)  # the mean pose for fallback_frames, whatever length was asked
    assert isinstance(out, Samples) and len(out.first) == 3
    assert out.first[0].shape == (12, D)
    np.testing.assert_array_equal(out.first[1], standing)  # not the valid retry: the first sample is what counts
    np.testing.assert_array_equal(out.first[2], standing)
    assert set(out.retried) == {1, 2}  # only the invalid first samples have a retried motion
    assert out.retried[1].shape == (12, D)
    np.testing.assert_array_equal(out.retried[2], standing)
    assert counter == {"samples": 3, "invalid_first": 2, "invalid": 1}


def test_sample_fn_resamples_only_the_invalid_first_samples(vqvae: MotionVQVAE) -> None:
    policy = ScriptedPolicy({5})
    first = make(policy, vqvae, retries=0).sample_fn()(["a", "b", "c"], [40] * 3, [4, 5, 6])
    with_retries = make(policy, vqvae, retries=2).sample_fn()(["a", "b", "c"], [40] * 3, [4, 5, 6])
    # one pass: the three first samples, then the one invalid caption again; nothing sampled twice
    assert policy.calls == [[4, 5, 6], [4, 5, 6], [5 + RETRY_SEED_STRIDE]]
    for a, b in zip(first.first, with_retries.first, strict=True):
        np.testing.assert_array_equal(a, b)  # the retries change nothing in the first samples
    assert set(first.retried) == set(with_retries.retried) == {1}
    assert with_retries.retried[1].shape == (12, D)


def test_fallback_frames_is_a_keyword_and_required_to_score_failures(vqvae: MotionVQVAE) -> None:
    mean, std = np.zeros(D, np.float32), np.ones(D, np.float32)
    policy = ScriptedPolicy(set())
    generator = MotionGenerator(policy, vqvae, mean, std, SamplingConfig(), fallback_frames=24)  # type: ignore[arg-type]
    assert generator.fallback_motion().shape == (24, D)
    unset = MotionGenerator(policy, vqvae, mean, std)  # type: ignore[arg-type]
    assert unset.generate(["a"], [1]).valid == [True]  # samplers that drop failures need no fallback
    with pytest.raises(ValueError, match="fallback_frames is not set"):
        unset.sample_fn()
    with pytest.raises(ValueError, match="at least 1"):
        MotionGenerator(policy, vqvae, mean, std, fallback_frames=0)  # type: ignore[arg-type]
