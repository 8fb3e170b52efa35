from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from motionpref.config import AIFeedbackConfig, SimulatedLabelersConfig
from motionpref.motion.features import extract_features
from motionpref.prefs.labels import parse_judgment
from motionpref.prefs.simulate import (
    ai_labels,
    decide,
    degree_of,
    judgments_jsonl,
    perceived_quality,
    score_pairs,
    simulate_labels,
)
from motionpref.synth.animate import animate
from motionpref.synth.programs import make_segment, program

GAPS = {"much_better": 0.45, "better": 0.25, "slightly_better": 0.1}


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


def scores(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pair_id": [f"pair-{i}" for i in range(n)],
            "judge_a": rng.uniform(0, 1, n),
            "judge_b": rng.uniform(0, 1, n),
            "realism_a": np.ones(n),
            "realism_b": np.ones(n),
        }
    )


def test_simulated_labelers_share_a_subset_and_agree_without_noise() -> None:
    table = scores(400, np.random.default_rng(0))
    prompts = {p: f"prompt {p}" for p in table["pair_id"]}
    config = SimulatedLabelersConfig(n_labelers=3, noise=0.0, shared_fraction=0.25)
    files = simulate_labels(table, prompts, config, seed=1)
    assert set(files) == {"sim-0", "sim-1", "sim-2"}
    by_pair: dict[str, list] = {}
    for judgments in files.values():
        for j in judgments:
            by_pair.setdefault(j.pair_id, []).append(j)
    assert set(by_pair) == set(prompts)  # every pair judged
    shared = [v for v in by_pair.values() if len(v) == 2]
    assert 0.15 < len(shared) / len(by_pair) < 0.35
    assert all(a.labeler != b.labeler and (a.choice, a.degree) == (b.choice, b.degree) for a, b in shared)
    # the higher true score wins when nobody errs; both below fail_below -> skip
    row = table.set_index("pair_id").loc["pair-0"]
    expected = (
        "skip" if max(row.judge_a, row.judge_b) < config.fail_below else ("a" if row.judge_a >= row.judge_b else "b")
    )
    assert by_pair["pair-0"][0].choice == expected


def test_noise_makes_labelers_disagree_sometimes_and_is_seeded() -> None:
    table = scores(400, np.random.default_rng(0))
    prompts = {p: "x" for p in table["pair_id"]}
    config = SimulatedLabelersConfig(n_labelers=2, noise=0.2, shared_fraction=1.0)
    files = simulate_labels(table, prompts, config, seed=1)
    a = {j.pair_id: j.choice for j in files["sim-0"]}
    b = {j.pair_id: j.choice for j in files["sim-1"]}
    agreement = np.mean([a[p] == b[p] for p in a])
    assert 0.5 < agreement < 0.98
    again = simulate_labels(table, prompts, config, seed=1)
    assert judgments_jsonl(again["sim-0"]) == judgments_jsonl(files["sim-0"])
    lines = judgments_jsonl(files["sim-0"]).splitlines()
    assert parse_judgment(lines[0], "sim-0.jsonl", 1).source == "simulated"


def test_unrealistic_motions_fail_even_with_a_good_score() -> None:
    table = pd.DataFrame({"pair_id": ["p"], "judge_a": [0.9], "judge_b": [0.9], "realism_a": [0.1], "realism_b": [0.2]})
    files = simulate_labels(table, {"p": "x"}, SimulatedLabelersConfig(n_labelers=1, noise=0.0), seed=0)
    assert files["sim-0"][0].choice == "skip"


def write_pair(tmp_path: Path, prog, seeds=(0, 1)) -> pd.DataFrame:
    rows = {}
    for side, seed in zip("ab", seeds, strict=True):
        features = extract_features(animate(prog, np.random.default_rng(seed)))
        np.save(tmp_path / f"{side}.npy", features)
        rows[f"features_{side}"] = [f"{side}.npy"]
    return pd.DataFrame({"pair_id": ["p"], "prompt": ["a person jumps"], "program": [prog.to_json()], **rows})


def test_score_pairs_uses_the_judge_on_recovered_joints(tmp_path: Path) -> None:
    jump = program(make_segment("jump", count=2))
    table = score_pairs(write_pair(tmp_path, jump), tmp_path)
    assert table.loc[0, "judge_a"] > 0.7 and table.loc[0, "realism_b"] > 0.7
    with pytest.raises(ValueError, match="no program"):
        score_pairs(write_pair(tmp_path, jump).assign(program=[None]), tmp_path)


class FakeScorer:
    def __init__(self, a: float, b: float) -> None:
        self.values = np.array([a, b])

    def score(self, texts, motions):
        assert texts[0] == texts[1] and len(motions) == 2
        return self.values


def test_ai_labels_rank_with_the_scorer(tmp_path: Path) -> None:
    pairs = write_pair(tmp_path, program(make_segment("wave")))
    config = AIFeedbackConfig()
    [j] = ai_labels(pairs, tmp_path, FakeScorer(0.62, 0.7), config)
    assert (j.choice, j.degree, j.source, j.labeler) == ("b", "better", "ai", "ai-tmr")
    [j] = ai_labels(pairs, tmp_path, FakeScorer(0.3, 0.4), config)
    assert j.choice == "skip" and j.degree is None
