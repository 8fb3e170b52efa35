from __future__ import annotations

import json
import platform

import mlflow
import pytest

from motionpref.tracking import StageRun, cpu_type, flatten, project_root, stage_run, tracking_uri


@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def test_stage_run_is_tagged_and_logs_params_metrics_artifacts(store, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-ibex")
    monkeypatch.setenv("DVC_STAGE", "prepare_data")
    params = {"profile": "smoke", "seed": 3, "data": {"n_clips": 12, "split": {"train": 0.8}}}
    artifact = tmp_path / "stats.json"
    artifact.write_text(json.dumps({"clips": 12}))
    with stage_run("prepare_data", "exp-under-test", params) as run:
        for step in range(3):
            run.log_metric("loss", 1.0 / (step + 1), step=step)
        run.log_metrics({"counts": {"train": 10, "test": 2}, "note": "not a number"})
        run.log_artifact(artifact)
        run_id = run.run_id

    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "exp-under-test"
    tags = got.data.tags
    assert tags["motionpref.stage"] == "prepare_data"
    assert tags["dvc.exp_name"] == "brisk-ibex"
    assert tags["dvc.stage"] == "prepare_data"
    assert len(tags["motionpref.params_hash"]) == 12
    assert got.data.params["data.n_clips"] == "12"
    assert got.data.params["data.split.train"] == "0.8"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.3333)]
    assert got.data.metrics["counts.train"] == 10
    assert "note" not in got.data.metrics
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"stats.json", "params.json"} <= names


def test_failed_stage_marks_the_run_failed(store):
    with pytest.raises(RuntimeError), stage_run("train_vqvae", "exp-fail", {"seed": 0}) as run:
        run_id = run.run_id
        raise RuntimeError("boom")
    got = mlflow.tracking.MlflowClient(tracking_uri=store).get_run(run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags["motionpref.status"] == "failed"


def test_curve_points_are_batched_yet_all_kept_in_order_even_when_the_stage_fails(store, monkeypatch):
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    monkeypatch.setattr(StageRun, "FLUSH_POINTS", 7)
    monkeypatch.setattr(StageRun, "FLUSH_SECONDS", 1e9)  # only the count flushes here, however slow the machine
    with pytest.raises(RuntimeError), stage_run("train_policy", "exp-batch", {"seed": 0}) as run:
        for step in range(1, 18):  # two full batches and three points left when the stage fails
            run.log_metric("loss", 1.0 / step, step=step)
        assert len(client.get_metric_history(run.run_id, "loss")) == 14
        run_id = run.run_id
        raise RuntimeError("boom")
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(1, 18))
    assert [m.value for m in history] == [1.0 / step for step in range(1, 18)]
    assert client.get_run(run_id).info.status == "FAILED"


def test_buffered_points_go_out_after_flush_seconds_and_before_a_summary(store, monkeypatch):
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    monkeypatch.setattr(StageRun, "FLUSH_SECONDS", 1e9)
    with stage_run("train_vqvae", "exp-live", {"seed": 0}) as run:
        run.log_metric("lr", 0.1, step=1)
        assert client.get_metric_history(run.run_id, "lr") == []  # buffered
        run.log_metrics({"val_loss": 2.0})
        assert [m.value for m in client.get_metric_history(run.run_id, "lr")] == [0.1]
        monkeypatch.setattr(StageRun, "FLUSH_SECONDS", 0.0)  # a UI following a long run sees each point
        run.log_metric("lr", 0.2, step=2)
        assert [m.step for m in client.get_metric_history(run.run_id, "lr")] == [1, 2]


def test_a_process_that_logs_nothing_buffers_nothing():
    off = StageRun.off()
    for step in range(3 * StageRun.FLUSH_POINTS):
        off.log_metric("loss", 1.0, step=step)
    assert off._points == []


def test_default_uri_is_sqlite_in_the_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    sub = tmp_path / "stages"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert project_root() == tmp_path
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_temporary_experiment_writes_its_own_copy_and_logs_to_its_workspaces_store(tmp_path, monkeypatch):
    # DVC runs a queued experiment in a copy under .dvc/tmp/exps with DVC_ROOT naming the workspace it came from
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace, copy = tmp_path / "workspace", tmp_path / "workspace" / ".dvc" / "tmp" / "exps" / "run"
    copy.mkdir(parents=True)
    for folder in (workspace, copy):
        (folder / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    monkeypatch.chdir(copy)
    assert project_root() == copy
    assert tracking_uri() == f"sqlite:///{workspace / 'mlflow.db'}"


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def _cpuinfo(tmp_path, family, model, flags):
    path = tmp_path / f"cpuinfo_{family}_{model}"
    core = (
        f"processor\t: {{}}\nmodel name\t: AMD EPYC\ncpu family\t: {family}\nmodel\t\t: {model}\nflags\t\t: {flags}\n"
    )
    path.write_text("\n".join(core.format(i) for i in range(2)))
    return path


def test_cpu_type_tells_apart_generations_that_share_a_model_name_and_simd_width(tmp_path):
    zen4 = cpu_type(_cpuinfo(tmp_path, 25, 17, "fpu sse4_2 avx avx2 avx512f"))
    zen5 = cpu_type(_cpuinfo(tmp_path, 26, 2, "fpu sse4_2 avx avx2 avx512f avx512_vp2intersect"))
    assert zen4 == "AMD EPYC (family 25 model 17, avx512f)"
    assert zen5 == "AMD EPYC (family 26 model 2, avx512f)"
    assert cpu_type(_cpuinfo(tmp_path, 25, 1, "fpu avx2")) == "AMD EPYC (family 25 model 1, avx2)"


def test_cpu_type_without_cpuinfo_falls_back_to_the_platform(tmp_path):
    assert cpu_type(tmp_path / "missing") == (platform.processor() or platform.machine())
