"""The smoke project the two-process tests share, and running one stage there in one process and in two."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
import yaml

from motionpref.pipeline import run_stage

ROOT = Path(__file__).resolve().parents[1]
CMU_DIR = ROOT / "tests" / "fixtures" / "cmu"
# Float sums run in another order when a batch is split (each process sums its rows, then gloo sums the processes),
# so the two runs agree to rounding, carried through a few AdamW steps: far inside these bounds. A sharding bug (a
# row lost or counted twice, a wrong weight) moves the first step's loss by whole percents.
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-4


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke pipeline up to the preference table and the evaluator, in one process; dropout off (its masks are
    drawn per process, which no process count reproduces) and DPO's epoch picked by its validation loss. Shared by
    every two-process test: a test may add stages' outputs, and restores any input it replaces."""
    root = tmp_path_factory.mktemp("distributed")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["data"]["cmu_dir"] = str(CMU_DIR)
    params["policy"]["model"]["dropout"] = 0.0
    params["algo"]["lora"]["dropout"] = 0.0
    params["algo"]["dpo"].update(select_by="val_loss", epochs=2)
    params["profiles"]["smoke"]["algo"]["dpo"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("DVC_ROOT", raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for name, item in [
            ("prepare_data", None),
            ("train_vqvae", None),
            ("train_evaluator", None),
            ("train_retrieval", None),
            ("train_policy", None),
            ("generate_prompts", None),
            ("sample_pairs", "sft"),
            ("label", "sft"),
            ("ingest_labels", "sft"),
        ]:
            run_stage(name, root / "params.yaml", item=item)
    return root


@dataclass
class Launched:
    """What one run of a stage left: its MLflow metrics (last values and every logged history) and copies of the
    outputs asked for, by path relative to the project."""

    metrics: dict[str, float]
    history: dict[str, list[float]]
    outputs: dict[str, Path]


def one_and_two(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    item: str | None = None,
    outputs: tuple[str, ...] = (),
    edit: Callable[[dict[str, Any]], None] | None = None,
    before_each: Callable[[], None] | None = None,
) -> dict[int, Launched]:
    """Run stage ``name`` (``item``) in ``project`` once in one process and once under ``launch.processes: 2``, each
    in its own MLflow experiment; ``edit`` changes the params of both, ``before_each`` restores inputs before each
    run. Asserts each logged exactly one finished MLflow run (the main process's)."""
    in_project(project, monkeypatch)
    params = yaml.safe_load((project / "params.yaml").read_text())
    if edit is not None:
        edit(params)
    client = mlflow.MlflowClient()
    answer: dict[int, Launched] = {}
    for processes in (1, 2):
        if before_each is not None:
            before_each()
        experiment = f"{name}-{item}-{processes}-{len(client.search_experiments())}"
        path = project / f"params_{name}_{item}_{processes}.yaml"
        path.write_text(yaml.safe_dump({**params, "experiment": experiment, "launch": {"processes": processes}}))
        run_stage(name, path, item=item)
        copies = {}
        for out in outputs:
            copies[out] = project / "runs" / experiment / out
            shutil.rmtree(copies[out], ignore_errors=True)
            copies[out].parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (project / out).is_dir() else shutil.copy)(project / out, copies[out])  # type: ignore[operator]
        found = client.get_experiment_by_name(experiment)
        assert found is not None, f"the {processes}-process run logged nothing"
        (run,) = client.search_runs([found.experiment_id])
        assert run.info.status == "FINISHED"
        history = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
        answer[processes] = Launched(dict(run.data.metrics), history, copies)
    return answer


def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run stages in ``project`` with its own MLflow store, as ``one_and_two`` does."""
    monkeypatch.chdir(project)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")


@contextmanager
def kept(project: Path, *paths: str) -> Iterator[None]:
    """``paths`` of ``project`` as they are now, put back (or removed, where absent) afterwards: a test that reruns
    a stage writes what other tests' stages read."""
    backup = project / "kept"
    shutil.rmtree(backup, ignore_errors=True)
    for path in paths:
        if (project / path).exists():
            (backup / path).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (project / path).is_dir() else shutil.copy)(project / path, backup / path)  # type: ignore[operator]
    try:
        yield
    finally:
        for path in paths:
            target = project / path
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if (backup / path).exists():
                (backup / path).rename(target)
        shutil.rmtree(backup, ignore_errors=True)


def set_smoke(params: dict[str, Any], section: str, **values: Any) -> None:
    """``values`` into ``section`` (dotted) of the smoke profile, which overrides the base params."""
    node = params["profiles"]["smoke"]
    for key in section.split("."):
        node = node.setdefault(key, {})
    node.update(values)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def without_key_bias(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the key bias of every attention layer (the middle third of ``in_proj_bias``) zeroed: it adds one
    constant to all of a query's scores, which the softmax ignores, so its gradient is 0 up to rounding, and AdamW
    scales that rounding up to steps of the learning rate's size, in one process as in two."""
    out = dict(state)
    for key, value in state.items():
        if key.endswith("in_proj_bias"):
            out[key] = value.clone()
            out[key].view(3, -1)[1] = 0.0  # (query, key, value) biases
    return out


def assert_histories(runs: dict[int, Launched], names: list[str]) -> float:
    """Every logged value of ``names`` of the two-process run within LOSS_RTOL of the one-process run's; the
    largest relative difference."""
    worst = 0.0
    for name in names:
        one, two = runs[1].history[name], runs[2].history[name]
        assert len(one) == len(two) >= 2, name
        assert two == pytest.approx(one, rel=LOSS_RTOL), name
        worst = max(worst, *(abs(b - a) / max(abs(a), 1e-12) for a, b in zip(one, two, strict=True)))
    return worst
