"""One body on the two dataset skeletons: HumanML3D's 22 SMPL joints at 20 fps and KIT-ML's 21 joints at 12.5 fps.

The synthetic world animates on HumanML3D's skeleton and writes KIT-ML's layout through
``to_skeleton(joints, HUMANML3D, KIT)``; the judge, whose thresholds are set for HumanML3D's joints at 20 fps,
reads a KIT-ML motion through ``to_skeleton(joints, KIT, HUMANML3D)``.

The correspondence is by anatomy (both bodies face +z with their left at +x, as every clip of the project):

    KIT-ML            HumanML3D (SMPL)
    root              pelvis
    torso             spine1
    chest             spine3
    neck, head        neck, head
    <side>_shoulder   <side>_shoulder (the arm's root; SMPL's collar has no KIT-ML joint)
    <side>_elbow, _wrist, _hip, _knee, _ankle: the joint of the same name
    <side>_heel       on ankle -> foot, at KIT-ML's share of its ankle -> toe length (heel 0.05 of 0.21 m)
    <side>_toe        <side>_foot (SMPL's foot joint sits at the ball of the foot)

and back: spine2 halfway between torso and chest, each collar where SMPL's rest pose puts it on chest ->
shoulder, and foot on ankle -> toe at SMPL's ankle -> foot length over KIT-ML's ankle -> toe length. Going to KIT-ML
only the directions matter: feature extraction gives every bone KIT-ML's length. Positions stay in metres (the
released KIT-ML stores millimetres; ``skeleton.KIT``'s rest pose is in metres, so the features are too).

The frame rate changes on the target skeleton with ``mocap.resample``, which turns each bone along the great
circle so that limbs keep their length between frames.
"""

from __future__ import annotations

import numpy as np

from motionpref.motion.mocap import MocapClip, resample
from motionpref.motion.skeleton import HUMANML3D, KIT, Skeleton, forward_kinematics

# KIT-ML joint <- SMPL joint of the same body part (heel and toe are placed on the SMPL foot below)
_KIT_FROM_SMPL = {
    "root": "pelvis", "torso": "spine1", "chest": "spine3", "neck": "neck", "head": "head",
    **{f"{side}_{part}": f"{side}_{part}" for side in ("left", "right")
       for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")},
}  # fmt: skip


def _rest_pose(skeleton: Skeleton) -> np.ndarray:
    identity = np.broadcast_to(np.eye(3), (1, skeleton.n_joints, 3, 3))
    return forward_kinematics(identity, np.zeros((1, 3)), skeleton)[0]


def _collar_fraction() -> float:
    """Where SMPL's rest pose puts the collar along spine3 -> shoulder (projected), the same on both sides."""
    rest = _rest_pose(HUMANML3D)
    chest, collar, shoulder = (rest[HUMANML3D.index(n)] for n in ("spine3", "left_collar", "left_shoulder"))
    return float(np.dot(collar - chest, shoulder - chest) / np.dot(shoulder - chest, shoulder - chest))


_KIT_FOOT = KIT.bone_lengths[KIT.index("left_heel")] + KIT.bone_lengths[KIT.index("left_toe")]
_HEEL_SHARE = KIT.bone_lengths[KIT.index("left_heel")] / _KIT_FOOT
_SMPL_FOOT_SHARE = HUMANML3D.bone_lengths[HUMANML3D.index("left_foot")] / _KIT_FOOT
_COLLAR_SHARE = _collar_fraction()


def smpl_to_kit(joints: np.ndarray) -> np.ndarray:
    """KIT-ML's 21 joints (T, 21, 3) of HumanML3D joints (T, 22, 3), frame by frame (see the module doc)."""
    smpl = _checked(joints, HUMANML3D)
    out = np.empty((len(smpl), KIT.n_joints, 3))
    for kit_name, smpl_name in _KIT_FROM_SMPL.items():
        out[:, KIT.index(kit_name)] = smpl[:, HUMANML3D.index(smpl_name)]
    for side in ("left", "right"):
        ankle, foot = smpl[:, HUMANML3D.index(f"{side}_ankle")], smpl[:, HUMANML3D.index(f"{side}_foot")]
        out[:, KIT.index(f"{side}_heel")] = ankle + _HEEL_SHARE * (foot - ankle)
        out[:, KIT.index(f"{side}_toe")] = foot
    return out


def kit_to_smpl(joints: np.ndarray) -> np.ndarray:
    """HumanML3D's 22 joints (T, 22, 3) of KIT-ML joints (T, 21, 3), frame by frame (see the module doc)."""
    kit = _checked(joints, KIT)
    out = np.empty((len(kit), HUMANML3D.n_joints, 3))
    for kit_name, smpl_name in _KIT_FROM_SMPL.items():
        out[:, HUMANML3D.index(smpl_name)] = kit[:, KIT.index(kit_name)]
    torso, chest = kit[:, KIT.index("torso")], kit[:, KIT.index("chest")]
    out[:, HUMANML3D.index("spine2")] = (torso + chest) / 2
    for side in ("left", "right"):
        shoulder = kit[:, KIT.index(f"{side}_shoulder")]
        out[:, HUMANML3D.index(f"{side}_collar")] = chest + _COLLAR_SHARE * (shoulder - chest)
        ankle, toe = kit[:, KIT.index(f"{side}_ankle")], kit[:, KIT.index(f"{side}_toe")]
        out[:, HUMANML3D.index(f"{side}_foot")] = ankle + _SMPL_FOOT_SHARE * (toe - ankle)
    return out


_RETARGET = {("humanml3d", "kit"): smpl_to_kit, ("kit", "humanml3d"): kit_to_smpl}


def to_skeleton(joints: np.ndarray, source: Skeleton, target: Skeleton) -> np.ndarray:
    """Joints (T, J, 3) of ``source`` at its fps as joints (T', J', 3) of ``target`` at its fps; ``joints`` itself
    when the two are one skeleton."""
    if source.name == target.name:
        return joints
    positions = _RETARGET[source.name, target.name](joints)
    clip = MocapClip(target.joint_names, target.parents, positions, _rest_pose(target), source.fps, source.name)
    return resample(clip, target.fps).positions


def _checked(joints: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (skeleton.n_joints, 3):
        raise ValueError(
            f"expected joints (T, {skeleton.n_joints}, 3) of the {skeleton.name} skeleton, got shape {joints.shape}"
        )
    return joints
