"""The HumanML3D motion representation (Guo et al., "Generating Diverse and Natural 3D Human Motions from
Text", CVPR 2022): joint positions -> 263-dim features (251 for KIT-ML), and back.

Follows the release's ``motion_representation.ipynb`` (``process_file``) and ``recover_from_ric``. A frame of
features, for J joints (``feature_slices`` gives the index ranges):

    root_rot_vel (1)    half the per-frame change of the root's world->body yaw (the recipe stores the
                        y component of the increment quaternion, ``arcsin`` of it); turning left is negative
    root_lin_vel (2)    root xz displacement to the next frame, in the body frame of the next frame
    root_y (1)          root height
    ric (3(J-1))        joints 1..J-1 relative to the root's xz, in the body frame (y stays absolute height)
    rot (6(J-1))        continuous 6D local rotations of joints 1..J-1 from the recipe's inverse kinematics
    vel (3J)            joint displacements to the next frame, in the current body frame
    contacts (4)        left (ankle, toe), right (ankle, toe): squared displacement below ``feet_threshold``

Before extraction the positions are processed as the recipe does: bone lengths set to the skeleton's
(directions kept, root scaled by the leg-length ratio), lowest joint put on the floor, first root at the
xz origin, first frame facing +z. The body frame of each frame comes from the hips' and shoulders' lateral
direction, smoothed over time (gaussian, sigma 20 frames). T input frames give T-1 feature frames.

Deliberate details, each matching the release unless stated:
- The heading used for the body frames combines the hips and shoulders as ``(l_hip - r_hip) +
  (r_shoulder - l_shoulder)``, the ordering bug of the release's ``inverse_kinematics_np`` that its authors
  kept for compatibility (HumanML3D issue #107); the first-frame facing uses the correct sum.
- Foot contacts use the velocity test only: the release defines height thresholds but never applies them.
- Deviation: the root angular velocity is half the yaw increment wrapped to (-pi, pi]. The release reads
  the increment quaternion without fixing its sign, which flips the value on the frame where the heading
  crosses +-180 degrees; everywhere else the two agree.
- The body frame of frame 0 is the identity (the release's ``root_quat[0] = 1``; the first frame already
  faces +z), so the recovered joints equal the processed positions.
- The 6D rotation of the first bone of each chain is ``body^T @ bone`` with ``body`` the world->body yaw,
  as in the release, so it is not heading invariant; the release's ``recover_from_rot`` (and
  :func:`recover_joints_from_rot`) undo exactly that.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from motionpref.motion.rotations import (
    Array,
    array_module,
    cont6d_to_matrix,
    heading_angle,
    matrix_to_cont6d,
    rotate_y,
    rotation_between,
    yaw_matrix,
)
from motionpref.motion.skeleton import HUMANML3D, Skeleton

FEATURE_GROUPS = ("root_rot_vel", "root_lin_vel", "root_y", "ric", "rot", "vel", "contacts")
HEADING_SMOOTHING_SIGMA = 20.0  # frames, the release's gaussian over the forward direction
_UP = np.array([0.0, 1.0, 0.0])


def feature_slices(skeleton: Skeleton = HUMANML3D) -> dict[str, slice]:
    """Index ranges of each feature group (``FEATURE_GROUPS`` order) for ``skeleton``."""
    J = skeleton.n_joints
    sizes = {
        "root_rot_vel": 1,
        "root_lin_vel": 2,
        "root_y": 1,
        "ric": 3 * (J - 1),
        "rot": 6 * (J - 1),
        "vel": 3 * J,
        "contacts": 4,
    }
    slices, start = {}, 0
    for name in FEATURE_GROUPS:
        slices[name] = slice(start, start + sizes[name])
        start += sizes[name]
    if start != skeleton.feature_dim:
        raise ValueError(
            f"skeleton {skeleton.name!r}: {J} joints give {start} feature dims, but feature_dim is "
            f"{skeleton.feature_dim}"
        )
    return slices


def process_positions(joints: np.ndarray, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """The recipe's processed positions (T, J, 3): uniform skeleton, on the floor, xz origin, facing +z."""
    p = _uniform_skeleton(_check_joints(joints, skeleton), skeleton)
    p[..., 1] -= p[..., 1].min()
    p -= p[0, 0] * np.array([1.0, 0.0, 1.0])
    r_hip, l_hip, r_sdr, l_sdr = skeleton.face_joints
    across = (p[0, r_hip] - p[0, l_hip]) + (p[0, r_sdr] - p[0, l_sdr])
    forward = np.cross(_UP, across)
    if np.linalg.norm(forward) < 1e-8:
        raise ValueError("cannot find the facing direction of frame 0: hips and shoulders are vertical")
    return rotate_y(p, -heading_angle(forward))


def extract_features(joints: np.ndarray, skeleton: Skeleton = HUMANML3D, feet_threshold: float = 0.002) -> np.ndarray:
    """Features (T-1, skeleton.feature_dim) float32 from joint positions (T, J, 3), metres, y-up."""
    return _features(process_positions(joints, skeleton), skeleton, feet_threshold)


def features_and_joints(
    joints: np.ndarray, skeleton: Skeleton = HUMANML3D, feet_threshold: float = 0.002
) -> tuple[np.ndarray, np.ndarray]:
    """Features (T-1, D) and the joints a HumanML3D folder stores beside them in ``new_joints/``
    (T-1, J, 3): ``recover_joints`` of the float32 features, as the release computes them."""
    feats = extract_features(joints, skeleton, feet_threshold)
    return feats, recover_joints(feats, skeleton)


def canonical_joints(joints: np.ndarray, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """The ``new_joints/`` positions (T-1, J, 3) of a clip: see :func:`features_and_joints`."""
    return features_and_joints(joints, skeleton)[1]


def recover_root(features: Array) -> tuple[Array, Array]:
    """Root heading (..., T) and position (..., T, 3) from features (..., T, D); numpy or torch.

    The body's (smoothed) facing direction is ``(sin h, 0, cos h)``; heading and xz position start at 0 on
    the first frame.
    """
    xp = array_module(features)
    half = features[..., 0]
    yaw = 2.0 * xp.cumsum(half, -1)
    # world->body yaw of frame t sums the increments of frames before t
    theta = xp.concatenate([xp.zeros_like(yaw[..., :1]), yaw[..., :-1]], -1)
    zero = xp.zeros_like(features[..., :-1, 1])
    step = xp.stack([features[..., :-1, 1], zero, features[..., :-1, 2]], -1)
    step = rotate_y(step, -theta[..., 1:])
    xz = xp.cumsum(step, -2)
    xz = xp.concatenate([xp.zeros_like(xz[..., :1, :]), xz], -2)
    position = xp.stack([xz[..., 0], features[..., 3], xz[..., 2]], -1)
    return -theta, position


def recover_joints(features: Array, skeleton: Skeleton = HUMANML3D) -> Array:
    """Joint positions (..., T, J, 3) from the ``ric`` features (the release's ``recover_from_ric``).

    numpy in, numpy out; torch in, torch out (batched, differentiable).
    """
    _check_features(features, skeleton)
    heading, root = recover_root(features)
    ric = features[..., feature_slices(skeleton)["ric"]]
    ric = ric.reshape(*ric.shape[:-1], skeleton.n_joints - 1, 3)
    return _place(ric, heading, root)


def recover_joints_from_rot(features: Array, skeleton: Skeleton = HUMANML3D) -> Array:
    """Joint positions (..., T, J, 3) by forward kinematics of the ``rot`` features with the skeleton's bone
    lengths (the release's ``recover_from_rot``); numpy or torch. On extracted features it agrees with
    :func:`recover_joints`; on generated ones it gives a body with exact bone lengths.
    """
    _check_features(features, skeleton)
    xp = array_module(features)
    heading, root = recover_root(features)
    d6 = features[..., feature_slices(skeleton)["rot"]]
    local = cont6d_to_matrix(d6.reshape(*d6.shape[:-1], skeleton.n_joints - 1, 6))
    offsets = skeleton.raw_offsets * skeleton.bone_lengths[:, None]
    if xp is torch:
        offsets = torch.as_tensor(offsets, dtype=features.dtype, device=features.device)
    else:
        offsets = offsets.astype(features.dtype)
    zero = xp.zeros_like(root[..., 1])
    body: list[Array | None] = [None] * skeleton.n_joints
    body[0] = xp.stack([zero, root[..., 1], zero], -1)
    for chain in skeleton.kinematic_chain:
        glob = None  # each chain starts again from the root, whose yaw _place applies
        for a, b in pairwise(chain):
            glob = local[..., b - 1, :, :] if glob is None else glob @ local[..., b - 1, :, :]
            body[b] = body[a] + glob @ offsets[b]
    # the release chains the first bones from the world->body yaw, the inverse of the ric heading
    return _place(xp.stack(body[1:], -2), -heading, root)


def _place(ric: Array, heading: Array, root: Array) -> Array:
    """World joints from body-frame joints 1..J-1 (y absolute), heading (..., T) and root (..., T, 3)."""
    xp = array_module(ric)
    world = rotate_y(ric, heading[..., None])
    zero = xp.zeros_like(root[..., 0])
    world = world + xp.stack([root[..., 0], zero, root[..., 2]], -1)[..., None, :]
    return xp.concatenate([root[..., None, :], world], -2)


def _features(p: np.ndarray, skeleton: Skeleton, feet_threshold: float) -> np.ndarray:
    T, J = p.shape[:2]

    def contacts(foot: tuple[int, int]) -> np.ndarray:
        step = p[1:, list(foot)] - p[:-1, list(foot)]
        return (np.sum(step**2, axis=-1) < feet_threshold).astype(np.float64)

    r_hip, l_hip, r_sdr, l_sdr = skeleton.face_joints
    across = (p[:, l_hip] - p[:, r_hip]) + (p[:, r_sdr] - p[:, l_sdr])  # the release's ordering, see module doc
    across /= np.linalg.norm(across, axis=-1, keepdims=True)
    forward = gaussian_filter1d(np.cross(_UP, across), HEADING_SMOOTHING_SIGMA, axis=0, mode="nearest")
    theta = -heading_angle(forward)  # world->body yaw: turns each frame's forward onto +z
    theta[0] = 0.0
    body = yaw_matrix(theta)

    # Each joint's world rotation takes its raw offset onto its bone; its local rotation is relative to the
    # previous bone of its chain, or to the body yaw for a chain's first bone (slot 0 holds the body yaw).
    child, parent, ref = np.array(_chain_links(skeleton)).T
    glob = np.empty((T, J, 3, 3))
    glob[:, 0] = body
    glob[:, child] = rotation_between(skeleton.raw_offsets[child], p[:, child] - p[:, parent])
    rot6 = np.zeros((T, J, 6))
    rot6[:, child] = matrix_to_cont6d(glob[:, ref].swapaxes(-1, -2) @ glob[:, child])

    rel = p.copy()
    rel[..., [0, 2]] -= p[:, :1, [0, 2]]
    ric = rotate_y(rel, theta[:, None])
    root_lin = rotate_y(p[1:, 0] - p[:-1, 0], theta[1:])[:, [0, 2]]
    turn = np.angle(np.exp(1j * np.diff(theta)))  # wrapped to (-pi, pi]
    local_vel = rotate_y(p[1:] - p[:-1], theta[:-1, None])

    out = np.concatenate(
        [
            (turn / 2.0)[:, None],
            root_lin,
            p[:-1, 0, 1:2],
            ric[:-1, 1:].reshape(T - 1, -1),
            rot6[:-1, 1:].reshape(T - 1, -1),
            local_vel.reshape(T - 1, -1),
            contacts(skeleton.foot_left),
            contacts(skeleton.foot_right),
        ],
        axis=-1,
    )
    return out.astype(np.float32)


def _chain_links(skeleton: Skeleton) -> list[tuple[int, int, int]]:
    """(joint, parent, reference) for joints 1..J-1: the reference is the parent, or 0 at a chain's start."""
    return [(b, a, 0 if a == chain[0] else a) for chain in skeleton.kinematic_chain for a, b in pairwise(chain)]


def _uniform_skeleton(p: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Give the body the skeleton's bone lengths, keeping every bone's direction and scaling the root path by
    the leg-length ratio; the release does this by inverse then forward kinematics, which reduces to this."""
    parents = skeleton.parents
    bones = p - p[:, [max(q, 0) for q in parents]]
    lengths = np.linalg.norm(bones, axis=-1)
    lengths[:, 0] = 1.0
    if np.any(lengths < 1e-8):
        t, j = np.argwhere(lengths < 1e-8)[0]
        raise ValueError(f"joint {skeleton.joint_names[j]!r} coincides with its parent at frame {t}")
    knee, ankle = skeleton.leg_joints
    scale = (skeleton.bone_lengths[knee] + skeleton.bone_lengths[ankle]) / (lengths[0, knee] + lengths[0, ankle])
    new_bones = bones * (skeleton.bone_lengths / lengths)[..., None]
    new_bones[:, 0] = 0.0
    # each joint is the root plus the bones on its path from the root: one matrix product over the tree
    return p[:, :1] * scale + _ancestry(skeleton) @ new_bones


def _ancestry(skeleton: Skeleton) -> np.ndarray:
    """(J, J) with a 1 at [j, b] where bone b (ending at joint b) lies on the path from the root to j."""
    path = np.eye(skeleton.n_joints)
    for a, b in (link for chain in skeleton.kinematic_chain for link in pairwise(chain)):
        path[b] += path[a]  # chains start at joints that earlier chains reach, as the release's FK requires
    return path


def _check_joints(joints: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (skeleton.n_joints, 3):
        raise ValueError(
            f"joints must have shape (T, {skeleton.n_joints}, 3) for skeleton {skeleton.name!r}, got {joints.shape}"
        )
    if len(joints) < 2:
        raise ValueError(f"need at least 2 frames to compute velocities, got {len(joints)}")
    if not np.all(np.isfinite(joints)):
        raise ValueError("joints contain NaN or infinite values")
    return joints


def _check_features(features: Array, skeleton: Skeleton) -> None:
    if features.ndim < 2 or features.shape[-1] != skeleton.feature_dim:
        raise ValueError(
            f"features must have shape (..., T, {skeleton.feature_dim}) for skeleton {skeleton.name!r}, "
            f"got {tuple(features.shape)}"
        )
