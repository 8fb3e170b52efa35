"""The synthetic judge's view of a model: how well its samples do what the test captions ask.

In the embedded world this is the stand-in for the papers' human studies; it needs the programs behind the
captions, so it exists only for the synthetic source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from motionpref.evaluate.metrics import SampleFn, confidence_interval, split_samples
from motionpref.motion.skeleton import HUMANML3D, Skeleton
from motionpref.prefs.judges import perceived_quality
from motionpref.progress import track
from motionpref.synth.judge import judge, judged_joints, realism
from motionpref.synth.programs import Program


@dataclass(frozen=True)
class JudgedPrompt:
    caption: str
    program: Program
    length: int  # frames of the reference clip, handed to the sampler as the metrics do


def judge_samples(
    sample_fn: SampleFn,
    prompts: Sequence[JudgedPrompt],
    seed: int,
    skeleton: Skeleton = HUMANML3D,
    batch: int = 64,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]] | None]:
    """Mean judge score, its log-scale quality (what simulated labelers perceive) and realism of one sample per
    prompt, each with a 95% interval over prompts: of the first samples (an invalid one scored as the failure
    motion ``sample_fn`` returns for it, as the metrics do) and, when ``sample_fn`` answers with retried motions
    (``models.generator.Samples``), of the retried column, None otherwise. The retried column judges only the
    resampled motions again; every other prompt keeps its first sample's scores."""
    rng = np.random.default_rng(seed)
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=len(prompts))]
    first: list[tuple[float, float]] = []  # (judge score, realism) of each prompt's first sample
    retried: list[tuple[float, float]] = []
    answered_retried = False
    for start in track(range(0, len(prompts), batch), description="judge samples", total=-(-len(prompts) // batch)):
        chunk = prompts[start : start + batch]
        captions = [p.caption for p in chunk]
        answer = sample_fn(captions, [p.length for p in chunk], seeds[start : start + batch])
        motions, again = split_samples(answer, captions, skeleton.feature_dim, 1)
        answered_retried = again is not None
        for k, (p, features) in enumerate(zip(chunk, motions, strict=True)):
            first.append(_scores(p, features, skeleton))
            retried.append(_scores(p, again[k], skeleton) if again and k in again else first[-1])
    primary = _summaries(first)
    return primary, _summaries(retried) if answered_retried else None


def _scores(prompt: JudgedPrompt, features: np.ndarray, skeleton: Skeleton) -> tuple[float, float]:
    joints = judged_joints(np.asarray(features, np.float32), skeleton)
    return judge(prompt.program, joints), realism(joints)


def _summaries(scored: Sequence[tuple[float, float]]) -> dict[str, dict[str, float]]:
    scores = [s for s, _ in scored]
    quality = [float(perceived_quality(s)) for s in scores]
    out = {}
    for name, values in (("judge", scores), ("judge_quality", quality), ("realism", [r for _, r in scored])):
        mean, ci95 = confidence_interval(values)  # over prompts: each is an independent sample
        out[name] = {"mean": mean, "ci95": ci95}
    return out
