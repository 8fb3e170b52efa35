from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from motionpref.motion.features import (
    FEATURE_GROUPS,
    canonical_joints,
    extract_features,
    feature_slices,
    features_and_joints,
    process_positions,
    recover_joints,
    recover_joints_from_rot,
    recover_root,
)
from motionpref.motion.rotations import (
    cont6d_to_matrix,
    matrix_to_cont6d,
    rotate_y,
    rotation_between,
    yaw_matrix,
)
from motionpref.motion.skeleton import HUMANML3D, KIT, Skeleton, forward_kinematics


def _yaw(angle: np.ndarray) -> np.ndarray:
    return Rotation.from_euler("y", angle[:, None]).as_matrix()


def _rigid_body(skeleton: Skeleton, yaw: np.ndarray, root: np.ndarray) -> np.ndarray:
    """The skeleton's rest pose, turned by ``yaw`` (T,) about +y and carried along ``root`` (T, 3)."""
    local = np.broadcast_to(np.eye(3), (len(yaw), skeleton.n_joints, 3, 3)).copy()
    local[:, 0] = _yaw(yaw)
    return forward_kinematics(local, root, skeleton)


def _random_motion(skeleton: Skeleton, T: int = 90, seed: int = 0) -> np.ndarray:
    """Smooth random joint rotations, a turning root path (through +-180 degrees) and a bobbing pelvis."""
    rng = np.random.default_rng(seed)
    J = skeleton.n_joints
    t = np.linspace(0.0, 4.0, T)[:, None, None]
    rotvec = 0.35 * np.sin(t * rng.uniform(1, 3, (1, J, 3)) + rng.uniform(0, 2 * np.pi, (1, J, 3)))
    rotvec[:, 0] = 0.0
    local = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix().reshape(T, J, 3, 3)
    local[:, 0] = _yaw(2.0 + 1.2 * t[:, 0, 0])
    tt = t[:, 0, 0]
    root = np.stack([np.sin(tt), 0.95 + 0.03 * np.sin(6 * tt), 0.6 * tt], axis=-1)
    return forward_kinematics(local, root, skeleton)


def test_feature_slices_tile_the_layout() -> None:
    for skeleton in (HUMANML3D, KIT):
        slices = feature_slices(skeleton)
        assert tuple(slices) == FEATURE_GROUPS
        bounds = [(s.start, s.stop) for s in slices.values()]
        assert bounds[0][0] == 0 and bounds[-1][1] == skeleton.feature_dim
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    s = feature_slices(HUMANML3D)
    assert (s["ric"].start, s["rot"].start, s["vel"].start, s["contacts"].start) == (4, 67, 193, 259)


@pytest.mark.parametrize("skeleton", [HUMANML3D, KIT], ids=lambda s: s.name)
def test_round_trip_recovers_processed_positions(skeleton: Skeleton) -> None:
    joints = _random_motion(skeleton)
    feats = extract_features(joints, skeleton)
    assert feats.shape == (len(joints) - 1, skeleton.feature_dim) and feats.dtype == np.float32
    processed = process_positions(joints, skeleton)
    err = np.linalg.norm(recover_joints(feats, skeleton) - processed[:-1], axis=-1)
    assert err.max() < 1e-4
    err_rot = np.linalg.norm(recover_joints_from_rot(feats, skeleton) - processed[:-1], axis=-1)
    assert err_rot.max() < 1e-4
    feats2, new_joints = features_and_joints(joints, skeleton)
    np.testing.assert_array_equal(feats, feats2)
    np.testing.assert_allclose(new_joints, canonical_joints(joints, skeleton))
    assert new_joints.shape == (len(joints) - 1, skeleton.n_joints, 3)


def test_processing_sets_bones_floor_origin_and_facing() -> None:
    joints = _random_motion(HUMANML3D) * 1.3  # a taller body: bones must come back to the skeleton's
    p = process_positions(joints, HUMANML3D)
    bones = np.linalg.norm(p[:, 1:] - p[:, list(HUMANML3D.parents[1:])], axis=-1)
    np.testing.assert_allclose(bones, np.broadcast_to(HUMANML3D.bone_lengths[1:], bones.shape), atol=1e-9)
    assert p[..., 1].min() == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(p[0, 0, [0, 2]], 0.0, atol=1e-12)
    r_hip, l_hip, r_sdr, l_sdr = HUMANML3D.face_joints
    across = p[0, r_hip] - p[0, l_hip] + p[0, r_sdr] - p[0, l_sdr]
    forward = np.cross([0.0, 1.0, 0.0], across)
    assert forward[2] > 0 and abs(forward[0]) < 1e-9 * np.linalg.norm(forward) + 1e-12


@pytest.mark.parametrize("direction", ["forward", "left"])
def test_constant_translation_gives_constant_root_velocity(direction: str) -> None:
    T, speed, facing = 40, 0.06, 0.7
    heading = facing + (0.0 if direction == "forward" else np.pi / 2)  # the body's left is +x in its frame
    steps = np.arange(T)[:, None] * speed * np.array([np.sin(heading), 0.0, np.cos(heading)])
    joints = _rigid_body(HUMANML3D, np.full(T, facing), steps + [0.3, 0.92, -1.0])
    feats = extract_features(joints)
    s = feature_slices()
    expected = [0.0, speed] if direction == "forward" else [speed, 0.0]
    np.testing.assert_allclose(feats[:, s["root_lin_vel"]], np.broadcast_to(expected, (T - 1, 2)), atol=1e-6)
    np.testing.assert_allclose(feats[:, s["root_rot_vel"]], 0.0, atol=1e-6)
    assert np.ptp(feats[:, s["root_y"]]) < 1e-6
    assert np.all(feats[:, s["contacts"]] == 0.0)  # feet slide 6 cm a frame: 0.0036 > 0.002


def test_rotation_in_place_gives_half_the_yaw_rate() -> None:
    T, omega = 240, 0.03  # turns left 0.6 rad/s at 20 fps, through +-180 degrees
    joints = _rigid_body(HUMANML3D, omega * np.arange(T), np.tile([0.0, 0.92, 0.0], (T, 1)))
    feats = extract_features(joints)
    s = feature_slices()
    interior = slice(90, 150)  # away from the ends, where the heading smoothing pads with the end frames
    np.testing.assert_allclose(feats[interior, 0], -omega / 2, rtol=1e-4)
    ric = feats[interior, s["ric"]]
    np.testing.assert_allclose(ric, np.broadcast_to(ric[0], ric.shape), atol=1e-5)  # pose fixed in body frame
    assert np.all(feats[:, s["contacts"]] == 1.0)  # feet turn in place by < 5 mm a frame
    heading, root = recover_root(feats)
    turned = np.angle(np.exp(1j * (heading[interior] - heading[interior.start])))
    np.testing.assert_allclose(turned, omega * np.arange(interior.stop - interior.start), atol=1e-4)
    np.testing.assert_allclose(root[:, [0, 2]], 0.0, atol=1e-5)
    err = np.linalg.norm(recover_joints(feats) - process_positions(joints)[:-1], axis=-1)
    assert err.max() < 1e-4


def test_contacts_follow_planted_and_swinging_feet() -> None:
    T = 60
    local = np.broadcast_to(np.eye(3), (T, HUMANML3D.n_joints, 3, 3)).copy()
    swing = 0.6 * np.sin(2 * np.pi * np.arange(T) / 20)
    local[:, HUMANML3D.index("right_hip")] = Rotation.from_euler("x", swing[:, None]).as_matrix()
    joints = forward_kinematics(local, np.tile([0.0, 0.92, 0.0], (T, 1)))
    contacts = extract_features(joints)[:, feature_slices()["contacts"]]
    assert np.all(contacts[:, :2] == 1.0)  # left ankle and toe never move
    right_toe_speed = np.linalg.norm(np.diff(joints[:, HUMANML3D.foot_right[1]], axis=0), axis=-1)
    assert np.all(contacts[right_toe_speed > 0.06, 3] == 0.0)  # 0.06**2 > 0.002
    assert np.all(contacts[right_toe_speed < 0.03, 3] == 1.0)
    assert 0 < contacts[:, 3].sum() < T - 1
    assert np.all(extract_features(joints, feet_threshold=0.0)[:, -4:] == 0.0)


def test_torch_recovery_matches_numpy_and_is_differentiable() -> None:
    feats = np.stack([extract_features(_random_motion(HUMANML3D, T=30, seed=k)) for k in range(2)])
    batch = torch.tensor(feats, requires_grad=True)
    out = recover_joints(batch)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 29, 22, 3)
    np.testing.assert_allclose(out.detach().numpy(), recover_joints(feats), atol=1e-5)
    out_rot = recover_joints_from_rot(batch)
    np.testing.assert_allclose(out_rot.detach().numpy(), recover_joints_from_rot(feats), atol=1e-5)
    (out.square().sum() + out_rot.square().sum()).backward()
    assert batch.grad is not None and torch.isfinite(batch.grad).all() and batch.grad.abs().sum() > 0
    small = torch.tensor(feats[:1, :4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(recover_joints, (small,), fast_mode=True)


def test_bad_inputs_are_rejected_clearly() -> None:
    joints = _random_motion(HUMANML3D, T=10)
    with pytest.raises(ValueError, match=r"\(T, 22, 3\)"):
        extract_features(joints[:, :21])
    with pytest.raises(ValueError, match="at least 2 frames"):
        extract_features(joints[:1])
    bad = joints.copy()
    bad[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        extract_features(bad)
    stuck = joints.copy()
    stuck[5, HUMANML3D.index("left_knee")] = stuck[5, HUMANML3D.index("left_hip")]
    with pytest.raises(ValueError, match="'left_knee' coincides with its parent at frame 5"):
        extract_features(stuck)
    with pytest.raises(ValueError, match=r"\(\.\.\., T, 263\)"):
        recover_joints(np.zeros((5, 251), dtype=np.float32))


def test_rotation_between_maps_directions_including_opposite_ones() -> None:
    rng = np.random.default_rng(1)
    u = rng.normal(size=(50, 3))
    v = rng.normal(size=(50, 3))
    v[:5] = -u[:5] * 2.0  # opposite directions: the formula's singular case
    v[5] = u[5]
    r = rotation_between(u, v)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose((r @ unit(u)[..., None])[..., 0], unit(v), atol=1e-9)
    np.testing.assert_allclose(r @ r.swapaxes(-1, -2), np.broadcast_to(np.eye(3), r.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)
    np.testing.assert_allclose(r[5], np.eye(3), atol=1e-12)


def test_6d_and_yaw_helpers() -> None:
    rng = np.random.default_rng(2)
    m = Rotation.random(20, random_state=3).as_matrix()
    d6 = matrix_to_cont6d(m)
    np.testing.assert_array_equal(d6[:, :3], m[:, :, 0])  # HumanML3D order: first column, then second
    np.testing.assert_allclose(cont6d_to_matrix(d6), m, atol=1e-12)
    np.testing.assert_allclose(cont6d_to_matrix(torch.tensor(d6)).numpy(), m, atol=1e-12)
    noisy = d6 + 0.05 * rng.normal(size=d6.shape)  # Gram-Schmidt still gives rotations
    r = cont6d_to_matrix(noisy)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)
    angles = rng.uniform(-np.pi, np.pi, 20)
    v = rng.normal(size=(20, 3))
    expected = Rotation.from_euler("y", angles[:, None]).apply(v)
    np.testing.assert_allclose(rotate_y(v, angles), expected, atol=1e-12)
    np.testing.assert_allclose((yaw_matrix(angles) @ v[..., None])[..., 0], expected, atol=1e-12)
    np.testing.assert_allclose(rotate_y(torch.tensor(v), torch.tensor(angles)).numpy(), expected, atol=1e-12)
