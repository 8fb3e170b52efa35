"""The synthetic judge's view of a model: how well its samples do what the test captions ask.

In the embedded world this is the stand-in for the papers' human studies; it needs the programs behind the
captions, so it exists only for the synthetic source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from motionpref.evaluate.metrics import confidence_interval
from motionpref.motion.features import recover_joints
from motionpref.motion.skeleton import HUMANML3D, Skeleton
from motionpref.prefs.judges import perceived_quality
from motionpref.progress import track
from motionpref.synth.judge import judge, realism
from motionpref.synth.programs import Program

SampleFn = Callable[[list[str], list[int], list[int]], list[np.ndarray]]


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
) -> dict[str, dict[str, float]]:
    """Mean judge score, its log-scale quality (what simulated labelers perceive) and realism of one sample per
    prompt, each with a 95% interval over prompts."""
    rng = np.random.default_rng(seed)
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=len(prompts))]
    scores, real = [], []
    for start in track(range(0, len(prompts), batch), description="judge samples", total=-(-len(prompts) // batch)):
        chunk = prompts[start : start + batch]
        motions = sample_fn([p.caption for p in chunk], [p.length for p in chunk], seeds[start : start + batch])
        for p, features in zip(chunk, motions, strict=True):
            joints = recover_joints(np.asarray(features, np.float32), skeleton)
            scores.append(judge(p.program, joints))
            real.append(realism(joints))
    out = {}
    quality = [float(perceived_quality(s)) for s in scores]
    for name, values in (("judge", scores), ("judge_quality", quality), ("realism", real)):
        mean, ci95 = confidence_interval(values)  # over prompts: each is an independent sample
        out[name] = {"mean": mean, "ci95": ci95}
    return out
