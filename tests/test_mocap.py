from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from motionpref.motion.features import feature_slices, features_and_joints, process_positions
from motionpref.motion.mocap import (
    STANDING_HEIGHT,
    MocapClip,
    MocapFormatError,
    load_asf_amc,
    load_bvh,
    load_cmu_joints,
    resample,
    standing_height,
    to_humanml3d,
)
from motionpref.motion.skeleton import HUMANML3D
from tests.conftest import CMU_KICK, CMU_WALK

WALK = CMU_WALK
KICK = CMU_KICK
IX = HUMANML3D.index


@pytest.fixture(scope="module")
def walk_clip() -> MocapClip:
    return load_bvh(WALK)


@pytest.fixture(scope="module")
def kick_clip() -> MocapClip:
    return load_asf_amc(*KICK)


def _bone_lengths(clip: MocapClip) -> np.ndarray:
    parents = [max(p, 0) for p in clip.parents]
    return np.linalg.norm(clip.positions - clip.positions[:, parents], axis=-1)


def _head_height(joints: np.ndarray) -> np.ndarray:
    feet = [IX("left_ankle"), IX("right_ankle"), IX("left_foot"), IX("right_foot")]
    return joints[:, IX("head"), 1] - joints[:, feet, 1].min(axis=1)


def _round_trip_error(joints: np.ndarray) -> np.ndarray:
    _, recovered = features_and_joints(joints)
    return np.linalg.norm(recovered - process_positions(joints)[:-1], axis=-1)


def test_bvh_walk_imports(walk_clip: MocapClip) -> None:
    assert walk_clip.positions.shape == (524, 38, 3)  # 31 joints and 7 end sites
    assert walk_clip.fps == 120.0
    assert walk_clip.names[0] == "Hips" and "Head_end" in walk_clip.names
    assert np.ptp(walk_clip.rest[:, 1]) == pytest.approx(STANDING_HEIGHT)  # unit unknown: rest pose 1.7 m
    lengths = _bone_lengths(walk_clip)
    np.testing.assert_allclose(lengths, np.broadcast_to(lengths[0], lengths.shape), atol=1e-9)
    assert np.all(walk_clip.positions[:, walk_clip.names.index("Head_end"), 1] > 1.2)  # y is up


def test_asf_amc_kick_imports(kick_clip: MocapClip) -> None:
    assert kick_clip.positions.shape == (597, 31, 3)  # root and 30 bone ends
    assert kick_clip.fps == 120.0
    assert 1.5 < standing_height(kick_clip) < 1.85  # CMU units (inches / 0.45) give a real body
    lengths = _bone_lengths(kick_clip)
    np.testing.assert_allclose(lengths, np.broadcast_to(lengths[0], lengths.shape), atol=1e-9)
    assert np.all(kick_clip.positions[:, kick_clip.names.index("head"), 1] > 1.0)


def test_resample_keeps_frames_and_bone_lengths(walk_clip: MocapClip) -> None:
    at20 = resample(walk_clip, 20.0)
    assert at20.fps == 20.0 and at20.n_frames == (524 - 1) // 6 + 1
    np.testing.assert_allclose(at20.positions, walk_clip.positions[::6], atol=1e-9)
    at = resample(walk_clip, 12.5)  # KIT-ML's rate: samples fall between frames
    assert at.n_frames == int((524 - 1) * 12.5 / 120) + 1
    lengths = _bone_lengths(at)
    np.testing.assert_allclose(lengths, np.broadcast_to(_bone_lengths(walk_clip)[0], lengths.shape), atol=1e-9)
    t = 3 * 120 / 12.5  # sample 3 lies 80 % of the way from frame 28 to 29
    assert t == pytest.approx(28.8)
    root = walk_clip.positions[[28, 29], 0]
    np.testing.assert_allclose(at.positions[3, 0], root[0] + 0.8 * (root[1] - root[0]), atol=1e-9)


def test_walk_looks_like_a_walk() -> None:
    joints = load_cmu_joints(WALK)
    assert joints.shape == ((524 - 2) // 6 + 1, 22, 3)  # the T-pose frame is dropped
    assert 1.35 < np.median(_head_height(joints)) < 1.6  # head joint ~0.17 m below a 1.7 m head top
    assert _round_trip_error(joints).max() < 0.01
    feats, _ = features_and_joints(joints)
    s = feature_slices()
    velocity = feats[:, s["root_lin_vel"]].mean(axis=0) * HUMANML3D.fps  # (x, z) in the body frame, m/s
    assert 0.7 < np.hypot(*velocity) < 1.6
    assert velocity[1] > 0 and abs(velocity[0]) < 0.2 * velocity[1]  # forward, not sideways or backwards
    contacts = feats[:, s["contacts"]]
    assert 0.2 < contacts.mean() < 0.9 and np.any(contacts[:, 1] != contacts[:, 3])  # feet take turns


def test_kick_looks_like_a_kick() -> None:
    joints = load_cmu_joints(KICK)
    assert joints.shape == ((597 - 1) // 6 + 1, 22, 3)
    assert 1.35 < np.median(_head_height(joints)) < 1.6
    assert _round_trip_error(joints).max() < 0.01
    p = process_positions(joints)
    ankles = p[:, [IX("left_ankle"), IX("right_ankle")], 1]
    knees = np.median(p[:, [IX("left_knee"), IX("right_knee")], 1], axis=0)
    kicking = int(np.argmax(ankles.max(axis=0)))
    assert ankles[:, kicking].max() > knees[1 - kicking]  # the kicking foot rises above the other knee
    assert np.median(ankles[:, 1 - kicking]) < 0.15  # while the standing foot stays down


def test_to_humanml3d_rejects_other_skeletons(walk_clip: MocapClip) -> None:
    renamed = replace(walk_clip, names=tuple(n.lower() for n in walk_clip.names))
    with pytest.raises(ValueError, match="not a CMU skeleton"):
        to_humanml3d(renamed)
    with pytest.raises(ValueError, match="expected a .bvh file"):
        load_cmu_joints(CMU_KICK[0])


_BVH = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT Chest
  {
    OFFSET 0 1 0
    CHANNELS 3 Zrotation Yrotation Xrotation
    End Site
    {
      OFFSET 0 1 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.5
0 1 0 0 0 0 0 0 0
0 1 1 90 0 0 0 0 0
"""


def test_small_bvh_forward_kinematics(tmp_path: Path) -> None:
    path = tmp_path / "tiny.bvh"
    path.write_text(_BVH)
    clip = load_bvh(path, unit=1.0)
    assert clip.names == ("Hips", "Chest", "Chest_end") and clip.parents == (-1, 0, 1) and clip.fps == 2.0
    np.testing.assert_allclose(clip.positions[0], [[0, 1, 0], [0, 2, 0], [0, 3, 0]], atol=1e-12)
    # 90 degrees about z turns the up-pointing chain towards -x
    np.testing.assert_allclose(clip.positions[1], [[0, 1, 1], [-1, 1, 1], [-2, 1, 1]], atol=1e-12)


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("0 1 1 90 0 0 0 0 0", "0 1 1 90 0 0 0 0", 20, "expected 9 channel values, got 8"),
        ("0 1 1 90 0 0 0 0 0", "0 1 1 90 0 zero 0 0 0", 20, "must be numbers"),
        ("CHANNELS 3 Zrotation", "CHANNELS 3 Wrotation", 9, "unknown channel 'Wrotation'"),
        ("OFFSET 0 1 0\n    CHANNELS", "OFFSET 0 one 0\n    CHANNELS", 8, "expected a number"),
        ("Frames: 2", "Frames: 3", 20, "'Frames: 3' but 2 frame lines follow"),
        ("Frame Time: 0.5", "Frame Tim: 0.5", 18, "expected 'Frame Time: ...'"),
        ("    End Site", "    Edn Site", 10, "expected JOINT, End Site or '}'"),
    ],
)
def test_malformed_bvh_names_file_and_line(tmp_path: Path, old: str, new: str, line: int, message: str) -> None:
    assert old in _BVH
    path = tmp_path / "broken.bvh"
    path.write_text(_BVH.replace(old, new, 1))
    with pytest.raises(MocapFormatError, match=rf"broken\.bvh:{line}: .*{re.escape(message)}"):
        load_bvh(path)


def test_bvh_without_motion_or_closing_brace(tmp_path: Path) -> None:
    path = tmp_path / "cut.bvh"
    path.write_text(_BVH.split("MOTION")[0])
    with pytest.raises(MocapFormatError, match="cut.bvh:15: no MOTION section"):
        load_bvh(path)
    path.write_text(_BVH.replace("}\nMOTION", "MOTION"))
    with pytest.raises(MocapFormatError, match="cut.bvh:14: unexpected end of hierarchy"):
        load_bvh(path)


_ASF = """:version 1.10
:units
  mass 1.0
  length 1.0
  angle deg
:root
   order TX TY TZ RX RY RZ
   axis XYZ
   position 0 0 0
   orientation 0 0 0
:bonedata
  begin
     id 1
     name spine
     direction 0 1 0
     length 10
     axis 0 0 0 XYZ
    dof rx rz
    limits (-10.0 10.0)
           (-10.0 10.0)
  end
  begin
     id 2
     name arm
     direction 1 0 0
     length 5
     axis 0 0 90 XYZ
    dof rx
  end
:hierarchy
  begin
    root spine
    spine arm
  end
"""
_AMC = """:FULLY-SPECIFIED
:DEGREES
1
root 0 0 0 0 0 0
spine 0 0
arm 0
2
root 0 0 0 0 90 0
spine 0 0
arm 90
"""


def test_small_asf_amc_forward_kinematics(tmp_path: Path) -> None:
    (tmp_path / "s.asf").write_text(_ASF)
    (tmp_path / "m.amc").write_text(_AMC)
    clip = load_asf_amc(tmp_path / "s.asf", tmp_path / "m.amc", fps=60.0)
    assert clip.names == ("root", "spine", "arm") and clip.parents == (-1, 0, 1) and clip.fps == 60.0
    inch = 0.0254
    np.testing.assert_allclose(clip.positions[0] / inch, [[0, 0, 0], [0, 10, 0], [5, 10, 0]], atol=1e-9)
    # frame 2: the root turns 90 degrees about y (+x goes to -z); the arm's rx acts about its own axis,
    # which the ASF turned 90 degrees about z onto world +y, so the arm swings about the vertical too
    np.testing.assert_allclose(clip.positions[1] / inch, [[0, 0, 0], [0, 10, 0], [-5, 10, 0]], atol=1e-9)


@pytest.mark.parametrize(
    ("which", "old", "new", "line", "message"),
    [
        ("asf", "direction 1 0 0", "direction 1 0", 25, "direction: expected 3 numbers, got 2"),
        ("asf", "dof rx\n", "dof tx\n", 28, "only rotational dofs"),
        ("asf", "    spine arm", "    spine leg", 33, "bone 'leg' is not in :bonedata"),
        ("asf", "  angle deg", "  angle grad", 5, "angle unit must be deg or rad"),
        ("amc", "arm 90", "arm 90 0", 10, "arm: expected 1 numbers, got 2"),
        ("amc", "arm 90", "leg 90", 10, "bone 'leg' has no degrees of freedom"),
        ("amc", "spine 0 0\narm 90", "spine 0 0", 7, "frame starting here lacks bones \\['arm'\\]"),
        ("amc", "2\n", "3\n", 7, "expected frame 2, got frame 3"),
    ],
)
def test_malformed_asf_amc_names_file_and_line(
    tmp_path: Path, which: str, old: str, new: str, line: int, message: str
) -> None:
    asf, amc = _ASF, _AMC
    if which == "asf":
        assert old in asf
        asf = asf.replace(old, new, 1)
    else:
        assert old in amc
        amc = amc.replace(old, new, 1)
    (tmp_path / "s.asf").write_text(asf)
    (tmp_path / "m.amc").write_text(amc)
    name = "s.asf" if which == "asf" else "m.amc"
    with pytest.raises(MocapFormatError, match=rf"{name}:{line}: .*{message}"):
        load_asf_amc(tmp_path / "s.asf", tmp_path / "m.amc")
