"""A diffusion policy (``models.diffusion``) as a text-to-motion sampler beside the token policy's
``MotionGenerator``: the same ``sample_fn`` for the metrics and the judge and the same ``generate`` for win rates.
Its own module so that the token-policy stages do not depend on the diffusion code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from motionpref.config import DiffusionSamplingConfig
from motionpref.models.diffusion import DiffusionPolicy
from motionpref.models.generator import Generation


@dataclass
class DiffusionGenerator:
    """A diffusion policy (MDM, MLD) as the same text-to-motion sampler: every sample is a motion, so nothing
    is invalid and nothing is retried. A diffusion model is told its motion's length: the evaluation protocol's
    (the reference crop's, as MDM and MLD evaluate), and for prompts without one (win rates) a length drawn
    from ``lengths`` (the training clips') with the prompt's seed, so every model gets the same length."""

    policy: DiffusionPolicy
    mean: np.ndarray
    std: np.ndarray
    sampling: DiffusionSamplingConfig = field(default_factory=DiffusionSamplingConfig)
    lengths: Sequence[int] = ()
    batch_size: int = 64

    def features(self, captions: Sequence[str], lengths: Sequence[int], seeds: Sequence[int]) -> list[np.ndarray]:
        """Un-normalised (length, D) motions; row i depends on its caption, length and seed alone
        (``DiffusionPolicy.sample(seeds=...)``), so rows are batched by length to pad less."""
        if not len(captions) == len(lengths) == len(seeds):
            raise ValueError(f"got {len(captions)} captions, {len(lengths)} lengths and {len(seeds)} seeds")
        order = sorted(range(len(captions)), key=lambda i: int(lengths[i]))
        out: list[np.ndarray | None] = [None] * len(captions)
        for begin in range(0, len(order), self.batch_size):
            rows = order[begin : begin + self.batch_size]
            x = self.policy.sample(
                [captions[i] for i in rows],
                [int(lengths[i]) for i in rows],
                self.sampling,
                seeds=[seeds[i] for i in rows],
            )
            x = x.cpu().numpy()
            for k, i in enumerate(rows):
                out[i] = x[k, : int(lengths[i])] * self.std + self.mean
        return out  # type: ignore[return-value]

    def prompt_lengths(self, seeds: Sequence[int]) -> list[int]:
        if not len(self.lengths):
            raise ValueError("DiffusionGenerator.lengths is empty: prompts without a length need the training lengths")
        return [int(self.lengths[np.random.default_rng(int(s)).integers(len(self.lengths))]) for s in seeds]

    def generate(
        self, captions: Sequence[str], seeds: Sequence[int], temperature: float | None = None, decode: bool = True
    ) -> Generation:
        """The ``Generation`` of the win-rate study: one valid motion per caption, its length drawn by
        ``prompt_lengths``. A diffusion sampler has no temperature: only None or 1 is accepted."""
        if temperature not in (None, 1.0):
            raise ValueError(f"a diffusion policy samples without a temperature; got {temperature} (use 1.0)")
        feats = self.features(captions, self.prompt_lengths(seeds), seeds)
        n = len(captions)
        return Generation(list(feats), [[] for _ in range(n)], [int(s) for s in seeds], [1] * n, [True] * n)

    def sample_fn(self, counter: dict[str, int] | None = None):  # noqa: ANN201 (metrics.SampleFn)
        """A ``sample_fn`` for the metrics and the judge: one motion per caption at the protocol's length."""

        def sample(captions: list[str], lengths: list[int], seeds: list[int]) -> list[np.ndarray]:
            if counter is not None:
                counter["samples"] = counter.get("samples", 0) + len(captions)
                counter.setdefault("invalid_first", 0)
                counter.setdefault("invalid", 0)
            return self.features(captions, lengths, seeds)

        return sample
