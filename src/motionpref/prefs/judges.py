"""Judges: who tells the better of two motions when no person does, for the label stage and the win rates.

Simulated labelers perceive each motion's quality, ``perceived_quality(judge score)``, through their own noise,
pick the better one, take the degree from the perceived gap and skip when both motions fail, as the paper's
labelers were told to. AI feedback ranks with the retrieval scorer instead (MoDiPO's); it needs no programs,
so it works on real data too. :func:`make_judge` builds the one ``labels.labeler`` names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import pandas as pd

from motionpref.config import AIFeedbackConfig, LabelsConfig, SimulatedLabelersConfig
from motionpref.motion.skeleton import HUMANML3D, Skeleton
from motionpref.prefs.labels import Choice, Degree, Source
from motionpref.synth.judge import judge, judged_joints, realism
from motionpref.synth.programs import Program

if TYPE_CHECKING:  # torch and transformers come with the scorer; the simulated labelers do not need them
    from motionpref.models.retrieval import RetrievalModel

JUDGE_FLOOR = 1e-4  # the judge's own floor for one failed criterion


def perceived_quality(score: np.ndarray | float) -> np.ndarray | float:
    """The judge's score on a log scale, 1 + log10(score) / 4, in [0, 1].

    The judge multiplies its criteria (a soft AND), so a motion that gets the walk right but misses the count
    scores orders of magnitude below a perfect one, yet far above one that does nothing asked. A person
    comparing the two sees that difference: the log scale makes "how many things went wrong" the quality.
    """
    return 1.0 + np.log10(np.maximum(score, JUDGE_FLOOR)) / 4.0


def degree_of(gap: float, gaps: Mapping[str, float]) -> Degree:
    """The strongest degree whose threshold the gap reaches; below every threshold, negligible."""
    for name in ("much_better", "better", "slightly_better"):
        if gap >= gaps[name]:
            return name  # type: ignore[return-value]
    return "negligible"


def decide(
    score_a: float, score_b: float, fail_a: bool, fail_b: bool, gaps: Mapping[str, float]
) -> tuple[Choice, Degree | None]:
    """(choice, degree) from two perceived scores: skip when both motions fail, else the higher one wins."""
    if fail_a and fail_b:
        return "skip", None
    choice: Choice = "a" if score_a >= score_b else "b"
    return choice, degree_of(abs(score_a - score_b), gaps)


class Perception(NamedTuple):
    """What a labeler has to go on about one motion."""

    score: float  # the synthetic judge's score, or the retrieval score under AI feedback; 0 for an invalid sample
    realism: float  # the synthetic judge's realism; 1 under AI feedback, which does not rate it
    valid: bool  # False when the model produced no motion after its retries: such a sample fails


INVALID = Perception(0.0, 0.0, False)


def simulated_judgment(
    a: Perception, b: Perception, config: SimulatedLabelersConfig, rng: np.random.Generator
) -> tuple[Choice, Degree | None]:
    """One simulated labeler's (choice, degree) for motions a and b: each perceived quality is off by
    N(0, noise); a motion perceived below ``fail_below``, less real than ``realism_min`` or invalid fails the
    prompt."""
    noise = rng.normal(0.0, config.noise, size=2)
    perceived = [perceived_quality(p.score) + n for p, n in zip((a, b), noise, strict=True)]
    fails = [
        not p.valid or q < config.fail_below or p.realism < config.realism_min
        for p, q in zip((a, b), perceived, strict=True)
    ]
    return decide(perceived[0], perceived[1], fails[0], fails[1], config.gaps)


class PairJudge(Protocol):
    name: Source  # what the judgments it makes are labelled as coming from
    labelers: tuple[str, ...]  # who judges the preference pairs: one of them each pair ...
    shared_fraction: float  # ... and a second one for this fraction of the pairs

    def perceive(self, features: Sequence[np.ndarray | None], prompts: Sequence[int] | None = None) -> list[Perception]:
        """One perception per motion; ``features[i]`` answers prompt ``prompts[i]`` of those the judge was made
        for, by default one motion per prompt in order. None is a model's failure to produce a motion."""
        ...

    def judgment(self, a: Perception, b: Perception, rng: np.random.Generator) -> tuple[Choice, Degree | None]: ...


def _answered(features: Sequence[np.ndarray | None], prompts: Sequence[int] | None, n: int) -> Sequence[int]:
    """The prompt each motion answers (``PairJudge.perceive``)."""
    if prompts is None:
        prompts = range(n)
    if len(features) != len(prompts):
        raise ValueError(f"{len(features)} motions for {len(prompts)} prompts")
    return prompts


class SimulatedLabelers:
    """The simulated labelers: the synthetic judge scores each motion against its prompt's program."""

    name: Source = "simulated"

    def __init__(
        self, programs: Sequence[Program], config: SimulatedLabelersConfig, skeleton: Skeleton = HUMANML3D
    ) -> None:
        self.programs = list(programs)
        self.config = config
        self.skeleton = skeleton
        self.labelers = tuple(f"sim-{k}" for k in range(config.n_labelers))
        self.shared_fraction = config.shared_fraction

    def perceive(self, features: Sequence[np.ndarray | None], prompts: Sequence[int] | None = None) -> list[Perception]:
        out = []
        for i, f in zip(_answered(features, prompts, len(self.programs)), features, strict=True):
            if f is None:
                out.append(INVALID)
                continue
            joints = judged_joints(f, self.skeleton)
            out.append(Perception(judge(self.programs[i], joints), realism(joints), True))
        return out

    def judgment(self, a: Perception, b: Perception, rng: np.random.Generator) -> tuple[Choice, Degree | None]:
        return simulated_judgment(a, b, self.config, rng)


class RetrievalFeedback:
    """AI feedback (MoDiPO-style): the retrieval scorer's text-motion score decides; works without programs,
    so on real data too."""

    name: Source = "ai"
    labelers = ("ai-tmr",)
    shared_fraction = 0.0  # a second opinion from the same deterministic scorer would always agree

    def __init__(self, scorer: RetrievalModel, texts: Sequence[str], config: AIFeedbackConfig) -> None:
        self.scorer = scorer
        self.texts = list(texts)
        self.config = config

    def perceive(self, features: Sequence[np.ndarray | None], prompts: Sequence[int] | None = None) -> list[Perception]:
        prompts = _answered(features, prompts, len(self.texts))
        valid = [k for k, f in enumerate(features) if f is not None]
        out = [INVALID] * len(features)
        if valid:
            # one scorer call: its scores can move in the last bits with the batch they are computed in, so the
            # caller's grouping (a pair, a model's samples) is what decides
            scores = self.scorer.score([self.texts[prompts[k]] for k in valid], [features[k] for k in valid])
            for k, s in zip(valid, scores, strict=True):
                out[k] = Perception(float(s), 1.0, True)
        return out

    def judgment(self, a: Perception, b: Perception, rng: np.random.Generator) -> tuple[Choice, Degree | None]:
        fail = self.config.fail_below
        return decide(a.score, b.score, not a.valid or a.score < fail, not b.valid or b.score < fail, self.config.gaps)


def programs_of(prompts: pd.DataFrame, where: str) -> list[Program]:
    """The program of every prompt (``prompt_id``, ``program``); prompts without one (real data) are an error
    that names the way out."""
    missing = prompts.loc[prompts["program"].isna(), "prompt_id"].unique()
    if len(missing):
        raise ValueError(
            f"{where}: prompt {missing[0]!r} (and {len(missing) - 1} more) has no program, so the simulated "
            "labelers cannot judge its motions (they need synthetic prompts); set labels.labeler: ai to let "
            "the retrieval scorer judge, or have people judge the motions in the labeling app"
        )
    return [Program.from_json(p) for p in prompts["program"]]


def make_judge(
    labels: LabelsConfig,
    prompts: pd.DataFrame,
    skeleton: Skeleton,
    scorer: Callable[[], RetrievalModel],
    where: str,
) -> PairJudge:
    """The judge ``labels.labeler`` names, for the motions answering ``prompts`` (``prompt_id``, ``text``,
    ``program``; from ``where``). ``scorer`` loads the retrieval model, only when AI feedback judges."""
    if labels.labeler == "simulated":
        return SimulatedLabelers(programs_of(prompts, where), labels.simulated, skeleton)
    return RetrievalFeedback(scorer(), list(prompts["text"]), labels.ai)
