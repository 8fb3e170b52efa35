from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from motionpref.config import LabelsConfig, PolicyConfig, VQVAEConfig, parse_params
from motionpref.evaluate.winrate import (
    flat_metrics,
    held_out_prompts,
    markdown,
    prompt_seeds,
    verdict,
    wilson_interval,
    winrate_study,
    write_reports,
)
from motionpref.models.generator import Generation, MotionGenerator
from motionpref.models.policy import MotionPolicy
from motionpref.models.vqvae import MotionVQVAE
from motionpref.motion.skeleton import HUMANML3D
from motionpref.pipeline import StageContext
from motionpref.prefs.judges import Perception, make_judge
from motionpref.prefs.prompts import write_prompts

K = 16
WALK, CLAP, WALK2, CLAP3 = (
    f'{{"segments":[{{"primitive":"{name}","speed":"normal","count":{count},"amplitude":"normal"}}]}}'
    for name, count in (("walk", 4), ("clap", 2), ("walk", 2), ("clap", 3))
)
# by program, as generate_prompts splits: two programs held out for the win rates
SPLIT_OF = {WALK: "train", CLAP: "val", WALK2: "test", CLAP3: "test"}


# ---- the interval -----------------------------------------------------------------------------------------


def test_wilson_interval_matches_hand_computation() -> None:
    # 8 of 10, z = 1.96: p = 0.8, z^2/n = 0.38416, centre = (0.8 + 0.19208) / 1.38416 = 0.716738,
    # half = 1.96 / 1.38416 * sqrt(0.016 + 0.009604) = 1.416021 * 0.160012 = 0.226581
    lo, hi = wilson_interval(8, 10, z=1.96)
    assert lo == pytest.approx(0.716738 - 0.226581, abs=1e-5) and hi == pytest.approx(0.716738 + 0.226581, abs=1e-5)
    # 0 of 10: centre = half = 0.19208 / 1.38416 = 0.138770, so the interval is [0, 0.277540], not empty
    assert wilson_interval(0, 10, z=1.96) == pytest.approx((0.0, 0.277540), abs=1e-5)
    # symmetric in successes and failures
    lo2, hi2 = wilson_interval(2, 10, z=1.96)
    assert (lo2, hi2) == pytest.approx((1 - hi, 1 - lo))
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"in \[0, 3\]"):
        wilson_interval(4, 3)


# ---- prompts ----------------------------------------------------------------------------------------------


def prompt_table(n: int) -> pd.DataFrame:
    """Prompt i paraphrases program i % 4 of SPLIT_OF; texts are the two the tiny policies know."""
    programs = [list(SPLIT_OF)[i % 4] for i in range(n)]
    return pd.DataFrame(
        {
            "prompt_id": [f"p{i:03d}" for i in range(n)],
            "text": ["a man walks forward" if '"walk"' in p else "someone claps" for p in programs],
            "program": programs,
            "source": ["synthetic"] * n,
            "group": programs,
            "split": [SPLIT_OF[p] for p in programs],
        }
    )


def test_held_out_prompts_are_the_test_split_alone() -> None:
    prompts = prompt_table(20)
    test_ids = {f"p{i:03d}" for i in range(20) if i % 4 in (2, 3)}  # WALK2 and CLAP3
    picked = held_out_prompts(prompts, 4, seed=3)
    assert len(picked) == 4 and set(picked["prompt_id"]) <= test_ids and set(picked["split"]) == {"test"}
    assert picked.equals(held_out_prompts(prompts, 4, seed=3))
    assert not picked.equals(held_out_prompts(prompts, 4, seed=4))
    assert list(picked["prompt_id"]) == sorted(picked["prompt_id"])  # in the table's order
    assert set(held_out_prompts(prompts, 100, seed=3)["prompt_id"]) == test_ids  # fewer than asked: all of them
    # no train or val program is ever studied, whatever was labelled
    assert not set(held_out_prompts(prompts, 100, seed=3)["program"]) & {WALK, CLAP}
    with pytest.raises(ValueError, match="data/prompts.parquet: none of the 20 prompts is in the test split"):
        held_out_prompts(prompts.assign(split="train"), 4, seed=3, where="data/prompts.parquet")


def test_prompt_seeds_are_stable_per_prompt() -> None:
    seeds = prompt_seeds(5, ["a", "b", "c"])
    assert prompt_seeds(5, ["c", "a"]) == [seeds[2], seeds[0]] and len(set(seeds)) == 3
    assert prompt_seeds(6, ["a"]) != seeds[:1]


# ---- judging and counting ---------------------------------------------------------------------------------


def test_verdicts() -> None:
    assert verdict("b", "better", identical=False) == "win"
    assert verdict("a", "much_better", identical=False) == "loss"
    assert verdict("a", "negligible", identical=False) == "negligible"
    assert verdict("skip", None, identical=False) == "both_failed"
    assert verdict("b", "much_better", identical=True) == "identical"


class ScriptedSampler:
    """Codes per (caption, temperature); features carry the code as a constant, None for an empty code list."""

    def __init__(self, codes: dict[tuple[str, float], list[int]]) -> None:
        self.codes = codes
        self.calls: list[tuple[list[str], list[int], float]] = []

    def generate(self, captions: Sequence[str], seeds: Sequence[int], temperature: float | None = None) -> Generation:
        assert temperature is not None
        self.calls.append((list(captions), list(seeds), temperature))
        codes = [self.codes[c, temperature] for c in captions]
        features = [np.full((8, 3), c[0], np.float32) if c else None for c in codes]
        return Generation(features, codes, list(seeds), [1 if c else 3 for c in codes], [bool(c) for c in codes])


class FakeJudge:
    """Perceives a motion's code as its score; the higher wins, a gap below 2 is negligible, both below 1 fail."""

    name = "fake"

    def perceive(self, features: Sequence[np.ndarray | None]) -> list[Perception]:
        return [Perception(0.0, 0.0, False) if f is None else Perception(float(f[0, 0]), 1.0, True) for f in features]

    def judgment(self, a: Perception, b: Perception, rng: np.random.Generator) -> tuple[str, str | None]:
        if a.score < 1 and b.score < 1:
            return "skip", None
        if abs(a.score - b.score) < 2:
            return ("a" if a.score >= b.score else "b"), "negligible"
        return ("a" if a.score > b.score else "b"), "better"


def test_outcomes_are_counted_per_model_and_temperature() -> None:
    prompts = pd.DataFrame({"prompt_id": ["p0", "p1", "p2", "p3", "p4"], "text": ["t0", "t1", "t2", "t3", "t4"]})
    sft_codes = {"t0": [5], "t1": [5], "t2": [0], "t3": [5], "t4": []}
    # at T=1: p0 win (9 vs 5), p1 loss (2 vs 5), p2 both fail (invalid vs 0), p3 identical, p4 win over an invalid
    ft_codes = {"t0": [9], "t1": [2], "t2": [], "t3": [5], "t4": [4]}
    sft = ScriptedSampler({**{(t, 1.0): c for t, c in sft_codes.items()}, **{(t, 2.0): [6] for t in sft_codes}})
    ft = ScriptedSampler({**{(t, 1.0): c for t, c in ft_codes.items()}, **{(t, 2.0): [7] for t in sft_codes}})
    study = winrate_study(sft, {"dpo": ft}, prompts, [1.0, 2.0], FakeJudge(), seed=11)  # type: ignore[arg-type]

    # the supervised model is sampled once per temperature, and both models get the same seeds
    assert [c[2] for c in sft.calls] == [1.0, 2.0] and [c[2] for c in ft.calls] == [1.0, 2.0]
    assert sft.calls[0][1] == ft.calls[0][1] == prompt_seeds(11, list(prompts["prompt_id"]))
    low, high = study["cells"]
    assert (low["model"], low["temperature"], low["n"]) == ("dpo", 1.0, 5)
    assert [low[o]["count"] for o in ("win", "tie", "loss")] == [2, 2, 1]
    assert low["win"]["rate"] == pytest.approx(0.4) and low["win"]["ci95"] == pytest.approx(wilson_interval(2, 5))
    assert low["ties"] == {"identical": 1, "both_failed": 1, "negligible": 0}
    assert low["win_excluding_ties"]["rate"] == pytest.approx(2 / 3) and low["win_excluding_ties"]["n"] == 3
    assert low["invalid"] == {"sft": 1, "finetuned": 1} and low["retried"] == {"sft": 1, "finetuned": 1}
    assert low["score"]["sft"]["mean"] == pytest.approx(15 / 5) and low["score"]["finetuned"]["mean"] == 4.0
    # at T=2 every pair is 6 vs 7: negligible, so all ties and no win rate excluding ties
    assert high["tie"]["rate"] == 1.0 and high["ties"]["negligible"] == 5
    assert high["win_excluding_ties"]["rate"] is None
    metrics = flat_metrics(study)
    assert metrics["dpo/t1.0/win"] == pytest.approx(0.4) and metrics["dpo/t2.0/tie"] == 1.0
    assert "dpo/t2.0/win_excl_ties" not in metrics and metrics["dpo/t1.0/win_excl_ties"] == pytest.approx(2 / 3)
    table = markdown(study)
    assert "| dpo | 1.0 | 5 | 40.0% [" in table and "| dpo | 2.0 | 5 | 0.0% [" in table


# ---- end to end on tiny models ----------------------------------------------------------------------------


def tiny_policy(seed: int) -> MotionPolicy:
    config = PolicyConfig(codebook_size=K, d_model=32, num_layers=1, num_heads=2, d_ff=64, dropout=0.0)
    return MotionPolicy.from_scratch(config, ["a man walks forward", "someone claps"], seed=seed)


@pytest.fixture(scope="module")
def vqvae() -> MotionVQVAE:
    return MotionVQVAE(VQVAEConfig(feature_dim=HUMANML3D.feature_dim, nb_code=K, code_dim=8, width=8, depth=1)).eval()


def generator(policy: MotionPolicy, vqvae: MotionVQVAE) -> MotionGenerator:
    from motionpref.config import SamplingConfig

    mean, std = np.zeros(HUMANML3D.feature_dim, np.float32), np.full(HUMANML3D.feature_dim, 0.1, np.float32)
    return MotionGenerator(policy, vqvae, mean, std, SamplingConfig(max_new_tokens=12, retries=1))


def test_tiny_models_end_to_end_and_a_copy_ties_everywhere(vqvae: MotionVQVAE, tmp_path: Path) -> None:
    prompts = prompt_table(4)
    judge = make_judge(LabelsConfig(), prompts, HUMANML3D, lambda: pytest.fail("no scorer"), "prompts")
    sft = generator(tiny_policy(0), vqvae)
    models = {"other": generator(tiny_policy(1), vqvae), "copy": generator(tiny_policy(0), vqvae)}
    study = winrate_study(sft, models, prompts, [1.0, 2.0], judge, seed=0)
    assert [(c["model"], c["temperature"]) for c in study["cells"]] == [
        ("other", 1.0),
        ("copy", 1.0),
        ("other", 2.0),
        ("copy", 2.0),
    ]
    for cell in study["cells"]:
        assert cell["n"] == 4 and sum(cell[o]["count"] for o in ("win", "tie", "loss")) == 4
        if cell["model"] == "copy":  # the same weights and seeds sample the same motions: every pair a tie
            assert cell["ties"]["identical"] == 4 and cell["tie"]["rate"] == 1.0
            assert cell["score"]["sft"] == cell["score"]["finetuned"]
    assert winrate_study(sft, models, prompts, [1.0, 2.0], judge, seed=0) == study  # deterministic

    paths = [tmp_path / "reports" / f"winrate.{ext}" for ext in ("json", "md", "png")]
    write_reports(study, *paths)
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(study))
    assert paths[1].read_text().count("\n| other |") == 2
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted(p.name for p in paths)  # no temp files left

    # a study the plot cannot draw (a cell missing) leaves the previous reports untouched
    before = [p.read_bytes() for p in paths]
    broken = {**study, "cells": study["cells"][1:]}
    with pytest.raises(KeyError):
        write_reports(broken, *paths)
    assert [p.read_bytes() for p in paths] == before


# ---- the stage --------------------------------------------------------------------------------------------


class RecordingRun:
    def __init__(self) -> None:
        self.artifacts: list[Path] = []

    def log_artifact(self, path: Path) -> None:
        self.artifacts.append(Path(path))


def test_an_invalid_first_sample_is_that_models_failure() -> None:
    """Through the simulated labelers: a finetuned model that never produces a motion loses or ties every pair
    (never wins), and each of its samples counts as invalid; the supervised motions are what they are."""
    prompts = prompt_table(4)
    judge = make_judge(LabelsConfig(), prompts, HUMANML3D, lambda: pytest.fail("no scorer"), "prompts")
    motion = np.zeros((40, HUMANML3D.feature_dim), np.float32)

    class Sampler:
        def __init__(self, valid: bool) -> None:
            self.valid = valid

        def generate(self, captions, seeds, temperature=None) -> Generation:
            n = len(captions)
            if self.valid:
                return Generation([motion] * n, [[1, 2]] * n, list(seeds), [1] * n, [True] * n)
            return Generation([None] * n, [[] for _ in range(n)], list(seeds), [1] * n, [False] * n)

    (cell,) = winrate_study(Sampler(True), {"broken": Sampler(False)}, prompts, [1.0], judge, seed=0)["cells"]
    assert cell["invalid"] == {"sft": 0, "finetuned": 4} and cell["win"]["count"] == 0
    assert cell["score"]["finetuned"]["mean"] == 0.0  # nothing scored: no stand-in motion of any length
    assert parse_params({}).winrate.sampling.retries == 0  # first samples by default: no second chance


def test_stage_writes_reports_for_held_out_prompts(tmp_path: Path, vqvae: MotionVQVAE) -> None:
    from motionpref.pipeline import winrate as stage

    (tmp_path / "data" / "dataset").mkdir(parents=True)
    np.save(tmp_path / "data/dataset/Mean.npy", np.zeros(HUMANML3D.feature_dim, np.float32))
    np.save(tmp_path / "data/dataset/Std.npy", np.full(HUMANML3D.feature_dim, 0.1, np.float32))
    vqvae.save(tmp_path / "data/models/vqvae")
    tiny_policy(0).save(tmp_path / "data/models/policy_sft")
    (tmp_path / "data/prefs").mkdir()
    write_prompts(prompt_table(8), tmp_path / "data/prefs/prompts.parquet")
    params = parse_params({"winrate": {"temperatures": [1.5], "prompts": 10, "sampling": {"max_new_tokens": 12}}})
    run = RecordingRun()
    ctx = StageContext(root=tmp_path, run=run, item="dpo")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="policy_dpo: no model for winrate@dpo"):
        stage.run(params, ctx)

    tiny_policy(1).save(tmp_path / "data/models/policy_dpo")
    metrics = stage.run(params, ctx)
    report = json.loads((tmp_path / "reports/winrate/dpo.json").read_text())
    assert report["prompts"] == report["test_prompts"] == 4  # p002, p003, p006, p007: the test programs' prompts
    assert report["seed"] == params.stage_seed(f"winrate:{params.algo.seed}")
    rates = [metrics[f"dpo/t1.5/{o}"] for o in ("win", "tie", "loss")]
    assert sum(rates) == pytest.approx(1.0) and report["cells"][0]["n"] == 4
    assert run.artifacts == [tmp_path / "reports/winrate/dpo.md", tmp_path / "reports/winrate/dpo.png"]

    # labels play no part: preferences appearing (here, unreadable ones) leave the study as it was
    (tmp_path / "data/prefs/preferences.parquet").write_bytes(b"not a parquet file")
    stage.run(params, ctx)
    assert json.loads((tmp_path / "reports/winrate/dpo.json").read_text()) == report

    # winrate.prompts caps the pool: a seeded subset of the test prompts
    capped = parse_params({"winrate": {"temperatures": [1.5], "prompts": 3, "sampling": {"max_new_tokens": 12}}})
    stage.run(capped, ctx)
    report = json.loads((tmp_path / "reports/winrate/dpo.json").read_text())
    assert (report["prompts"], report["test_prompts"], report["cells"][0]["n"]) == (3, 4, 3)
