"""Team mode: one person's stage runs reach a shared MLflow server, and the outputs DVC tracks reach a teammate's
clone through a DVC remote, so that the clone's ``dvc repro`` has nothing to run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from command_fixtures import BIN, clean_env, isolated_env, run
from label_app_fixtures import free_port, wait_until_up
from mlflow import MlflowClient
from suite_fixtures import make_project

from motionpref.pipeline import OUTPUTS_ARTIFACT
from motionpref.tracking import flatten
from tests.conftest import CMU_DIR

ROOT = Path(__file__).resolve().parents[1]
STAGE = "prepare_data"  # the cheapest stage with a metrics file (reports/prepare_data.json)
STAGES = ("prepare_data", "generate_prompts")  # the DVC test's chain: the second reads the first's cached out


def smoke_project(root: Path) -> Path:
    """``root`` holding the real dvc.yaml and params.yaml, the latter switched to ``profile: smoke``."""
    root.mkdir(parents=True, exist_ok=True)
    make_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["data"]["cmu_dir"] = str(CMU_DIR)  # the committed value is relative to the repository
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


# ------------------------------------------------------------------------------- a shared MLflow tracking server
@dataclass
class Server:
    url: str
    artifacts: Path  # the server's --artifacts-destination


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[Server]:
    """A real ``mlflow server`` (SQLite backend, proxied artifacts, both in tmp_path) on a free localhost port."""
    home = tmp_path / "server"
    home.mkdir()
    port = free_port()
    cmd = [BIN / "mlflow", "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", str(home / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1"]
    # the job runners (huey consumers) serve GenAI features only and cost a process per queue on 2 cores
    env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(c) for c in cmd], cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_up(f"{url}/health", timeout=90.0, proc=proc)
        except (RuntimeError, TimeoutError) as e:
            pytest.fail(f"{e}; server log:\n{log.read_text(errors='replace')[-4000:]}")
        yield Server(url, home / "artifacts")
    finally:
        # the CLI forks the uvicorn worker: the whole group (its own session) goes, politely first
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group outlived the SIGTERM
        proc.wait(timeout=10)


@pytest.mark.slow
def test_a_stage_run_reaches_a_shared_mlflow_server(mlflow_server: Server, tmp_path: Path) -> None:
    project = smoke_project(tmp_path / "alice")
    # the stage's own command, as dvc.yaml runs it, pointed at the server as a teammate's shell would be
    env = clean_env(MLFLOW_TRACKING_URI=mlflow_server.url)
    run([BIN / "python", "-m", f"motionpref.pipeline.{STAGE}"], project, env)
    # nothing went to the default local store
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()

    client = MlflowClient(tracking_uri=mlflow_server.url)
    params = yaml.safe_load((project / "params.yaml").read_text())
    experiment = client.get_experiment_by_name(params["experiment"])
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], f"tags.`motionpref.stage` = '{STAGE}'")
    assert len(runs) == 1
    (stage_run,) = runs
    assert stage_run.info.status == "FINISHED"
    assert stage_run.data.tags["motionpref.profile"] == "smoke"

    # its params: those dvc.yaml lists for the stage, resolved through the smoke profile
    logged = stage_run.data.params
    assert logged["profile"] == "smoke"
    assert logged["seed"] == str(params["seed"])
    assert logged["data.n_clips"] == str(params["profiles"]["smoke"]["data"]["n_clips"])
    assert logged["data.n_clips"] != str(params["data"]["n_clips"])  # not the cpu profile's

    # its metrics: every number of the metrics file the stage wrote
    metrics_file = project / "reports" / f"{STAGE}.json"
    written = {
        k: float(v)
        for k, v in flatten(json.loads(metrics_file.read_text())).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    assert written["clips"] == params["profiles"]["smoke"]["data"]["n_clips"]
    assert stage_run.data.metrics == pytest.approx(written)

    # its metrics file, an outputs/ artifact stored by the server (proxied) and downloadable from it
    assert stage_run.info.artifact_uri.startswith("mlflow-artifacts:")
    listed = [f.path for f in client.list_artifacts(stage_run.info.run_id, OUTPUTS_ARTIFACT)]
    assert listed == [f"{OUTPUTS_ARTIFACT}/{STAGE}.json"]
    stored = mlflow_server.artifacts / experiment.experiment_id / stage_run.info.run_id / "artifacts" / listed[0]
    assert stored.read_bytes() == metrics_file.read_bytes()
    downloaded = client.download_artifacts(stage_run.info.run_id, listed[0], str(tmp_path / "download"))
    assert Path(downloaded).read_bytes() == metrics_file.read_bytes()


# ------------------------------------------------------------------------------- a DVC remote between two clones
def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def stage_runs(db: Path) -> list[str]:
    """The ``motionpref.stage`` tag of every run in the SQLite store ``db`` (none if the store was never made)."""
    if not db.exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return sorted(r.data.tags["motionpref.stage"] for r in client.search_runs(experiments))


@pytest.mark.slow
def test_a_teammates_clone_pulls_the_outputs_and_reproduces_nothing(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"  # the team's tracking store: any stage command that runs leaves a run here
    env = isolated_env(tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{db}")  # no user git/DVC config, no network
    git = ["git", "-c", "init.defaultBranch=main"]
    dvc = BIN / "dvc"

    # Alice's repository: the project's code and pipeline, the smoke profile
    alice = smoke_project(tmp_path / "alice")
    shutil.copytree(ROOT / "src", alice / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (alice / ".dvc").mkdir()
    for name in (".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, alice / name)
    run([*git, "init", "-q"], alice, env)
    run([*git, "add", "-A"], alice, env)
    run([*git, "commit", "-qm", "the project"], alice, env)

    out = run([dvc, "repro", *STAGES], alice, env).stdout
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    assert stage_runs(db) == sorted(STAGES)

    remote = tmp_path / "remote"
    run([dvc, "remote", "add", "-d", "storage", remote], alice, env)
    run([dvc, "push", *STAGES], alice, env)
    assert any(p.is_file() for p in remote.rglob("*"))
    assert json.loads(run([dvc, "status", "--cloud", "--json", *STAGES], alice, env).stdout) == {}  # all pushed
    run([*git, "add", "-A"], alice, env)  # dvc.lock, .dvc/config (the remote), the uncached reports
    run([*git, "commit", "-qm", "smoke run"], alice, env)
    assert "dvc.lock" in run([*git, "ls-files"], alice, env).stdout.split()

    # Bob's clone: git brings the code, dvc.lock and the remote's address; the cached outputs are not there yet
    bob = tmp_path / "bob"
    run([*git, "clone", "-q", alice, bob], tmp_path, env)
    assert not (bob / "data" / "dataset").exists()
    # (the stages named: the rest of dvc.yaml never ran in this scratch project)
    before = json.loads(run([dvc, "status", "--json", *STAGES], bob, env).stdout)
    assert set(before) == set(STAGES)  # both stages' cached outs are missing

    # named: a bare `dvc pull` fails on the outs of the stages dvc.lock lacks (here the rest of dvc.yaml)
    run([dvc, "pull", *STAGES], bob, env)
    dataset = tree_digest(bob / "data" / "dataset")
    assert dataset and dataset == tree_digest(alice / "data" / "dataset")
    assert (bob / "data/prefs/prompts.parquet").read_bytes() == (alice / "data/prefs/prompts.parquet").read_bytes()
    assert json.loads(run([dvc, "status", "--json", *STAGES], bob, env).stdout) == {}

    lock = (bob / "dvc.lock").read_bytes()
    out = run([dvc, "repro", *STAGES], bob, env).stdout
    assert "Running stage" not in out
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert stage_runs(db) == sorted(STAGES)  # no stage command ran: no new MLflow run
    assert (bob / "dvc.lock").read_bytes() == lock
    assert run([*git, "status", "--porcelain"], bob, env).stdout == ""  # no output rewritten, reports included
