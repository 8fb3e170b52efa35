from __future__ import annotations

import numpy as np
import pytest

from motionpref.motion.dataset import (
    DatasetError,
    DatasetSpec,
    compute_mean_std,
    entries_of_clip,
    is_mirrored,
    load_split,
    load_stats,
    mirrored_id,
    read_joints,
    read_split,
    validate_dataset,
    write_clip,
    write_split,
    write_stats,
)
from motionpref.motion.skeleton import HUMANML3D, KIT
from motionpref.motion.text import Caption, parse_caption_line

D, J = HUMANML3D.feature_dim, HUMANML3D.n_joints

WHOLE = "a man kicks with his left leg.#a/DET man/NOUN kick/VERB with/ADP his/DET left/ADJ leg/NOUN#0.0#0.0"
MIRRORED = "a man kicks with his right leg.#a/DET man/NOUN kick/VERB with/ADP his/DET right/ADJ leg/NOUN#0.0#0.0"
TEXTS = {
    "000001": [
        WHOLE,
        "a person kicks.#a/DET person/NOUN kick/VERB#nan#nan",  # nan span = whole clip
        "he jumps then lands.#he/PRON jump/VERB then/ADV land/VERB#0.5#3.0",  # frames 10..60 -> kept
        "a short hop.#a/DET short/ADJ hop/NOUN#0.0#1.0",  # 20 frames -> too short, dropped
        "he turns around.#he/PRON turn/VERB around/ADV#2.0#4.5",  # frames 40..90 -> kept
    ],
    "M000001": [MIRRORED],
    "000002": [WHOLE],  # 30 frames: too short for HumanML3D
    "000003": [WHOLE],  # 199 frames: kept, the original's T < 200 bound
    "000004": [WHOLE],  # 200 frames: dropped
}
LENGTHS = {"000001": 100, "M000001": 100, "000002": 30, "000003": 199, "000004": 200}


def _features(rng, n_frames: int, dim: int = D) -> np.ndarray:
    return rng.normal(size=(n_frames, dim)).astype(np.float32)


@pytest.fixture
def dataset(tmp_path):
    """A tiny folder in the HumanML3D release layout, written by hand (np.save, plain text)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "HumanML3D"
    for sub in ("new_joint_vecs", "new_joints", "texts"):
        (root / sub).mkdir(parents=True)
    for clip_id, n in LENGTHS.items():
        # float64 on disk on purpose: the reader must hand back float32 whatever the release stored.
        np.save(root / "new_joint_vecs" / f"{clip_id}.npy", rng.normal(size=(n, D)))
        np.save(root / "new_joints" / f"{clip_id}.npy", rng.normal(size=(n, J, 3)).astype(np.float32))
        (root / "texts" / f"{clip_id}.txt").write_text("\n".join(TEXTS[clip_id]) + "\n")
    np.save(root / "Mean.npy", np.zeros(D, dtype=np.float32))
    np.save(root / "Std.npy", np.ones(D, dtype=np.float32))
    (root / "train.txt").write_text("000001\nM000001\n000002\n000003\n")
    (root / "val.txt").write_text("000004\n")
    (root / "test.txt").write_text("000003\n")
    return root


def test_load_split_reproduces_the_t2m_loader(dataset):
    entries = load_split(dataset, "train")
    by_name = {e.name: e for e in entries}
    assert list(by_name) == ["000001", "A_000001", "B_000001", "M000001", "000003"]
    full = np.load(dataset / "new_joint_vecs" / "000001.npy")
    whole = by_name["000001"]
    assert whole.features.dtype == np.float32 and whole.features.shape == (100, D)
    assert [c.text for c in whole.captions] == ["a man kicks with his left leg.", "a person kicks."]
    seg = by_name["A_000001"]
    np.testing.assert_allclose(seg.features, full[10:60].astype(np.float32))
    assert [c.text for c in seg.captions] == ["he jumps then lands."] and seg.source_id == "000001"
    np.testing.assert_allclose(by_name["B_000001"].features, full[40:90].astype(np.float32))
    assert by_name["M000001"].captions[0].words[-2] == "right"
    assert by_name["000003"].length == 199
    assert load_split(dataset, "val") == []  # the 200-frame clip is out of range
    assert [e.name for e in load_split(dataset, "train")] == list(by_name)  # names are deterministic


def test_length_rule_matches_the_original_bounds():
    cap = [Caption("x", ["x/NOUN"])]
    kept = {n: bool(entries_of_clip("c", np.zeros((n, 4)), cap, 20.0, 40, 196, 4)) for n in (39, 40, 199, 200)}
    assert kept == {39: False, 40: True, 199: True, 200: False}


def test_kit_uses_its_own_minimum_length(tmp_path):
    rng = np.random.default_rng(1)
    kit_caps = [Caption("a person waves", ["person/NOUN", "wave/VERB"])]
    for clip_id, n in (("00001", 30), ("00002", 20)):
        write_clip(tmp_path, clip_id, _features(rng, n, KIT.feature_dim), np.zeros((n, 21, 3)), kit_caps, KIT)
    write_split(tmp_path, "train", ["00001", "00002"])
    assert [e.name for e in DatasetSpec(tmp_path, KIT).load("train")] == ["00001"]  # KIT keeps >= 24
    assert load_split(tmp_path, "train", KIT, min_len=40) == []


def test_writers_produce_the_release_layout(tmp_path):
    rng = np.random.default_rng(2)
    feats = _features(rng, 60)
    caps = [parse_caption_line(WHOLE)]
    write_clip(tmp_path, "000010", feats, rng.normal(size=(60, J, 3)), caps)
    write_clip(tmp_path, "M000010", feats, rng.normal(size=(60, J, 3)), caps)
    write_split(tmp_path, "train", ["000010", "M000010"])
    write_split(tmp_path, "val", ["000010"])
    write_split(tmp_path, "test", ["M000010"])
    write_stats(tmp_path, feats.mean(0), feats.std(0))
    assert (tmp_path / "train.txt").read_text() == "000010\nM000010\n"
    assert (tmp_path / "texts" / "000010.txt").read_text() == WHOLE + "\n"
    assert np.load(tmp_path / "new_joint_vecs" / "000010.npy").dtype == np.float32
    assert np.load(tmp_path / "new_joints" / "000010.npy").shape == (60, J, 3)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name.startswith(".")) == []  # no temp files
    assert validate_dataset(tmp_path) == {"train": 2, "val": 1, "test": 1}
    mean, std = load_stats(tmp_path, HUMANML3D)
    np.testing.assert_allclose(mean, feats.mean(0), rtol=1e-6)
    assert read_split(tmp_path, "train") == ["000010", "M000010"]


def test_writers_reject_bad_input(tmp_path):
    rng = np.random.default_rng(3)
    caps = [Caption("x", ["x/NOUN"])]
    with pytest.raises(ValueError, match="expected features"):
        write_clip(tmp_path, "000001", _features(rng, 50, 251), np.zeros((50, J, 3)), caps)
    with pytest.raises(ValueError, match="expected joints"):
        write_clip(tmp_path, "000001", _features(rng, 50), np.zeros((49, J, 3)), caps)
    with pytest.raises(ValueError, match="invalid clip id"):
        write_clip(tmp_path, "../evil", _features(rng, 50), np.zeros((50, J, 3)), caps)
    with pytest.raises(ValueError, match="duplicate ids"):
        write_split(tmp_path, "train", ["000001", "000001"])
    with pytest.raises(ValueError, match="positive"):
        write_stats(tmp_path, np.zeros(D), np.zeros(D))
    assert list(tmp_path.iterdir()) == []


def test_missing_mean_is_named(dataset):
    (dataset / "Mean.npy").unlink()
    with pytest.raises(DatasetError, match=r"Mean\.npy: missing"):
        load_stats(dataset)
    with pytest.raises(DatasetError, match=r"Mean\.npy: missing"):
        validate_dataset(dataset)


def test_wrong_width_is_named(dataset):
    np.save(dataset / "new_joint_vecs" / "000003.npy", np.zeros((199, 251), dtype=np.float32))
    with pytest.raises(DatasetError) as err:
        validate_dataset(dataset)
    assert "new_joint_vecs/000003.npy: expected 263 columns, got 251" in err.value.problems
    with pytest.raises(DatasetError, match=r"new_joint_vecs/000003\.npy: expected 263 columns, got 251"):
        load_split(dataset, "test")
    np.save(dataset / "Std.npy", np.ones(251, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"Std\.npy: expected shape \(263,\), got \(251,\)"):
        load_stats(dataset, HUMANML3D)


def test_malformed_text_line_is_named(dataset):
    (dataset / "texts" / "000003.txt").write_text(WHOLE + "\n" + "a person walks#a/DET person/NOUN#0.0\n")
    with pytest.raises(DatasetError) as err:
        load_split(dataset, "test")
    assert "texts/000003.txt:2: expected 4 '#'-separated fields" in str(err.value)


def test_listed_but_missing_clip_reports_every_file(dataset):
    (dataset / "val.txt").write_text("000004\n000009\n")
    with pytest.raises(DatasetError) as err:
        validate_dataset(dataset)
    problems = err.value.problems
    for rel in ("new_joint_vecs/000009.npy", "new_joints/000009.npy", "texts/000009.txt"):
        assert f"{rel}: missing" in problems
    with pytest.raises(DatasetError, match=r"new_joint_vecs/000009\.npy: missing \(listed in val\.txt\)"):
        load_split(dataset, "val")


def test_validation_lists_several_problems_at_once(dataset):
    np.save(dataset / "new_joints" / "000001.npy", np.zeros((99, J, 3), dtype=np.float32))
    np.save(dataset / "new_joints" / "000002.npy", np.zeros((30, 21, 3), dtype=np.float32))
    (dataset / "test.txt").unlink()
    (dataset / "texts" / "000004.txt").write_text("\n")
    with pytest.raises(DatasetError) as err:
        validate_dataset(dataset)
    assert set(err.value.problems) == {
        "new_joints/000001.npy: has 99 frames but new_joint_vecs/000001.npy has 100",
        "new_joints/000002.npy: expected shape (T, 22, 3), got (30, 21, 3)",
        "test.txt: missing split file (present: train.txt, val.txt)",
        "texts/000004.txt: no captions",
    }
    assert str(dataset) in str(err.value)


def test_pickled_arrays_are_refused(dataset):
    np.save(dataset / "new_joint_vecs" / "000003.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"new_joint_vecs/000003\.npy: not a readable \.npy array"):
        load_split(dataset, "test")


@pytest.mark.parametrize(
    ("rel", "load"),
    [
        ("Mean.npy", load_stats),
        ("Std.npy", load_stats),
        ("new_joint_vecs/000003.npy", lambda root: load_split(root, "test")),
        ("new_joints/000003.npy", lambda root: read_joints(root, "000003")),
    ],
)
def test_empty_npy_files_are_named(dataset, rel, load):
    (dataset / rel).write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{rel}: not a readable \.npy array"):
        load(dataset)
    with pytest.raises(DatasetError) as err:
        validate_dataset(dataset)
    assert f"{rel}: not a readable .npy array (No data left in file)" in err.value.problems


def test_non_finite_clips_are_skipped_with_a_warning(dataset):
    bad = np.load(dataset / "new_joint_vecs" / "000003.npy")
    bad[5, 7] = np.nan
    np.save(dataset / "new_joint_vecs" / "000003.npy", bad)
    with pytest.warns(UserWarning, match="000003"):
        assert load_split(dataset, "test") == []


def test_mirror_ids():
    assert is_mirrored("M000021") and not is_mirrored("000021")
    assert mirrored_id("000021") == "M000021" and mirrored_id("M000021") == "000021"


def _original_cal_mean_variance(data: np.ndarray, joints_num: int) -> tuple[np.ndarray, np.ndarray]:
    """HumanML3D's cal_mean_variance.ipynb, transcribed slice by slice."""
    mean, std = data.mean(axis=0), data.std(axis=0)
    cuts = [0, 1, 3, 4, 4 + (joints_num - 1) * 3, 4 + (joints_num - 1) * 9]
    cuts += [4 + (joints_num - 1) * 9 + joints_num * 3, data.shape[1]]
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        std[a:b] = std[a:b].mean() / 1.0
    return mean, std


@pytest.mark.parametrize("skeleton", [HUMANML3D, KIT])
def test_compute_mean_std_matches_the_original_recipe(skeleton):
    rng = np.random.default_rng(4)
    dim = skeleton.feature_dim
    clips = [rng.normal(loc=1.0, scale=rng.uniform(0.1, 3.0, dim), size=(n, dim)) for n in (45, 60, 80)]
    nan_clip = clips[0].copy()
    nan_clip[3, 3] = np.nan
    with pytest.warns(UserWarning, match="skipped 1 clip"):
        mean, std = compute_mean_std([*clips, nan_clip], skeleton)
    want_mean, want_std = _original_cal_mean_variance(np.concatenate(clips), skeleton.n_joints)
    assert mean.dtype == np.float32 and mean.shape == (skeleton.feature_dim,)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5)
    np.testing.assert_allclose(std, want_std, rtol=1e-5)
    assert len(np.unique(std)) == 7  # one value per feature group


def test_compute_mean_std_rejects_bad_input():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match=r"clip 1: expected features \(T, 263\)"):
        compute_mean_std([_features(rng, 50), _features(rng, 50, 251)])
    constant = _features(rng, 50)
    constant[:, 3] = 0.9  # root height never changes
    with pytest.raises(ValueError, match="constant"):
        compute_mean_std([constant])
