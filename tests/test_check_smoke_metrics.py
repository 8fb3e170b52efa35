"""scripts/check_smoke_metrics.py, the CI check of a smoke run's metrics against .ci/smoke_reference.json."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_smoke_metrics", ROOT / "scripts" / "check_smoke_metrics.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def write_run(root: Path, r1: float = 0.5, fid: float = 2.0, preferences: int = 40, models=("sft", "dpo")) -> Path:
    for model in models:
        metrics = {
            name: {"mean": value, "ci95": 0.1}
            for name, value in {
                "r_precision_top1": r1,
                "r_precision_top3": 0.9,
                "fid": fid,
                "mm_dist": 3.0,
                "diversity": 5.0,
                "judge": 0.4,
                "multimodality": 1.0,
            }.items()
        }
        path = root / "reports" / "metrics" / f"{model}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metrics": metrics, "model": model}))
    cell = {"temperature": 1.0, "n": 8, "win": {"rate": 0.5}, "tie": {"rate": 0.25}, "loss": {"rate": 0.25}}
    (root / "reports" / "winrate").mkdir(parents=True, exist_ok=True)
    (root / "reports" / "winrate" / "dpo.json").write_text(json.dumps({"prompts": 8, "cells": [cell]}))
    prefs = {
        "pairs_in_table": 60,
        "pairs_judged": 60,
        "judgments": 70,
        "labelers": 4,
        "preferences": preferences,
        "degrees": {"better": {"pairs": 20, "share": 0.3}},
        "skipped": {"pairs": 20},
        "split": {"train": 28, "val": 12},
    }
    (root / "reports" / "prefs_stats.json").write_text(json.dumps(prefs))
    return root


def run(*args: str) -> SimpleNamespace:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = check.main(list(args))
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    ref = tmp_path / "reference.json"
    done = run("--run", str(write_run(tmp_path / "ref")), "--reference", str(ref), "--update")
    assert done.returncode == 0, done.stderr
    return ref


def test_update_writes_values_and_rules(reference: Path):
    data = json.loads(reference.read_text())
    assert data["values"]["reports/metrics/sft.json:metrics.r_precision_top1.mean"] == 0.5
    assert data["values"]["reports/winrate/dpo.json:T=1.0.win.rate"] == 0.5
    assert data["values"]["reports/prefs_stats.json:preferences"] == 40
    assert not any("multimodality" in key for key in data["values"])  # only the listed metrics
    assert all("why" in rule for rule in data["tolerances"])


def test_same_run_passes_as_identical(tmp_path: Path, reference: Path):
    done = run("--run", str(write_run(tmp_path / "again")), "--reference", str(reference))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "within tolerance" in done.stdout and " identical" in done.stdout


def test_within_tolerance_passes(tmp_path: Path, reference: Path):
    done = run(
        "--run", str(write_run(tmp_path / "near", r1=0.6, fid=5.0, preferences=45)), "--reference", str(reference)
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("change", [{"r1": 0.25}, {"fid": 7.0}, {"fid": float("nan")}, {"preferences": 0}])
def test_out_of_tolerance_fails_with_a_table(tmp_path: Path, reference: Path, change: dict):
    done = run("--run", str(write_run(tmp_path / "off", **change)), "--reference", str(reference))
    assert done.returncode == 1
    assert "values failed" in done.stderr and "FAIL" in done.stderr


def test_missing_and_new_values_fail(tmp_path: Path, reference: Path):
    done = run("--run", str(write_run(tmp_path / "fewer", models=("sft",))), "--reference", str(reference))
    assert done.returncode == 1 and "missing from the run" in done.stderr
    done = run("--run", str(write_run(tmp_path / "more", models=("sft", "dpo", "sopo"))), "--reference", str(reference))
    assert done.returncode == 1 and "not in the reference" in done.stderr


def test_no_reports_fails(tmp_path: Path, reference: Path):
    done = run("--run", str(tmp_path / "empty"), "--reference", str(reference))
    assert done.returncode == 1 and "no reports" in done.stderr


def test_committed_reference_has_a_rule_for_every_value():
    data = json.loads(check.REFERENCE.read_text())
    assert data["values"]
    assert all(check.rule_for(key, data["tolerances"]) is not None for key in data["values"])
