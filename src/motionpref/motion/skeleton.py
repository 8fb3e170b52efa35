"""The two skeletons of the text-to-motion datasets: HumanML3D's 22 SMPL joints and KIT-ML's 21 joints.

Joint orders, kinematic chains and raw offsets are those of the HumanML3D release (``paramUtil.py``):
raw offsets are unit rest directions used by inverse kinematics, so only bone *lengths* come from a body.
Coordinates are y-up, the body faces +z, and the body's left is +x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]
    kinematic_chain: tuple[tuple[int, ...], ...]
    raw_offsets: np.ndarray  # (J, 3) unit rest directions
    rest_offsets: np.ndarray  # (J, 3) metres, a ~1.7 m body standing with arms down
    foot_right: tuple[int, int]  # (ankle, toe)
    foot_left: tuple[int, int]
    face_joints: tuple[int, int, int, int]  # (r_hip, l_hip, r_shoulder, l_shoulder)
    leg_joints: tuple[int, int]  # (knee, ankle): the shin used to measure leg length
    mirror_perm: tuple[int, ...]  # joint order after swapping left and right
    fps: float
    feature_dim: int

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    @property
    def bone_lengths(self) -> np.ndarray:
        return np.linalg.norm(self.rest_offsets, axis=-1)

    def index(self, name: str) -> int:
        return self.joint_names.index(name)


def _parents(chains: list[list[int]], n: int) -> tuple[int, ...]:
    parents = [-1] * n
    for chain in chains:
        for a, b in zip(chain[:-1], chain[1:], strict=True):
            parents[b] = a
    return tuple(parents)


def _mirror(names: tuple[str, ...]) -> tuple[int, ...]:
    def other(name: str) -> str:
        if name.startswith("left_"):
            return "right_" + name[5:]
        if name.startswith("right_"):
            return "left_" + name[6:]
        return name

    return tuple(names.index(other(n)) for n in names)


T2M_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)  # fmt: skip
T2M_KINEMATIC_CHAIN = [
    [0, 2, 5, 8, 11], [0, 1, 4, 7, 10], [0, 3, 6, 9, 12, 15], [9, 14, 17, 19, 21], [9, 13, 16, 18, 20]
]  # fmt: skip
T2M_RAW_OFFSETS = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, -1, 0],
     [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1],
     [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0]],
    dtype=np.float64,
)  # fmt: skip
# Rest directions of an average adult (about SMPL's neutral body, arms hung down), left/right symmetric;
# rescaled below to the release's bone lengths. Head top is ~0.17 m above the head joint.
T2M_REST_OFFSETS = np.array(
    [[0.0, 0.0, 0.0],        # pelvis (root)
     [0.060, -0.085, -0.005],  # left_hip
     [-0.060, -0.085, -0.005],  # right_hip
     [0.0, 0.110, -0.030],   # spine1
     [0.040, -0.375, 0.005],  # left_knee
     [-0.040, -0.375, 0.005],  # right_knee
     [0.0, 0.135, 0.030],    # spine2
     [-0.010, -0.400, -0.035],  # left_ankle
     [0.010, -0.400, -0.035],  # right_ankle
     [0.0, 0.055, 0.025],    # spine3
     [0.025, -0.060, 0.125],  # left_foot
     [-0.025, -0.060, 0.125],  # right_foot
     [0.0, 0.215, -0.035],   # neck
     [0.075, 0.120, -0.020],  # left_collar
     [-0.075, 0.120, -0.020],  # right_collar
     [0.0, 0.080, 0.050],    # head
     [0.100, 0.030, -0.015],  # left_shoulder
     [-0.100, 0.030, -0.015],  # right_shoulder
     [0.030, -0.255, -0.015],  # left_elbow
     [-0.030, -0.255, -0.015],  # right_elbow
     [0.005, -0.245, 0.030],  # left_wrist
     [-0.005, -0.245, 0.030]],  # right_wrist
    dtype=np.float64,
)  # fmt: skip
# Bone lengths of the release's target skeleton (HumanML3D clip 000021), left and right averaged so that
# mirrored clips keep the same body and a symmetric pose faces straight ahead.
_RELEASE_BONE_LENGTHS = np.array(
    [0, .1031, .1099, .1316, .3936, .3902, .1432, .4324, .4256, .0574, .1434, .1494, .2194, .1375, .1434,
     .1030, .1316, .1230, .2568, .2631, .2660, .2699],
    dtype=np.float64,
)  # fmt: skip
T2M_BONE_LENGTHS = (_RELEASE_BONE_LENGTHS + _RELEASE_BONE_LENGTHS[list(_mirror(T2M_JOINT_NAMES))]) / 2
_norms = np.linalg.norm(T2M_REST_OFFSETS, axis=1, keepdims=True)
T2M_REST_OFFSETS = T2M_REST_OFFSETS / np.where(_norms > 0, _norms, 1.0) * T2M_BONE_LENGTHS[:, None]

HUMANML3D = Skeleton(
    name="humanml3d",
    joint_names=T2M_JOINT_NAMES,
    parents=_parents(T2M_KINEMATIC_CHAIN, 22),
    kinematic_chain=tuple(tuple(c) for c in T2M_KINEMATIC_CHAIN),
    raw_offsets=T2M_RAW_OFFSETS,
    rest_offsets=T2M_REST_OFFSETS,
    foot_right=(8, 11),
    foot_left=(7, 10),
    face_joints=(2, 1, 17, 16),
    leg_joints=(5, 8),
    mirror_perm=_mirror(T2M_JOINT_NAMES),
    fps=20.0,
    feature_dim=263,
)

# Sides as the release's face_joint_indx (11 = right hip, 5 = right shoulder) and foot indices say.
KIT_JOINT_NAMES = (
    "root", "torso", "chest", "neck", "head", "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle",
    "right_heel", "right_toe", "left_hip", "left_knee", "left_ankle", "left_heel", "left_toe",
)  # fmt: skip
KIT_KINEMATIC_CHAIN = [
    [0, 11, 12, 13, 14, 15], [0, 16, 17, 18, 19, 20], [0, 1, 2, 3, 4], [3, 5, 6, 7], [3, 8, 9, 10]
]  # fmt: skip
KIT_RAW_OFFSETS = np.array(
    [[0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0], [0, -1, 0], [0, -1, 0],
     [-1, 0, 0], [0, -1, 0], [0, -1, 0], [1, 0, 0], [0, -1, 0], [0, -1, 0], [0, 0, 1], [0, 0, 1],
     [-1, 0, 0], [0, -1, 0], [0, -1, 0], [0, 0, 1], [0, 0, 1]],
    dtype=np.float64,
)  # fmt: skip
# KIT-ML stores millimetres; this rest pose is in metres like HumanML3D's and only synthesises tests.
_KIT_LENGTHS = np.array(
    [0, 0.12, 0.14, 0.22, 0.12, 0.17, 0.27, 0.25, 0.17, 0.27, 0.25, 0.09, 0.42, 0.41, 0.05, 0.16,
     0.09, 0.42, 0.41, 0.05, 0.16],
    dtype=np.float64,
)  # fmt: skip
KIT = Skeleton(
    name="kit",
    joint_names=KIT_JOINT_NAMES,
    parents=_parents(KIT_KINEMATIC_CHAIN, 21),
    kinematic_chain=tuple(tuple(c) for c in KIT_KINEMATIC_CHAIN),
    raw_offsets=KIT_RAW_OFFSETS,
    rest_offsets=KIT_RAW_OFFSETS * _KIT_LENGTHS[:, None],
    foot_right=(14, 15),
    foot_left=(19, 20),
    face_joints=(11, 16, 5, 8),
    leg_joints=(17, 18),
    mirror_perm=_mirror(KIT_JOINT_NAMES),
    fps=12.5,
    feature_dim=251,
)

SKELETONS = {"humanml3d": HUMANML3D, "kit": KIT}


def forward_kinematics(
    local_rot: np.ndarray,
    root_pos: np.ndarray,
    skeleton: Skeleton = HUMANML3D,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """Joint positions (T, J, 3) from local rotation matrices (T, J, 3, 3) and root positions (T, 3).

    ``local_rot[:, j]`` rotates joint j's children relative to its parent frame; ``offsets`` default to
    the skeleton's rest offsets (pass scaled offsets for a different body).
    """
    offsets = skeleton.rest_offsets if offsets is None else offsets
    T, J = local_rot.shape[:2]
    glob = np.empty_like(local_rot)
    pos = np.empty((T, J, 3), dtype=np.float64)
    for j, p in enumerate(skeleton.parents):
        if p < 0:
            glob[:, j] = local_rot[:, j]
            pos[:, j] = root_pos
        else:
            glob[:, j] = glob[:, p] @ local_rot[:, j]
            pos[:, j] = pos[:, p] + glob[:, p] @ offsets[j]
    return pos


def mirror_joints(joints: np.ndarray, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """Left-right mirror of joint positions (..., J, 3), as HumanML3D makes its ``M``-prefixed clips."""
    out = joints[..., list(skeleton.mirror_perm), :].copy()
    out[..., 0] *= -1
    return out
