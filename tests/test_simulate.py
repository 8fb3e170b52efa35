from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from motionpref.config import AIFeedbackConfig, LabelsConfig, SimulatedLabelersConfig
from motionpref.motion.features import extract_features
from motionpref.motion.skeleton import HUMANML3D
from motionpref.prefs.judges import Perception, RetrievalFeedback, SimulatedLabelers, make_judge
from motionpref.prefs.labels import parse_judgment
from motionpref.prefs.simulate import judgments_jsonl, label_pairs, pair_prompts, perceive_pairs
from motionpref.synth.animate import animate
from motionpref.synth.programs import make_segment, program


def perceived(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, list[tuple[Perception, Perception]]]:
    """Pairs whose motions the judge scored uniformly at random, all of them realistic."""
    pairs = pd.DataFrame({"pair_id": [f"pair-{i}" for i in range(n)], "prompt": [f"prompt {i}" for i in range(n)]})
    scores = rng.uniform(0, 1, (n, 2))
    return pairs, [(Perception(a, 1.0, True), Perception(b, 1.0, True)) for a, b in scores]


def test_simulated_labelers_share_a_subset_and_agree_without_noise() -> None:
    pairs, seen = perceived(400, np.random.default_rng(0))
    config = SimulatedLabelersConfig(n_labelers=3, noise=0.0, shared_fraction=0.25)
    files = label_pairs(pairs, seen, SimulatedLabelers([], config), seed=1)
    assert set(files) == {"sim-0", "sim-1", "sim-2"}
    by_pair: dict[str, list] = {}
    for judgments in files.values():
        for j in judgments:
            by_pair.setdefault(j.pair_id, []).append(j)
    assert set(by_pair) == set(pairs["pair_id"])  # every pair judged
    assert all(j.prompt == f"prompt {j.pair_id[5:]}" for js in by_pair.values() for j in js)
    shared = [v for v in by_pair.values() if len(v) == 2]
    assert 0.15 < len(shared) / len(by_pair) < 0.35
    assert all(a.labeler != b.labeler and (a.choice, a.degree) == (b.choice, b.degree) for a, b in shared)
    # the higher true score wins when nobody errs; both below fail_below -> skip
    a, b = seen[0]
    expected = "skip" if max(a.score, b.score) < config.fail_below else ("a" if a.score >= b.score else "b")
    assert by_pair["pair-0"][0].choice == expected


def test_noise_makes_labelers_disagree_sometimes_and_is_seeded() -> None:
    pairs, seen = perceived(400, np.random.default_rng(0))
    judge = SimulatedLabelers([], SimulatedLabelersConfig(n_labelers=2, noise=0.2, shared_fraction=1.0))
    files = label_pairs(pairs, seen, judge, seed=1)
    a = {j.pair_id: j.choice for j in files["sim-0"]}
    b = {j.pair_id: j.choice for j in files["sim-1"]}
    agreement = np.mean([a[p] == b[p] for p in a])
    assert 0.5 < agreement < 0.98
    again = label_pairs(pairs, seen, judge, seed=1)
    assert judgments_jsonl(again["sim-0"]) == judgments_jsonl(files["sim-0"])
    lines = judgments_jsonl(files["sim-0"]).splitlines()
    assert parse_judgment(lines[0], "sim-0.jsonl", 1).source == "simulated"


def test_unrealistic_motions_fail_even_with_a_good_score() -> None:
    pairs = pd.DataFrame({"pair_id": ["p"], "prompt": ["x"]})
    seen = [(Perception(0.9, 0.1, True), Perception(0.9, 0.2, True))]
    files = label_pairs(pairs, seen, SimulatedLabelers([], SimulatedLabelersConfig(n_labelers=1, noise=0.0)), seed=0)
    assert files["sim-0"][0].choice == "skip"


def write_pair(tmp_path: Path, prog, seeds=(0, 1)) -> pd.DataFrame:
    rows = {}
    for side, seed in zip("ab", seeds, strict=True):
        features = extract_features(animate(prog, np.random.default_rng(seed)))
        np.save(tmp_path / f"{side}.npy", features)
        rows[f"features_{side}"] = [f"{side}.npy"]
    return pd.DataFrame(
        {"pair_id": ["p"], "prompt_id": ["j"], "prompt": ["a person jumps"], "program": [prog.to_json()], **rows}
    )


def test_simulated_labelers_judge_the_motions_on_disk(tmp_path: Path) -> None:
    pairs = write_pair(tmp_path, program(make_segment("jump", count=2)))
    labels = LabelsConfig(simulated=SimulatedLabelersConfig(n_labelers=1, noise=0.0))
    judge = make_judge(labels, pair_prompts(pairs), HUMANML3D, lambda: pytest.fail("no scorer for simulated"), "x")
    [(a, b)] = perceive_pairs(pairs, tmp_path, judge)
    assert a.score > 0.7 and b.realism > 0.7 and a.valid and b.valid
    [j] = label_pairs(pairs, [(a, b)], judge, seed=0)["sim-0"]
    assert (j.pair_id, j.prompt, j.labeler, j.source) == ("p", "a person jumps", "sim-0", "simulated")


def test_pairs_without_programs_need_another_judge(tmp_path: Path) -> None:
    pairs = write_pair(tmp_path, program(make_segment("jump"))).assign(program=[None])
    with pytest.raises(ValueError, match=r"pairs.parquet: prompt 'j' \(and 0 more\) has no program.*labels.labeler"):
        make_judge(LabelsConfig(), pair_prompts(pairs), HUMANML3D, lambda: pytest.fail("no scorer"), "pairs.parquet")


class FakeScorer:
    def __init__(self, a: float, b: float) -> None:
        self.values = np.array([a, b], np.float32)

    def score(self, texts, motions):
        # the label stage asks about one pair at a time, so the scorer's batches are the pairs
        assert texts == ["a person jumps", "a person jumps"] and len(motions) == 2
        return self.values


def test_ai_labels_rank_with_the_scorer(tmp_path: Path) -> None:
    pairs = write_pair(tmp_path, program(make_segment("wave"))).assign(program=[None])  # no program needed
    for scores, choice, degree in (((0.62, 0.7), "b", "better"), ((0.3, 0.4), "skip", None)):
        judge = make_judge(
            LabelsConfig(labeler="ai"), pair_prompts(pairs), HUMANML3D, lambda s=scores: FakeScorer(*s), "x"
        )
        assert isinstance(judge, RetrievalFeedback) and judge.config == AIFeedbackConfig()
        files = label_pairs(pairs, perceive_pairs(pairs, tmp_path, judge), judge, seed=0)
        [j] = files["ai-tmr"]
        assert (j.choice, j.degree, j.source, j.labeler) == (choice, degree, "ai", "ai-tmr")
