"""Text to motion features: a policy, the VQ-VAE that decodes its tokens, and the dataset statistics.

The one place that turns sampled tokens into un-normalised features, so evaluation, pair sampling and win
rates all treat invalid generations the same way: resampled with fresh seeds a few times, then counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from motionpref.config import SamplingConfig
from motionpref.models.policy import MotionPolicy
from motionpref.models.vqvae import MotionVQVAE

RETRY_SEED_STRIDE = 1_000_003  # a retry's seed: far from the seeds a caller hands out in sequence


@dataclass
class Generation:
    """One motion per caption. ``valid[i]`` is False when every attempt was invalid; ``features[i]`` is None
    then, and also when the generation was asked for codes only (``decode=False``)."""

    features: list[np.ndarray | None]
    codes: list[list[int]]
    seeds: list[int]  # the seed that produced each motion (the last one tried, for invalid ones)
    attempts: list[int]  # 1 when the first sample was valid
    valid: list[bool]

    @property
    def n_invalid_first(self) -> int:
        return sum(a > 1 or not ok for a, ok in zip(self.attempts, self.valid, strict=True))

    @property
    def n_invalid(self) -> int:
        return sum(not ok for ok in self.valid)


@dataclass
class MotionGenerator:
    policy: MotionPolicy
    vqvae: MotionVQVAE
    mean: np.ndarray
    std: np.ndarray
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def generate(
        self, captions: Sequence[str], seeds: Sequence[int], temperature: float | None = None, decode: bool = True
    ) -> Generation:
        """Sample with ``self.sampling`` (``temperature`` overrides its temperature, for the win-rate cells);
        ``decode=False`` returns the codes alone (PPO scores tokens, not features)."""
        s = self.sampling
        n = len(captions)
        out = Generation([None] * n, [[] for _ in range(n)], list(seeds), [0] * n, [False] * n)
        todo = list(range(n))
        for attempt in range(s.retries + 1):
            if not todo:
                break
            seeds_now = [int(seeds[i]) + attempt * RETRY_SEED_STRIDE for i in todo]
            batch = self.policy.sample(
                [captions[i] for i in todo],
                seeds_now,
                temperature=s.temperature if temperature is None else temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                max_new_tokens=s.max_new_tokens,
                batch_size=s.batch_size,
                constrained=s.constrained,
            )
            decoded = batch.decode(self.vqvae) if decode else [None] * len(todo)
            still = []
            for k, i in enumerate(todo):
                out.attempts[i] = attempt + 1
                out.seeds[i] = seeds_now[k]
                if not batch.valid[k]:
                    still.append(i)
                    continue
                out.valid[i] = True
                out.codes[i] = batch.codes[k]
                if decode:
                    out.features[i] = decoded[k].numpy() * self.std + self.mean
            todo = still
        return out

    def sample_fn(self, counter: dict[str, int] | None = None):  # noqa: ANN201 (metrics.SampleFn)
        """A ``sample_fn`` for the metrics. A motion still invalid after the retries becomes the dataset's
        mean pose held for the asked length (a standing figure), and is counted in ``counter``."""

        def sample(captions: list[str], lengths: list[int], seeds: list[int]) -> list[np.ndarray]:
            gen = self.generate(captions, seeds)
            if counter is not None:
                counter["samples"] = counter.get("samples", 0) + len(captions)
                counter["invalid_first"] = counter.get("invalid_first", 0) + gen.n_invalid_first
                counter["invalid"] = counter.get("invalid", 0) + gen.n_invalid
            return [
                f if f is not None else np.tile(self.mean.astype(np.float32), (max(length, 4), 1))
                for f, length in zip(gen.features, lengths, strict=True)
            ]

        return sample
