"""Motion-capture import: BVH and ASF/AMC files to world joint positions, and retargeting of CMU skeletons
onto the 22 HumanML3D (SMPL) joints at 20 fps.

The parsers are hand-written: both formats are small line-oriented text formats, and a parser of our own
reports errors by file and line without pulling in a dependency.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from motionpref.motion.skeleton import HUMANML3D

STANDING_HEIGHT = 1.7  # metres, sole to head top, of every retargeted body
_SMPL_HEAD_TO_TOP = 0.17  # metres from the SMPL head joint to the head top (see skeleton.py)
_INCH = 0.0254


class MocapFormatError(ValueError):
    """A malformed motion-capture file; the message starts with ``path:line:``."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class MocapClip:
    """World positions of a mocap skeleton's points (BVH joints and end sites, or ASF root and bone ends)."""

    names: tuple[str, ...]
    parents: tuple[int, ...]  # parent point of each point, -1 for the root; parents come first
    positions: np.ndarray  # (T, J, 3) metres, y-up
    rest: np.ndarray  # (J, 3) metres, the pose with every rotation zero
    fps: float
    source: str

    @property
    def n_frames(self) -> int:
        return len(self.positions)


# ---------------------------------------------------------------------------------------------------- BVH


@dataclass
class _BvhJoint:
    name: str
    parent: int
    offset: np.ndarray
    channels: list[str]


_BVH_TOKEN = re.compile(r"[{}]|[^\s{}]+")
_BVH_CHANNELS = {f"{a}{kind}" for a in "xyz" for kind in ("position", "rotation")}


class _Tokens:
    def __init__(self, path: Path, lines: list[str], end: int) -> None:
        self.path = path
        self.items = [(tok, i + 1) for i in range(end) for tok in _BVH_TOKEN.findall(lines[i])]
        self.pos = 0
        self.last_line = end

    def peek(self) -> str | None:
        return self.items[self.pos][0] if self.pos < len(self.items) else None

    def take(self, what: str) -> tuple[str, int]:
        if self.pos >= len(self.items):
            raise MocapFormatError(self.path, self.last_line, f"unexpected end of hierarchy, expected {what}")
        self.pos += 1
        return self.items[self.pos - 1]

    def expect(self, literal: str) -> int:
        tok, line = self.take(repr(literal))
        if tok.lower() != literal.lower():
            raise MocapFormatError(self.path, line, f"expected {literal!r}, got {tok!r}")
        return line

    def number(self, what: str) -> float:
        tok, line = self.take(what)
        try:
            return float(tok)
        except ValueError:
            raise MocapFormatError(self.path, line, f"expected a number ({what}), got {tok!r}") from None


def load_bvh(path: str | Path, unit: float | None = None) -> MocapClip:
    """Read a BVH file. ``unit`` is metres per file unit; None scales the rest pose to 1.7 m tall.

    Rotation channels compose in the listed order about the joint's rotating axes (``Zrotation Yrotation
    Xrotation`` is R = Rz Ry Rx), in degrees; position channels replace the joint's OFFSET.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    motion_at = next((i for i, ln in enumerate(lines) if ln.strip().upper() == "MOTION"), None)
    if motion_at is None:
        raise MocapFormatError(path, len(lines), "no MOTION section")
    tokens = _Tokens(path, lines, motion_at)
    tokens.expect("HIERARCHY")
    tokens.expect("ROOT")
    joints: list[_BvhJoint] = []
    _bvh_joint(tokens, joints, parent=-1)
    if tokens.peek() is not None:
        tok, line = tokens.take("end of hierarchy")
        raise MocapFormatError(path, line, f"expected MOTION after the root joint, got {tok!r}")

    n_frames, frame_time = _bvh_header(path, lines, motion_at)
    n_channels = sum(len(j.channels) for j in joints)
    rows = [(i + 1, ln) for i, ln in enumerate(lines[motion_at + 3 :], start=motion_at + 3) if ln.strip()]
    if len(rows) != n_frames:
        raise MocapFormatError(path, len(lines), f"'Frames: {n_frames}' but {len(rows)} frame lines follow")
    data = np.empty((n_frames, n_channels))
    for k, (line, text) in enumerate(rows):
        values = text.split()
        if len(values) != n_channels:
            raise MocapFormatError(path, line, f"expected {n_channels} channel values, got {len(values)}")
        try:
            data[k] = [float(v) for v in values]
        except ValueError:
            raise MocapFormatError(path, line, "frame values must be numbers") from None

    T = n_frames
    local_rot = np.broadcast_to(np.eye(3), (T, len(joints), 3, 3)).copy()
    local_pos = np.broadcast_to(np.stack([j.offset for j in joints]), (T, len(joints), 3)).copy()
    column = 0
    for k, joint in enumerate(joints):
        values = data[:, column : column + len(joint.channels)]
        column += len(joint.channels)
        rot = [(c[0], i) for i, c in enumerate(joint.channels) if c.endswith("rotation")]
        if rot:
            order = "".join(axis.upper() for axis, _ in rot)  # upper case: intrinsic, as BVH composes
            angles = values[:, [i for _, i in rot]]
            local_rot[:, k] = Rotation.from_euler(order, angles, degrees=True).as_matrix()
        for i, c in enumerate(joint.channels):
            if c.endswith("position"):
                local_pos[:, k, "xyz".index(c[0])] = values[:, i]
    parents = tuple(j.parent for j in joints)
    positions = _forward_kinematics(parents, local_rot, local_pos, rotate_by_self=False)
    rest = _rest_pose(parents, np.stack([j.offset for j in joints]), rotate_by_self=False)
    if unit is None:
        height = np.ptp(rest[:, 1])
        if height <= 0:
            raise MocapFormatError(path, None, "the rest pose has no height; pass unit= explicitly")
        unit = STANDING_HEIGHT / height
    return MocapClip(
        names=tuple(j.name for j in joints),
        parents=parents,
        positions=positions * unit,
        rest=rest * unit,
        fps=_snap_rate(1.0 / frame_time),
        source=str(path),
    )


def _snap_rate(fps: float) -> float:
    """120 for 1 / 0.0083333: BVH writers round the frame time."""
    return float(round(fps)) if abs(fps - round(fps)) < 1e-4 * fps else fps


def _bvh_joint(tokens: _Tokens, joints: list[_BvhJoint], parent: int) -> None:
    name, line = tokens.take("a joint name")
    if name == "{":
        raise MocapFormatError(tokens.path, line, "joint without a name")
    index = len(joints)
    tokens.expect("{")
    tokens.expect("OFFSET")
    offset = np.array([tokens.number("OFFSET x"), tokens.number("OFFSET y"), tokens.number("OFFSET z")])
    tokens.expect("CHANNELS")
    count_tok, count_line = tokens.take("the channel count")
    if not count_tok.isdigit():
        raise MocapFormatError(tokens.path, count_line, f"expected the channel count, got {count_tok!r}")
    channels = []
    for _ in range(int(count_tok)):
        tok, tok_line = tokens.take("a channel name")
        if tok.lower() not in _BVH_CHANNELS:
            raise MocapFormatError(tokens.path, tok_line, f"unknown channel {tok!r}")
        channels.append(tok.lower())
    joints.append(_BvhJoint(name, parent, offset, channels))
    while True:
        tok, tok_line = tokens.take("JOINT, End Site or '}'")
        if tok == "}":
            return
        if tok.upper() == "JOINT":
            _bvh_joint(tokens, joints, index)
        elif tok.upper() == "END":
            tokens.expect("Site")
            tokens.expect("{")
            tokens.expect("OFFSET")
            end = np.array([tokens.number("OFFSET x"), tokens.number("OFFSET y"), tokens.number("OFFSET z")])
            tokens.expect("}")
            joints.append(_BvhJoint(f"{name}_end", index, end, []))
        else:
            raise MocapFormatError(tokens.path, tok_line, f"expected JOINT, End Site or '}}', got {tok!r}")


def _bvh_header(path: Path, lines: list[str], motion_at: int) -> tuple[int, float]:
    def field(offset: int, label: str, kind: type) -> int | float:
        line = motion_at + offset + 1
        text = lines[line - 1].strip() if line <= len(lines) else ""
        if not text.lower().startswith(label.lower()):
            raise MocapFormatError(path, line, f"expected '{label} ...', got {text!r}")
        try:
            value = kind(text[len(label) :].strip())
        except ValueError:
            raise MocapFormatError(path, line, f"expected a number after '{label}'") from None
        if value <= 0:
            raise MocapFormatError(path, line, f"'{label}' must be positive")
        return value

    return int(field(1, "Frames:", int)), float(field(2, "Frame Time:", float))


# ------------------------------------------------------------------------------------------------ ASF/AMC


@dataclass
class _Bone:
    name: str = ""
    direction: np.ndarray | None = None
    length: float | None = None
    axis: np.ndarray = field(default_factory=lambda: np.zeros(3))
    axis_order: str = "XYZ"
    dofs: tuple[str, ...] = ()


_ROOT_DOFS = ("TX", "TY", "TZ", "RX", "RY", "RZ")


@dataclass
class _Asf:
    length_unit: float = 1.0
    degrees: bool = True
    root_order: tuple[str, ...] = _ROOT_DOFS
    root_axis_order: str = "XYZ"
    root_position: np.ndarray = field(default_factory=lambda: np.zeros(3))
    root_orientation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    bones: dict[str, _Bone] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # "root" then the bones, breadth first


def load_asf_amc(asf_path: str | Path, amc_path: str | Path, fps: float = 120.0) -> MocapClip:
    """Read an Acclaim skeleton (ASF) and motion (AMC); AMC stores no frame rate (CMU captures at 120 fps).

    Each bone's rotation is ``C M C^-1`` with C its ``axis`` and M its degrees of freedom, both composed as
    rotations about the fixed axes in the listed order (the CMU viewer's convention); a bone's end is its
    start plus its world rotation applied to ``direction * length``. Lengths use the CMU unit convention,
    inches divided by the ``:units length`` factor.
    """
    asf_path, amc_path = Path(asf_path), Path(amc_path)
    asf = _parse_asf(asf_path)
    order = asf.order
    parent_of = {kid: parent for parent, kids in asf.children.items() for kid in kids}
    parents = tuple(-1 if i == 0 else order.index(parent_of[n]) for i, n in enumerate(order))
    motion, degrees = _parse_amc(amc_path, asf)
    T = len(motion["root"])

    root_rot_dofs = [d for d in asf.root_order if d.startswith("R")]
    root_trans = np.zeros((T, 3))
    for i, dof in enumerate(asf.root_order):
        if dof.startswith("T"):
            root_trans[:, "XYZ".index(dof[1])] = motion["root"][:, i]
    root_angles = motion["root"][:, [asf.root_order.index(d) for d in root_rot_dofs]]
    local_rot = np.empty((T, len(order), 3, 3))
    local_rot[:, 0] = _axis_frame(
        asf.root_axis_order,
        asf.root_orientation,
        asf.degrees,
        "".join(d[1] for d in root_rot_dofs),
        root_angles,
        degrees,
    )
    local_pos = np.zeros((T, len(order), 3))
    local_pos[:, 0] = asf.root_position + root_trans
    rest_pos = np.zeros((len(order), 3))
    rest_pos[0] = asf.root_position
    for k, name in enumerate(order[1:], start=1):
        bone = asf.bones[name]
        local_rot[:, k] = _axis_frame(
            bone.axis_order,
            bone.axis,
            asf.degrees,
            "".join(d[1] for d in bone.dofs),
            motion.get(name),
            degrees,
        )
        local_pos[:, k] = rest_pos[k] = bone.direction * bone.length
    positions = _forward_kinematics(parents, local_rot, local_pos, rotate_by_self=True)
    rest = _rest_pose(parents, rest_pos, rotate_by_self=True)
    unit = _INCH / asf.length_unit
    return MocapClip(
        names=tuple(order),
        parents=parents,
        positions=positions * unit,
        rest=rest * unit,
        fps=fps,
        source=f"{asf_path}+{amc_path}",
    )


def _axis_frame(
    axis_order: str,
    axis: np.ndarray,
    axis_degrees: bool,
    dof_order: str,
    angles: np.ndarray | None,
    degrees: bool,
) -> np.ndarray:
    """Local rotations C M C^-1 (T, 3, 3), or (1, 3, 3) without degrees of freedom."""
    c = Rotation.from_euler(axis_order.lower(), axis, degrees=axis_degrees).as_matrix()
    if not dof_order:
        return np.eye(3)[None]
    m = Rotation.from_euler(dof_order.lower(), angles, degrees=degrees).as_matrix()
    return c @ m @ c.T


def _floats(path: Path, line: int, tokens: Sequence[str], count: int, what: str) -> np.ndarray:
    if len(tokens) != count:
        raise MocapFormatError(path, line, f"{what}: expected {count} numbers, got {len(tokens)}")
    try:
        return np.array([float(t) for t in tokens])
    except ValueError:
        raise MocapFormatError(path, line, f"{what}: expected numbers, got {' '.join(tokens)!r}") from None


def _parse_asf(path: Path) -> _Asf:
    asf = _Asf()
    section, bone, in_hierarchy = None, None, False
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        tokens = text.split()
        key = tokens[0].lower()
        if key.startswith(":"):
            if bone is not None:
                raise MocapFormatError(path, number, f"bone {bone.name!r} has no 'end'")
            section = key
            continue
        if section == ":units":
            if key == "length":
                asf.length_unit = float(_floats(path, number, tokens[1:], 1, "length")[0])
            elif key == "angle":
                if tokens[1:] not in (["deg"], ["rad"]):
                    raise MocapFormatError(path, number, f"angle unit must be deg or rad, got {text!r}")
                asf.degrees = tokens[1] == "deg"
        elif section == ":root":
            if key == "order":
                asf.root_order = tuple(t.upper() for t in tokens[1:])
                if len(set(asf.root_order)) != len(asf.root_order) or not set(asf.root_order) <= set(_ROOT_DOFS):
                    raise MocapFormatError(path, number, f"root order takes distinct {_ROOT_DOFS}, got {text!r}")
            elif key == "axis":
                asf.root_axis_order = _axis_order(path, number, tokens[1:])
            elif key == "position":
                asf.root_position = _floats(path, number, tokens[1:], 3, "position")
            elif key == "orientation":
                asf.root_orientation = _floats(path, number, tokens[1:], 3, "orientation")
            else:
                raise MocapFormatError(path, number, f"unknown :root field {tokens[0]!r}")
        elif section == ":bonedata":
            bone = _bonedata_line(path, number, tokens, bone, asf.bones)
        elif section == ":hierarchy":
            if key == "begin":
                in_hierarchy = True
            elif key == "end":
                in_hierarchy = False
            elif not in_hierarchy:
                raise MocapFormatError(path, number, "hierarchy line outside begin/end")
            else:
                for name in tokens:
                    if name != "root" and name not in asf.bones:
                        raise MocapFormatError(path, number, f"bone {name!r} is not in :bonedata")
                for name in tokens[1:]:
                    if name == "root" or any(name in kids for kids in asf.children.values()):
                        raise MocapFormatError(path, number, f"bone {name!r} is given a parent twice")
                asf.children.setdefault(tokens[0], []).extend(tokens[1:])
    asf.order = ["root"]
    for name in asf.order:  # breadth first, so parents come before children
        asf.order.extend(asf.children.get(name, []))
    missing = [name for name in asf.bones if name not in asf.order]
    if missing:
        raise MocapFormatError(path, None, f"bones not connected to root in :hierarchy: {missing}")
    return asf


def _axis_order(path: Path, number: int, tokens: list[str]) -> str:
    order = tokens[-1].upper() if tokens else ""
    if sorted(order) != ["X", "Y", "Z"]:
        raise MocapFormatError(path, number, f"expected an axis order such as XYZ, got {' '.join(tokens)!r}")
    return order


def _bonedata_line(
    path: Path, number: int, tokens: list[str], bone: _Bone | None, bones: dict[str, _Bone]
) -> _Bone | None:
    key = tokens[0].lower()
    if key == "begin":
        if bone is not None:
            raise MocapFormatError(path, number, f"'begin' inside bone {bone.name!r}")
        return _Bone()
    if bone is None:
        raise MocapFormatError(path, number, f"{tokens[0]!r} outside a begin/end bone block")
    if key == "end":
        for attr in ("direction", "length"):
            if getattr(bone, attr) is None:
                raise MocapFormatError(path, number, f"bone {bone.name or '?'!r} has no {attr}")
        if not bone.name:
            raise MocapFormatError(path, number, "bone without a name")
        bones[bone.name] = bone
        return None
    if key == "name":
        bone.name = tokens[1] if len(tokens) == 2 else ""
    elif key == "direction":
        bone.direction = _floats(path, number, tokens[1:], 3, "direction")
    elif key == "length":
        bone.length = float(_floats(path, number, tokens[1:], 1, "length")[0])
    elif key == "axis":
        bone.axis = _floats(path, number, tokens[1:4], 3, "axis")
        bone.axis_order = _axis_order(path, number, tokens[4:])
    elif key == "dof":
        dofs = tuple(t.lower() for t in tokens[1:])
        bad = [d for d in dofs if d not in ("rx", "ry", "rz")]
        if bad or len(set(dofs)) != len(dofs):
            raise MocapFormatError(path, number, f"only rotational dofs rx ry rz are supported, got {dofs}")
        bone.dofs = dofs
    elif key not in ("id", "limits", "bodymass", "cofmass") and not tokens[0].startswith("("):
        raise MocapFormatError(path, number, f"unknown bone field {tokens[0]!r}")
    return bone


def _parse_amc(path: Path, asf: _Asf) -> tuple[dict[str, np.ndarray], bool]:
    sizes = {"root": len(asf.root_order)} | {n: len(asf.bones[n].dofs) for n in asf.order[1:] if asf.bones[n].dofs}
    frames: list[dict[str, np.ndarray]] = []
    frame_lines: list[int] = []
    degrees = asf.degrees
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith(":"):
            if text.upper() in (":DEGREES", ":RADIANS"):
                degrees = text.upper() == ":DEGREES"
            continue
        tokens = text.split()
        if len(tokens) == 1 and tokens[0].isdigit():
            if frames:
                _check_frame(path, frame_lines[-1], frames[-1], sizes)
            if int(tokens[0]) != len(frames) + 1:
                raise MocapFormatError(path, number, f"expected frame {len(frames) + 1}, got frame {tokens[0]}")
            frames.append({})
            frame_lines.append(number)
            continue
        if not frames:
            raise MocapFormatError(path, number, f"motion line before the first frame number: {text!r}")
        name = tokens[0]
        if name not in sizes:
            raise MocapFormatError(path, number, f"bone {name!r} has no degrees of freedom in the ASF")
        frames[-1][name] = _floats(path, number, tokens[1:], sizes[name], name)
    if not frames:
        raise MocapFormatError(path, None, "no frames")
    _check_frame(path, frame_lines[-1], frames[-1], sizes)
    return {name: np.stack([f[name] for f in frames]) for name in sizes}, degrees


def _check_frame(path: Path, line: int, frame: dict[str, np.ndarray], sizes: dict[str, int]) -> None:
    missing = [n for n in sizes if n not in frame]
    if missing:
        raise MocapFormatError(path, line, f"frame starting here lacks bones {missing}")


# ------------------------------------------------------------------------------------- kinematics, resampling


def _forward_kinematics(
    parents: Sequence[int], local_rot: np.ndarray, local_pos: np.ndarray, rotate_by_self: bool
) -> np.ndarray:
    """World positions (T, J, 3). Point j sits at its parent plus ``local_pos[:, j]`` rotated by the world
    rotation of its parent (BVH joints) or by its own (ASF bone ends). Inputs broadcast over T."""
    T = max(local_rot.shape[0], local_pos.shape[0])
    J = len(parents)
    glob = np.empty((T, J, 3, 3))
    pos = np.empty((T, J, 3))
    for j, p in enumerate(parents):
        if p < 0:
            glob[:, j] = local_rot[:, j]
            pos[:, j] = local_pos[:, j]
            continue
        glob[:, j] = glob[:, p] @ local_rot[:, j]
        frame = glob[:, j] if rotate_by_self else glob[:, p]
        pos[:, j] = pos[:, p] + (frame @ local_pos[:, j, :, None])[..., 0]
    return pos


def _rest_pose(parents: Sequence[int], offsets: np.ndarray, rotate_by_self: bool) -> np.ndarray:
    identity = np.broadcast_to(np.eye(3), (1, len(parents), 3, 3))
    return _forward_kinematics(parents, identity, offsets[None], rotate_by_self)[0]


def resample(clip: MocapClip, fps: float) -> MocapClip:
    """The clip at ``fps``: the root moves linearly between frames and each bone turns along the great circle
    (slerp of bone directions, lengths interpolated), so bones keep their lengths and limbs do not shrink."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if np.isclose(fps, clip.fps):
        return clip
    T = clip.n_frames
    n = int(np.floor((T - 1) * fps / clip.fps + 1e-9)) + 1
    t = np.arange(n) * clip.fps / fps
    i0 = np.minimum(np.floor(t).astype(int), max(T - 2, 0))
    i1 = np.minimum(i0 + 1, T - 1)
    w = (t - i0)[:, None]
    p = clip.positions
    parent_idx = [max(q, 0) for q in clip.parents]
    bones = p - p[:, parent_idx]
    a, b = bones[i0], bones[i1]
    la, lb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    out_bones = a + w[..., None] * (b - a)  # zero-length bones: plain interpolation
    ok = (la > 1e-9) & (lb > 1e-9)
    ua, ub = a[ok] / la[ok, None], b[ok] / lb[ok, None]
    cross = np.cross(ua, ub)
    angle = np.arctan2(np.linalg.norm(cross, axis=-1), np.sum(ua * ub, axis=-1))
    sin = np.linalg.norm(cross, axis=-1, keepdims=True)
    axis = np.divide(cross, sin, out=np.zeros_like(cross), where=sin > 1e-12)
    weight = np.broadcast_to(w, ok.shape)[ok]
    turned = Rotation.from_rotvec(axis * (angle * weight)[:, None]).apply(ua)
    out_bones[ok] = turned * (la[ok] + weight * (lb[ok] - la[ok]))[:, None]
    out = np.empty_like(out_bones)
    for j, q in enumerate(clip.parents):
        out[:, j] = p[i0, j] + w * (p[i1, j] - p[i0, j]) if q < 0 else out[:, q] + out_bones[:, j]
    return MocapClip(clip.names, clip.parents, out, clip.rest, float(fps), clip.source)


# -------------------------------------------------------------------------------------- retargeting to SMPL

# CMU points by naming scheme (cgspeed BVH joints; ASF root and bone ends). "neck_base" is where the
# clavicles and the neck start; "spine" and "head_chain" are the points between pelvis and neck base, and
# between neck base and head top.
_CMU_POINTS = {
    "bvh": {
        "pelvis": "Hips", "left_hip": "LeftUpLeg", "right_hip": "RightUpLeg", "left_knee": "LeftLeg",
        "right_knee": "RightLeg", "left_ankle": "LeftFoot", "right_ankle": "RightFoot",
        "left_foot": "LeftToeBase", "right_foot": "RightToeBase", "left_toe_tip": "LeftToeBase_end",
        "left_shoulder": "LeftArm", "right_shoulder": "RightArm", "left_elbow": "LeftForeArm",
        "right_elbow": "RightForeArm", "left_wrist": "LeftHand", "right_wrist": "RightHand",
        "neck_base": "Neck", "head_top": "Head_end", "spine": ("Spine", "Spine1"),
        "head_chain": ("Neck1", "Head"),
    },
    "asf": {
        "pelvis": "root", "left_hip": "lhipjoint", "right_hip": "rhipjoint", "left_knee": "lfemur",
        "right_knee": "rfemur", "left_ankle": "ltibia", "right_ankle": "rtibia", "left_foot": "lfoot",
        "right_foot": "rfoot", "left_toe_tip": "ltoes", "left_shoulder": "lclavicle",
        "right_shoulder": "rclavicle", "left_elbow": "lhumerus", "right_elbow": "rhumerus",
        "left_wrist": "lradius", "right_wrist": "rradius", "neck_base": "thorax", "head_top": "head",
        "spine": ("lowerback", "upperback"), "head_chain": ("lowerneck", "upperneck"),
    },
}  # fmt: skip
_DIRECT = (
    "pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_foot",
    "right_foot", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
    "right_wrist",
)  # fmt: skip


def _smpl_proportions() -> tuple[np.ndarray, np.ndarray, float]:
    """From the SMPL rest pose: where spine1..3 sit along pelvis->neck (arc-length fractions), how far the
    neck and head joints sit below the head top (metres), and how far the collar sits from the upper-spine
    midpoint towards the shoulder (fraction)."""
    ix = HUMANML3D.index
    lengths = HUMANML3D.bone_lengths
    spine = np.cumsum([lengths[ix(n)] for n in ("spine1", "spine2", "spine3", "neck")])
    below_top = np.array([lengths[ix("head")] + _SMPL_HEAD_TO_TOP, _SMPL_HEAD_TO_TOP])
    rest = np.zeros((HUMANML3D.n_joints, 3))
    for j, p in enumerate(HUMANML3D.parents):
        if p >= 0:
            rest[j] = rest[p] + HUMANML3D.rest_offsets[j]
    anchor = (rest[ix("spine3")] + rest[ix("neck")]) / 2
    to_shoulder = rest[ix("left_shoulder")] - anchor
    collar = float(np.dot(rest[ix("left_collar")] - anchor, to_shoulder) / np.dot(to_shoulder, to_shoulder))
    return spine[:3] / spine[3], below_top, collar


_SPINE_FRACTIONS, _NECK_HEAD_BELOW_TOP, _COLLAR_FRACTION = _smpl_proportions()


def _scheme(clip: MocapClip) -> dict:
    names = set(clip.names)
    best = None
    for scheme in _CMU_POINTS.values():
        wanted = [v for value in scheme.values() for v in ((value,) if isinstance(value, str) else value)]
        missing = [n for n in wanted if n not in names]
        if not missing:
            return scheme
        if best is None or len(missing) < len(best):
            best = missing
    raise ValueError(f"{clip.source}: not a CMU skeleton (BVH or ASF naming); missing points {best}")


def _along(points: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Points (T, F, 3) at arc-length ``fractions`` of the polylines ``points`` (T, K, 3)."""
    seg = np.diff(points, axis=1)
    seg_len = np.linalg.norm(seg, axis=-1)
    cum = np.concatenate([np.zeros((len(points), 1)), np.cumsum(seg_len, axis=1)], axis=1)
    target = fractions[None, :] * cum[:, -1:]
    idx = np.clip((cum[:, None, 1:] < target[:, :, None]).sum(-1), 0, seg.shape[1] - 1)
    rows = np.arange(len(points))[:, None]
    length = seg_len[rows, idx]
    local = np.divide(target - cum[rows, idx], length, out=np.zeros_like(length), where=length > 1e-12)
    return points[rows, idx] + local[..., None] * seg[rows, idx]


def standing_height(clip: MocapClip) -> float:
    """Sole to head top of a CMU clip's rest pose with the legs straight (the CMU rest pose splays them)."""
    s = _scheme(clip)
    r = {name: clip.rest[clip.names.index(name)] for name in clip.names}
    hip, knee, ankle = r[s["left_hip"]], r[s["left_knee"]], r[s["left_ankle"]]
    sole = min(ankle[1], r[s["left_foot"]][1], r[s["left_toe_tip"]][1])
    leg = np.linalg.norm(knee - hip) + np.linalg.norm(ankle - knee)
    return float(r[s["head_top"]][1] - hip[1] + leg + ankle[1] - sole)


def to_humanml3d(clip: MocapClip, fps: float = HUMANML3D.fps) -> np.ndarray:
    """Joint positions (T, 22, 3) of the HumanML3D skeleton at ``fps``, scaled to stand 1.7 m tall.

    Direct CMU counterparts are used where they exist. CMU's neck starts below the shoulders, SMPL's above
    them, so the SMPL neck and head sit along the CMU neck at SMPL's distances below the head top; spine1..3
    sit along the spine up to that neck at SMPL's proportions, and each collar between the upper spine and
    the shoulder.
    """
    s = _scheme(clip)
    scale = STANDING_HEIGHT / standing_height(clip)
    clip = resample(clip, fps)
    ix = {name: i for i, name in enumerate(clip.names)}

    def at(*names: str, source: np.ndarray = clip.positions) -> np.ndarray:
        return source[..., [ix[n] for n in names], :] * scale

    out = np.empty((clip.n_frames, HUMANML3D.n_joints, 3))
    for joint in _DIRECT:
        out[:, HUMANML3D.index(joint)] = at(s[joint])[:, 0]
    neck_chain = (s["neck_base"], *s["head_chain"], s["head_top"])
    neck_length = np.sum(np.linalg.norm(np.diff(at(*neck_chain, source=clip.rest), axis=0), axis=-1))
    neck_head = _along(at(*neck_chain), np.clip(1.0 - _NECK_HEAD_BELOW_TOP / neck_length, 0.0, 1.0))
    out[:, HUMANML3D.index("neck")], out[:, HUMANML3D.index("head")] = neck_head[:, 0], neck_head[:, 1]
    spine_path = np.concatenate([at(s["pelvis"], *s["spine"], s["neck_base"]), neck_head[:, :1]], axis=1)
    spine = _along(spine_path, _SPINE_FRACTIONS)
    for k, joint in enumerate(("spine1", "spine2", "spine3")):
        out[:, HUMANML3D.index(joint)] = spine[:, k]
    anchor = (out[:, HUMANML3D.index("spine3")] + out[:, HUMANML3D.index("neck")]) / 2
    for side in ("left", "right"):
        shoulder = out[:, HUMANML3D.index(f"{side}_shoulder")]
        out[:, HUMANML3D.index(f"{side}_collar")] = anchor + _COLLAR_FRACTION * (shoulder - anchor)
    return out


def load_cmu_joints(source: str | Path | Sequence[str | Path], fps: float = HUMANML3D.fps) -> np.ndarray:
    """HumanML3D joints (T, 22, 3) of a CMU clip: a ``.bvh`` path or an ``(asf, amc)`` pair.

    The cgspeed BVH conversions of CMU open with a reference T-pose frame, which is dropped.
    """
    if isinstance(source, (str, Path)):
        if Path(source).suffix.lower() != ".bvh":
            raise ValueError(f"{source}: expected a .bvh file or an (asf, amc) pair")
        clip = load_bvh(source)
        return to_humanml3d(replace(clip, positions=clip.positions[1:]), fps)
    if len(source) != 2:
        raise ValueError(f"expected a .bvh path or an (asf, amc) pair, got {source!r}")
    return to_humanml3d(load_asf_amc(*source), fps)
