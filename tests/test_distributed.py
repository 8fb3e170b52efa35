"""Two processes under ``accelerate launch --cpu`` (gloo) train what one process trains: the smoke profile's SFT and
DPO stages, launched by ``launch.processes: 2`` through ``run_stage`` as DVC runs them, against the same stages in one
process with the same global batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from motionpref.config import LaunchConfig
from motionpref.distributed import launch_command, shards, share, share_to_train
from motionpref.models.policy import MotionPolicy
from motionpref.pipeline import run_stage
from motionpref.tracking import flatten
from tests.distributed_fixtures import LOSS_RTOL, WEIGHT_ATOL


class _Batch:
    def __init__(self, processes: int, index: int) -> None:
        self.num_processes, self.process_index = processes, index


@pytest.mark.parametrize("n", [0, 1, 2, 5, 8])
@pytest.mark.parametrize("processes", [1, 2, 3])
def test_shares_cover_a_batch_once_in_order(n: int, processes: int) -> None:
    rows = list(range(n))
    parts = [share(rows, _Batch(processes, k)) for k in range(processes)]  # type: ignore[arg-type]
    assert [r for part in parts for r in part] == rows
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    weights = []
    for k, part in enumerate(parts):  # a process left without rows trains on a stand-in that does not count
        got = share_to_train(rows, _Batch(processes, k))  # type: ignore[arg-type]
        assert (got.rows, got.counted) == ((part, True) if part else (rows[:1], False))
        assert got.weight == len(part) * processes / n if part else got.weight == 0.0
        weights.append(got.weight)
    # the processes' weighted share means average to the batch's mean; one process weighs exactly 1
    assert sum(weights) == pytest.approx(processes if n else 0.0)
    if processes == 1 and n:
        assert weights == [1.0]


def test_which_stages_shard_and_how_they_launch() -> None:
    assert shards("train_policy", None) and shards("finetune", "dpo") and shards("finetune", "dpo_s2")
    assert shards("evaluate", "sft") and shards("evaluate", "mdm") and not shards("evaluate", "gt")
    for name, item in [("train_vqvae", None), ("train_diffusion", "mld"), ("sample_pairs", "mdm"), ("winrate", "dpo")]:
        assert shards(name, item)
    assert shards("finetune", "mdm_sopo") and shards("finetune", "sopo_s1") and shards("finetune", "mdm_dpo")
    assert not shards("label", "sft") and not shards("prepare_data", None) and not shards("report", None)
    cmd = launch_command(LaunchConfig(processes=2), "motionpref.pipeline.train_policy", ["--params", "p.yaml"])
    # torchrun's launcher, even on a CPU: `--cpu` would make accelerate start one process
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd and "--cpu" not in cmd
    assert cmd[cmd.index("--dynamo_backend") + 1] == "no" and cmd[cmd.index("--num_machines") + 1] == "1"
    assert cmd[-4:] == ["-m", "motionpref.pipeline.train_policy", "--params", "p.yaml"]
    assert cmd[cmd.index("--mixed_precision") + 1] == "no"  # bf16 is asked for, but this is a CPU
    bf16 = launch_command(LaunchConfig(processes=2, mixed_precision="bf16"), "m", [])
    assert bf16[bf16.index("--mixed_precision") + 1] == ("bf16" if torch.cuda.is_available() else "no")
    nodes = launch_command(LaunchConfig(config_file=Path("nodes.yaml")), "m", [])
    assert nodes[nodes.index("--config_file") + 1] == "nodes.yaml" and "--num_processes" not in nodes


def _launched(project: Path, name: str, item: str | None, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[float]]:
    """Run the stage once in one process and once under ``launch.processes: 2``, each in its own MLflow
    experiment; the losses each logged, by metric name, and the policy each saved."""
    monkeypatch.chdir(project)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    params = yaml.safe_load((project / "params.yaml").read_text())
    out = project / "data" / "models" / ("policy_sft" if item is None else f"policy_{item}")
    sft = project / "data" / "models" / "policy_sft"
    start = project / "start_sft"
    if not start.exists():
        shutil.copytree(sft, start)
    saved: dict[int, Path] = {}
    for processes in (1, 2):
        if item is not None:  # both DPO runs start from the same SFT policy
            shutil.rmtree(sft)
            shutil.copytree(start, sft)
        params.update(experiment=f"{name}-{item}-{processes}", launch={"processes": processes})
        path = project / f"params_{processes}.yaml"
        path.write_text(yaml.safe_dump(params))
        run_stage(name, path, item=item)
        saved[processes] = project / f"saved_{name}_{processes}"
        shutil.rmtree(saved[processes], ignore_errors=True)
        shutil.copytree(out, saved[processes])
    client = mlflow.MlflowClient()
    series: dict[str, list[float]] = {}
    for processes in (1, 2):
        experiment = client.get_experiment_by_name(f"{name}-{item}-{processes}")
        assert experiment is not None, f"the {processes}-process run logged nothing"
        (run,) = client.search_runs([experiment.experiment_id])  # one MLflow run, the main process's
        assert run.info.status == "FINISHED"
        for key in run.data.metrics:
            if key.endswith("train_loss"):
                series[f"{key}/{processes}"] = [m.value for m in client.get_metric_history(run.info.run_id, key)]
    one, two, before = (MotionPolicy.load(p).model.state_dict() for p in (saved[1], saved[2], start))
    series["max_weight_diff"] = [max((one[k] - two[k]).abs().max().item() for k in one)]
    series["max_weight_moved"] = [max((one[k] - before[k]).abs().max().item() for k in one)]
    return series


@pytest.mark.slow
def test_sft_in_two_processes_trains_what_one_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    series = _launched(project, "train_policy", None, monkeypatch)
    one, two = series["policy/train_loss/1"], series["policy/train_loss/2"]
    assert len(one) == len(two) >= 3
    assert two == pytest.approx(one, rel=LOSS_RTOL)
    assert series["max_weight_diff"][0] < WEIGHT_ATOL
    # the bounds mean something: the loss moves across steps far more than the two runs differ
    assert max(one) - min(one) > 100 * LOSS_RTOL * max(one)
    report = json.loads((project / "reports" / "train_policy.json").read_text())
    assert report["steps"] == len(two)  # the main process wrote the stage's report


@pytest.mark.slow
def test_dpo_in_two_processes_trains_what_one_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    series = _launched(project, "finetune", "dpo", monkeypatch)
    one, two = series["dpo/train_loss/1"], series["dpo/train_loss/2"]
    assert len(one) == len(two) >= 2
    assert two == pytest.approx(one, rel=LOSS_RTOL)
    assert series["max_weight_diff"][0] < WEIGHT_ATOL
    assert series["max_weight_moved"][0] > 10 * WEIGHT_ATOL  # DPO moves the weights; the runs agree far closer


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sft", "mdm"])
def test_evaluation_in_two_processes_gives_the_same_metrics(
    model: str, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every sample is drawn from its own seed, so two processes sharing each batch draw the samples one process
    draws: R-precision (which ranks) and the invalid rate (which counts) are identical. Decoded features agree to
    float rounding only: the VQ-VAE decodes the samples of a share together, and the BLAS kernel of a batch
    depends on its size, so FID, MM Dist and diversity agree to the rounding of float32 features."""
    monkeypatch.chdir(project)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    if model == "mdm" and not (project / "data" / "models" / "policy_mdm").is_dir():
        run_stage("train_diffusion", project / "params.yaml", item="mdm")
    params = yaml.safe_load((project / "params.yaml").read_text())
    reports = {}
    for processes in (1, 2):
        path = project / f"params_eval_{processes}.yaml"
        path.write_text(yaml.safe_dump({**params, "launch": {"processes": processes}}))
        report = project / "reports" / "metrics" / f"{model}.json"
        report.unlink(missing_ok=True)
        run_stage("evaluate", path, item=model)
        reports[processes] = json.loads(report.read_text())
    one, two = reports[1], reports[2]
    for key in ("r_precision_top1", "r_precision_top2", "r_precision_top3"):
        assert two["replications"][key] == one["replications"][key]
    assert two["metrics"].get("invalid_rate") == one["metrics"].get("invalid_rate")
    flat_one, flat_two = flatten(one), flatten(two)
    assert flat_two.keys() == flat_one.keys()
    for key, value in flat_one.items():  # every other number to float32 rounding
        assert flat_two[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-5, abs=1e-9)), key
    assert len(one["replications"]["fid"]) == 2 and one["replications"]["fid"][0] != one["replications"]["fid"][1]


@pytest.mark.slow
def test_diffusion_sopo_in_two_processes_trains_what_one_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SoPo on MDM: each process draws its share of every step's online samples (each from its own seed) and all
    of them train on the gathered set, so the pairs, the losses and the saved denoiser are one process's."""
    from motionpref.models.diffusion import load_policy

    monkeypatch.chdir(project)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    if not (project / "data" / "models" / "policy_mdm").is_dir():
        run_stage("train_diffusion", project / "params.yaml", item="mdm")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["algo"]["diffusion"]["lr"] = 1e-3  # two smoke steps must move the weights past the bound below
    reports, weights = {}, {}
    for processes in (1, 2):
        path = project / f"params_sopo_{processes}.yaml"
        path.write_text(yaml.safe_dump({**params, "launch": {"processes": processes}}))
        run_stage("finetune", path, item="mdm_sopo")
        reports[processes] = json.loads((project / "reports" / "finetune" / "mdm_sopo.json").read_text())
        weights[processes] = load_policy(project / "data" / "models" / "policy_mdm_sopo").state_dict()
    before = load_policy(project / "data" / "models" / "policy_mdm").state_dict()
    one, two = reports[1], reports[2]
    assert one["steps"] == two["steps"] >= 2
    for key in ("loss", "first_loss", "unpreferred_score", "best_sample_score", "similarity", "preferred_logratio"):
        assert two[key] == pytest.approx(one[key], rel=LOSS_RTOL, abs=1e-9), key
    assert two["valuable_fraction"] == one["valuable_fraction"]
    diff = max((weights[1][k] - weights[2][k]).abs().max().item() for k in before)
    moved = max((weights[1][k] - before[k]).abs().max().item() for k in before)
    assert diff < WEIGHT_ATOL and moved > 10 * WEIGHT_ATOL
