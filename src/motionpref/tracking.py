"""MLflow tracking: one run per stage execution, tagged so a run traces back to its code, stage and params."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from motionpref.config import params_hash

MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values


def project_root(start: Path | None = None) -> Path:
    """The folder holding dvc.yaml, searched from the working directory up (DVC runs a stage there); the working
    directory if none is found. Not ``DVC_ROOT``: in a queued or ``--temp`` experiment DVC points it at the
    workspace the experiment came from, whose files the stage must not touch."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists():
            return folder
    return here


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the workspace: the one an experiment came from (``DVC_ROOT``)
    when a queued or ``--temp`` experiment runs in DVC's temporary copy, so its runs outlive the copy."""
    root = Path(os.environ["DVC_ROOT"]) if os.environ.get("DVC_ROOT") else project_root()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def cpu_type(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, family and model numbers and widest vector extension: machines the model name calls
    alike ("AMD EPYC") round differently across generations (two with avx512f made different datasets from the
    same lock) and SIMD widths (README, Reproducibility)."""
    fields: dict[str, str] = {}  # the first core's: every core of a machine says the same
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    simd = next((f for f in ("avx512f", "avx2", "avx", "sse4_2", "asimd") if f in flags), None)
    generation = f"family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields else None
    details = ", ".join(d for d in (generation, simd) if d)
    return f"{model} ({details})" if details else model


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


class StageRun:
    """The MLflow run of one stage execution; thin so stages and library callbacks stay MLflow-agnostic.

    ``log_metric`` (a training curve's point, often every step) is buffered and written in batches: one SQLite
    write per point cost ~17 ms, 24 s of train_policy's 690. The buffer goes out when it holds ``FLUSH_POINTS``
    points, ``FLUSH_SECONDS`` after the last write (so the MLflow UI follows a long run), before any other call
    and when the run ends, failed or not.

    ``StageRun.off()`` is the run of a launched process other than the main one, which logs nothing."""

    FLUSH_POINTS = 1000  # MLflow's most metrics in one log_batch
    FLUSH_SECONDS = 10.0

    def __init__(self, mlflow_module: Any, run: Any) -> None:
        self._mlflow = mlflow_module
        self.run = run
        self.run_id: str = run.info.run_id if run is not None else ""
        self._points: list[Any] = []
        self._flushed = time.monotonic()

    @classmethod
    def off(cls) -> StageRun:
        return cls(_Off(), None)

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        if self.run is None:
            return
        from mlflow.entities import Metric

        self._points.append(Metric(name, float(value), int(time.time() * 1000), step or 0))
        if len(self._points) >= self.FLUSH_POINTS or time.monotonic() - self._flushed >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered curve points (in the order they were logged)."""
        if self._points and self.run is not None:
            self._mlflow.tracking.MlflowClient().log_batch(self.run_id, metrics=self._points)
        self._points = []
        self._flushed = time.monotonic()

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        numeric = {
            f"{prefix}{k}": float(v)
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.flush()
        if numeric:
            self._mlflow.log_metrics(numeric, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.flush()
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, data: Any, name: str) -> None:
        self.flush()
        self._mlflow.log_dict(data, name)

    def set_tag(self, key: str, value: Any) -> None:
        self.flush()
        self._mlflow.set_tag(key, str(value))


class _Off:
    """Stands for the ``mlflow`` module in ``StageRun.off()``: every logging call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


@contextmanager
def stage_run(
    stage: str,
    experiment: str,
    params: Mapping[str, Any],
    tags: Mapping[str, Any] | None = None,
) -> Iterator[StageRun]:
    """Open the MLflow run of one stage execution.

    Tags: ``motionpref.stage`` (the DVC stage address, e.g. ``evaluate@sft``), ``mlflow.source.git.commit``,
    ``dvc.exp_name`` under ``dvc exp run``, ``motionpref.params_hash`` of the params the stage reads; those
    params are logged flattened (``data.n_clips``) and whole as ``params.json``.
    """
    import mlflow  # slow to import: only stages that track pay for it

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
    all_tags = {
        "motionpref.stage": stage,
        "motionpref.params_hash": params_hash(dict(params)),
        "motionpref.profile": str(params.get("profile", "")),
        # on a shared server one lineage's runs may come from several machines, whose bits differ by CPU type
        "motionpref.host": platform.node(),
        "motionpref.cpu": cpu_type(),
    }
    commit = git_commit(project_root())
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        all_tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_STAGE"):
        all_tags["dvc.stage"] = os.environ["DVC_STAGE"]
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    with mlflow.start_run(run_name=stage, tags=all_tags) as run:
        flat = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in flatten(params).items()}
        items = [(k, v[:MAX_PARAM_LENGTH]) for k, v in flat.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            mlflow.log_params(dict(items[i : i + 100]))
        mlflow.log_dict(dict(params), "params.json")
        tracker = StageRun(mlflow, run)
        try:
            yield tracker
        except BaseException:
            mlflow.set_tag("motionpref.status", "failed")
            raise
        finally:
            tracker.flush()
