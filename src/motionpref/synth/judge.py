"""The synthetic world's judge: how well a motion performs an action program, measured from joint positions only.

The judge never looks at how a clip was made, so it scores real motion capture and decoded model outputs alike.
A clip (T, 22, 3) is canonicalised (floor from the feet, first facing turned to +z, origin under the first root
position) and lightly smoothed (decoded motions jitter), then per-frame signals are measured once: root speed,
facing, foot heights and movement, hand positions in the body frame, trunk pitch, pelvis height against the
standing height the leg length implies. Each segment of a program is scored on a window of frames by criteria
for its primitive and modifiers (did the body go forward, how fast, how many steps, which foot rose, ...), each a
smooth membership in [0, 1]. A segment's score is a weighted product of its criteria, so one clear failure sinks
it while near misses cost a little; a program's score is the geometric mean of its segments' scores, with the
segment boundaries searched on a grid around the nominal proportions (robust to timing errors).

``realism`` scores what no program asks for: planted feet that stay put, a floor that holds, bones of constant
length, smooth (not jittery) motion, a body that moves, and no teleports.

Both read HumanML3D's joints at 20 fps, the body and rate their thresholds are set for; ``judged_joints`` gives
them those of a motion's features on either skeleton (a KIT-ML motion is retargeted and resampled).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

from motionpref.motion.features import recover_joints
from motionpref.motion.retarget import to_skeleton
from motionpref.motion.skeleton import HUMANML3D, Skeleton
from motionpref.synth.animate import (
    AMPLITUDE_FACTOR,
    BOW_DEGREES,
    JUMP_FORWARD_METRES,
    SIDESTEP_METRES,
    SQUAT_DEPTH,
    animate,
    flight_height,
    gait_expectation,
)
from motionpref.synth.programs import FPS, PRIMITIVES, Program, Segment, segment_seconds
from motionpref.synth.sampling import MAX_NOMINAL_FRAMES, sample_segment

REF_SIZE = 1.375  # hip-to-ankle plus pelvis-to-head length of the skeleton's rest body (m); lengths scale with it
_SIDE = {"left": 0, "right": 1}


# ------------------------------------------------------------------------------------- membership functions


def rises(x: float, lo: float, hi: float) -> float:
    """0 at or below ``lo``, 1 at or above ``hi``, smoothstep in between."""
    if hi == lo:
        return float(x >= hi)
    u = min(max((x - lo) / (hi - lo), 0.0), 1.0)
    return u * u * (3.0 - 2.0 * u)


def falls(x: float, lo: float, hi: float) -> float:
    """1 at or below ``lo``, 0 at or above ``hi``."""
    return 1.0 - rises(x, lo, hi)


def band(x: float, lo: float, hi: float, soft: float) -> float:
    """1 inside [lo, hi], falling smoothly to 0 within ``soft`` outside."""
    return rises(x, lo - soft, lo) * falls(x, hi, hi + soft)


def near(x: float, target: float, tol: float) -> float:
    """Gaussian closeness exp(-(x - target)^2 / (2 tol^2))."""
    return math.exp(-0.5 * ((x - target) / tol) ** 2)


def ratio_near(x: float, target: float, tol: float) -> float:
    """Closeness of a positive quantity in log space: ``tol`` is the relative error at exp(-1/2)."""
    if x <= 0 or target <= 0:
        return 0.0
    return math.exp(-0.5 * (math.log(x / target) / tol) ** 2)


def count_score(observed: int, wanted: int, tol: float) -> float:
    """How well a counted quantity matches, with ``tol`` the tolerated miscount at exp(-1/2)."""
    return near(float(observed), float(wanted), tol)


def soft(m: float, floor: float) -> float:
    """A membership that never drops below ``floor``: for criteria that a good performance may bend."""
    return floor + (1.0 - floor) * m


def weighted_product(criteria: dict[str, tuple[float, float]]) -> float:
    """Soft AND of criteria {name: (score, weight)}: prod score^weight, each score floored at 1e-4."""
    log = sum(w * math.log(max(s, 1e-4)) for s, w in criteria.values())
    return math.exp(log)


# ------------------------------------------------------------------------------------------ canonical clip


def _episodes(mask: np.ndarray, min_len: int = 1) -> list[tuple[int, int]]:
    """Runs [start, end) of True in a boolean array, at least ``min_len`` long."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(np.diff(m.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_len]


def _hysteresis(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """True from where ``x`` rises above ``hi`` until it falls below ``lo`` (counts peaks without chatter)."""
    out = np.zeros(len(x), dtype=bool)
    on = False
    for i, v in enumerate(x):
        on = v > hi or (on and v > lo)
        out[i] = on
    return out


def _alternations(v: np.ndarray, thresh: float) -> int:
    """Number of runs of one sign in ``v`` (values within +-``thresh`` are ignored): a side-to-side movement of
    k half-swings gives k."""
    signs = np.sign(v[np.abs(v) > thresh])
    return int(len(signs) > 0) + int(np.count_nonzero(np.diff(signs)))


def _wrap(a: np.ndarray | float) -> np.ndarray | float:
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def _bone(raw: np.ndarray, a: int, b: int) -> float:
    """Median length of the segment between joints a and b over the clip."""
    return float(np.median(np.linalg.norm(raw[:, a] - raw[:, b], axis=-1)))


def _body_size(raw: np.ndarray) -> float:
    """Leg (the shorter of the two, so one broken leg cannot inflate it) plus pelvis-to-head length."""
    leg = min(_bone(raw, 1, 4) + _bone(raw, 4, 7), _bone(raw, 2, 5) + _bone(raw, 5, 8))
    return leg + _bone(raw, 0, 15)


def _floor(j: np.ndarray, fps: float) -> float:
    """Floor height: where still toes rest (a low percentile over frames with a toe nearly at rest), so a few
    frames of a foot dipping (decoder overshoot) or a clip mostly in the air do not move it."""
    toes = j[:, [10, 11]]
    still = np.linalg.norm(np.gradient(toes, 1.0 / fps, axis=0), axis=-1) < 0.3
    y = toes[..., 1][still]
    return float(np.percentile(y, 25)) if len(y) >= 4 else float(np.percentile(toes[..., 1].min(axis=1), 10))


def _check(joints: np.ndarray) -> np.ndarray:
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (22, 3):
        raise ValueError(
            f"judge: expected joints (T, 22, 3) of the HumanML3D skeleton (judged_joints gives them for KIT-ML), "
            f"got shape {joints.shape}"
        )
    if len(joints) < MIN_FRAMES:
        raise ValueError(f"judge: a clip needs at least {MIN_FRAMES} frames, got {len(joints)}")
    if not np.isfinite(joints).all():
        raise ValueError("judge: joints contain NaN or infinite values")
    return joints


@dataclass
class Clip:
    """A canonicalised clip and the per-frame signals every criterion reads."""

    raw: np.ndarray  # (T, 22, 3) as given
    fps: float = FPS
    _windows: dict[tuple[int, int], _Window] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        raw = _check(self.raw)
        T = len(raw)

        # Bone lengths are read on the raw joints (smoothing would shorten fast limbs).
        # (floored, so a collapsed skeleton from a broken model scores low instead of dividing by zero)
        self.leg = max(min(_bone(raw, 1, 4) + _bone(raw, 4, 7), _bone(raw, 2, 5) + _bone(raw, 5, 8)), 0.05)
        self.arm = max(0.5 * (_bone(raw, 16, 18) + _bone(raw, 18, 20) + _bone(raw, 17, 19) + _bone(raw, 19, 21)), 0.05)
        self.s = max(_body_size(raw) / REF_SIZE, 0.1)  # body scale
        j = gaussian_filter1d(raw, 1.0, axis=0, mode="nearest")
        j[..., 1] -= _floor(j, self.fps)
        across = (j[:, 1] - j[:, 2]) + (j[:, 16] - j[:, 17])  # towards the body's left
        across = gaussian_filter1d(across, 2.0, axis=0, mode="nearest")
        fwd = np.stack([-across[:, 2], np.zeros(T), across[:, 0]], -1)  # left x up
        yaw = np.arctan2(fwd[:, 0], fwd[:, 2])
        yaw0 = math.atan2(fwd[: min(5, T), 0].mean(), fwd[: min(5, T), 2].mean())
        c, s = math.cos(-yaw0), math.sin(-yaw0)
        rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        j = j - np.array([j[0, 0, 0], 0.0, j[0, 0, 2]])
        self.j = j @ rot.T
        self.yaw = np.unwrap(_wrap(yaw - yaw0))  # facing, radians, + is a turn to the left
        self.T = T
        dt = 1.0 / self.fps
        self.root = self.j[:, 0]
        self.vel = np.gradient(self.j, dt, axis=0)
        self.speed = np.linalg.norm(self.vel[:, 0, [0, 2]], axis=-1)
        sf, cf = np.sin(self.yaw), np.cos(self.yaw)
        self.fwd_dir = np.stack([sf, cf], -1)  # (T, 2) x, z
        self.left_dir = np.stack([cf, -sf], -1)
        # feet
        ankle, toe = self.j[:, [7, 8]], self.j[:, [10, 11]]
        self.foot_h = np.minimum(toe[..., 1], ankle[..., 1] - 0.06 * self.s).clip(min=0.0)  # (T, 2)
        self.ankle_h = ankle[..., 1]
        self.ankle_rel = self._body_frame(ankle - self.root[:, None])  # (T, 2, 3) fwd, up, left
        self.ahead = self.ankle_rel[:, 0, 0] - self.ankle_rel[:, 1, 0]  # left ankle ahead of the right
        # hands, in the body frame relative to the shoulders
        self.hand_rel = self._body_frame(self.j[:, [20, 21]] - self.j[:, [16, 17]])
        self.hand_above_head = self.j[:, [20, 21], 1] - self.j[:, 15, None, 1]
        self.hand_above_shoulder = self.j[:, [20, 21], 1] - self.j[:, [16, 17], 1]
        self.hand_gap = np.linalg.norm(self.j[:, 20] - self.j[:, 21], axis=-1)
        self.hand_vel = self._body_frame(self.vel[:, [20, 21]] - self.vel[:, [16, 17]])
        trunk = self._body_frame((self.j[:, 12] - self.j[:, 0])[:, None])[:, 0]
        self.pitch = np.degrees(np.arctan2(trunk[:, 0], trunk[:, 1]))  # forward lean of pelvis -> neck
        # standing pelvis height: measured while both feet bear weight, bounded by what the legs allow
        anatomic = 1.16 * self.leg
        both = self.planted[:, 0] & self.planted[:, 1]
        seen = np.percentile(self.root[both, 1], 75) if both.sum() >= 3 else anatomic
        self.stand = float(np.clip(seen, 0.85 * anatomic, 1.03 * anatomic))

    def _body_frame(self, v: np.ndarray) -> np.ndarray:
        """World vectors (T, k, 3) as (forward, up, left) in each frame's facing."""
        f, l_ = self.fwd_dir[:, None], self.left_dir[:, None]
        return np.stack(
            [v[..., 0] * f[..., 0] + v[..., 2] * f[..., 1], v[..., 1], v[..., 0] * l_[..., 0] + v[..., 2] * l_[..., 1]],
            -1,
        )

    @cached_property
    def planted(self) -> np.ndarray:
        """(T, 2) frames where a foot bears weight: its toe or its ankle is on the floor and (nearly) still."""
        speed = np.linalg.norm(self.vel[:, [7, 8, 10, 11]], axis=-1)
        y = self.j[:, [7, 8, 10, 11], 1]
        ankle = (y[:, :2] < 0.095 * self.s) & (speed[:, :2] < 0.5 * self.s)
        toe = (y[:, 2:] < 0.03 * self.s) & (speed[:, 2:] < 0.5 * self.s)
        return ankle | toe

    def features(self, a: int, b: int) -> _Window:
        """Measured quantities of frames [a, b) (computed on demand, cached per window)."""
        key = (a, b)
        if key not in self._windows:
            self._windows[key] = _Window(self, a, b)
        return self._windows[key]


def _steps(c: Clip, a: int, b: int) -> tuple[list[int], list[list[tuple[int, int]]]]:
    """Per foot, the episodes in [a, b) when it leaves the floor and goes somewhere or lifts clearly."""
    out, eps = [], []
    for k in (0, 1):
        found = []
        for s, e in _episodes(~c.planted[a:b, k], 1):
            s, e = s + a, e + a
            travel = np.linalg.norm((c.j[min(e, c.T - 1), 7 + k] - c.j[max(s - 1, 0), 7 + k])[[0, 2]])
            if travel > 0.06 * c.s or c.foot_h[s:e, k].max() > 0.05 * c.s:
                found.append((s, e))
        eps.append(found)
        out.append(len(found))
    return out, eps


def _peaks(x: np.ndarray, lo: float, hi: float, min_len: int = 1) -> list[tuple[int, int]]:
    return _episodes(_hysteresis(x, lo, hi), min_len)


class _Window(dict):
    """Measured quantities of frames [a, b) of a clip; each group of them is computed on first use, because the
    segment search scores many windows and most primitives read only a few groups."""

    def __init__(self, c: Clip, a: int, b: int) -> None:
        super().__init__()
        self.c, self.a, self.b, self.n = c, a, b, b - a

    def __missing__(self, key: str) -> Any:
        _GROUP_OF[key](self)
        return dict.__getitem__(self, key)


_GROUP_OF: dict[str, Callable[[_Window], None]] = {}


def _measures(*keys: str) -> Callable[[Callable[[_Window], None]], Callable[[_Window], None]]:
    def register(fn: Callable[[_Window], None]) -> Callable[[_Window], None]:
        for k in keys:
            _GROUP_OF[k] = fn
        return fn

    return register


@_measures("yaw", "fwd", "left", "dist", "path", "spread", "speed", "yaw0")
def _travel(f: _Window) -> None:
    c, a, b = f.c, f.a, f.b
    k0, k1 = slice(a, min(a + 4, b)), slice(max(b - 4, a), b)
    yaw0 = float(np.mean(c.yaw[k0]))
    f["yaw0"] = yaw0
    f["yaw"] = math.degrees(float(np.mean(c.yaw[k1])) - yaw0)
    d = c.root[k1][:, [0, 2]].mean(0) - c.root[k0][:, [0, 2]].mean(0)
    f["fwd"] = float(d @ [math.sin(yaw0), math.cos(yaw0)])
    f["left"] = float(d @ [math.cos(yaw0), -math.sin(yaw0)])
    f["dist"] = float(np.linalg.norm(d))
    xz = c.root[a:b][:, [0, 2]]
    f["path"] = float(np.linalg.norm(np.diff(xz, axis=0), axis=-1).sum())
    f["spread"] = float(np.linalg.norm(xz - xz[0], axis=-1).max())
    # sustained top speed: the best half-second average (start and stop ramps do not count)
    k = min(10, f.n)
    f["speed"] = float(np.convolve(c.speed[a:b], np.ones(k) / k, mode="valid").max())


@_measures("steps", "steps_side", "cadence", "gait_steps", "gait_cadence", "double")
def _stepping(f: _Window) -> None:
    c, a, b, s = f.c, f.a, f.b, f.c.s
    counts, eps = _steps(c, a, b)
    f["steps"] = counts[0] + counts[1]
    f["steps_side"] = counts
    starts = sorted(e[0] for side in eps for e in side)
    cadence = 0.0
    if len(starts) >= 3:
        cadence = (len(starts) - 1) / ((starts[-1] - starts[0]) / c.fps)
    elif len(starts) == 2 and starts[1] > starts[0]:
        cadence = 1.0 / ((starts[1] - starts[0]) / c.fps)
    f["cadence"] = cadence
    # The same for gaits, read from the feet passing each other (robust to blur: no contact detection needed):
    # each step swaps which foot is ahead; the first step opens the stance and the last one may close it.
    ahead = c.ahead[a:b]
    keep = np.abs(ahead) > 0.1 * s
    signs, idx = np.sign(ahead[keep]), np.flatnonzero(keep)
    swaps = np.flatnonzero(np.diff(signs)) if len(signs) else np.array([], int)
    runs = len(swaps) + int(len(signs) > 0)
    f["gait_steps"] = runs + 1 if runs else f["steps"]
    if len(swaps) >= 2:
        at = 0.5 * (idx[swaps] + idx[swaps + 1])
        f["gait_cadence"] = (len(at) - 1) / ((at[-1] - at[0]) / c.fps)
    else:
        f["gait_cadence"] = cadence
    # both feet bearing weight, as a fraction of the stepping span (walking ~0.2, running 0)
    f["double"] = 1.0
    if starts:
        both = c.planted[starts[0] : max(e[1] for side in eps for e in side)]
        if len(both) > 4:
            f["double"] = float((both[:, 0] & both[:, 1]).mean())


@_measures("sync", "flights", "rise")
def _airborne(f: _Window) -> None:
    c, a, b, s = f.c, f.a, f.b, f.c.s
    hl, hr = c.foot_h[a:b, 0], c.foot_h[a:b, 1]
    f["sync"] = float(np.corrcoef(hl, hr)[0, 1]) if hl.std() > 1e-3 and hr.std() > 1e-3 else 0.0
    # jumps: both feet clearly off the floor together while the pelvis is above standing height
    air = (c.foot_h[a:b].min(axis=1) > 0.045 * s) & (c.root[a:b, 1] > c.stand + 0.02 * s)
    f["flights"] = len(_episodes(air, 2))
    f["rise"] = float(c.root[a:b, 1].max() - c.stand)


@_measures("low", "end_low", "start_low", "seated", "dips")
def _pelvis(f: _Window) -> None:
    c, a, b, n = f.c, f.a, f.b, f.n
    y = c.root[a:b, 1] / c.stand
    f["low"] = float(y.min())
    f["end_low"] = float(y[-max(n // 6, 2) :].mean())
    f["start_low"] = float(y[: max(n // 6, 2)].mean())
    f["seated"] = float((y < 0.45).mean())
    f["dips"] = len(_peaks(1.0 - y, 0.06, 0.12, 2))


@_measures("foot_top", "kick_top", "kicks")
def _kicking(f: _Window) -> None:
    c, a, b, s = f.c, f.a, f.b, f.c.s
    knee_h = 0.62 * c.leg
    f["foot_top"] = [float(c.ankle_h[a:b, k].max() / knee_h) for k in (0, 1)]
    # a foot up high in front of the pelvis
    sig = [np.where(c.ankle_rel[a:b, k, 0] > 0.15 * s, c.ankle_h[a:b, k], 0.0) / knee_h for k in (0, 1)]
    f["kick_top"] = [float(x.max()) for x in sig]
    f["kicks"] = [len(_peaks(x, 0.3, 0.42, 1)) for x in sig]


@_measures("lead_max", "lunges")
def _lunging(f: _Window) -> None:
    c, a, b, s = f.c, f.a, f.b, f.c.s
    yaw0 = f["yaw0"]
    ahead = (c.j[a:b, 7] - c.j[a:b, 8])[:, [0, 2]] @ [math.sin(yaw0), math.cos(yaw0)]  # left ankle ahead
    f["lead_max"] = [float(ahead.max()), float(-ahead.min())]
    low = c.root[a:b, 1] < 0.92 * c.stand
    f["lunges"] = [len(_episodes(low & (ahead > 0.35 * s), 2)), len(_episodes(low & (-ahead > 0.35 * s), 2))]


@_measures("hand_top", "hands_low", "shoulder_top", "raises", "hand_swings")
def _hands_up(f: _Window) -> None:
    c, a, b, s = f.c, f.a, f.b, f.c.s
    up = c.hand_above_head[a:b]
    f["hand_top"] = [float(up[:, k].max()) for k in (0, 1)]
    f["hands_low"] = float(up.max())
    sh = c.hand_above_shoulder[a:b] / c.arm
    f["shoulder_top"] = [float(sh[:, k].max()) for k in (0, 1)]
    f["raises"] = [len(_peaks(sh[:, k], 0.0, 0.3, 3)) for k in (0, 1)]
    # half-swings of a raised hand from side to side: two per wave
    f["hand_swings"] = [_alternations(np.where(sh[:, k] > 0.1, c.hand_vel[a:b, k, 2], 0.0), 0.25 * s) for k in (0, 1)]


@_measures("claps", "gap_min")
def _clapping(f: _Window) -> None:
    c, a, b, s = f.c, f.a, f.b, f.c.s
    gap = c.hand_gap[a:b] / c.arm
    front = c.hand_rel[a:b, :, 0].min(axis=1) > 0.1 * s
    f["claps"] = len(_peaks(-np.where(front, gap, 1.0), -0.42, -0.33, 1))
    f["gap_min"] = float(gap.min())


@_measures("reach", "punches", "hand_fwd_speed")
def _reaching(f: _Window) -> None:
    c, a, b, s = f.c, f.a, f.b, f.c.s
    reach = c.hand_rel[a:b, :, 0] / c.arm  # forward extension of each hand
    f["reach"] = [float(reach[:, k].max()) for k in (0, 1)]
    level = np.abs(c.hand_above_shoulder[a:b] / c.arm) < 0.45
    f["punches"] = [len(_peaks(np.where(level[:, k], reach[:, k], 0), 0.5, 0.72, 1)) for k in (0, 1)]
    f["hand_fwd_speed"] = [float(c.hand_vel[a:b, k, 0].max() / s) for k in (0, 1)]


@_measures("windup", "throws")
def _throwing(f: _Window) -> None:
    c, a, b, s, n = f.c, f.a, f.b, f.c.s, f.n
    hv = c.hand_vel[a:b]
    windup = (c.hand_above_shoulder[a:b] > 0.05 * c.arm) & (c.hand_rel[a:b, :, 0] < -0.05 * s)
    f["windup"] = [float(windup[:, k].mean()) for k in (0, 1)]
    # a wind-up counts as a throw when the hand then comes forward fast
    f["throws"] = [
        sum(1 for _, e in _episodes(windup[:, k], 1) if hv[e : min(e + 8, n), k, 0].max(initial=0.0) > 1.2 * s)
        for k in (0, 1)
    ]


@_measures("pitch_max", "bows")
def _bending(f: _Window) -> None:
    c, a, b = f.c, f.a, f.b
    pitch = c.pitch[a:b] - min(np.percentile(c.pitch, 10), 15.0)  # lean beyond the clip's upright posture
    f["pitch_max"] = float(np.percentile(pitch, 98))
    f["bows"] = len(_peaks(pitch, 9.0, 16.0, 2))


# ----------------------------------------------------------------------------------------- primitive scores

Criteria = dict[str, tuple[float, float]]


def _amp(seg: Segment) -> float:
    return AMPLITUDE_FACTOR[seg.amplitude]


def _stationary(f: dict, c: Clip, reach: float = 0.3, weight: float = 1.0) -> Criteria:
    """The pelvis never gets further than about ``reach`` metres from where the segment started."""
    return {"stays in place": (falls(f["spread"] / c.s, reach, 2.0 * reach + 0.1), weight)}


def _no_steps(f: dict, allowed: int = 0, weight: float = 0.6) -> Criteria:
    return {"feet stay planted": (falls(f["steps"], allowed + 0.5, allowed + 2.5), weight)}


def _arms_down(f: dict, weight: float = 1.0) -> Criteria:
    return {"hands below the head": (falls(f["hands_low"], 0.0, 0.12), weight)}


def _upright(f: dict, weight: float = 1.0) -> Criteria:
    return {
        "pelvis stays up": (rises(f["low"], 0.72, 0.85), weight),
        "trunk upright": (falls(f["pitch_max"], 22.0, 40.0), weight),
    }


def _no_flight(f: dict, weight: float = 1.0) -> Criteria:
    return {"no jumping": (falls(f["flights"], 0.5, 1.5), weight)}


def _no_turn(f: dict, tol: float = 35.0, weight: float = 1.0) -> Criteria:
    return {"keeps facing": (falls(abs(f["yaw"]), tol, tol + 40.0), weight)}


def _gait(seg: Segment, f: dict, c: Clip, fwd_sign: float) -> Criteria:
    """Counted straight stepping forwards (``fwd_sign`` 1) or backwards (-1) at the segment's cadence."""
    n = seg.count or 2
    along = fwd_sign * f["fwd"]
    cadence, stride = gait_expectation(seg)
    cr: Criteria = {
        "goes the right way": (rises(along / c.s, 0.1, 0.35), 1.0),
        "straight": (falls(abs(f["left"]) / max(abs(f["fwd"]), 0.1), 0.35, 0.8), 1.0),
        "step count": (count_score(f["gait_steps"], n, 1.2 + 0.3 * n), 0.5),
        "cadence": (ratio_near(f["gait_cadence"], cadence, 0.22) if f["gait_cadence"] else 0.0, 0.8),
        "stride": (ratio_near(along / max(f["gait_steps"] - 1, 1) / c.s, stride, 0.35), 0.5),
        "feet alternate": (falls(f["sync"], 0.3, 0.7), 0.5),
    }
    cr.update(_no_turn(f, 30.0))
    cr.update(_arms_down(f, 0.7))
    cr.update(_no_flight(f, 0.7))
    return cr


def _score_walk(seg: Segment, f: dict, c: Clip) -> Criteria:
    cr = _gait(seg, f, c, 1.0)
    cr["walking pace"] = (band(f["speed"] / c.s**0.5, 0.45, 1.9, 0.45), 1.0)
    cr["feet low"] = (falls(max(f["kick_top"]), 0.75, 1.05), 1.0)
    cr["both feet down in turn"] = (soft(rises(f["double"], 0.0, 0.04), 0.25), 0.5)
    cr.update(_upright(f, 0.8))
    return cr


def _score_run(seg: Segment, f: dict, c: Clip) -> Criteria:
    cr = _gait(seg, f, c, 1.0)
    cr.pop("no jumping")
    cr["running pace"] = (rises(f["speed"] / c.s**0.5, 1.7, 2.3), 1.0)
    cr["never both feet down"] = (soft(falls(f["double"], 0.04, 0.12), 0.25), 0.5)
    cr.update(_upright(f, 0.8))
    return cr


def _score_walk_backward(seg: Segment, f: dict, c: Clip) -> Criteria:
    cr = _gait(seg, f, c, -1.0)
    cr["walking pace"] = (band(f["speed"] / c.s**0.5, 0.25, 1.5, 0.4), 1.0)
    cr["feet low"] = (falls(max(f["foot_top"]), 0.75, 1.05), 1.0)
    cr.update(_upright(f, 0.8))
    return cr


def _score_sidestep(seg: Segment, f: dict, c: Clip) -> Criteria:
    n = seg.count or 2
    sign = 1.0 if seg.direction == "left" else -1.0
    lateral = sign * f["left"]
    expect = n * SIDESTEP_METRES * _amp(seg)
    cr: Criteria = {
        "goes sideways the right way": (rises(lateral / c.s, 0.12, 0.3 + 0.05 * n), 1.0),
        "not forwards or back": (falls(abs(f["fwd"]) / max(abs(lateral), 0.1), 0.4, 0.9), 1.0),
        "distance": (ratio_near(max(lateral, 1e-3) / c.s, expect, 0.4), 0.5),
        "step count": (count_score(f["steps"], 2 * n, 1.0 + 0.3 * n), 0.5),
    }
    cr.update(_no_turn(f, 30.0))
    cr.update(_arms_down(f, 0.7))
    cr.update(_no_flight(f, 0.7))
    cr.update(_upright(f, 0.8))
    return cr


def _turning(seg: Segment, f: dict, c: Clip, degrees: float) -> Criteria:
    sign = 1.0 if seg.direction == "left" else -1.0
    cr: Criteria = {
        "turns the right way": (rises(sign * f["yaw"], 15.0, 35.0), 1.0),
        "angle": (near(sign * f["yaw"], degrees, 18.0 + 0.08 * degrees), 1.0),
        "turns in place": (falls(f["dist"] / c.s, 0.35, 0.8), 1.0),
        "steps round": (rises(f["steps"], -0.5, 1.5), 0.3),
    }
    cr.update(_arms_down(f, 0.7))
    cr.update(_no_flight(f, 0.7))
    cr.update(_upright(f, 0.8))
    return cr


def _score_turn(seg: Segment, f: dict, c: Clip) -> Criteria:
    return _turning(seg, f, c, float(seg.angle or 90))


def _score_turn_around(seg: Segment, f: dict, c: Clip) -> Criteria:
    return _turning(seg, f, c, 180.0)


def _score_circle(seg: Segment, f: dict, c: Clip) -> Criteria:
    n = seg.count or 6
    sign = 1.0 if seg.direction == "left" else -1.0
    cr: Criteria = {
        "heading goes round": (rises(sign * f["yaw"], 200.0, 290.0), 1.0),
        "about one full turn": (near(sign * f["yaw"], 360.0, 70.0), 0.5),
        "walks a path": (rises(f["path"] / c.s, 1.0, 2.0), 1.0),
        "comes back round": (falls(f["dist"] / max(f["path"], 1e-3), 0.35, 0.75), 0.5),
        "step count": (count_score(f["steps"], n, 1.5 + 0.2 * n), 0.5),
        "walking pace": (band(f["speed"] / c.s**0.5, 0.35, 1.9, 0.45), 0.7),
        "feet alternate": (falls(f["sync"], 0.3, 0.7), 0.5),
    }
    cr.update(_arms_down(f, 0.7))
    cr.update(_no_flight(f, 0.7))
    cr.update(_upright(f, 0.8))
    return cr


def _jumping(seg: Segment, f: dict, c: Clip, forward: float) -> Criteria:
    n = seg.count or 1
    cr: Criteria = {
        "leaves the floor": (rises(f["flights"], 0.5, 1.0), 1.0),
        "jump count": (count_score(f["flights"], n, 0.55), 1.0),
        "rises": (rises(f["rise"] / c.s, 0.03, 0.1), 1.0),
        "feet together": (rises(f["sync"], 0.2, 0.6), 0.7),
        "height": (ratio_near(max(f["rise"], 1e-3) / c.s, 0.015 + flight_height(seg), 0.4), 0.4),
    }
    if forward:
        per = f["fwd"] / c.s / n
        cr["jumps forwards"] = (rises(f["fwd"] / c.s, 0.15, 0.3 * n + 0.1), 1.0)
        cr["distance"] = (ratio_near(max(per, 1e-3), forward * _amp(seg), 0.4), 0.4)
        cr["straight"] = (falls(abs(f["left"]) / max(abs(f["fwd"]), 0.1), 0.35, 0.8), 0.7)
    else:
        cr["jumps in place"] = (falls(f["dist"] / c.s, 0.15 + 0.05 * n, 0.35 + 0.1 * n), 1.0)
    cr.update(_no_turn(f, 30.0, 0.7))
    cr.update(_arms_down(f, 0.5))
    return cr


def _score_jump(seg: Segment, f: dict, c: Clip) -> Criteria:
    return _jumping(seg, f, c, 0.0)


def _score_jump_forward(seg: Segment, f: dict, c: Clip) -> Criteria:
    return _jumping(seg, f, c, JUMP_FORWARD_METRES)


def _score_kick(seg: Segment, f: dict, c: Clip) -> Criteria:
    n = seg.count or 1
    k = _SIDE[seg.side or "right"]
    o = 1 - k
    top = f["kick_top"][k]
    expect = {"small": 0.62, "normal": 1.1, "large": 1.8}[seg.amplitude]  # ankle top / standing knee height
    # a kick may come with a run-up or a turn (real kicks do): place and facing only nudge the score
    return {
        "a foot swings up in front": (rises(top, 0.35, 0.55), 1.0),
        "that foot": (rises(top - f["kick_top"][o], 0.0, 0.3), 1.0),
        "kick count": (count_score(f["kicks"][k], n, 0.55), 1.0),
        "height": (ratio_near(max(top, 1e-3), expect, 0.3), 0.4),
        "no jumping": (falls(f["flights"], 0.5, 1.5), 1.0),
        "hands below the head": (falls(f["hands_low"], 0.0, 0.12), 0.7),
        "standing leg stays": (soft(falls(f["steps_side"][o], 0.5, 2.5), 0.3), 0.5),
        "stays in place": (soft(falls(f["spread"] / c.s, 0.3, 0.7), 0.3), 0.5),
        "keeps facing": (soft(falls(abs(f["yaw"]), 40.0, 80.0), 0.3), 0.5),
    }


def _score_squat(seg: Segment, f: dict, c: Clip) -> Criteria:
    n = seg.count or 1
    depth = (1.0 - f["low"]) * c.stand / c.s
    cr: Criteria = {
        "goes down": (rises(1.0 - f["low"], 0.12, 0.22), 1.0),
        "squat count": (count_score(f["dips"], n, 0.55), 1.0),
        "depth": (ratio_near(max(depth, 1e-3), SQUAT_DEPTH * _amp(seg) ** 1.2, 0.3), 0.4),
        "comes back up": (rises(f["end_low"], 0.8, 0.9), 1.0),
        "feet apart not lunging": (falls(max(f["lead_max"]) / c.s, 0.25, 0.45), 1.0),
    }
    cr.update(_stationary(f, c, 0.3))
    cr.update(_no_steps(f))
    cr.update(_no_flight(f))
    cr.update(_no_turn(f, 30.0))
    cr.update(_arms_down(f, 0.7))
    return cr


def _score_lunge(seg: Segment, f: dict, c: Clip) -> Criteria:
    n = seg.count or 1
    k = _SIDE[seg.side or "right"]
    lead = f["lead_max"][k]
    cr: Criteria = {
        "steps out far": (rises(lead / c.s, 0.35, 0.5), 1.0),
        "that foot in front": (rises(lead - f["lead_max"][1 - k], 0.1, 0.3), 1.0),
        "sinks": (rises(1.0 - f["low"], 0.08, 0.16), 1.0),
        "lunge count": (count_score(f["lunges"][k], n, 0.55), 1.0),
        "comes back": (rises(f["end_low"], 0.82, 0.9), 0.7),
        "returns to place": (falls(f["dist"] / c.s, 0.25, 0.5), 0.7),
        "foot stays low": (falls(max(f["kick_top"]), 0.5, 0.75), 0.7),
    }
    cr.update(_no_flight(f))
    cr.update(_no_turn(f, 30.0))
    cr.update(_arms_down(f, 0.7))
    return cr


def _score_sit_down(seg: Segment, f: dict, c: Clip) -> Criteria:
    cr: Criteria = {
        "reaches the floor": (falls(f["low"], 0.3, 0.45), 1.0),
        "stays down": (rises(f["seated"], 0.15, 0.3), 1.0),
        "starts standing": (rises(f["start_low"], 0.7, 0.85), 0.5),
    }
    cr.update(_stationary(f, c, 0.6, 0.7))
    cr.update(_no_flight(f))
    cr.update(_no_turn(f, 35.0, 0.7))
    cr.update(_arms_down(f, 0.7))
    return cr


def _still_legs(f: dict, c: Clip) -> Criteria:
    cr: Criteria = {}
    cr.update(_stationary(f, c, 0.2))
    cr.update(_no_steps(f, 0, 0.4))
    cr.update(_no_flight(f))
    cr.update(_no_turn(f, 30.0))
    cr["pelvis stays up"] = (soft(rises(f["low"], 0.78, 0.88), 0.35), 1.0)  # arms can move seated too
    cr["trunk upright"] = (falls(f["pitch_max"], 20.0, 35.0), 0.7)
    return cr


def _score_wave(seg: Segment, f: dict, c: Clip) -> Criteria:
    n = seg.count or 2
    k = _SIDE[seg.side or "right"]
    o = 1 - k
    cr: Criteria = {
        "hand up high": (rises(f["hand_top"][k], -0.08, 0.05), 1.0),
        "that hand": (falls(f["shoulder_top"][o], 0.0, 0.25), 1.0),
        "waves to and fro": (rises(f["hand_swings"][k], 1.5, 2.5), 1.0),
        "wave count": (count_score(f["hand_swings"][k], 2 * n + 2, 1.3), 0.8),  # raising and lowering add one each
        "raised once": (falls(f["raises"][k], 1.5, 2.5), 0.5),
    }
    cr.update(_still_legs(f, c))
    return cr


def _score_raise_arms(seg: Segment, f: dict, c: Clip) -> Criteria:
    n = seg.count or 1
    sides = (0, 1) if seg.side == "both" else (_SIDE[seg.side or "right"],)
    height = {"small": 0.35, "normal": 0.75, "large": 0.95}[seg.amplitude]
    cr: Criteria = {}
    for k in sides:
        name = "left" if k == 0 else "right"
        cr[f"{name} hand goes up"] = (rises(f["shoulder_top"][k], 0.15, 0.35), 1.0)
        cr[f"{name} raise count"] = (count_score(f["raises"][k], n, 0.55), 1.0)
        cr[f"{name} height"] = (near(f["shoulder_top"][k], height, 0.2), 0.4)
        cr[f"{name} held still"] = (falls(f["hand_swings"][k], 2.5 * n + 0.5, 2.5 * n + 2.5), 0.8)
    if len(sides) == 1:
        cr["other hand down"] = (falls(f["shoulder_top"][1 - sides[0]], 0.0, 0.25), 1.0)
    cr.update(_still_legs(f, c))
    return cr


def _score_clap(seg: Segment, f: dict, c: Clip) -> Criteria:
    n = seg.count or 3
    cr: Criteria = {
        "hands meet": (falls(f["gap_min"], 0.2, 0.4), 1.0),
        "clap count": (count_score(f["claps"], n, 0.6), 1.0),
        "hands in front": (rises(min(f["reach"]), 0.15, 0.35), 0.7),
    }
    cr.update(_arms_down(f, 1.0))
    cr.update(_still_legs(f, c))
    return cr


def _score_punch(seg: Segment, f: dict, c: Clip) -> Criteria:
    n = seg.count or 1
    k = _SIDE[seg.side or "right"]
    o = 1 - k
    cr: Criteria = {
        "arm shoots forward": (rises(f["reach"][k], 0.6, 0.78), 1.0),
        "that arm": (rises(f["reach"][k] - f["reach"][o], 0.15, 0.35), 1.0),
        "punch count": (count_score(f["punches"][k], n, 0.55), 1.0),
        "fast": (rises(f["hand_fwd_speed"][k], 0.9, 1.5), 0.5),
        "not a clap": (rises(f["gap_min"], 0.25, 0.4), 0.7),
    }
    cr.update(_arms_down(f, 1.0))
    cr.update(_still_legs(f, c))
    return cr


def _score_throw(seg: Segment, f: dict, c: Clip) -> Criteria:
    n = seg.count or 1
    k = _SIDE[seg.side or "right"]
    o = 1 - k
    cr: Criteria = {
        "winds up behind": (rises(f["windup"][k], 0.02, 0.1), 1.0),
        "hand over the shoulder": (rises(f["shoulder_top"][k], 0.1, 0.3), 1.0),
        "throws forward fast": (rises(f["hand_fwd_speed"][k], 1.2, 2.2), 1.0),
        "throw count": (count_score(f["throws"][k], n, 0.6), 1.0),
        "that arm": (rises(f["shoulder_top"][k] - f["shoulder_top"][o], 0.1, 0.3), 1.0),
    }
    cr.update(_stationary(f, c, 0.3, 0.7))
    cr.update(_no_flight(f))
    cr.update(_no_turn(f, 40.0, 0.7))
    cr["pelvis stays up"] = (rises(f["low"], 0.78, 0.88), 1.0)
    return cr


def _score_bow(seg: Segment, f: dict, c: Clip) -> Criteria:
    n = seg.count or 1
    angle = min(BOW_DEGREES * _amp(seg) ** 1.2, 80.0)
    cr: Criteria = {
        "bends forward": (rises(f["pitch_max"], 12.0, 22.0), 1.0),
        "bow count": (count_score(f["bows"], n, 0.55), 1.0),
        "depth": (ratio_near(max(f["pitch_max"], 1.0), angle, 0.35), 0.4),
        "legs straight": (rises(f["low"], 0.8, 0.9), 1.0),
    }
    cr.update(_stationary(f, c, 0.25))
    cr.update(_no_steps(f, 0, 0.4))
    cr.update(_no_flight(f))
    cr.update(_no_turn(f, 30.0))
    cr.update(_arms_down(f, 1.0))
    return cr


_SCORERS: dict[str, Callable[[Segment, dict, Clip], Criteria]] = {
    "walk": _score_walk,
    "run": _score_run,
    "walk_backward": _score_walk_backward,
    "sidestep": _score_sidestep,
    "turn": _score_turn,
    "circle": _score_circle,
    "jump": _score_jump,
    "jump_forward": _score_jump_forward,
    "kick": _score_kick,
    "squat": _score_squat,
    "lunge": _score_lunge,
    "sit_down": _score_sit_down,
    "wave": _score_wave,
    "raise_arms": _score_raise_arms,
    "clap": _score_clap,
    "punch": _score_punch,
    "throw": _score_throw,
    "bow": _score_bow,
    "turn_around": _score_turn_around,
}


# ------------------------------------------------------------------------------------------ segmentation


def _segment_score(c: Clip, seg: Segment, a: int, b: int) -> tuple[float, Criteria]:
    cr = _SCORERS[seg.primitive](seg, c.features(a, b), c)
    return weighted_product(cr), cr


Split = tuple[float, list[tuple[int, int]], list[tuple[float, Criteria]]]


def _best_split(c: Clip, program: Program) -> Split:
    """Segment windows maximising the geometric mean of the segment scores (nudged towards the nominal timing):
    a coarse grid of cuts within +-30% of the clip around the nominal ones, then a finer grid around the best."""
    segs = program.segments
    T = c.T
    if len(segs) == 1:
        sc = _segment_score(c, segs[0], 0, T)
        return sc[0], [(0, T)], [sc]
    secs = np.array([segment_seconds(s) for s in segs])
    nominal = np.cumsum(secs)[:-1] / secs.sum() * T
    cache: dict[tuple[int, int, int], tuple[float, Criteria]] = {}

    def evaluate(cut: tuple[int, ...]) -> Split:
        edges = [0, *cut, T]
        scores = []
        for k, seg in enumerate(segs):
            key = (k, edges[k], edges[k + 1])
            if key not in cache:
                cache[key] = _segment_score(c, seg, edges[k], edges[k + 1])
            scores.append(cache[key])
        prior = math.exp(-0.5 * sum(((x - m) / (0.35 * T)) ** 2 for x, m in zip(cut, nominal, strict=True)))
        total = math.exp(np.mean([math.log(max(sc[0], 1e-4)) for sc in scores])) * (0.9 + 0.1 * prior)
        return total, list(zip(edges[:-1], edges[1:], strict=True)), scores

    def search(grids: list[list[int]]) -> tuple[tuple[int, ...], Split]:
        combos = (
            [(g,) for g in grids[0]]
            if len(grids) == 1
            else [(g1, g2) for g1 in grids[0] for g2 in grids[1] if g2 - g1 >= 8]
        )
        if not combos:  # cuts too close on a short clip: keep the nominal ones apart
            combos = [tuple(int(round(x)) for x in nominal)]
        found = [(cut, evaluate(cut)) for cut in combos]
        return max(found, key=lambda x: x[1][0])

    coarse = max(3, T // 12)
    grids = []
    for m in nominal:
        lo, hi = max(6, int(m - 0.3 * T)), min(T - 6, int(m + 0.3 * T))
        grids.append(sorted(set(range(lo, hi + 1, coarse)) | {int(round(m))}))
    cut, _ = search(grids)
    half = coarse // 2 + 1
    fine = [sorted({min(max(x + d, 6), T - 6) for d in range(-half, half + 1, 2)}) for x in cut]
    return search(fine)[1]


# ---------------------------------------------------------------------------------------------- public API


MIN_FRAMES = 8  # shorter clips show too little motion to measure; they score 0 (a model may emit one)


def judged_joints(features: np.ndarray, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """The joints :func:`judge` and :func:`realism` score for a motion's features (T, D) of ``skeleton``: recovered
    from them (``recover_joints``), and a KIT-ML motion put on HumanML3D's 22 joints at 20 fps."""
    return to_skeleton(recover_joints(features, skeleton), skeleton, HUMANML3D)


def judge(program: Program, joints: np.ndarray) -> float:
    """How well ``joints`` (T, 22, 3) perform ``program``, in [0, 1], from joint positions only."""
    if np.ndim(joints) == 3 and len(joints) < MIN_FRAMES:
        return 0.0
    return judge_details(program, joints)["score"]


def judge_details(program: Program, joints: np.ndarray) -> dict[str, Any]:
    """The score with its parts: per segment the frame window found, its score and each criterion's score."""
    program.validate()
    c = Clip(joints)
    total, windows, scores = _best_split(c, program)
    return {
        "program": program.key(),
        "score": float(total),
        "segments": [
            {
                "segment": seg.key(),
                "frames": [a, b],
                "score": float(sc),
                "criteria": {name: round(float(v), 4) for name, (v, _) in cr.items()},
            }
            for seg, (a, b), (sc, cr) in zip(program.segments, windows, scores, strict=True)
        ],
    }


def realism_details(joints: np.ndarray) -> dict[str, float]:
    """Per-criterion realism scores in [0, 1] and the raw measures behind them (metres, per frame at 20 fps)."""
    raw = _check(joints)
    T = len(raw)
    smooth = gaussian_filter1d(raw, 1.0, axis=0, mode="nearest")
    s = max(_body_size(raw) / REF_SIZE, 0.1)
    feet = smooth[:, [7, 8, 10, 11]]
    floor = _floor(smooth, FPS)
    # skating: horizontal travel of foot joints on the floor and (nearly) still, as HumanML3D's contact test
    h = feet[:-1, :, 1] - floor
    step = np.linalg.norm(np.diff(feet, axis=0), axis=-1)
    contact = (h < 0.05 * s) & (step**2 < 0.002)
    slide = np.linalg.norm(np.diff(feet, axis=0)[..., [0, 2]], axis=-1)
    # the worst foot joint's mean slide per contact frame (a skating foot is not excused by a planted one)
    skate = max((float(slide[contact[:, k], k].mean()) for k in range(4) if contact[:, k].any()), default=0.0)
    # penetration: how far joints go below the floor the feet stand on
    below = np.clip(floor - smooth[..., 1], 0, None)
    sink = float(np.percentile(below.max(axis=1), 95))
    # bone lengths of the long limb bones (thighs, shins, upper arms, forearms): spread over time / length
    long_bones = np.array([[1, 4], [4, 7], [2, 5], [5, 8], [16, 18], [18, 20], [17, 19], [19, 21]])
    lengths = np.linalg.norm(raw[:, long_bones[:, 1]] - raw[:, long_bones[:, 0]], axis=-1)
    drift = float(np.mean(lengths.std(axis=0) / np.maximum(lengths.mean(axis=0), 1e-3)))
    # jitter: natural motion keeps its acceleration's sign for several frames; noise flips it almost every
    # frame. The share of sign flips among clearly accelerating joint coordinates separates the two whatever the
    # speed (clean and decoded motion ~0.05-0.45, added noise ~0.55-0.8).
    d2 = raw[2:] - 2.0 * raw[1:-1] + raw[:-2]
    big = np.abs(d2) > 0.003 * s
    pairs = big[1:] & big[:-1]
    flips = float(((np.sign(d2[1:]) != np.sign(d2[:-1])) & pairs).sum() / max(pairs.sum(), 1))
    jerk = float(np.mean(np.linalg.norm(np.diff(raw, 3, axis=0), axis=-1))) * FPS**3 if T > 3 else 0.0
    # frozen: frames where nothing moves at all
    move = np.linalg.norm(np.diff(raw, axis=0), axis=-1).max(axis=1)
    frozen = float((move < 1e-4).mean())
    # teleport: a root or limb jump no body can make in a frame
    root_step = np.linalg.norm(np.diff(raw[:, 0], axis=0), axis=-1)
    rel = raw - raw[:, :1]
    limb_step = np.linalg.norm(np.diff(rel, axis=0), axis=-1).max(axis=1)
    teleport = float(max(root_step.max() / (0.4 * s), limb_step.max() / (1.0 * s))) if T > 1 else 0.0
    parts = {
        "skating": falls(skate / s, 0.01, 0.025),
        "floor": falls(sink / s, 0.02, 0.08),
        "bones": falls(drift, 0.05, 0.2),
        "smooth": falls(flips, 0.5, 0.62),
        "moves": falls(frozen, 0.3, 0.7),
        "no_teleport": falls(teleport, 1.0, 1.6),
    }
    measures = {
        "skate_m": skate,
        "sink_m": sink,
        "bone_cv": drift,
        "jerk_flip_rate": flips,
        "mean_jerk_m_s3": jerk,
        "frozen_fraction": frozen,
        "teleport_ratio": teleport,
    }
    return {**parts, **measures, "score": float(np.prod(list(parts.values())))}


def realism(joints: np.ndarray) -> float:
    """How physically plausible a motion looks, in [0, 1] (see :func:`realism_details`); 0 for a clip too short
    to tell."""
    if np.ndim(joints) == 3 and len(joints) < MIN_FRAMES:
        return 0.0
    return realism_details(joints)["score"]


# ------------------------------------------------------------------------------------------ confusion matrix


def _single_segment(name: str, rng: np.random.Generator) -> Segment:
    """A random segment of primitive ``name`` whose one-segment program fits a clip, as the dataset draws them."""
    while True:
        seg = sample_segment(rng, name)
        if Program((seg,)).nominal_frames() <= MAX_NOMINAL_FRAMES:
            return seg


def confusion_matrix(n_per_primitive: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Mean judge score of clips of each primitive (rows) under a program of each primitive (columns).

    Clips are single-segment programs with random modifiers, animated by ``animate``; a column's program is a
    random valid segment of that primitive, except on the diagonal where it is the clip's own program.
    """
    rng = np.random.default_rng(seed)
    labels = list(PRIMITIVES)
    m = np.zeros((len(labels), len(labels)))
    for i, name in enumerate(labels):
        for _ in range(n_per_primitive):
            seg = _single_segment(name, rng)
            joints = animate(Program((seg,)), rng)
            c = Clip(joints)
            for k, other in enumerate(labels):
                probe = seg if other == name else _single_segment(other, rng)
                m[i, k] += _segment_score(c, probe, 0, c.T)[0]
    return m / n_per_primitive, labels
