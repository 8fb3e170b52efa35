from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from motionpref.config import AIFeedbackConfig, LabelsConfig, SimulatedLabelersConfig
from motionpref.motion.features import extract_features
from motionpref.motion.skeleton import HUMANML3D
from motionpref.prefs.judges import (
    Perception,
    RetrievalFeedback,
    SimulatedLabelers,
    decide,
    degree_of,
    make_judge,
    perceived_quality,
    simulated_judgment,
)
from motionpref.synth.animate import animate
from motionpref.synth.programs import make_segment, program

GAPS = {"much_better": 0.45, "better": 0.25, "slightly_better": 0.1}
WALK = '{"segments":[{"primitive":"walk","speed":"normal","count":4,"amplitude":"normal"}]}'


def test_degree_follows_the_gap_thresholds() -> None:
    assert [degree_of(g, GAPS) for g in (0.5, 0.45, 0.3, 0.1, 0.09, 0.0)] == [
        "much_better",
        "much_better",
        "better",
        "slightly_better",
        "negligible",
        "negligible",
    ]


def test_perceived_quality_is_the_log_of_the_judge_score() -> None:
    assert perceived_quality(1.0) == 1.0 and perceived_quality(0.01) == pytest.approx(0.5)
    assert perceived_quality(0.0) == perceived_quality(1e-6) == 0.0
    np.testing.assert_allclose(perceived_quality(np.array([0.1, 0.001])), [0.75, 0.25])


def test_decide_skips_only_when_both_fail() -> None:
    assert decide(0.1, 0.2, True, True, GAPS) == ("skip", None)
    assert decide(0.9, 0.2, False, True, GAPS) == ("a", "much_better")
    assert decide(0.5, 0.7, False, False, GAPS) == ("b", "slightly_better")


def test_simulated_judgment_follows_the_labelers_noise_model() -> None:
    config = SimulatedLabelersConfig(noise=0.0)
    good, poor, fake = Perception(1.0, 1.0, True), Perception(1e-3, 1.0, True), Perception(1.0, 0.1, True)
    rng = np.random.default_rng(0)
    # perceived 1.0 vs 1 + log10(1e-3) / 4 = 0.25 (below fail_below): a gap of 0.75
    assert simulated_judgment(good, poor, config, rng) == ("a", "much_better")
    assert simulated_judgment(poor, good, config, rng) == ("b", "much_better")
    assert simulated_judgment(poor, Perception(0.0, 0.0, False), config, rng) == ("skip", None)
    assert simulated_judgment(fake, poor, config, rng) == ("skip", None)  # unrealistic fails whatever it scores
    # an invalid sample fails even with a perfect score and no realism threshold
    lenient = SimulatedLabelersConfig(noise=0.0, fail_below=0.0, realism_min=0.0)
    assert simulated_judgment(Perception(1.0, 1.0, False), Perception(0.0, 1.0, False), lenient, rng) == ("skip", None)
    # with noise, a pair of equal scores goes either way
    noisy = SimulatedLabelersConfig(noise=0.2)
    choices = {simulated_judgment(good, good, noisy, rng)[0] for _ in range(50)}
    assert choices == {"a", "b"}


def test_simulated_labelers_judge_recovered_joints_against_each_prompt() -> None:
    jump, wave = program(make_segment("jump", count=2)), program(make_segment("wave"))
    jumping = extract_features(animate(jump, np.random.default_rng(0)))
    judge = SimulatedLabelers([jump, wave], SimulatedLabelersConfig())
    on_jump, none = judge.perceive([jumping, None])
    assert on_jump.score > 0.7 and on_jump.realism > 0.7 and on_jump.valid and none == Perception(0.0, 0.0, False)
    # the same motion asked about against the second prompt: a jump is no wave
    again, on_wave = judge.perceive([jumping, jumping], [0, 1])
    assert again == on_jump and on_wave.score < 0.1 * on_jump.score
    with pytest.raises(ValueError, match="1 motions for 2 prompts"):
        judge.perceive([jumping])


class ConstantScorer:
    """A retrieval scorer whose score of a motion is its first value."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def score(self, texts: Sequence[str], motions: Sequence[np.ndarray]) -> np.ndarray:
        self.asked.append(list(texts))
        return np.array([float(m[0, 0]) for m in motions])


def test_retrieval_feedback_scores_valid_motions_and_fails_invalid_ones() -> None:
    scorer = ConstantScorer()
    feedback = RetrievalFeedback(scorer, ["t0", "t1", "t2"], AIFeedbackConfig())  # type: ignore[arg-type]
    seen = feedback.perceive([np.full((4, 3), 0.9), None, np.full((4, 3), 0.3)])
    assert scorer.asked == [["t0", "t2"]]  # an invalid sample is not scored
    assert seen == [Perception(0.9, 1.0, True), Perception(0.0, 0.0, False), Perception(0.3, 1.0, True)]
    rng = np.random.default_rng(0)
    assert feedback.judgment(seen[0], seen[2], rng) == ("a", "much_better")  # gap 0.6 >= 0.1
    assert feedback.judgment(seen[1], seen[2], rng) == ("skip", None)  # invalid, and 0.3 below fail_below 0.5
    feedback.perceive([np.full((4, 3), 0.9), np.full((4, 3), 0.3)], [1, 1])
    assert scorer.asked[-1] == ["t1", "t1"]  # both motions of a pair against its one prompt, in one call
    with pytest.raises(ValueError, match="2 motions for 3 prompts"):
        feedback.perceive([None, None])


def prompts(programs: Sequence[str | None]) -> pd.DataFrame:
    n = len(programs)
    return pd.DataFrame({"prompt_id": [f"p{i:03d}" for i in range(n)], "text": ["walk"] * n, "program": programs})


def test_make_judge_builds_the_labeler_the_config_names() -> None:
    labels = LabelsConfig(simulated=SimulatedLabelersConfig(n_labelers=3, shared_fraction=0.2))
    simulated = make_judge(labels, prompts([WALK, WALK]), HUMANML3D, lambda: pytest.fail("no scorer"), "x")
    assert isinstance(simulated, SimulatedLabelers) and len(simulated.programs) == 2
    assert (simulated.name, simulated.labelers, simulated.shared_fraction) == (
        "simulated",
        ("sim-0", "sim-1", "sim-2"),
        0.2,
    )
    scorer = ConstantScorer()
    ai = make_judge(labels.model_copy(update={"labeler": "ai"}), prompts([None, WALK]), HUMANML3D, lambda: scorer, "x")
    assert isinstance(ai, RetrievalFeedback) and ai.scorer is scorer and ai.texts == ["walk", "walk"]
    assert (ai.name, ai.labelers, ai.shared_fraction) == ("ai", ("ai-tmr",), 0.0)


def test_prompts_without_programs_need_another_judge() -> None:
    with pytest.raises(
        ValueError, match=r"prompts.parquet: prompt 'p001' \(and 1 more\) has no program.*labels.labeler: ai"
    ):
        make_judge(LabelsConfig(), prompts([WALK, None, None]), HUMANML3D, lambda: None, "prompts.parquet")
