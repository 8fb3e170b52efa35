"""Procedural animation of action programs: joint positions (T, 22, 3), 20 fps, HumanML3D's frame and skeleton.

How a clip is made. The judge and every model downstream see only joint positions, so what has to be right is
where the joints are: planted feet that do not slide, bones of constant length, a body that keeps its balance.

1. Each segment writes, over its frame window, the pelvis path (position and heading) and a wanted pelvis height,
   trunk angles, hand targets relative to the shoulders, and foot events (a foot lifts at one time and lands on a
   world placement at another). Segments start and end standing, so they chain by concatenation.
2. A foot between events is planted: fixed in the world, rolling about the heel after a heel strike and about the
   toe before it lifts. The pelvis is lowered wherever a planted foot would be out of reach, which also gives
   walking its rise and fall.
3. The trunk is forward kinematics of the joint-angle curves (``forward_kinematics``); legs and arms are two-bone
   inverse kinematics towards the foot and hand targets, so bone lengths are exact and planted feet stay put.

Coordinates are y-up; the body starts at the origin facing +z with its left towards +x; turning left is a
positive rotation about +y. The floor is y = 0, where the toe joint rests when the foot is flat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter1d, minimum_filter1d
from scipy.spatial.transform import Rotation

from motionpref.motion.rotations import yaw_matrix
from motionpref.motion.skeleton import HUMANML3D, forward_kinematics
from motionpref.synth.programs import (
    FPS,
    IDLE_SECONDS,
    MAX_FRAMES,
    MIN_FRAMES,
    SPEED_FACTOR,
    Program,
    Segment,
    segment_seconds,
)

GRAVITY = 9.81
_SIGN = np.array([1.0, -1.0])  # side 0 is the left (+x), side 1 the right
_SIDE = {"left": 0, "right": 1}
_HIP, _KNEE, _ANKLE, _TOE = (1, 2), (4, 5), (7, 8), (10, 11)
_COLLAR, _SHOULDER, _ELBOW, _WRIST = (13, 14), (16, 17), (18, 19), (20, 21)
AMPLITUDE_FACTOR = {"small": 0.72, "normal": 1.0, "large": 1.28}  # scales strides, heights, depths, reaches

# Locomotion speed bands (m/s) at normal amplitude; the judge reads the same table.
WALK_SPEED = {"slow": 0.85, "normal": 1.25, "fast": 1.65}
RUN_SPEED = {"slow": 2.3, "normal": 3.0, "fast": 3.8}
BACKWARD_SPEED = {"slow": 0.5, "normal": 0.7, "fast": 0.95}
CIRCLE_SPEED = {"slow": 0.7, "normal": 1.0, "fast": 1.35}
SIDESTEP_METRES = 0.38  # lateral distance of one step-together at normal amplitude
JUMP_HEIGHT = 0.24  # pelvis rise in flight at normal amplitude (m)
JUMP_FORWARD_METRES = 0.75
KICK_HIP_FLEXION = np.radians(78.0)  # peak thigh elevation of a normal kick
SQUAT_DEPTH = 0.34  # pelvis drop of a normal squat (m)
LUNGE_STEP = 0.75
BOW_DEGREES = 45.0
TURN_STEPS = {45: 2, 90: 3, 135: 4, 180: 4}


# ----------------------------------------------------------------------------------------------------- style


@dataclass(frozen=True)
class Style:
    """Who moves and how: per-clip variation so that no two clips of one program are identical."""

    scale: float = 1.0  # body size (1.0 is the skeleton's ~1.72 m rest body)
    legs: float = 1.0  # leg length relative to the body
    torso: float = 1.0
    arms: float = 1.0
    tempo: float = 1.0  # multiplies every duration
    amplitude: float = 1.0  # multiplies strides, heights, depths and reaches
    arm_swing: float = 1.0
    posture: float = 0.03  # trunk lean forward (radians)
    step_width: float = 0.17  # ankle centres apart when standing, metres for a 1.0 body
    toe_out: float = 0.12  # radians each foot points outwards
    noise: float = 1.0  # size of the slow random wander of trunk, head and hands
    lead: int = 1  # the foot that steps first (0 left, 1 right)
    seed: int = 0  # seed of the wander

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Style:
        return cls(
            scale=float(np.clip(rng.normal(1.0, 0.045), 0.9, 1.1)),
            legs=float(np.clip(rng.normal(1.0, 0.025), 0.95, 1.05)),
            torso=float(np.clip(rng.normal(1.0, 0.025), 0.95, 1.05)),
            arms=float(np.clip(rng.normal(1.0, 0.025), 0.95, 1.05)),
            tempo=float(np.clip(rng.normal(1.0, 0.035), 0.93, 1.07)),
            amplitude=float(np.clip(rng.normal(1.0, 0.07), 0.85, 1.15)),
            arm_swing=float(np.clip(rng.normal(1.0, 0.2), 0.6, 1.4)),
            posture=float(rng.normal(0.03, 0.03)),
            step_width=float(rng.uniform(0.14, 0.2)),
            toe_out=float(rng.uniform(0.05, 0.2)),
            noise=float(rng.uniform(0.5, 1.5)),
            lead=int(rng.integers(2)),
            seed=int(rng.integers(2**31)),
        )


@dataclass(frozen=True)
class _Body:
    offsets: np.ndarray  # (22, 3) rest offsets of this body
    thigh: float
    shin: float
    upper_arm: float
    forearm: float
    toe: np.ndarray  # (2, 3) ankle -> toe joint, foot flat, facing +z
    heel: np.ndarray  # (2, 3) ankle -> heel point on the floor
    ankle_h: float  # ankle height with the foot flat
    width: float  # ankle centres apart when standing
    stand: float  # pelvis height when standing
    back: float  # ankles behind the pelvis when standing

    @property
    def leg(self) -> float:
        return self.thigh + self.shin

    @property
    def arm(self) -> float:
        return self.upper_arm + self.forearm


def _body(style: Style) -> _Body:
    off = HUMANML3D.rest_offsets * style.scale
    off[[1, 2, 4, 5, 7, 8, 10, 11]] *= style.legs
    off[[3, 6, 9, 12, 15]] *= style.torso
    off[[18, 19, 20, 21]] *= style.arms
    thigh, shin = float(np.linalg.norm(off[4])), float(np.linalg.norm(off[7]))
    toe = off[[10, 11]].copy()
    heel = np.zeros((2, 3))
    heel[:, 1], heel[:, 2] = toe[:, 1], -0.4 * toe[:, 2]
    ankle_h = float(-toe[0, 1])
    width = style.step_width * style.scale
    back = 0.03 * style.scale
    hip = off[1]
    dxz = np.hypot(width / 2 - hip[0], -back - hip[2])
    stand = ankle_h + np.sqrt((0.99 * (thigh + shin)) ** 2 - dxz**2) - hip[1]
    return _Body(
        offsets=off,
        thigh=thigh,
        shin=shin,
        upper_arm=float(np.linalg.norm(off[18])),
        forearm=float(np.linalg.norm(off[20])),
        toe=toe,
        heel=heel,
        ankle_h=ankle_h,
        width=width,
        stand=float(stand),
        back=back,
    )


# --------------------------------------------------------------------------------------------- curve helpers


def _smooth(x: np.ndarray | float) -> np.ndarray:
    """Minimum-jerk ease 0 -> 1 on [0, 1] (clamped outside)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


def _ramp(t: np.ndarray, a: float, b: float) -> np.ndarray:
    return _smooth((t - a) / max(b - a, 1e-6))


def _window(t: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    """0 before a, rising to 1 by b, 1 until c, back to 0 by d."""
    return _ramp(t, a, b) * (1.0 - _ramp(t, c, d))


def _bump(u: np.ndarray, peak: float = 0.5) -> np.ndarray:
    """0 at u = 0 and 1, 1 at ``peak``; smooth (zero slope at all three points)."""
    u = np.clip(u, 0.0, 1.0)
    rise = np.sin(0.5 * np.pi * u / peak) ** 2
    fall = np.sin(0.5 * np.pi * (1.0 - u) / (1.0 - peak)) ** 2
    return np.where(u < peak, rise, fall)


def _keys(u: np.ndarray, knots: list[float], values: list[float]) -> np.ndarray:
    """Key-frame curve through (knots, values): shape-preserving cubic (PCHIP), so it flows through monotone
    stretches without stopping at every key and holds still only at peaks and troughs."""
    return PchipInterpolator(knots, values, extrapolate=False)(np.clip(u, knots[0], knots[-1]))


def _wander(rng: np.random.Generator, t: np.ndarray, dims: int, fmin: float = 0.08, fmax: float = 0.5):
    """Slow random curves (len(t), dims) of unit RMS-ish size: a few sinusoids of random frequency and phase."""
    k = 3
    freq = rng.uniform(fmin, fmax, size=(k, dims))
    phase = rng.uniform(0, 2 * np.pi, size=(k, dims))
    amp = rng.uniform(0.5, 1.0, size=(k, dims))
    out = np.sum(amp * np.sin(2 * np.pi * freq * t[:, None, None] + phase), axis=1)
    return out / np.sqrt(0.5 * np.sum(amp**2, axis=0))


def _arm_dir(sign: float, elev: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Unit directions (n, 3) from the shoulder in the heading frame: ``elev`` 0 hangs down, pi/2 is horizontal,
    pi straight up; ``plane`` 0 is forwards, pi/2 sideways outwards."""
    elev, plane = np.broadcast_arrays(np.asarray(elev, float), np.asarray(plane, float))
    se = np.sin(elev)
    return np.stack([sign * np.sin(plane) * se, -np.cos(elev), np.cos(plane) * se], axis=-1)


def _rot_x(a: np.ndarray | float) -> np.ndarray:
    """Rotations (..., 3, 3) about +x; by hand because scipy's Rotation costs ~0.1 ms a call and this runs
    hundreds of times a clip."""
    c, s = np.cos(a), np.sin(a)
    m = np.zeros(np.shape(a) + (3, 3))
    m[..., 0, 0], m[..., 1, 1], m[..., 1, 2], m[..., 2, 1], m[..., 2, 2] = 1.0, c, -s, s, c
    return m


def _two_bone_ik(root: np.ndarray, target: np.ndarray, l1: float, l2: float, pole: np.ndarray):
    """Middle joint and end point of a two-bone chain reaching for ``target`` (law of cosines).

    Hand-written: the chain is analytic and must run vectorised over frames. The bend lies in the plane of the
    root-target line and ``pole``; unreachable targets are approached along the line, so bones keep lengths.
    """
    d_vec = target - root
    d = np.linalg.norm(d_vec, axis=-1, keepdims=True)
    u = d_vec / np.maximum(d, 1e-9)
    dc = np.clip(d, abs(l1 - l2) + 1e-4, (l1 + l2) * (1.0 - 1e-5))
    cos_a = np.clip((l1 * l1 + dc * dc - l2 * l2) / (2.0 * l1 * dc), -1.0, 1.0)
    v = pole - np.sum(pole * u, axis=-1, keepdims=True) * u
    v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)
    mid = root + l1 * (cos_a * u + np.sqrt(1.0 - cos_a * cos_a) * v)
    return mid, root + dc * u


def _softmin(values: list[np.ndarray], weights: list[np.ndarray], k: float) -> np.ndarray:
    """Smooth lower envelope -k log sum w exp(-v/k) of weighted curves; weights below 1e-3 drop a curve (the
    first curve should always be weighted, so the envelope is finite)."""
    v = np.stack(values)
    w = np.stack(weights)
    v = np.where(w >= 1e-3, v, np.inf)
    m = v.min(axis=0)
    return m - k * np.log(np.sum(w * np.exp(-(v - m) / k), axis=0))


# ------------------------------------------------------------------------------------------------ the builder


@dataclass
class _Step:
    """One foot leaving the floor at ``t_lift`` and landing flat-placed at ``place`` (x, z, yaw) by ``t_land``."""

    t_lift: float
    t_land: float
    place: np.ndarray
    lift_pitch: float = -0.6  # foot pitch when it leaves (+ toes up, - heel up)
    land_pitch: float = 0.25  # foot pitch when it lands
    roll_in: float = 0.12  # seconds from landing to a flat foot
    roll_out: float = 0.22  # seconds of heel (or toe) rise before lifting
    clearance: float = 0.1  # ankle rise above the straight line at the swing's peak
    peak: float = 0.35  # when in the swing the ankle is highest
    kind: str = "arc"  # "arc": a step; "flight": the foot travels with the hip (jumps); "kick"
    # kick: ankle relative to the hip in the heading frame and foot pitch, as functions of swing progress u
    kick: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    tuck: float = 0.0  # flight: ankles drawn up towards the hips at mid-flight


@dataclass(frozen=True)
class _Gait:
    """Foot timing of a stepping pattern; the pitches, rolls, clearance and peak are those of ``_Step``."""

    swing: float  # time in the air as a fraction of the step period (above 1: both feet off at times)
    land_pitch: float
    lift_pitch: float
    roll_in: float
    roll_out: float
    clearance: float
    peak: float
    ref: float  # the point of a stance (0..1) at which the foot is under the pelvis


_WALK = _Gait(0.75, 0.3, -0.95, 0.12, 0.3, 0.085, 0.33, 0.36)
_RUN = _Gait(1.4, 0.12, -0.75, 0.04, 0.1, 0.22, 0.42, 0.45)
_BACKWARD = _Gait(0.72, -0.35, 0.25, 0.12, 0.14, 0.1, 0.35, 0.55)
_SIDESTEP = _Gait(0.8, 0.05, -0.12, 0.08, 0.1, 0.07, 0.45, 0.5)
_SHUFFLE = _Gait(0.62, 0.08, -0.2, 0.08, 0.1, 0.065, 0.45, 0.5)
# per gait: its foot timing, its speed band, and how strongly the amplitude modifier lengthens the stride
_GAITS = {
    "walk": (_WALK, WALK_SPEED, 0.8),
    "run": (_RUN, RUN_SPEED, 0.3),
    "walk_backward": (_BACKWARD, BACKWARD_SPEED, 0.8),
    "circle": (_WALK, CIRCLE_SPEED, 0.8),
}


@dataclass(frozen=True)
class _Win:
    """A segment's frame window; curves are sampled at its n + 1 frame times 0 .. D (the last is the next
    window's first frame)."""

    f0: int
    f1: int
    T: int

    @property
    def n(self) -> int:
        return self.f1 - self.f0

    @property
    def t(self) -> np.ndarray:
        return np.arange(self.n + 1) / FPS

    @property
    def D(self) -> float:
        return self.n / FPS

    @property
    def t0(self) -> float:
        return self.f0 / FPS

    @property
    def sl(self) -> slice:
        return slice(self.f0, min(self.f1 + 1, self.T))

    @property
    def m(self) -> int:
        return min(self.f1 + 1, self.T) - self.f0


@dataclass
class _Builder:
    T: int
    body: _Body
    style: Style
    rng: np.random.Generator
    path: np.ndarray = field(init=False)  # (T, 2) pelvis x, z
    yaw: np.ndarray = field(init=False)  # (T,) heading
    height: np.ndarray = field(init=False)  # wanted pelvis height minus standing height
    pelvis: np.ndarray = field(init=False)  # (T, 2) pelvis pitch forward, roll (left side up)
    spine: np.ndarray = field(init=False)  # (T, 3) whole-spine bend forward, lean left, twist left
    neck: np.ndarray = field(init=False)  # (T, 2) head pitch forward, twist left
    gaze: np.ndarray = field(init=False)  # (T,) 1: the head keeps looking ahead whatever the trunk does
    hand: np.ndarray = field(init=False)  # (T, 2, 3) hand target offsets from the neutral ones (heading frame)
    pole: np.ndarray = field(init=False)  # (T, 2, 3) elbow pole offsets
    hand_world: np.ndarray = field(init=False)  # (T, 2, 3) world hand targets, used with weight hand_world_w
    hand_world_w: np.ndarray = field(init=False)
    arm_gain: np.ndarray = field(init=False)  # (T,) arm swing per metre of foot separation (rad / m)
    arm_bend: np.ndarray = field(init=False)  # (T,) 0 arms hang, 1 elbows bent as in running
    balance: np.ndarray = field(init=False)  # (T,) how far the pelvis shifts sideways over the support
    bob: np.ndarray = field(init=False)  # (T,) how far the pelvis sinks while both feet are down (m)
    stance_pitch: np.ndarray = field(init=False)  # (T, 2) extra pitch of planted feet (lunges)
    feet: list[list[_Step]] = field(init=False)
    x: float = 0.0
    z: float = 0.0
    heading: float = 0.0
    place0: np.ndarray = field(init=False)  # (2, 3) initial placements

    def __post_init__(self) -> None:
        T = self.T
        self.path, self.yaw, self.height = np.zeros((T, 2)), np.zeros(T), np.zeros(T)
        self.pelvis, self.spine, self.neck = np.zeros((T, 2)), np.zeros((T, 3)), np.zeros((T, 2))
        self.gaze = np.ones(T)
        self.hand, self.pole = np.zeros((T, 2, 3)), np.zeros((T, 2, 3))
        self.hand_world, self.hand_world_w = np.zeros((T, 2, 3)), np.zeros((T, 2))
        self.arm_gain, self.arm_bend = np.zeros(T), np.zeros(T)
        self.balance = np.full(T, 0.25)
        self.bob = np.zeros(T)
        self.stance_pitch = np.zeros((T, 2))
        self.feet = [[], []]
        self.place0 = np.stack([self.standing_place(s, 0.0, 0.0, 0.0) for s in (0, 1)])

    # -- pelvis path
    def standing_place(self, side: int, x: float, z: float, heading: float) -> np.ndarray:
        """Flat-foot placement (ankle x, ankle z, foot yaw) of ``side`` standing at pelvis pose (x, z, heading)."""
        s, c = np.sin(heading), np.cos(heading)
        half, back = _SIGN[side] * self.body.width / 2, self.body.back
        return np.array([x + half * c - back * s, z - half * s - back * c, heading + _SIGN[side] * self.style.toe_out])

    def move(self, w: _Win, fwd: np.ndarray, left: np.ndarray, turn: np.ndarray) -> None:
        """Pelvis path over the window from displacements in the body frame of the window's start."""
        s, c = np.sin(self.heading), np.cos(self.heading)
        x = self.x + fwd * s + left * c
        z = self.z + fwd * c - left * s
        yaw = self.heading + turn
        self.path[w.sl] = np.stack([x, z], -1)[: w.m]
        self.yaw[w.sl] = yaw[: w.m]
        self.x, self.z, self.heading = float(x[-1]), float(z[-1]), float(yaw[-1])
        self.path[w.f1 :] = (self.x, self.z)
        self.yaw[w.f1 :] = self.heading

    def pose_at(self, t: float) -> tuple[float, float, float]:
        f = np.arange(self.T)
        k = t * FPS
        return (
            float(np.interp(k, f, self.path[:, 0])),
            float(np.interp(k, f, self.path[:, 1])),
            float(np.interp(k, f, self.yaw)),
        )

    def add(self, name: str, w: _Win, values: np.ndarray, index: tuple = ()) -> None:
        """Add curves sampled at the window's times to a channel (``index`` picks a side or a component)."""
        getattr(self, name)[(w.sl, *index)] += values[: w.m]

    def steps(self, w: _Win, sides: list[int], lifts: np.ndarray, lands: np.ndarray, gait: _Gait) -> None:
        """Foot events of a stepping pattern; each foot lands where the pelvis will be at ``gait.ref`` of its
        stance (or, for a foot's last step of the window, where the pelvis ends), so stride and direction follow
        the pelvis path and the segment ends standing."""
        t_end = w.t0 + w.D
        for k, (side, tl, td) in enumerate(zip(sides, lifts, lands, strict=True)):
            nxt = [lifts[j] for j in range(k + 1, len(sides)) if sides[j] == side]
            t_ref = td + gait.ref * (nxt[0] - td) if nxt else t_end
            x, z, h = self.pose_at(t_ref)
            self.feet[side].append(
                _Step(
                    float(tl),
                    float(td),
                    self.standing_place(side, x, z, h),
                    lift_pitch=gait.lift_pitch,
                    land_pitch=gait.land_pitch,
                    roll_in=gait.roll_in,
                    roll_out=gait.roll_out,
                    clearance=gait.clearance,
                    peak=gait.peak,
                )
            )

    def current_place(self, side: int, t: float) -> np.ndarray:
        """Where ``side`` is planted at time t given the events written so far."""
        place = self.place0[side]
        for ev in self.feet[side]:
            if ev.t_land <= t:
                place = ev.place
        return place


# --------------------------------------------------------------------------------------------- the segments


def _split(w: _Win, seg: Segment) -> tuple[float, float]:
    """(time before the first repetition, duration of one repetition) of a counted segment."""
    spec = seg.spec
    n = seg.count or 1
    fixed = w.D * spec.fixed_seconds / (spec.fixed_seconds + n * spec.unit_seconds)
    return fixed, (w.D - fixed) / n


def _distance_profile(t: np.ndarray, start: float, end: float, ramp: float) -> np.ndarray:
    """0 -> 1 travelled fraction with a smooth start and stop (trapezoidal speed with eased corners)."""
    ramp = min(ramp, 0.5 * (end - start))
    v = _window(t, start, start + ramp, end - ramp, end)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]))])
    return cum / max(cum[-1], 1e-9)


def gait_expectation(seg: Segment) -> tuple[float, float]:
    """(steps per second, metres per step) of a walk, run, backward walk or circle segment at its nominal timing
    (what the judge expects; a clip's style varies both by a few percent, whatever the body size)."""
    _, speeds, amp_power = _GAITS[seg.primitive]
    tau = seg.spec.unit_seconds / SPEED_FACTOR[seg.speed]
    return 1.0 / tau, speeds[seg.speed] * AMPLITUDE_FACTOR[seg.amplitude] ** amp_power * tau


def _locomotion(
    b: _Builder, seg: Segment, w: _Win, heading: tuple[float, float], circle: float = 0.0, ramp: float = 0.9
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Counted steps along a straight line (``heading`` = forward, left components) or a full circle
    (``circle`` = +1 left, -1 right); ``ramp`` step periods to speed up and to slow down. Returns lifts,
    lands, the step period and a 0..1 curve of when the body is moving."""
    gait, speeds, amp_power = _GAITS[seg.primitive]
    n = seg.count or 2
    fixed, tau = _split(w, seg)
    t_first = fixed * b.rng.uniform(0.4, 0.55)
    lifts = t_first + tau * np.arange(n)
    lands = lifts + gait.swing * tau
    stride = speeds[seg.speed] * AMPLITUDE_FACTOR[seg.amplitude] ** amp_power * b.style.amplitude**0.5 * tau
    dist = stride * (n - 1)
    t = w.t
    prog = _distance_profile(t, t_first - 0.2 * tau, lands[-1] + 0.1 * tau, ramp * tau) * dist
    if circle:
        r = dist / (2 * np.pi)
        phi = prog / r
        b.move(w, r * np.sin(phi), circle * r * (1 - np.cos(phi)), circle * phi)
    else:
        b.move(w, heading[0] * prog, heading[1] * prog, np.zeros_like(t))
    lead = b.style.lead if circle == 0 else (1 if circle > 0 else 0)
    sides = [(lead + k) % 2 for k in range(n)]
    b.steps(w, sides, w.t0 + lifts, w.t0 + lands, gait)
    moving = _window(t, t_first - 0.25 * tau, t_first + 0.8 * tau, lands[-1] - 0.6 * tau, lands[-1] + 0.3 * tau)
    return lifts, lands, tau, moving


def _gen_walk(b: _Builder, seg: Segment, w: _Win) -> None:
    *_, moving = _locomotion(b, seg, w, (1.0, 0.0))
    b.add("arm_gain", w, 0.45 * b.style.arm_swing * moving)
    b.add("spine", w, 0.03 * moving * (WALK_SPEED[seg.speed] / 1.25), (0,))
    b.add("height", w, -0.012 * moving)
    b.add("bob", w, 0.035 * moving * b.style.scale)


def _gen_run(b: _Builder, seg: Segment, w: _Win) -> None:
    lifts, lands, tau, moving = _locomotion(b, seg, w, (1.0, 0.0), ramp=1.8)
    t = w.t
    low = lands[0] + 0.5 * (2.0 - _RUN.swing) * tau  # mid-stance of the first landing foot (stance: 2 - swing)
    bounce = -0.035 * np.cos(2 * np.pi * (t - low) / tau)
    b.add("height", w, moving * (-0.05 + bounce * AMPLITUDE_FACTOR[seg.amplitude] ** 0.5))
    b.add("arm_gain", w, 0.5 * b.style.arm_swing * moving)
    b.add("arm_bend", w, moving)
    b.add("spine", w, 0.13 * moving, (0,))
    b.add("balance", w, -0.15 * moving)


def _gen_walk_backward(b: _Builder, seg: Segment, w: _Win) -> None:
    *_, moving = _locomotion(b, seg, w, (-1.0, 0.0))
    b.add("arm_gain", w, 0.4 * b.style.arm_swing * moving)
    b.add("spine", w, 0.04 * moving, (0,))
    b.add("height", w, -0.02 * moving)


def _gen_circle(b: _Builder, seg: Segment, w: _Win) -> None:
    sign = 1.0 if seg.direction == "left" else -1.0
    *_, moving = _locomotion(b, seg, w, (1.0, 0.0), circle=sign)
    b.add("arm_gain", w, 0.5 * b.style.arm_swing * moving)
    b.add("spine", w, sign * 0.05 * moving, (1,))
    b.add("height", w, -0.015 * moving)


def _gen_sidestep(b: _Builder, seg: Segment, w: _Win) -> None:
    n = seg.count or 2
    sign = 1.0 if seg.direction == "left" else -1.0
    fixed, tau = _split(w, seg)
    t_first = fixed * b.rng.uniform(0.4, 0.55)
    lead = 0 if sign > 0 else 1
    lifts, lands, sides = [], [], []
    for k in range(n):
        a = t_first + k * tau
        lifts += [a, a + 0.5 * tau]
        lands += [a + 0.38 * tau, a + 0.88 * tau]
        sides += [lead, 1 - lead]
    dist = n * SIDESTEP_METRES * AMPLITUDE_FACTOR[seg.amplitude] * b.style.scale * b.style.amplitude**0.5
    prog = _distance_profile(w.t, t_first - 0.1 * tau, lands[-1] + 0.1 * tau, 0.6 * tau) * dist
    b.move(w, np.zeros_like(prog), sign * prog, np.zeros_like(prog))
    b.steps(w, sides, w.t0 + np.array(lifts), w.t0 + np.array(lands), _SIDESTEP)
    moving = _window(w.t, t_first - 0.2, t_first + 0.3, lands[-1] - 0.2, lands[-1] + 0.3)
    b.add("spine", w, sign * 0.03 * moving, (1,))
    b.add("hand", w, (moving * 0.05)[:, None] * np.array([1.0, 0.0, 0.0]), (0,))
    b.add("hand", w, (moving * 0.05)[:, None] * np.array([-1.0, 0.0, 0.0]), (1,))


def _turn(b: _Builder, w: _Win, degrees: float, sign: float, n_steps: int) -> None:
    """Stepping in place while the heading turns by ``degrees`` towards ``sign`` (+1 left)."""
    D = w.D
    t_first = D * b.rng.uniform(0.1, 0.16)
    period = (D * 0.86 - t_first) / (n_steps - 1 + _SHUFFLE.swing)
    lifts = t_first + period * np.arange(n_steps)
    lands = lifts + _SHUFFLE.swing * period
    turn = sign * np.radians(degrees) * _ramp(w.t, t_first - 0.15 * period, lands[-1] + 0.05 * period)
    b.move(w, 0.02 * np.sin(np.pi * _ramp(w.t, t_first, lands[-1])), np.zeros_like(turn), turn)
    first = 0 if sign > 0 else 1
    sides = [(first + k) % 2 for k in range(n_steps)]
    b.steps(w, sides, w.t0 + lifts, w.t0 + lands, _SHUFFLE)
    active = _window(w.t, t_first - 0.2, t_first + 0.2, lands[-1] - 0.2, lands[-1] + 0.2)
    b.add("spine", w, sign * 0.12 * active * np.sin(np.pi * _ramp(w.t, t_first - 0.2, lands[-1])), (2,))
    b.add("neck", w, sign * 0.15 * active, (1,))
    b.add("arm_gain", w, 0.3 * active)


def _gen_turn(b: _Builder, seg: Segment, w: _Win) -> None:
    angle = seg.angle or 90
    _turn(b, w, angle, 1.0 if seg.direction == "left" else -1.0, TURN_STEPS[angle])


def _gen_turn_around(b: _Builder, seg: Segment, w: _Win) -> None:
    _turn(b, w, 180.0, 1.0 if seg.direction == "left" else -1.0, TURN_STEPS[180])


def _jumps(b: _Builder, seg: Segment, w: _Win, forward: float) -> None:
    """Counted two-footed jumps: crouch, push off on the toes, ballistic flight, land on the toes and absorb."""
    n = seg.count or 1
    fixed, rep = _split(w, seg)
    amp = AMPLITUDE_FACTOR[seg.amplitude] * b.style.amplitude
    h = flight_height(seg, b.style.amplitude, rep)
    tf = np.sqrt(8 * h / GRAVITY)
    t = w.t
    start = fixed * 0.6
    take = start + 0.3 * rep + np.arange(n) * rep
    land = take + tf
    rise = 0.035 * b.style.scale  # pelvis above standing at take-off: extended legs on tiptoe
    depth = (0.12 + 0.35 * h) * b.style.scale
    height = np.zeros_like(t)
    crouch = np.zeros_like(t)
    for k in range(n):
        # crouch before take-off (the landing absorption of the previous jump flows into it)
        dip = take[k] - 0.22 * np.sqrt(rep / 0.8)
        crouch = np.maximum(crouch, np.exp(-0.5 * ((t - dip) / (0.06 + 0.03 * rep)) ** 2))
        crouch = np.maximum(crouch, 0.75 * np.exp(-0.5 * ((t - (land[k] + 0.12)) / 0.07) ** 2))
    height -= depth * crouch
    push = np.zeros_like(t)
    for k in range(n):
        push += rise * _window(t, take[k] - 0.1, take[k], land[k], land[k] + 0.08)
        fl = (t > take[k]) & (t < land[k])
        s = t[fl] - take[k]
        push[fl] += 0.5 * GRAVITY * s * (tf - s)  # ballistic: v0 = g tf / 2
    height += push
    b.add("height", w, height)
    # Horizontal travel: accelerate in the push, constant speed in the air, stop in the landing.
    if forward:
        v = np.zeros_like(t)
        for k in range(n):
            v += _window(t, take[k] - 0.18, take[k], land[k], land[k] + 0.2)
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]))])
        prog = cum / cum[-1] * forward * n * amp * b.style.scale
        b.move(w, prog, np.zeros_like(t), np.zeros_like(t))
    else:
        b.move(w, np.zeros_like(t), np.zeros_like(t), np.zeros_like(t))
    for k in range(n):
        ref = min(land[k] + 0.25, take[k + 1] - 0.05) if k + 1 < n else w.D
        x, z, hd = b.pose_at(w.t0 + ref)
        for side in (0, 1):
            jitter = b.rng.uniform(-0.012, 0.012)
            b.feet[side].append(
                _Step(
                    w.t0 + take[k] + jitter,
                    w.t0 + land[k] + jitter,
                    b.standing_place(side, x, z, hd),
                    lift_pitch=-0.75,
                    land_pitch=-0.45,
                    roll_in=0.1,
                    roll_out=0.14,
                    kind="flight",
                    tuck=0.06 + 0.25 * h,
                )
            )
    # Trunk pitches forward in the crouch; arms swing back in the crouch and forward-up at take-off.
    b.add("spine", w, 0.45 * crouch + 0.05 * (forward > 0), (0,))
    b.add("pelvis", w, 0.25 * crouch, (0,))
    swing = np.zeros_like(t)
    for k in range(n):
        swing += 1.3 * _window(t, take[k] - 0.12, take[k] + 0.05, land[k] - 0.1, land[k] + 0.1)
    swing -= 0.7 * crouch
    active = _window(t, start * 0.3, start, land[-1] + 0.15, w.D)
    for side in (0, 1):
        elev = 0.1 + swing * active * (0.75 + 0.4 * (forward > 0))
        target = 0.95 * b.body.arm * _arm_dir(_SIGN[side], np.abs(elev), np.where(elev < 0, np.pi, 0.35))
        b.add("hand", w, active[:, None] * (target - _neutral_hand(b, side)), (side,))


def flight_height(seg: Segment, amplitude: float = 1.0, rep: float | None = None) -> float:
    """Pelvis rise above take-off at the top of a jump of ``seg``: set by its amplitude, and lowered when a
    repetition (``rep`` seconds, default the nominal) leaves too little time in the air for it."""
    h = JUMP_HEIGHT * (AMPLITUDE_FACTOR[seg.amplitude] * amplitude) ** 1.3
    rep = seg.spec.unit_seconds / SPEED_FACTOR[seg.speed] if rep is None else rep
    tf = min(2 * np.sqrt(2 * h / GRAVITY), 0.62 * rep)
    return float(GRAVITY * tf**2 / 8)


def _gen_jump(b: _Builder, seg: Segment, w: _Win) -> None:
    _jumps(b, seg, w, 0.0)


def _gen_jump_forward(b: _Builder, seg: Segment, w: _Win) -> None:
    _jumps(b, seg, w, JUMP_FORWARD_METRES)


def _gen_kick(b: _Builder, seg: Segment, w: _Win) -> None:
    n = seg.count or 1
    side = _SIDE[seg.side or "right"]
    fixed, rep = _split(w, seg)
    start = fixed * 0.5
    amp = AMPLITUDE_FACTOR[seg.amplitude] * b.style.amplitude
    peak_hip = KICK_HIP_FLEXION * amp
    body = b.body
    t = w.t
    here = b.current_place(side, w.t0)

    def kick(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # chamber (knee up and bent), snap the shin out, hold, recoil, put the foot back down
        knots = [0.0, 0.28, 0.48, 0.58, 0.74, 1.0]
        hip = _keys(u, knots, [0.0, 0.7 * peak_hip, peak_hip, peak_hip, 0.65 * peak_hip, 0.0])
        knee = _keys(u, knots, [0.0, 1.75, 0.12, 0.15, 1.5, 0.0])
        thigh = np.stack([np.zeros_like(u), -np.cos(hip), np.sin(hip)], -1)
        shin_angle = hip - knee
        shin = np.stack([np.zeros_like(u), -np.cos(shin_angle), np.sin(shin_angle)], -1)
        ankle = body.thigh * thigh + body.shin * shin
        ankle[:, 0] += _SIGN[side] * 0.03
        pitch = shin_angle - 0.7 * _keys(u, knots, [0.0, 0.6, 1.0, 1.0, 0.6, 0.0])
        return ankle, pitch

    for k in range(n):
        a = start + k * rep
        b.feet[side].append(
            _Step(w.t0 + a + 0.2 * rep, w.t0 + a + 0.86 * rep, here, lift_pitch=-0.3, land_pitch=-0.1,
                  roll_in=0.1, roll_out=0.12, kind="kick", kick=kick)
        )  # fmt: skip
    b.move(w, np.zeros_like(t), np.zeros_like(t), np.zeros_like(t))
    active = _window(t, start * 0.5, start + 0.15 * rep, start + n * rep - 0.1 * rep, w.D)
    b.add("balance", w, 0.7 * active)
    ext = np.zeros_like(t)
    for k in range(n):
        ext += _bump(np.clip((t - start - k * rep - 0.2 * rep) / (0.66 * rep), 0, 1), 0.48)
    b.add("spine", w, -0.12 * ext * amp, (0,))
    b.add("spine", w, -_SIGN[side] * 0.06 * active, (1,))
    b.add("height", w, -0.015 * active)
    for s in (0, 1):  # guard: elbows bent, hands in front of the chest, the arm on the kick side back a bit
        guard = np.array([-_SIGN[s] * 0.05, 0.28, 0.2 - 0.08 * (s == side)]) * b.style.scale
        b.add("hand", w, active[:, None] * guard, (s,))
    b.add("arm_gain", w, 0.25 * active)


def _gen_squat(b: _Builder, seg: Segment, w: _Win) -> None:
    n = seg.count or 1
    fixed, rep = _split(w, seg)
    start = fixed * 0.5
    t = w.t
    amp = AMPLITUDE_FACTOR[seg.amplitude] * b.style.amplitude
    depth = min(SQUAT_DEPTH * amp**1.2, 0.52) * b.style.scale
    down = np.zeros_like(t)
    for k in range(n):
        a = start + k * rep
        down += _window(t, a + 0.02 * rep, a + 0.4 * rep, a + 0.52 * rep, a + 0.92 * rep)
    b.move(w, -0.3 * depth * down, np.zeros_like(t), np.zeros_like(t))
    b.add("height", w, -depth * down)
    b.add("pelvis", w, (0.25 + 0.5 * depth) * down, (0,))
    b.add("spine", w, (0.1 + 0.3 * depth) * down, (0,))
    b.add("gaze", w, -0.2 * down)
    on = np.clip(3.0 * down, 0.0, 1.0)
    for side in (0, 1):  # arms forward for balance
        target = 0.95 * b.body.arm * _arm_dir(_SIGN[side], 0.1 + 1.35 * down, 0.15 + 0.2 * (1 - down))
        b.add("hand", w, on[:, None] * (target - _neutral_hand(b, side)), (side,))


def _gen_lunge(b: _Builder, seg: Segment, w: _Win) -> None:
    n = seg.count or 1
    side = _SIDE[seg.side or "right"]
    fixed, rep = _split(w, seg)
    start = fixed * 0.5
    t = w.t
    amp = AMPLITUDE_FACTOR[seg.amplitude] * b.style.amplitude
    step = LUNGE_STEP * amp**0.6 * b.style.scale
    depth = min(0.22 * amp**0.8, 0.31) * b.style.scale
    fwd = np.zeros_like(t)
    down = np.zeros_like(t)
    back_heel = np.zeros_like(t)
    active = _window(t, 0.5 * start, start + 0.05 * rep, start + (n - 0.02) * rep, w.D)
    home = b.current_place(side, w.t0)
    for k in range(n):
        a = start + k * rep
        out = b.standing_place(side, b.x, b.z, b.heading)
        out[0] += step * np.sin(b.heading)
        out[1] += step * np.cos(b.heading)
        b.feet[side].append(
            _Step(w.t0 + a + 0.03 * rep, w.t0 + a + 0.25 * rep, out, lift_pitch=-0.35, land_pitch=0.3,
                  roll_in=0.1, roll_out=0.1, clearance=0.07)
        )  # fmt: skip
        b.feet[side].append(
            _Step(w.t0 + a + 0.76 * rep, w.t0 + a + 0.96 * rep, home, lift_pitch=-0.3, land_pitch=0.05,
                  roll_in=0.08, roll_out=0.12, clearance=0.07)
        )  # fmt: skip
        fwd += 0.48 * step * _window(t, a + 0.08 * rep, a + 0.42 * rep, a + 0.6 * rep, a + 0.88 * rep)
        down += _window(t, a + 0.25 * rep, a + 0.46 * rep, a + 0.56 * rep, a + 0.74 * rep)
        back_heel += _window(t, a + 0.2 * rep, a + 0.42 * rep, a + 0.6 * rep, a + 0.72 * rep)
    b.move(w, fwd, np.zeros_like(t), np.zeros_like(t))
    b.add("height", w, -depth * down - 0.02 * active)
    b.add("stance_pitch", w, -0.7 * back_heel, (1 - side,))
    b.add("balance", w, -0.2 * active)
    b.add("spine", w, 0.05 * down, (0,))
    b.add("arm_gain", w, 0.3 * active)


def _gen_sit_down(b: _Builder, seg: Segment, w: _Win) -> None:
    """Sit down on the floor: squat, reach back to the floor with the hands, lower the pelvis, stretch the feet
    forward; the seated pose holds to the end of the clip (programs allow sitting down only last)."""
    D = w.D
    w = _Win(w.f0, w.T - 1, w.T)
    t = w.t
    body = b.body
    sit_h = 0.16 * b.style.scale
    squat = _window(t, 0.06 * D, 0.4 * D, 0.45 * D, 0.7 * D)
    settle = _ramp(t, 0.42 * D, 0.72 * D)
    back = 0.3 * b.style.scale
    b.move(w, -0.12 * squat - back * settle, np.zeros_like(t), np.zeros_like(t))
    deep = 0.48 * b.style.scale
    b.add("height", w, -deep * squat * (1 - settle) - (body.stand - sit_h) * settle)
    b.add("pelvis", w, 0.45 * squat * (1 - settle) - 0.15 * settle, (0,))
    b.add("spine", w, 0.35 * squat * (1 - settle) + 0.1 * settle, (0,))
    b.add("gaze", w, -0.3 * squat)
    # the feet slide forward a little once sitting (the weight is on the pelvis and hands then)
    for side in (0, 1):
        place = b.current_place(side, w.t0).copy()
        place[0] += 0.18 * b.style.scale * np.sin(b.heading)
        place[1] += 0.18 * b.style.scale * np.cos(b.heading)
        a = w.t0 + (0.76 + 0.08 * side) * D
        b.feet[side].append(
            _Step(a, a + 0.07 * D, place, lift_pitch=0.1, land_pitch=0.1, roll_in=0.05, roll_out=0.05,
                  clearance=0.1)
        )  # fmt: skip
    reach = _window(t, 0.35 * D, 0.55 * D, 2 * D, 2 * D)
    x0, z0, h0 = b.pose_at(w.t0 + 0.75 * D)
    for side in (0, 1):
        s = _SIGN[side]
        hx = x0 + s * 0.24 * np.cos(h0) - 0.12 * np.sin(h0)
        hz = z0 - s * 0.24 * np.sin(h0) - 0.12 * np.cos(h0)
        b.hand_world[w.sl, side] = np.array([hx, 0.03, hz])
        b.add("hand_world_w", w, reach, (side,))
        b.add("pole", w, (reach * 0.8)[:, None] * np.array([s * 0.4, 0.0, 1.5]), (side,))


def _gen_wave(b: _Builder, seg: Segment, w: _Win) -> None:
    n = seg.count or 2
    side = _SIDE[seg.side or "right"]
    s = _SIGN[side]
    fixed, rep = _split(w, seg)
    t = w.t
    amp = AMPLITUDE_FACTOR[seg.amplitude] * b.style.amplitude
    up_end = 0.45 * fixed
    down_start = up_end + n * rep
    raised = _window(t, 0.05 * fixed, up_end, down_start, down_start + 0.45 * fixed)
    elev = 0.1 + (np.radians(128) + 0.22 * (amp - 1)) * raised
    target = 0.9 * b.body.arm * _arm_dir(s, elev, 1.05)
    osc = np.sin(2 * np.pi * np.clip(t - up_end, 0, None) / rep) * _window(
        t, up_end - 0.15, up_end + 0.05, down_start - 0.05, down_start + 0.1
    )
    # waving swings the forearm side to side about the elbow: the hand moves sideways and dips at the ends
    lateral = 0.13 * amp * osc * b.style.scale
    target[:, 0] += s * lateral
    target[:, 1] -= 0.35 * np.abs(lateral) * raised
    on = np.clip(3.0 * raised, 0.0, 1.0)
    b.add("hand", w, on[:, None] * (target - _neutral_hand(b, side)), (side,))
    b.add("pole", w, raised[:, None] * np.array([s * 1.2, -0.8, 0.6]), (side,))
    b.add("spine", w, -s * 0.04 * raised, (1,))
    b.add("neck", w, s * 0.1 * raised, (1,))


def _gen_raise_arms(b: _Builder, seg: Segment, w: _Win) -> None:
    n = seg.count or 1
    sides = (0, 1) if seg.side == "both" else (_SIDE[seg.side or "right"],)
    fixed, rep = _split(w, seg)
    start = fixed * 0.5
    t = w.t
    amp = AMPLITUDE_FACTOR[seg.amplitude] * b.style.amplitude
    up = np.zeros_like(t)
    for k in range(n):
        a = start + k * rep
        up += _window(t, a + 0.02 * rep, a + 0.36 * rep, a + 0.62 * rep, a + 0.97 * rep)
    peak = min(np.radians(150) * amp**0.7, np.radians(178))
    plane = 0.35 if len(sides) == 2 else 0.55
    on = np.clip(3.0 * up, 0.0, 1.0)
    for side in sides:
        target = 0.97 * b.body.arm * _arm_dir(_SIGN[side], 0.1 + (peak - 0.1) * up, plane)
        b.add("hand", w, on[:, None] * (target - _neutral_hand(b, side)), (side,))
        b.add("pole", w, up[:, None] * np.array([_SIGN[side] * 0.8, 0.0, 0.5]), (side,))
    b.add("spine", w, -0.04 * up, (0,))


def _gen_clap(b: _Builder, seg: Segment, w: _Win) -> None:
    n = seg.count or 3
    fixed, rep = _split(w, seg)
    t = w.t
    up_end = 0.42 * fixed
    first = up_end + 0.5 * rep  # first contact
    end = up_end + n * rep
    hold = _window(t, 0.03 * fixed, up_end, end + 0.05, end + 0.5 * fixed)
    # hands open and meet once per repetition, the contacts at first, first + rep, ...
    phase = np.clip((t - (first - 0.5 * rep)) / rep, 0.0, n - 0.5)
    gap = np.clip(0.5 * (1 + np.cos(2 * np.pi * phase)) - 0.15, 0.0, None) / 0.85  # palms stay together a moment
    gap = np.where(t > first + (n - 1) * rep, _ramp(t, first + (n - 1) * rep, end), gap)
    sx = 0.175 * b.style.scale  # shoulder to the midline
    for side in (0, 1):
        s = _SIGN[side]
        meet = np.array([-s * sx, -0.2 * b.style.scale, 0.3 * b.style.scale])
        target = meet[None] + (s * 0.5 * (0.02 + 0.3 * gap))[:, None] * np.array([1.0, 0.0, 0.0])
        target[:, 1] += 0.04 * gap
        b.add("hand", w, hold[:, None] * (target - _neutral_hand(b, side)), (side,))
        b.add("pole", w, hold[:, None] * np.array([s * 1.0, -0.6, 0.6]), (side,))
    b.add("spine", w, 0.03 * hold, (0,))


def _gen_punch(b: _Builder, seg: Segment, w: _Win) -> None:
    n = seg.count or 1
    side = _SIDE[seg.side or "right"]
    fixed, rep = _split(w, seg)
    t = w.t
    amp = AMPLITUDE_FACTOR[seg.amplitude] * b.style.amplitude
    start = 0.55 * fixed
    guard = _window(t, 0.05 * fixed, start, start + n * rep, w.D)
    sc = b.style.scale
    ext = np.zeros_like(t)
    for k in range(n):
        a = start + k * rep
        ext += _window(t, a + 0.08 * rep, a + 0.3 * rep, a + 0.38 * rep, a + 0.75 * rep)
    for s_ in (0, 1):
        s = _SIGN[s_]
        fist = np.array([-s * 0.06, 0.02, 0.2]) * sc  # relative to the shoulder, by the chin
        target = guard[:, None] * (fist - _neutral_hand(b, s_))
        if s_ == side:
            reach = min(0.95 * amp**0.5, 0.99) * b.body.arm
            out = np.array([-s * 0.09 * sc, 0.0, np.sqrt(max(reach**2 - (0.09 * sc) ** 2, 0.01))])
            target += ext[:, None] * (out - fist)
        b.add("hand", w, target, (s_,))
        b.add("pole", w, guard[:, None] * np.array([s * 0.6, -0.8, -0.4]), (s_,))
    twist = -_SIGN[side] * 0.3 * amp**0.5
    b.add("spine", w, twist * ext, (2,))
    b.add("pelvis", w, 0.04 * guard, (0,))
    b.add("spine", w, 0.05 * guard, (0,))
    b.add("neck", w, -0.5 * twist * ext, (1,))


def _gen_throw(b: _Builder, seg: Segment, w: _Win) -> None:
    n = seg.count or 1
    side = _SIDE[seg.side or "right"]
    s = _SIGN[side]
    fixed, rep = _split(w, seg)
    t = w.t
    amp = AMPLITUDE_FACTOR[seg.amplitude] * b.style.amplitude
    start = 0.5 * fixed
    sc = b.style.scale
    hand = np.zeros((len(t), 3))
    twist = np.zeros_like(t)
    lean = np.zeros_like(t)
    other = 1 - side
    home = b.current_place(other, w.t0)
    for k in range(n):
        a = start + k * rep
        # key poses of the throwing hand relative to its shoulder (heading frame): wind-up behind the head,
        # release high in front, follow-through down across the body
        cock = np.array([s * 0.12, 0.2, -0.32]) * sc * amp**0.5
        release = np.array([s * 0.02, 0.34, 0.3]) * sc
        follow = np.array([-s * 0.32, -0.28, 0.32]) * sc
        neutral = _neutral_hand(b, side)
        w1 = _window(t, a + 0.03 * rep, a + 0.38 * rep, a + 0.4 * rep, a + 0.5 * rep)
        w2 = _window(t, a + 0.4 * rep, a + 0.5 * rep, a + 0.5 * rep, a + 0.6 * rep)
        w3 = _window(t, a + 0.5 * rep, a + 0.6 * rep, a + 0.66 * rep, a + 0.96 * rep)
        hand += w1[:, None] * (cock - neutral) + w2[:, None] * (release - neutral) + w3[:, None] * (follow - neutral)
        twist += -s * (0.45 * amp**0.5) * w1 + s * 0.35 * w3
        lean += -0.1 * w1 + 0.3 * w3
        step = b.standing_place(other, b.x, b.z, b.heading)
        step[0] += 0.28 * sc * np.sin(b.heading)
        step[1] += 0.28 * sc * np.cos(b.heading)
        b.feet[other].append(
            _Step(w.t0 + a + 0.12 * rep, w.t0 + a + 0.36 * rep, step, lift_pitch=-0.3, land_pitch=0.15,
                  roll_in=0.08, roll_out=0.1, clearance=0.09)
        )  # fmt: skip
        b.feet[other].append(
            _Step(w.t0 + a + 0.72 * rep, w.t0 + a + 0.92 * rep, home, lift_pitch=-0.2, land_pitch=0.05,
                  roll_in=0.08, roll_out=0.1, clearance=0.09)
        )  # fmt: skip
    shift = np.zeros_like(t)
    for k in range(n):
        a = start + k * rep
        shift += _window(t, a + 0.3 * rep, a + 0.5 * rep, a + 0.62 * rep, a + 0.85 * rep)
    b.move(w, 0.12 * sc * shift, np.zeros_like(t), np.zeros_like(t))
    b.add("hand", w, hand, (side,))
    raised = np.clip(hand[:, 1] / 0.5, 0.0, 1.0)  # elbow out and up while the hand is high
    b.add("pole", w, raised[:, None] * np.array([s * 2.0, 0.5, -1.0]), (side,))
    b.add("spine", w, twist, (2,))
    b.add("spine", w, lean, (0,))
    b.add("neck", w, -0.5 * twist, (1,))
    guard = _window(t, 0.1, start + 0.2 * rep, start + n * rep - 0.1 * rep, w.D)
    b.add("hand", w, guard[:, None] * np.array([s * 0.05, 0.15, 0.22]) * sc, (other,))


def _gen_bow(b: _Builder, seg: Segment, w: _Win) -> None:
    n = seg.count or 1
    fixed, rep = _split(w, seg)
    start = fixed * 0.5
    t = w.t
    amp = AMPLITUDE_FACTOR[seg.amplitude] * b.style.amplitude
    angle = np.radians(min(BOW_DEGREES * amp**1.2, 80.0))
    bend = np.zeros_like(t)
    for k in range(n):
        a = start + k * rep
        bend += _window(t, a + 0.03 * rep, a + 0.36 * rep, a + 0.55 * rep, a + 0.92 * rep)
    # hips and spine share the bend so that the pelvis-to-neck line pitches by ``angle``
    b.add("pelvis", w, 0.6 * angle * bend, (0,))
    b.add("spine", w, 0.75 * angle * bend, (0,))
    b.add("gaze", w, -0.85 * bend)
    b.move(w, -0.14 * np.sin(angle) * bend * b.style.scale, np.zeros_like(t), np.zeros_like(t))
    b.add("height", w, -0.02 * bend)


_GENERATORS: dict[str, Callable[[_Builder, Segment, _Win], None]] = {
    "walk": _gen_walk,
    "run": _gen_run,
    "walk_backward": _gen_walk_backward,
    "sidestep": _gen_sidestep,
    "turn": _gen_turn,
    "circle": _gen_circle,
    "jump": _gen_jump,
    "jump_forward": _gen_jump_forward,
    "kick": _gen_kick,
    "squat": _gen_squat,
    "lunge": _gen_lunge,
    "sit_down": _gen_sit_down,
    "wave": _gen_wave,
    "raise_arms": _gen_raise_arms,
    "clap": _gen_clap,
    "punch": _gen_punch,
    "throw": _gen_throw,
    "bow": _gen_bow,
    "turn_around": _gen_turn_around,
}


# ----------------------------------------------------------------------------------------------- assembly


def _neutral_hand(b: _Builder, side: int) -> np.ndarray:
    """Hand target of a hanging arm relative to its shoulder, heading frame."""
    return 0.992 * b.body.arm * _arm_dir(_SIGN[side], 0.1, 0.45)


def _planted(body: _Body, side: int, place: np.ndarray, pitch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ankle and toe (n, 3) of a planted foot rolled by ``pitch`` (+ about the heel, - about the toe)."""
    pivot = np.where((pitch >= 0)[:, None], body.heel[side], body.toe[side])
    heading = yaw_matrix(place[2])
    r = heading @ _rot_x(-pitch)
    flat = np.array([place[0], body.ankle_h, place[1]])
    ankle = flat + (heading @ pivot[..., None])[..., 0] - (r @ pivot[..., None])[..., 0]
    return ankle, ankle + r @ body.toe[side]


@dataclass
class _FootTrack:
    ankle: np.ndarray  # (T, 3)
    yaw: np.ndarray
    pitch: np.ndarray
    planted: np.ndarray  # (T,) bool
    place: np.ndarray  # (T, 3) placement of planted frames
    swings: list[tuple[_Step, np.ndarray, np.ndarray, float]]  # event, previous placement, frames, lift pitch


def _foot_track(b: _Builder, side: int, heel: np.ndarray | None = None) -> _FootTrack:
    """Ankle, yaw and pitch of one foot over the clip. ``heel`` (T,) is a per-frame pitch a planted foot must at
    least reach (negative: heel up), so that the leg reaches it; swings start from the pitch the foot left with."""
    T, body = b.T, b.body
    t = np.arange(T) / FPS
    ankle, yaw, pitch = np.zeros((T, 3)), np.zeros(T), np.zeros(T)
    planted = np.zeros(T, dtype=bool)
    places = np.zeros((T, 3))
    place, t_land, land_pitch, roll_in = b.place0[side], -1e9, 0.0, 1.0
    swings = []
    events = sorted(b.feet[side], key=lambda e: e.t_lift)
    for ev in [*events, None]:
        t_lift = ev.t_lift if ev is not None else 1e9
        m = (t >= t_land) & (t <= t_lift)
        tm = t[m]
        p = land_pitch * (1.0 - _ramp(tm, t_land, t_land + roll_in)) + b.stance_pitch[m, side]
        if ev is not None:
            p += ev.lift_pitch * np.clip((tm - (t_lift - ev.roll_out)) / ev.roll_out, 0, 1) ** 2
        if heel is not None:
            p = np.minimum(p, heel[m])
        ankle[m] = _planted(body, side, place, p)[0]
        yaw[m], pitch[m], planted[m], places[m] = place[2], p, True, place
        if ev is None:
            break
        ms = (t > ev.t_lift) & (t < ev.t_land)
        lift_pitch = min(ev.lift_pitch, float(p[-1])) if len(p) else ev.lift_pitch
        swings.append((ev, place, ms, lift_pitch))
        place, t_land, land_pitch, roll_in = ev.place, ev.t_land, ev.land_pitch, ev.roll_in
    for ev, prev, ms, lift_pitch in swings:
        if not ms.any():
            continue
        u = (t[ms] - ev.t_lift) / (ev.t_land - ev.t_lift)
        a0 = _planted(body, side, prev, np.array([lift_pitch]))[0][0]
        a1 = _planted(body, side, ev.place, np.array([ev.land_pitch]))[0][0]
        # The foot leaves already moving (it was rolling over the toe) and is set down: the horizontal progress
        # starts with some speed and is over just before landing, the lift rises at once and comes down gently.
        uh = np.minimum(u / 0.85, 1.0)
        s = 0.7 * _smooth(uh) + 0.3 * (1.0 - (1.0 - uh) ** 2)
        a = a0 + (a1 - a0) * s[:, None]
        a[:, 1] = a0[1] + (a1[1] - a0[1]) * _smooth(u)
        a[:, 1] += ev.clearance * np.where(u < ev.peak, np.sin(0.5 * np.pi * u / ev.peak), _bump(u, ev.peak))
        dyaw = np.angle(np.exp(1j * (ev.place[2] - prev[2])))
        yaw[ms] = prev[2] + dyaw * s
        pitch[ms] = lift_pitch * (1 - _smooth(u / 0.45)) + ev.land_pitch * _smooth((u - 0.55) / 0.45)
        ankle[ms] = a
        _clear_floor(body, side, ankle, yaw, pitch, ms, u)
    return _FootTrack(ankle, yaw, pitch, planted, places, swings)


_HEEL_GRID = np.linspace(0.0, -1.3, 27)


def _heel_need(body: _Body, side: int, track: _FootTrack, hip: np.ndarray) -> np.ndarray:
    """Least heel rise (toe-pivot pitch <= 0) that keeps a planted foot behind the hip within reach, the knee
    bending more the further behind the foot is (as in push-off, where the heel rises and the knee flexes).

    Hand-written grid search (27 pitches, vectorised): the reach of the rolled foot is monotonic in the pitch for
    a foot behind the hip, and an exact solution is not worth a root finder here.
    """
    need = np.zeros(len(hip))
    pl = track.place
    heading = yaw_matrix(pl[:, 2])  # (T, 3, 3)
    fwd = np.stack([np.sin(pl[:, 2]), np.cos(pl[:, 2])], -1)
    ahead = np.sum((track.ankle - hip)[:, [0, 2]] * fwd, -1)
    behind = track.planted & (ahead < 0)
    if not behind.any():
        return need
    reach = body.leg * (0.998 - 0.035 * np.clip(-ahead[behind] / (0.45 * body.leg), 0.0, 1.0))
    flat = np.stack([pl[behind, 0], np.full(behind.sum(), body.ankle_h), pl[behind, 1]], -1)
    toe_w = flat + heading[behind] @ body.toe[side]  # (n, 3)
    rolled = _rot_x(-_HEEL_GRID) @ body.toe[side]  # (K, 3)
    ankle = toe_w[:, None] - np.einsum("nij,kj->nki", heading[behind], rolled)
    ok = np.linalg.norm(ankle - hip[behind, None], axis=-1) <= reach[:, None]
    first = np.where(ok.any(1), ok.argmax(1), len(_HEEL_GRID) - 1)
    need[behind] = _HEEL_GRID[first]
    return need


def _foot_rotation(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    return yaw_matrix(yaw) @ _rot_x(-pitch)


def _clear_floor(body: _Body, side: int, ankle, yaw, pitch, ms: np.ndarray, u: np.ndarray) -> None:
    """Raise a swinging foot so toe and heel clear the floor (by a little at mid-swing)."""
    r = _foot_rotation(yaw[ms], pitch[ms])
    toe_y = ankle[ms, 1] + (r @ body.toe[side])[:, 1]
    heel_y = ankle[ms, 1] + (r @ body.heel[side])[:, 1]
    need = 0.025 * np.sin(np.pi * u)
    ankle[ms, 1] += np.maximum(np.maximum(need - toe_y, need - heel_y), 0.0)


def _hip_relative_swings(b: _Builder, side: int, track: _FootTrack, hips: np.ndarray, yaw: np.ndarray) -> None:
    """Second pass for feet that travel with the body: jump flights and kicks."""
    t = np.arange(b.T) / FPS
    f = np.arange(b.T)
    for ev, prev, ms, lift_pitch in track.swings:
        if ev.kind == "arc" or not ms.any():
            continue
        u = (t[ms] - ev.t_lift) / (ev.t_land - ev.t_lift)
        hip_at = [np.array([np.interp(x * FPS, f, hips[:, k]) for k in range(3)]) for x in (ev.t_lift, ev.t_land)]
        a0 = _planted(b.body, side, prev, np.array([lift_pitch]))[0][0] - hip_at[0]
        a1 = _planted(b.body, side, ev.place, np.array([ev.land_pitch]))[0][0] - hip_at[1]
        rel = a0 + (a1 - a0) * _smooth(u)[:, None]
        if ev.kind == "flight":
            rel[:, 1] += ev.tuck * _bump(u, 0.5)
            track.pitch[ms] = lift_pitch + (ev.land_pitch - lift_pitch) * _smooth(u) + 0.3 * _bump(u, 0.5)
        else:
            kick, kick_pitch = ev.kick(u)  # type: ignore[misc]
            wgt = _window(u, 0.0, 0.18, 0.82, 1.0)[:, None]
            kick_world = (yaw_matrix(yaw[ms]) @ kick[..., None])[..., 0]
            rel = (1 - wgt) * rel + wgt * kick_world
            track.pitch[ms] = (1 - wgt[:, 0]) * track.pitch[ms] + wgt[:, 0] * kick_pitch
        track.ankle[ms] = hips[ms] + rel
        _clear_floor(b.body, side, track.ankle, track.yaw, track.pitch, ms, u)


def _timeline(program: Program, style: Style, rng: np.random.Generator) -> tuple[int, list[tuple[int, int]]]:
    """Clip length and each segment's frame window, with the idle time split between start and end."""
    nominal = program.nominal_frames()
    secs = np.array([segment_seconds(s) for s in program.segments]) * style.tempo
    secs *= rng.uniform(0.97, 1.03, size=len(secs))
    idle = IDLE_SECONDS * style.tempo * rng.uniform(0.85, 1.15)
    T = int(round((secs.sum() + idle) * FPS))
    T = int(np.clip(T, max(MIN_FRAMES + 1, round(0.92 * nominal)), min(MAX_FRAMES, round(1.08 * nominal) + 1)))
    seg_total = min(int(round(secs.sum() * FPS)), T - 4)
    edges = np.round(np.concatenate([[0.0], np.cumsum(secs)]) / secs.sum() * seg_total).astype(int)
    start = int(round((T - seg_total) * rng.uniform(0.35, 0.65)))
    start = int(np.clip(start, 2, T - seg_total - 2))
    edges += start
    return T, [(int(a), int(c)) for a, c in zip(edges[:-1], edges[1:], strict=True)]


def animate(program: Program, rng: np.random.Generator, style: Style | None = None) -> np.ndarray:
    """Joint positions (T, 22, 3) float32 of ``program`` at 20 fps, T close to ``program.nominal_frames()``.

    ``style`` (default: drawn from ``rng``) sets the body and manner; ``rng`` also varies timing and details.
    """
    program.validate()
    style = Style.sample(rng) if style is None else style
    body = _body(style)
    T, windows = _timeline(program, style, rng)
    b = _Builder(T, body, style, rng)
    for seg, (f0, f1) in zip(program.segments, windows, strict=True):
        _GENERATORS[seg.primitive](b, seg, _Win(f0, f1, T))
        b.path[f1:], b.yaw[f1:] = (b.x, b.z), b.heading
    return _assemble(b).astype(np.float32)


def _assemble(b: _Builder) -> np.ndarray:
    T, body, style = b.T, b.body, b.style
    t = np.arange(T) / FPS
    wander = np.random.default_rng(style.seed)
    noise = _wander(wander, t, 11) * style.noise  # one independent slow wander per use below
    feet = [_foot_track(b, s) for s in (0, 1)]

    # Gait-driven trunk and arm motion: how far the left foot is ahead of the right, in the heading frame.
    fwd = np.stack([np.sin(b.yaw), np.cos(b.yaw)], -1)
    left = np.stack([np.cos(b.yaw), -np.sin(b.yaw)], -1)
    ahead = np.sum((feet[0].ankle - feet[1].ankle)[:, [0, 2]] * fwd, axis=-1)
    ahead = gaussian_filter1d(ahead, 1.0, mode="nearest")
    support = np.stack([f.planted for f in feet], -1).astype(float)
    support = gaussian_filter1d(support, 1.0, axis=0, mode="nearest")
    total = support.sum(-1, keepdims=True)
    centre_xz = np.where(
        total > 1e-3,
        (support[:, :, None] * np.stack([f.ankle[:, [0, 2]] for f in feet], 1)).sum(1) / np.maximum(total, 1e-3),
        0.5 * (feet[0].ankle + feet[1].ankle)[:, [0, 2]],
    )
    sway = np.sum((centre_xz - b.path) * left, axis=-1) * np.clip(b.balance, 0, 1)
    sway = gaussian_filter1d(sway, 2.5, mode="nearest")
    sway += 0.006 * style.scale * noise[:, 0]
    root_xz = b.path + sway[:, None] * left

    # Trunk angles.
    gait_yaw = -0.12 * ahead * np.minimum(b.arm_gain / 0.5, 1.0)
    roll = 0.06 * (support[:, 0] - support[:, 1]) * np.clip(b.arm_gain / 0.3, 0.0, 1.0)  # hip drop in gait
    yaw = b.yaw + gait_yaw
    pelvis_pitch = b.pelvis[:, 0] + 0.02 * noise[:, 1]
    pelvis_roll = b.pelvis[:, 1] + gaussian_filter1d(roll, 1.5, mode="nearest")
    breathe = 0.012 * np.sin(2 * np.pi * 0.25 * t + style.seed % 7)
    spine = b.spine.copy()
    spine[:, 0] += style.posture + breathe + 0.025 * noise[:, 2]
    spine[:, 1] += 0.02 * noise[:, 3]
    spine[:, 2] += -1.6 * gait_yaw + 0.03 * noise[:, 4]
    gaze = np.clip(b.gaze, 0, 1)
    head_pitch = b.neck[:, 0] - 0.8 * gaze * (pelvis_pitch + spine[:, 0] - style.posture) + 0.05 * noise[:, 5]
    head_twist = b.neck[:, 1] - 0.7 * spine[:, 2] + 0.06 * noise[:, 6]

    local = np.broadcast_to(np.eye(3), (T, 22, 3, 3)).copy()
    local[:, 0] = Rotation.from_euler("YXZ", np.stack([yaw, pelvis_pitch, pelvis_roll], -1)).as_matrix()
    for j, share in ((3, 0.35), (6, 0.35), (9, 0.3)):
        ang = np.stack([share * spine[:, 2], share * spine[:, 0], -share * spine[:, 1]], -1)
        local[:, j] = Rotation.from_euler("YXZ", ang).as_matrix()
    local[:, 12] = Rotation.from_euler("YX", np.stack([head_twist, head_pitch], -1)).as_matrix()

    # Arm targets in the heading frame relative to the shoulders; collars shrug when a hand goes overhead.
    swing = b.arm_gain * ahead * style.arm_swing
    rel = np.zeros((T, 2, 3))
    for s in (0, 1):
        hang = _neutral_hand(b, s)
        bent = np.array([_SIGN[s] * 0.04, -0.26, 0.24]) * style.scale
        base = hang + b.arm_bend[:, None] * (bent - hang)
        ang = -_SIGN[s] * swing  # the arm opposite the leading foot swings forward
        base = (_rot_x(-ang) @ base[..., None])[..., 0]
        rel[:, s] = base + b.hand[:, s] + 0.008 * style.scale * noise[:, [8, 9, 10]] * (s * 2 - 1)
        up = np.clip(rel[:, s, 1] / body.arm + 0.1, 0.0, 1.0)
        local[:, _COLLAR[s]] = Rotation.from_euler("Z", (_SIGN[s] * 0.25 * up)[:, None]).as_matrix()
    double = gaussian_filter1d(np.clip(support.sum(-1) - 1, 0, 1), 1.5, mode="nearest")
    y_want = body.stand + b.height - b.bob * double + 0.004 * style.scale * noise[:, 7]
    root = np.stack([root_xz[:, 0], y_want, root_xz[:, 1]], -1)
    joints = forward_kinematics(local, root, HUMANML3D, offsets=body.offsets)

    # Heels rise where a trailing foot would otherwise be out of reach; then the pelvis is lowered where a planted
    # foot still is (soft minimum, so the motion stays smooth).
    reach = 0.998 * body.leg
    feet = [_foot_track(b, s, _heel_need(body, s, feet[s], joints[:, _HIP[s]])) for s in (0, 1)]
    caps, weights = [y_want], [np.ones(T)]
    for s, f in enumerate(feet):
        hip = joints[:, _HIP[s]]
        dxz2 = np.sum((hip - f.ankle)[:, [0, 2]] ** 2, axis=-1)
        caps.append(f.ankle[:, 1] + np.sqrt(np.maximum(reach**2 - dxz2, 1e-4)) + (y_want - hip[:, 1]))
        # a foot about to land already holds the pelvis down a little; one that has left does not
        on = f.planted.astype(float)
        soon = np.concatenate([on[1:], on[-1:]])
        weights.append(np.maximum.reduce([on, 0.3 * soon, 0.05 * np.concatenate([soon[1:], soon[-1:]])]))
    # smooth only the lowering, so free flight keeps its parabola
    drop = _softmin(caps, weights, 0.005) - y_want
    smooth_drop = gaussian_filter1d(minimum_filter1d(drop, 3, mode="nearest"), 1.0, mode="nearest")
    y = y_want + np.minimum(smooth_drop, drop + 0.002)
    joints[..., 1] += (y - y_want)[:, None]

    hips = joints[:, list(_HIP)]
    for s in (0, 1):
        _hip_relative_swings(b, s, feet[s], hips[:, s], b.yaw)
    for s, f in enumerate(feet):
        knee_dir = np.stack([np.sin(f.yaw), np.full(T, 0.4), np.cos(f.yaw)], -1)
        knee, ankle = _two_bone_ik(hips[:, s], f.ankle, body.thigh, body.shin, knee_dir)
        r = _foot_rotation(f.yaw, f.pitch)
        joints[:, _KNEE[s]], joints[:, _ANKLE[s]] = knee, ankle
        joints[:, _TOE[s]] = ankle + r @ body.toe[s]

    heading = yaw_matrix(b.yaw)
    for s in (0, 1):
        shoulder = joints[:, _SHOULDER[s]]
        target = shoulder + (heading @ rel[:, s, :, None])[..., 0]
        ww = np.clip(b.hand_world_w[:, s], 0, 1)[:, None]
        target = (1 - ww) * target + ww * b.hand_world[:, s]
        pole_rel = np.array([_SIGN[s] * 0.35, -0.25, -1.0]) + b.pole[:, s]
        pole = (heading @ pole_rel[..., None])[..., 0]
        elbow, wrist = _two_bone_ik(shoulder, target, body.upper_arm, body.forearm, pole)
        joints[:, _ELBOW[s]], joints[:, _WRIST[s]] = elbow, wrist
    return joints
