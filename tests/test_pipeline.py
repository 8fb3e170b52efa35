"""The whole pipeline on the smoke profile, stage by stage through ``run_stage`` (what DVC and the CLI run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from motionpref.models.diffusion import is_diffusion_policy
from motionpref.models.policy import MotionPolicy
from motionpref.pipeline import REPLICATES, STAGES, run_stage
from tests.conftest import CMU_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["data"]["cmu_dir"] = str(CMU_DIR)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())  # the project root, and each stage's params
    (root / "replicates").mkdir()
    (root / REPLICATES).write_text((ROOT / REPLICATES).read_text())  # the seed replicates' stages
    return root


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    algorithms = ["dpo", "rlhf", "sopo"]
    replicates = [f"{algo}_s{k}" for algo in algorithms for k in (1, 2)]  # report_seeds' seed replicates
    diffusion_winrates = ["mdm_sopo", "mdm_modipo", "mdm_dpo", "mld_sopo", "mld_modipo"]
    diffusion = [*diffusion_winrates, "mdm_sopo_s1", "mdm_sopo_s2", "mld_sopo_s1", "mld_sopo_s2", "mdm_modipo_online"]
    plan: list[tuple[str, str | None]] = [
        *[
            (name, None)
            for name in ("prepare_data", "train_vqvae", "train_evaluator", "train_retrieval", "train_policy")
        ],
        ("evaluate", "gt"),
        ("evaluate", "sft"),
        ("generate_prompts", None),
        *[(name, "sft") for name in ("sample_pairs", "label", "ingest_labels")],
        ("train_reward", None),
        *[(stage, algo) for stage in ("finetune", "evaluate", "winrate") for algo in algorithms],
        *[(stage, name) for stage in ("finetune", "evaluate") for name in replicates],
        *[(stage, family) for stage in ("train_diffusion", "evaluate") for family in ("mdm", "mld")],
        *[(name, "mdm") for name in ("sample_pairs", "label", "ingest_labels")],  # labelled pairs of MDM samples
        *[(stage, name) for stage in ("finetune", "evaluate") for name in diffusion],
        *[("winrate", name) for name in diffusion_winrates],
        ("report", None),
        ("report_seeds", None),
    ]
    assert {name for name, _ in plan} == set(STAGES)
    metrics = {}
    for name, item in plan:
        metrics[f"{name}@{item}" if item else name] = run_stage(name, project / "params.yaml", item=item)

    data = project / "data"
    assert (data / "dataset" / "Mean.npy").is_file() and (data / "dataset" / "programs.jsonl").is_file()
    assert len(list((data / "tokens").glob("*.npy"))) == metrics["train_vqvae"]["tokenised_entries"] > 0
    for model in ("vqvae", "evaluator", "retrieval", "policy_sft"):
        assert any((data / "models" / model).iterdir())
    for item in ("gt", "sft"):
        report = json.loads((project / "reports" / "metrics" / f"{item}.json").read_text())
        assert set(report["metrics"]) >= {"r_precision_top3", "fid", "diversity", "mm_dist", "judge", "realism"}
        assert 0 <= report["metrics"]["r_precision_top1"]["mean"] <= 1
    assert metrics["evaluate@gt"]["judge"]["mean"] > 0.6  # the test motions do what their captions say

    prompts = pd.read_parquet(data / "prefs" / "prompts.parquet")
    pairs = pd.read_parquet(data / "prefs" / "pairs.parquet")
    prefs = pd.read_parquet(data / "prefs" / "preferences.parquet")
    assert len(prompts) > 0 and 0 < len(pairs) <= len(prompts)
    assert (pairs["temperature"] == 1.2).all() and (pairs["seed_a"] != pairs["seed_b"]).all()
    assert (project / pairs.iloc[0]["features_a"]).is_file()
    assert set(prefs["pair_id"]) <= set(pairs["pair_id"])
    # by construction, not by the hash's luck: two preferences or more always fill both splits
    assert len(prefs) >= 2 and set(prefs["split"]) == {"train", "val"}
    stats = json.loads((project / "reports" / "prefs_stats.json").read_text())
    assert stats["pairs_in_table"] == len(pairs) and stats["preferences"] == len(prefs)
    assert (data / "prefs" / "labels" / "simulated" / "sim-0.jsonl").is_file()

    assert (data / "models" / "reward" / "model.safetensors").is_file()
    assert 0 <= metrics["train_reward"]["val_accuracy"] <= 1
    for algo in algorithms:
        MotionPolicy.load(data / "models" / f"policy_{algo}")  # a plain (adapters merged) policy
        report = json.loads((project / "reports" / "metrics" / f"{algo}.json").read_text())
        assert 0 <= report["metrics"]["r_precision_top1"]["mean"] <= 1
        rates = [metrics[f"winrate@{algo}"][f"{algo}/t1.2/{o}"] for o in ("win", "tie", "loss")]
        assert sum(rates) == pytest.approx(1.0)
        assert (project / "reports" / "winrate" / f"{algo}.png").is_file()
    assert 0 <= metrics["finetune@sopo"]["valuable_fraction"] <= 1
    assert metrics["finetune@dpo"]["train_pairs"] == (prefs["split"] == "train").sum()
    comparison = json.loads((project / "reports" / "comparison.json").read_text())
    assert set(comparison["vs_baseline"]) == set(algorithms)
    # the default report: seed 0 alone; report_seeds' the same tables with the gains across the seeds
    assert comparison["seed_gains"] == {} and all(t["seed_gains"] == {} for t in comparison["tables"])
    assert "reports/comparison_seeds.md" in (project / "reports" / "comparison.md").read_text()
    across = json.loads((project / "reports" / "comparison_seeds.json").read_text())
    assert across["vs_baseline"] == comparison["vs_baseline"] and across["winrates"] == comparison["winrates"]
    for algo in algorithms:  # three seeds each, and the seeds differ
        per_seed = across["seed_gains"][algo]["r_precision_top1"]["per_seed"]
        assert len(per_seed) == 3
        seeds = {
            json.loads((project / "reports" / "finetune" / f"{n}.json").read_text())["seed"]
            for n in (algo, f"{algo}_s1", f"{algo}_s2")
        }
        assert len(seeds) == 3
    assert set(comparison["retried"]) >= {"sft", *algorithms}  # the secondary, retried column
    assert len(comparison["winrates"]) == len(algorithms)  # the smoke profile's one temperature each
    assert "| dpo |" in (project / "reports" / "comparison.md").read_text()

    for name in ("mdm", "mld", *diffusion):
        assert is_diffusion_policy(data / "models" / f"policy_{name}")
        report = json.loads((project / "reports" / "metrics" / f"{name}.json").read_text())
        assert report["metrics"]["invalid_rate"] == 0 and "retried" not in report  # a diffusion sample is a motion
    for name in diffusion:
        assert metrics[f"finetune@{name}"]["first_loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference
    mdm_pairs = pd.read_parquet(data / "prefs" / "mdm" / "pairs.parquet")
    mdm_prefs = pd.read_parquet(data / "prefs" / "mdm" / "preferences.parquet")
    # every train and val prompt gets a pair: a diffusion sample is never invalid, so none is dropped
    assert len(mdm_pairs) == (prompts["split"] != "test").sum()
    assert not set(mdm_pairs["pair_id"]) & set(pairs["pair_id"])
    assert (mdm_pairs["temperature"] == 1.0).all() and mdm_pairs["tokens_a"].map(len).eq(0).all()
    assert set(mdm_prefs["pair_id"]) <= set(mdm_pairs["pair_id"])
    assert metrics["finetune@mdm_dpo"]["pairs"] == (mdm_prefs["split"] == "train").sum() > 0
    mdm_table, mld_table = comparison["tables"]
    assert mdm_table["baseline"] == "mdm" and mld_table["baseline"] == "mld"
    assert set(mdm_table["vs_baseline"]) == {"mdm_sopo", "mdm_modipo", "mdm_modipo_online", "mdm_dpo"}
    mdm_seeds, mld_seeds = across["tables"]
    assert len(mdm_seeds["seed_gains"]["mdm_sopo"]["r_precision_top1"]["per_seed"]) == 3
    assert len(mld_seeds["seed_gains"]["mld_sopo"]["r_precision_top1"]["per_seed"]) == 3
    assert set(mld_table["preference_time"]) == {"mld_sopo", "mld_modipo"}
    assert [w["temperature"] for w in mdm_table["winrates"]] == [1.0, 1.0, 1.0]  # one cell each: no temperature
    assert "# MDM-style diffusion policy" in (project / "reports" / "comparison.md").read_text()

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("motionpref").experiment_id])
    stages = sorted(r.data.tags["motionpref.stage"] for r in runs)
    assert stages == sorted(f"{name}@{item}" if item else name for name, item in plan)
    assert all(r.info.status == "FINISHED" and r.data.tags["motionpref.profile"] == "smoke" for r in runs)


def test_same_params_same_dataset(project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Determinism: rebuilding the data with the same params gives byte-identical files."""
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_stage("prepare_data", project / "params.yaml")
    first = {p.relative_to(project): p.read_bytes() for p in (project / "data" / "dataset").rglob("*.npy")}
    run_stage("prepare_data", project / "params.yaml")
    second = {p.relative_to(project): p.read_bytes() for p in (project / "data" / "dataset").rglob("*.npy")}
    assert first == second and len(first) > 10


def test_a_real_folder_is_validated_and_linked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from motionpref.motion.dataset import DatasetError
    from motionpref.synth.world import build_dataset

    real = tmp_path / "HumanML3D"
    build_dataset(real, 9, seed=0, mirror=False)  # the real layout, written by our own writer
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="humanml3d", root=str(real), cmu_dir=str(ROOT / "tests" / "fixtures" / "cmu"))
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    metrics = run_stage("prepare_data", project / "params.yaml")
    link = project / "data" / "dataset"
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert sum(metrics["clips"].values()) >= 9
    # every out dvc.yaml names for the stage, in real mode too (DVC fails a stage that leaves one missing)
    assert json.loads((project / "reports" / "prepare_data.json").read_text())["clips"] == metrics["clips"]
    assert (project / "reports" / "judge_validation.md").is_file() and (project / "reports" / "gallery").is_dir()
    (real / "Std.npy").unlink()
    (real / "texts" / "000001.txt").unlink()
    with pytest.raises(DatasetError) as err:
        run_stage("prepare_data", project / "params.yaml")
    assert "Std.npy" in str(err.value) and "000001.txt" in str(err.value)
