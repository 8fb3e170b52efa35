"""Text to motion features: a policy, the VQ-VAE that decodes its tokens, and the dataset statistics.

The one place that turns sampled tokens into un-normalised features, so evaluation, pair sampling and win
rates all treat invalid generations the same way: resampled with fresh seeds a few times, then counted, and
where a motion must be scored anyway, scored as the failure it is (``MotionGenerator.fallback_motion``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

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
    def first_valid(self) -> list[bool]:
        """Whether each caption's first sample was valid (its motion is then that first sample)."""
        return [a == 1 and ok for a, ok in zip(self.attempts, self.valid, strict=True)]

    @property
    def n_invalid_first(self) -> int:
        return sum(not ok for ok in self.first_valid)

    @property
    def n_invalid(self) -> int:
        return sum(not ok for ok in self.valid)


class Samples(NamedTuple):
    """What ``MotionGenerator.sample_fn`` returns, the ``(first, retried)`` pair that ``evaluate.metrics`` and
    ``evaluate.judged`` score twice: ``first`` the first sample of each caption, an invalid one already the
    fallback motion; ``retried`` for each caption whose first sample was invalid, by its index, what the retries
    gave (a valid motion, or the fallback again). A tuple, so that the metrics need not import the policy code."""

    first: list[np.ndarray]
    retried: dict[int, np.ndarray]


@dataclass
class MotionGenerator:
    """``fallback_frames``: the length of the motion that stands for a failed sample wherever one must be scored
    (``fallback_motion``); the stages set it to ``data.min_len``. Only ``sample_fn`` and ``fallback_motion`` need
    it, so samplers that drop failures (PPO, SoPo) leave it unset."""

    policy: MotionPolicy
    vqvae: MotionVQVAE
    mean: np.ndarray
    std: np.ndarray
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    fallback_frames: int | None = None

    def __post_init__(self) -> None:
        if self.fallback_frames is not None and self.fallback_frames < 1:
            raise ValueError(f"MotionGenerator.fallback_frames must be at least 1, got {self.fallback_frames}")

    def generate(
        self, captions: Sequence[str], seeds: Sequence[int], temperature: float | None = None, decode: bool = True
    ) -> Generation:
        """Sample with ``self.sampling`` (``temperature`` overrides its temperature, for the win-rate cells);
        ``decode=False`` returns the codes alone (PPO scores tokens, not features).

        Only invalid samples are drawn again, each retry with a new seed; a caption's first attempt depends on its
        caption and seed alone (``MotionPolicy.sample`` seeds each row), so ``first_valid`` motions are exactly
        what a run without retries gives."""
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

    def fallback_motion(self) -> np.ndarray:
        """What a failed sample is scored as: the dataset's mean pose held for ``fallback_frames`` frames.

        A model that emits no motion yields no motion; the closest thing the evaluator can score is a figure
        standing still, and it scores it like any sample, so R-precision, FID and the judge count the failure
        against the model. The length is fixed, never the reference clip's: a failure borrowing the ground
        truth's length would carry information the model never produced."""
        if self.fallback_frames is None:
            raise ValueError(
                "MotionGenerator.fallback_frames is not set: a failed sample cannot be scored without it "
                "(pass fallback_frames=params.data.min_len)"
            )
        return np.tile(self.mean.astype(np.float32), (self.fallback_frames, 1))

    def sample_fn(self, counter: dict[str, int] | None = None):  # noqa: ANN201 (metrics.SampleFn)
        """A ``sample_fn`` for the metrics and the judge returning ``Samples``: the first sample of each
        caption, an invalid one scored as ``fallback_motion`` (MotionGPT's protocol does not resample, and the
        failures are what preference tuning may break), and for each invalid first sample what
        ``sampling.retries`` resamples give (``fallback_motion`` again when every retry fails). One ``generate``
        call gives both: a valid first sample is shared, and only the invalid ones are sampled again.

        The lengths the protocol hands in (the reference crops') are not used: the policy decides its motion's
        length. ``counter`` accumulates ``samples``, ``invalid_first`` and ``invalid`` (still invalid after the
        retries)."""
        fallback = self.fallback_motion()

        def sample(captions: list[str], lengths: list[int], seeds: list[int]) -> Samples:
            gen = self.generate(captions, seeds)
            if counter is not None:
                counter["samples"] = counter.get("samples", 0) + len(captions)
                counter["invalid_first"] = counter.get("invalid_first", 0) + gen.n_invalid_first
                counter["invalid"] = counter.get("invalid", 0) + gen.n_invalid
            motions = [f if f is not None else fallback for f in gen.features]
            first_valid = gen.first_valid
            return Samples(
                first=[m if ok else fallback for m, ok in zip(motions, first_valid, strict=True)],
                retried={i: m for i, (m, ok) in enumerate(zip(motions, first_valid, strict=True)) if not ok},
            )

        return sample
