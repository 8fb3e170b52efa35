from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from motionpref.cli import app
from motionpref.motion.features import extract_features
from motionpref.motion.mocap import load_cmu_joints
from motionpref.pipeline import STAGES
from tests.conftest import CMU_WALK

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_help_lists_every_stage_and_tool() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in [*STAGES, "check_params", "render", "label_app", "import_instructmotion"]:
        assert name.replace("_", "-") in result.output


def test_check_params_reports_the_bad_key(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["vqvae"]["train"]["lr"] = -1
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["check-params", "--params", str(bad)])
    assert result.exit_code == 2
    assert "vqvae.train.lr" in result.output and "greater than 0" in result.output
    # a stage refuses to start on the same file, before any work
    result = runner.invoke(app, ["train-vqvae", "--params", str(bad)])
    assert result.exit_code == 2 and "vqvae.train.lr" in result.output


def test_an_unreadable_params_file_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    binary = tmp_path / "params.yaml"
    binary.write_bytes(b"seed: 0\nexperiment: \xff\xfe\n")
    folder = tmp_path / "params"
    folder.mkdir()
    for path, message in [
        (binary, "not UTF-8 text (byte 0xff at offset 20); expected a YAML parameters file"),
        (folder, "is a directory; expected a YAML parameters file"),
    ]:
        for command in (["check-params"], ["train-vqvae"]):
            result = runner.invoke(app, [*command, "--params", str(path)])
            assert result.exit_code == 2 and f"{path}: {message}" in result.output, result.output


def test_a_bad_checkpoint_is_a_message_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from motionpref.models.checkpoint import CheckpointError

    def corrupt(name: str, params: Path, item: str | None = None) -> None:
        raise CheckpointError("data/models/policy_sft/model.safetensors: not a safetensors file")

    monkeypatch.setattr("motionpref.cli.run_stage", corrupt)
    result = runner.invoke(app, ["evaluate", "sft"])
    assert result.exit_code == 2, result.output
    assert "evaluate@sft: data/models/policy_sft/model.safetensors: not a safetensors file" in result.output


def test_render_the_cmu_walk(tmp_path: Path) -> None:
    features = tmp_path / "walk.npy"
    np.save(features, extract_features(load_cmu_joints(CMU_WALK)[:60]))
    out = tmp_path / "walk.gif"
    result = runner.invoke(app, ["render", str(features), "--out", str(out), "--title", "a person walks"])
    assert result.exit_code == 0, result.output
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == 59 and frames.shape[1] >= 200
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).sum() > 0  # the figure moves
    both = tmp_path / "both.gif"
    result = runner.invoke(app, ["render", str(features), "--other", str(features), "--out", str(both)])
    assert result.exit_code == 0 and iio.imread(both, index=None).shape[2] > frames.shape[2]


def test_render_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    result = runner.invoke(app, ["render", str(bad), "--out", str(tmp_path / "x.gif")])
    assert result.exit_code == 2 and "bad.npy" in result.output
    assert not (tmp_path / "x.gif").exists()


def test_label_app_serves_the_pairs_and_label_folder_its_policys_ingestion_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[tuple[str, str]] = []
    monkeypatch.setattr(
        "motionpref.prefs.app.label_app_main", lambda pairs, labels, *a, **k: served.append((str(pairs), str(labels)))
    )
    for policy in ("sft", "mdm"):
        result = runner.invoke(app, ["label-app", "--policy", policy])
        assert result.exit_code == 0, result.output
    assert served == [
        ("data/prefs/pairs.parquet", "data/prefs/labels"),  # ingest.pairs and ingest.labels_dir
        ("data/prefs/mdm/pairs.parquet", "data/prefs/mdm/labels"),  # ingest_labels@mdm's
    ]
    result = runner.invoke(app, ["label-app", "--policy", "dpo"])
    assert result.exit_code == 2 and "no preference data for policy 'dpo'" in result.output
