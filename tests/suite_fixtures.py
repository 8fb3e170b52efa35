"""A suite's MLflow store as run_stage leaves it, for the suite and MLflow UI tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import yaml

from motionpref.pipeline import OUTPUTS_ARTIFACT, lineage_hash
from motionpref.suites import load_suites, suite_runs
from motionpref.tracking import StageRun

ROOT = Path(__file__).resolve().parents[1]


def make_project(root: Path) -> Path:
    """A project folder holding the real dvc.yaml, replicates/dvc.yaml and params.yaml (a suites.yaml is the test's
    own)."""
    (root / "replicates").mkdir(exist_ok=True)
    for name in ("dvc.yaml", "replicates/dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, root / name)
    return root


def write_suites(root: Path, suites: dict) -> None:
    (root / "suites.yaml").write_text(yaml.safe_dump({"suites": suites}))


BETA = {"grid": {"algo.beta": [0.1, 0.2]}, "seeds": [0], "models": ["dpo"], "baseline": "sft"}


def metrics_report(r1: list[float]) -> dict:
    reps = {
        "r_precision_top1": r1,
        "r_precision_top3": [x + 0.2 for x in r1],
        "mm_dist": [3.0] * len(r1),
        "fid": [1.0] * len(r1),
    }
    summary = {k: {"mean": sum(v) / len(v), "ci95": 0.01} for k, v in reps.items()}
    return {"metrics": summary, "replications": reps}


def log_stage(
    project: Path,
    run_params,
    address: str,
    files: dict[str, dict] | None = None,
    histories: dict[str, list[float]] | None = None,
    metrics: dict | None = None,
) -> None:
    """What run_stage leaves in MLflow for a stage: the run named by its address, the tags, the metrics the stage
    returns, metric histories (steps 1, 2, ...) and its metrics files under outputs/."""
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    mlflow.set_experiment(run_params.experiment)
    tags = {
        "motionpref.stage": address,
        "motionpref.profile": run_params.profile,
        "motionpref.lineage_hash": lineage_hash(run_params, project / "dvc.yaml", address),
        **run_params.suite.tags(),
    }
    with mlflow.start_run(run_name=address, tags=tags) as run:
        if metrics:
            StageRun(mlflow, run).log_metrics(metrics)
        for key, values in (histories or {}).items():
            for step, value in enumerate(values, 1):
                mlflow.log_metric(key, value, step=step)
        for name, content in (files or {}).items():
            path = project / "out" / name
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(content))
            mlflow.log_artifact(str(path), OUTPUTS_ARTIFACT)


def log_evaluation(project: Path, run_params, address: str, r1: list[float]) -> None:
    """An evaluation's run: the evaluate stage returns the report's summary (StageRun flattens it as run_stage
    logs it) and writes the report."""
    report = metrics_report(r1)
    log_stage(project, run_params, address, {f"{address.split('@')[1]}.json": report}, metrics=report["metrics"])


def winrate_study(model: str, rates: dict[float, tuple[float, float]], n: int = 100) -> dict:
    """A winrate@<model> study as the stage writes it: per temperature (win, loss) rates, the rest ties."""
    cells = [
        {
            "model": model,
            "temperature": t,
            "n": n,
            "win": {"rate": w},
            "loss": {"rate": loss},
            "tie": {"rate": 1 - w - loss},
        }
        for t, (w, loss) in rates.items()
    ]
    return {"baseline": "sft", "cells": cells}


BASE_R1 = [0.50, 0.52, 0.48, 0.51]
GAINS = {"algo.beta=0.1": [0.01, 0.02, 0.03], "algo.beta=0.2": [-0.02, 0.00, 0.01]}


def fill_store(project: Path, skip: str | None = None) -> list:
    write_suites(project, {"s": BETA})
    runs = suite_runs("s", load_suites(project / "suites.yaml")["s"], project / "params.yaml")
    # the baseline's lineage holds no algo.beta: one evaluation serves both variants, as DVC's run cache makes it
    assert len({lineage_hash(r.params, project / "dvc.yaml", "evaluate@sft") for r in runs}) == 1
    log_evaluation(project, runs[0].params, "evaluate@sft", BASE_R1)
    for run in runs:
        for k, address in enumerate(["evaluate@dpo", "evaluate@dpo_s1", "evaluate@dpo_s2"]):
            if f"{run.name}:{address}" != skip:
                log_evaluation(project, run.params, address, [x + GAINS[run.variant][k] for x in BASE_R1])
    return runs
