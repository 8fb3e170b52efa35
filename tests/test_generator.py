from __future__ import annotations

import numpy as np
import pytest

from motionpref.config import SamplingConfig
from motionpref.models.generator import RETRY_SEED_STRIDE, MotionGenerator
from motionpref.models.policy import SampleBatch
from motionpref.models.vqvae import MotionVQVAE, VQVAEConfig

D, K = 7, 16


class ScriptedPolicy:
    """Samples by seed: a seed in ``bad`` gives no motion tokens, any other the codes [seed % K] * 3."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad
        self.calls: list[list[int]] = []

    def sample(
        self, captions, seeds, temperature, top_k, top_p, max_new_tokens, batch_size, constrained
    ) -> SampleBatch:
        self.calls.append(list(seeds))
        codes = [[] if s in self.bad else [s % K] * 3 for s in seeds]
        return SampleBatch(token_ids=[[0]] * len(seeds), codes=codes, valid=[s not in self.bad for s in seeds])


@pytest.fixture()
def vqvae() -> MotionVQVAE:
    return MotionVQVAE(VQVAEConfig(feature_dim=D, nb_code=K, code_dim=8, width=8, depth=1)).eval()


def make(policy: ScriptedPolicy, vqvae: MotionVQVAE, retries: int = 2) -> MotionGenerator:
    mean, std = np.full(D, 2.0, np.float32), np.full(D, 3.0, np.float32)
    return MotionGenerator(policy, vqvae, mean, std, SamplingConfig(retries=retries))  # type: ignore[arg-type]


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


def test_sample_fn_stands_still_for_hopeless_samples_and_counts_them(vqvae: MotionVQVAE) -> None:
    counter: dict[str, int] = {}
    sample = make(ScriptedPolicy({9}), vqvae, retries=0).sample_fn(counter)
    motions = sample(["a", "b"], [40, 24], [1, 9])
    assert motions[0].shape == (12, D)
    np.testing.assert_array_equal(motions[1], np.full((24, D), 2.0, np.float32))  # the mean pose, asked length
    assert counter == {"samples": 2, "invalid_first": 1, "invalid": 1}
