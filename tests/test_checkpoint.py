from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from motionpref.config import EvaluatorConfig, RetrievalConfig, VQVAEConfig
from motionpref.models.checkpoint import (
    CheckpointError,
    FolderLayout,
    load_npy,
    load_weights,
    save_weights,
)
from motionpref.models.evaluator import Evaluator
from motionpref.models.policy import METADATA_FILE as POLICY_METADATA
from motionpref.models.policy import MotionPolicy
from motionpref.models.retrieval import RetrievalModel, build_tokenizer
from motionpref.models.reward import RewardModel
from motionpref.models.vqvae import MotionVQVAE
from tests.policies import CAPTIONS, tiny_policy

LAYOUT = FolderLayout(kind="test model", metadata="meta.json", fields=("size",), format="test/1")


def _write_weights(tmp: Path) -> None:
    save_weights(nn.Linear(2, 3), tmp / "model.safetensors")


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)


def test_folder_round_trip_writes_the_metadata_as_indented_json(tmp_path: Path) -> None:
    LAYOUT.save(tmp_path / "m", {"format": "test/1", "size": 3}, _write_weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left
    assert (tmp_path / "m" / "meta.json").read_text() == json.dumps({"format": "test/1", "size": 3}, indent=2) + "\n"
    assert LAYOUT.read(tmp_path / "m") == {"format": "test/1", "size": 3}


def test_a_failed_save_keeps_the_previous_folder(tmp_path: Path) -> None:
    LAYOUT.save(tmp_path / "m", {"format": "test/1", "size": 3}, _write_weights)

    def fail(tmp: Path) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        LAYOUT.save(tmp_path / "m", {"format": "test/1", "size": 4}, fail)
    assert LAYOUT.read(tmp_path / "m")["size"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"meta\.json: not valid JSON"),
        (b"\xff\xfe".decode("latin-1"), r"meta\.json: not valid JSON"),
        ("[1, 2]", r"meta\.json: expected a JSON object, got list"),
        ('{"format": "test/1"}', r"m: meta\.json lacks field 'size' \(an old folder\? re-run the stage that writes"),
        ("{}", r"m: meta\.json lacks fields 'format', 'size'"),
        ('{"format": "test/2", "size": 1}', r"meta\.json: format 'test/2', expected 'test/1'"),
    ],
)
def test_bad_metadata_is_named(tmp_path: Path, text: str, message: str) -> None:
    LAYOUT.save(tmp_path / "m", {"format": "test/1", "size": 3}, _write_weights)
    (tmp_path / "m" / "meta.json").write_text(text, encoding="latin-1")
    with pytest.raises(CheckpointError, match=message):
        LAYOUT.read(tmp_path / "m")


def test_missing_files_stay_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing/meta\.json: not found; .*nothing is not a saved test model"):
        LAYOUT.read(tmp_path / "nothing")
    LAYOUT.save(tmp_path / "m", {"format": "test/1", "size": 3}, _write_weights)
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"m/model\.safetensors: not found"):
        LAYOUT.read(tmp_path / "m")


@pytest.mark.parametrize("cut", [0, 10, -20])
def test_truncated_safetensors_is_named(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "model.safetensors"
    save_weights(nn.Linear(4, 4), path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_weights(path)


def test_empty_npy_is_named(tmp_path: Path) -> None:
    (tmp_path / "mean.npy").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"mean\.npy: not a readable \.npy array"):
        load_npy(tmp_path / "mean.npy")
    np.save(tmp_path / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match=r"objects\.npy: not a readable \.npy array"):
        load_npy(tmp_path / "objects.npy")


# --------------------------------------------------------------------------------- every model's folder


def _retrieval() -> RetrievalModel:
    config = RetrievalConfig(latent_dim=8, ff_dim=8, n_layers=1, n_heads=2)
    return RetrievalModel(config, build_tokenizer(CAPTIONS), np.zeros(6), np.ones(6))


def _evaluator() -> Evaluator:
    config = EvaluatorConfig(
        feature_dim=12, dim_word=4, dim_text_hidden=4, dim_coemb_hidden=4, dim_movement_enc_hidden=4,
        dim_movement_latent=4, dim_motion_hidden=4, max_motion_length=16,
    )  # fmt: skip
    return Evaluator(config, {"sos": 0, "eos": 1, "unk": 2, "walk": 3})


MODELS: dict[str, tuple[Callable[[], Any], Callable[[Path], Any], str, str]] = {
    # name: (build, load, metadata file, a field it must hold)
    "policy": (tiny_policy, MotionPolicy.load, POLICY_METADATA, "codebook_size"),
    "reward": (lambda: RewardModel.from_policy(tiny_policy()), RewardModel.load, "motionpref_reward.json", "arch"),
    "retrieval": (_retrieval, RetrievalModel.load, "config.json", "motion_dim"),
    "evaluator": (_evaluator, Evaluator.load, "config.json", "dim_word"),
    "vqvae": (lambda: MotionVQVAE(VQVAEConfig(feature_dim=6, nb_code=4, code_dim=4, width=4)), MotionVQVAE.load,
              "config.json", "activation"),
}  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for name, (build, _, _, _) in MODELS.items():
        build().save(root / name)
    return {name: root / name for name in MODELS}


@pytest.fixture
def copy_of(saved: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    def copy(name: str) -> Path:
        return Path(shutil.copytree(saved[name], tmp_path / name))

    return copy


@pytest.mark.parametrize("name", MODELS)
def test_every_model_names_the_missing_field(name: str, copy_of: Callable[[str], Path]) -> None:
    _, load, metadata, field = MODELS[name]
    folder = copy_of(name)
    meta = json.loads((folder / metadata).read_text())
    del meta[field]
    (folder / metadata).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"{name}: {metadata} lacks field '{field}' \(an old folder\?"):
        load(folder)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_names_its_truncated_weights(name: str, copy_of: Callable[[str], Path]) -> None:
    folder = copy_of(name)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match=rf"{name}/model\.safetensors: not a readable safetensors file"):
        MODELS[name][1](folder)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_names_its_bad_metadata_json(name: str, copy_of: Callable[[str], Path]) -> None:
    _, load, metadata, _ = MODELS[name]
    folder = copy_of(name)
    (folder / metadata).write_text("")
    with pytest.raises(CheckpointError, match=rf"{name}/{metadata}: not valid JSON"):
        load(folder)


@pytest.mark.parametrize("name", ["policy", "reward", "retrieval"])
def test_a_corrupt_tokenizer_file_is_a_checkpoint_error(name: str, copy_of: Callable[[str], Path]) -> None:
    folder = copy_of(name)
    (folder / "tokenizer.json").write_text("{")
    message = rf"{name}(: the tokenizer does not load|/tokenizer\.json: not a readable tokenizer)"
    with pytest.raises(CheckpointError, match=message):
        MODELS[name][1](folder)


def test_metadata_files_keep_their_exact_format(saved: dict[str, Path]) -> None:
    # A policy folder's bytes are hashed into every preference pair id: its metadata must not change shape.
    policy = (saved["policy"] / POLICY_METADATA).read_text()
    assert policy == json.dumps(json.loads(policy), indent=2) + "\n"
    assert list(json.loads(policy)) == [
        "format", "arch", "codebook_size", "motion_offset", "templates", "default_template",
    ]  # fmt: skip
    vocab = (saved["evaluator"] / "vocab.json").read_text()
    assert vocab == json.dumps({"sos": 0, "eos": 1, "unk": 2, "walk": 3}) + "\n"
    retrieval = json.loads((saved["retrieval"] / "config.json").read_text())
    assert list(retrieval)[:2] == ["format", "motion_dim"]
