from __future__ import annotations

import importlib.util

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from motionpref.motion.features import extract_features
from motionpref.motion.render import render_frames, render_motion, render_side_by_side, write_video
from motionpref.motion.skeleton import HUMANML3D, forward_kinematics


def walking(n_frames: int, speed: float = 1.2, fps: float = 20.0) -> np.ndarray:
    """A stick figure walking along +z: sine-wave hips and shoulders, knees bending on the swing."""
    sk = HUMANML3D
    phase = 2 * np.pi * np.arange(n_frames) / fps
    rotvec = np.zeros((n_frames, sk.n_joints, 3))
    for side, sign in (("left", 1.0), ("right", -1.0)):
        swing = sign * np.sin(phase)
        rotvec[:, sk.index(f"{side}_hip"), 0] = 0.45 * swing
        rotvec[:, sk.index(f"{side}_knee"), 0] = 0.7 * np.clip(-swing, 0.0, None)
        rotvec[:, sk.index(f"{side}_shoulder"), 0] = -0.35 * swing
    rot = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix().reshape(n_frames, sk.n_joints, 3, 3)
    root = np.stack([np.zeros(n_frames), np.full(n_frames, 0.93), speed * np.arange(n_frames) / fps], -1)
    return forward_kinematics(rot, root)


def _blue(f: np.ndarray) -> np.ndarray:
    r, g, b = (f[..., i].astype(int) for i in range(3))
    return (b > r + 60) & (b > g + 20)


def _red(f: np.ndarray) -> np.ndarray:
    r, g, b = (f[..., i].astype(int) for i in range(3))
    return (r > b + 60) & (r > g + 40)


def _dark(f: np.ndarray) -> np.ndarray:
    return f.max(axis=-1) < 70  # spine and head outline; the clock text is lighter


def _grey(f: np.ndarray) -> np.ndarray:
    spread = f.max(axis=-1).astype(int) - f.min(axis=-1)
    return (spread < 12) & (f.min(axis=-1) > 150) & (f.min(axis=-1) < 235)


def test_gif_of_a_walking_figure(tmp_path):
    joints = walking(40)
    out = render_motion(joints, tmp_path / "walk.gif", title="a person walks forward")
    assert out == tmp_path / "walk.gif" and [p.name for p in tmp_path.iterdir()] == ["walk.gif"]
    frames = iio.imread(out)
    assert frames.shape == (40, 320, 320, 3)
    assert Image.open(out).info["duration"] == 50  # 20 fps
    assert all(not np.array_equal(a, b) for a, b in zip(frames[:-1], frames[1:], strict=True))
    limbs = [_blue(f) | _red(f) for f in frames]
    assert (limbs[0] ^ limbs[5]).sum() > 500  # the legs swing (a quarter of the 1 s gait cycle)
    assert (_grey(frames[0]) ^ _grey(frames[10])).sum() > 500  # the floor grid scrolls under the root


def test_figure_reads_as_a_person():
    frame = render_frames(walking(20), frame_indices=[5])[0]
    left, right, dark = _blue(frame), _red(frame), _dark(frame)
    assert left.sum() > 300 and right.sum() > 300  # both sides drawn, in different colours
    rows = np.arange(frame.shape[0])
    head_top = rows[dark.any(axis=1)].min()
    limbs_top = rows[(left | right).any(axis=1)].min()
    feet_bottom = rows[(left | right).any(axis=1)].max()
    assert head_top < limbs_top  # the head is above the shoulders and arms
    assert feet_bottom > 0.6 * frame.shape[0]  # feet low in the picture...
    near_feet = _grey(frame)[feet_bottom - 25 : feet_bottom + 25]
    assert near_feet.sum() > 50  # ...standing on the floor grid


def test_side_by_side_syncs_and_holds_the_shorter_motion(tmp_path):
    out = render_side_by_side(walking(30), walking(16, speed=0.5), tmp_path / "ab.gif", caption="a person walks")
    frames = iio.imread(out)
    assert frames.shape == (30, 320, 640, 3)
    left, right = frames[..., :320, :], frames[..., 320:, :]
    assert not np.array_equal(left[20], left[25])
    assert np.array_equal(right[20], right[25])  # B ended at frame 15 and holds its last pose
    assert not np.array_equal(right[5], right[10])


def test_panels_share_axis_limits():
    walk = walking(12)
    frames = render_frames([walk, walk], frame_indices=[0, 7])
    assert frames.shape == (2, 320, 640, 3)
    # equal up to antialiasing rounding
    np.testing.assert_allclose(frames[..., :320, :], frames[..., 320:, :], atol=2)
    # A taller reach in one panel rescales both, so the same pose is drawn smaller than on its own.
    wide = walk.copy()
    wide[:, HUMANML3D.index("left_wrist"), 0] += 1.5
    alone = _red(render_frames(walk, frame_indices=[0])[0]).sum()
    shared = render_frames([walk, wide], frame_indices=[0])[0]
    assert _red(shared[:, :320]).sum() < 0.8 * alone


def test_millimetre_joints_render_like_metres():
    walk = walking(12)
    metres = render_frames(walk, frame_indices=[6])
    millimetres = render_frames(walk * 1000.0, frame_indices=[6])
    assert np.abs(metres.astype(int) - millimetres).max() <= 2  # KIT-ML stores millimetres


def test_features_and_torch_input_render_like_joints():
    joints = walking(21)
    feats = extract_features(joints)
    from_np = render_frames(feats, frame_indices=[0, 10])
    from_torch = render_frames(torch.from_numpy(feats), frame_indices=[0, 10])
    assert from_np.shape == (2, 320, 320, 3)
    np.testing.assert_array_equal(from_np, from_torch)
    assert _blue(from_np[1]).sum() > 300


def test_frame_selection_and_subsampling(tmp_path):
    joints = walking(20)
    everything = render_frames(joints, size=160)
    some = render_frames(joints, size=160, frame_indices=[3, 17])
    assert everything.shape == (20, 160, 160, 3)
    np.testing.assert_array_equal(some, everything[[3, 17]])
    out = render_motion(joints, tmp_path / "half.gif", every=2)
    assert len(iio.imread(out)) == 10
    assert Image.open(out).info["duration"] == 100  # half the frames at half the rate: still real time


def test_bad_input_gives_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"expected joints \(T, 22, 3\) or features \(T, 263\)"):
        render_frames(np.zeros((10, 21, 3)))
    with pytest.raises(ValueError, match="outside 0..9"):
        render_frames(walking(10), frame_indices=[10])
    with pytest.raises(ValueError, match="use .gif or .mp4"):
        render_motion(walking(5), tmp_path / "x.avi")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "imageio_ffmpeg" else real_find_spec(name, *a),
    )
    with pytest.raises(RuntimeError, match="imageio-ffmpeg.*\\.gif"):
        write_video(np.zeros((2, 32, 32, 3), dtype=np.uint8), tmp_path / "x.mp4", 20.0)
    assert list(tmp_path.iterdir()) == []
