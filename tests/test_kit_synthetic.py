"""The synthetic world in KIT-ML's layout (``data.format: kit``): the folder, its statistics and mirrored clips,
the retargeting between the two skeletons, the judge on KIT-ML motions, the config key, and the pipeline stages
that read the skeleton, run on it end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from motionpref.config import ConfigError, parse_params
from motionpref.motion.dataset import (
    DEFAULT_MIN_LEN,
    DatasetError,
    DatasetSpec,
    load_stats,
    read_captions,
    read_joints,
    read_split,
    validate_dataset,
)
from motionpref.motion.features import feature_slices, features_and_joints, recover_joints
from motionpref.motion.retarget import kit_to_smpl, smpl_to_kit, to_skeleton
from motionpref.motion.skeleton import HUMANML3D, KIT, mirror_joints
from motionpref.motion.text import mirror_caption
from motionpref.synth.animate import animate
from motionpref.synth.captions import mirror_program
from motionpref.synth.judge import judge, judged_joints, realism
from motionpref.synth.programs import make_segment, program
from motionpref.synth.world import PROGRAMS_FILE, build_dataset, read_programs
from tests.conftest import CMU_DIR

ROOT = Path(__file__).resolve().parents[1]
N = 12


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same world built in HumanML3D's layout and in KIT-ML's."""
    base = tmp_path_factory.mktemp("worlds")
    build_dataset(base / "humanml3d", N, seed=7, n_novel=2)
    build_dataset(base / "kit", N, seed=7, n_novel=2, skeleton=KIT)
    return base / "humanml3d", base / "kit"


def kit_features(prog, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A clip of ``prog`` as the world writes it in KIT-ML's layout: (20 fps HumanML3D joints, KIT-ML features)."""
    joints = animate(prog, np.random.default_rng(seed))
    return joints, features_and_joints(to_skeleton(joints, HUMANML3D, KIT), KIT)[0]


# ------------------------------------------------------------------------------------------------ the folder


def test_the_kit_world_is_a_kit_folder_of_the_same_clips(worlds):
    hml, kit = worlds
    counts = validate_dataset(kit, KIT)
    assert counts == validate_dataset(hml, HUMANML3D) and counts["all"] == 2 * N
    with pytest.raises(DatasetError, match="expected 263 columns, got 251"):
        validate_dataset(kit, HUMANML3D)
    spec = DatasetSpec(kit, KIT)  # KIT-ML's own loader filter: 24..196 frames
    entries = [e for split in ("train", "val", "test") for e in spec.load(split)]
    assert len(entries) == 2 * N  # every clip is inside KIT-ML's lengths, so the loader keeps all of them
    for e in entries:
        assert e.features.shape[1] == 251 and DEFAULT_MIN_LEN["kit"] <= e.length <= 196
        assert read_joints(kit, e.name, KIT).shape == (e.length, 21, 3)
        # the same 20 fps animation at 12.5 fps: T joint frames give floor((T - 1) * 12.5 / 20) + 1
        hml_length = len(np.load(hml / "new_joint_vecs" / f"{e.name}.npy"))
        assert e.length == math.floor(hml_length * KIT.fps / HUMANML3D.fps + 1e-9)
    # one world in two layouts: programs, captions and splits are the HumanML3D build's
    assert (kit / PROGRAMS_FILE).read_bytes() == (hml / PROGRAMS_FILE).read_bytes()
    for split in ("train", "val", "test", "train_val", "all"):
        assert read_split(kit, split) == read_split(hml, split)
    assert all(read_captions(kit, i) == read_captions(hml, i) for i in read_split(kit, "all"))


def test_kit_statistics_are_its_own(worlds):
    _, kit = worlds
    mean, std = load_stats(kit, KIT)
    assert mean.shape == std.shape == (251,)
    entries = [e for split in ("train", "val", "test") for e in DatasetSpec(kit, KIT).load(split)]
    frames = np.concatenate([e.features for e in entries]).astype(np.float64)
    np.testing.assert_allclose(mean, frames.mean(0), rtol=1e-4, atol=1e-5)  # over all clips, as the release
    for name, group in feature_slices(KIT).items():  # one std per feature group, as cal_mean_variance
        assert np.ptp(std[group]) <= 1e-6 * std[group][0], name
    assert 0.7 < mean[feature_slices(KIT)["root_y"]][0] < 1.2  # pelvis height in metres, as skeleton.KIT's body


def test_mirrored_kit_clips_mirror_the_kit_joints(worlds):
    _, kit = worlds
    programs = read_programs(kit)
    sources = [i for i in read_split(kit, "all") if not i.startswith("M")]
    for clip_id in sources:
        joints, mirrored = read_joints(kit, clip_id, KIT), read_joints(kit, "M" + clip_id, KIT)
        # KIT-ML's mirror (left and right joints swapped, x negated) commutes with the recipe's processing
        np.testing.assert_allclose(mirrored, mirror_joints(joints, KIT), atol=1e-4)
        assert read_captions(kit, "M" + clip_id) == [mirror_caption(c) for c in read_captions(kit, clip_id)]
        assert programs["M" + clip_id][0] == mirror_program(programs[clip_id][0])


# ---------------------------------------------------------------------------------------------- retargeting


def test_retargeting_keeps_the_shared_joints_and_sides():
    joints = animate(program(make_segment("wave", side="left")), np.random.default_rng(1))
    kit = smpl_to_kit(joints)
    back = kit_to_smpl(kit)
    for name in ("pelvis", "left_hip", "right_knee", "left_ankle", "neck", "head", "right_shoulder", "left_wrist"):
        np.testing.assert_array_equal(back[:, HUMANML3D.index(name)], joints[:, HUMANML3D.index(name)])
    foot = HUMANML3D.index("left_foot")
    np.testing.assert_allclose(back[:, foot], joints[:, foot], atol=0.08)  # the SMPL foot on KIT-ML's longer one
    # the body's left stays at +x of its facing: the left hip of a body facing +z has the larger x
    assert kit[0, KIT.index("left_hip"), 0] > kit[0, KIT.index("right_hip"), 0]
    assert to_skeleton(joints, HUMANML3D, HUMANML3D) is joints
    slow = to_skeleton(joints, HUMANML3D, KIT)
    assert slow.shape == (math.floor((len(joints) - 1) * 12.5 / 20 + 1e-9) + 1, 21, 3)
    with pytest.raises(ValueError, match=r"\(T, 21, 3\) of the kit skeleton"):
        kit_to_smpl(joints)


# -------------------------------------------------------------------------------------------------- the judge


def test_judge_scores_kit_motions_like_humanml3d_ones():
    prog = program(make_segment("lunge", side="left"))
    joints, feats = kit_features(prog, 10)
    seen = judged_joints(feats, KIT)
    assert seen.shape == (math.floor((len(feats) - 1) * 20 / 12.5 + 1e-9) + 1, 22, 3)  # back at 20 fps
    assert judge(prog, seen) == pytest.approx(judge(prog, joints), abs=0.1)
    assert judge(prog, seen) > 0.6 and realism(seen) >= 0.7
    # sides survive the round trip: the mirrored KIT-ML clip does the mirrored program, not this one
    mirrored = judged_joints(features_and_joints(mirror_joints(to_skeleton(joints, HUMANML3D, KIT), KIT), KIT)[0], KIT)
    assert judge(mirror_program(prog), mirrored) > 0.6 > 0.2 > judge(prog, mirrored)
    # HumanML3D features are judged exactly as before: recovered joints, unchanged
    hml = features_and_joints(joints, HUMANML3D)[0]
    np.testing.assert_array_equal(judged_joints(hml), recover_joints(hml))


@pytest.mark.parametrize("name", ["walk", "jump", "squat", "wave", "kick"])
def test_judge_prefers_the_kit_clips_program(name):
    prog = program(make_segment(name))
    other = program(make_segment("sit_down" if name != "sit_down" else "walk"))
    scores = [judged_joints(kit_features(prog, seed)[1], KIT) for seed in (0, 1)]
    own = np.mean([judge(prog, s) for s in scores])
    assert own > 0.5 and own > 10 * np.mean([judge(other, s) for s in scores])


# -------------------------------------------------------------------------------------------------- the config


def _params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_format_picks_the_skeleton_and_needs_the_synthetic_source():
    raw = _params()
    assert parse_params(raw).data.skeleton_name == "humanml3d"
    raw["data"]["format"] = "kit"
    assert parse_params(raw).data.skeleton_name == "kit"
    raw["data"].update(source="humanml3d", root="/data/HumanML3D")
    with pytest.raises(ConfigError, match=r"data\.format: 'kit' .* needs source synthetic"):
        parse_params(raw)
    raw["data"].update(source="synthetic", format="smpl")
    with pytest.raises(ConfigError, match=r"data\.format"):
        parse_params(raw)


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_smoke_pipeline_on_the_kit_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from motionpref.pipeline import run_stage

    params = _params()
    params["profile"] = "smoke"
    params["data"].update(format="kit", cmu_dir=str(CMU_DIR), workers=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    plan = [
        ("prepare_data", None),
        ("train_vqvae", None),
        ("train_evaluator", None),
        ("train_policy", None),
        ("evaluate", "gt"),
        ("evaluate", "sft"),
        ("train_diffusion", "mdm"),
        ("evaluate", "mdm"),
        ("generate_prompts", None),
        ("sample_pairs", "sft"),
        ("label", "sft"),
    ]
    metrics = {f"{name}@{item}": run_stage(name, tmp_path / "params.yaml", item=item) for name, item in plan}

    dataset = tmp_path / "data" / "dataset"
    assert validate_dataset(dataset, KIT)["all"] == 2 * params["profiles"]["smoke"]["data"]["n_clips"]
    assert load_stats(dataset, KIT)[0].shape == (251,)
    assert json.loads((tmp_path / "data" / "models" / "vqvae" / "config.json").read_text())["feature_dim"] == 251
    assert metrics["train_vqvae@None"]["tokenised_entries"] > 0
    motions = sorted((tmp_path / "data" / "prefs" / "motions").glob("*.npy"))
    assert motions and all(np.load(m).shape[1] == 251 for m in motions)
    for model in ("gt", "sft", "mdm"):
        report = json.loads((tmp_path / "reports" / "metrics" / f"{model}.json").read_text())["metrics"]
        for key in ("r_precision_top1", "fid", "diversity", "mm_dist", "judge", "realism"):
            assert math.isfinite(report[key]["mean"]), (model, key)
    assert metrics["evaluate@gt"]["judge"]["mean"] > 0.6  # the KIT-ML test motions do what their captions say
    labels = (tmp_path / "data" / "prefs" / "labels" / "simulated" / "sim-0.jsonl").read_text().splitlines()
    assert labels and all(json.loads(line)["choice"] in ("a", "b", "skip") for line in labels)
