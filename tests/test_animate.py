"""The procedural animator: shapes and timing, physical plausibility, and that modifiers do what they say."""

from __future__ import annotations

import time

import numpy as np
import pytest

from motionpref.motion.skeleton import HUMANML3D
from motionpref.synth.animate import Style, animate
from motionpref.synth.programs import MAX_FRAMES, MIN_FRAMES, PRIMITIVES, Program, ProgramError, Segment, make_segment
from motionpref.synth.programs import program as make_program

PARENTS = np.array(HUMANML3D.parents[1:])


def clip(name: str, seed: int = 0, style: Style | None = None, **modifiers) -> np.ndarray:
    return animate(make_program(make_segment(name, **modifiers)), np.random.default_rng(seed), style)


def facing(j: np.ndarray) -> np.ndarray:
    """Heading (radians, + towards +x) of each frame from the hips and shoulders."""
    left = (j[:, 1] - j[:, 2]) + (j[:, 16] - j[:, 17])
    return np.unwrap(np.arctan2(-left[:, 2], left[:, 0]))


def stance_slides(j: np.ndarray) -> np.ndarray:
    """Horizontal travel per frame of foot joints in stance, with HumanML3D's contact test (squared step below
    0.002) plus a 5 cm height limit. Stance = a run of at least 4 contact frames without its landing frame and
    its two lift-off frames (a foot just touching down or leaving is still moving by definition)."""
    out = []
    for f in (7, 8, 10, 11):
        step = j[1:, f] - j[:-1, f]
        contact = (j[:-1, f, 1] < 0.05) & (np.sum(step**2, axis=-1) < 0.002)
        slide = np.linalg.norm(step[:, [0, 2]], axis=-1)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], contact.astype(int), [0]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            if b - a >= 4:
                out.extend(slide[a + 1 : b - 2])
    return np.array(out)


@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_every_primitive_is_a_plausible_clip(name):
    seg = make_segment(name)
    joints = animate(Program((seg,)), np.random.default_rng(1))
    nominal = Program((seg,)).nominal_frames()
    assert joints.dtype == np.float32 and joints.shape[1:] == (22, 3)
    assert MIN_FRAMES <= len(joints) <= MAX_FRAMES
    assert abs(len(joints) - nominal) <= 0.08 * nominal + 1
    assert np.isfinite(joints).all()
    # starts at the origin facing +z, on the floor, nothing below it
    assert np.allclose(joints[0, 0, [0, 2]], 0.0, atol=0.02)
    assert abs(facing(joints[:3]).mean()) < np.radians(8)
    assert joints[..., 1].min() > -0.003
    assert joints[:, [10, 11], 1].min() < 0.01
    # bones keep their length
    bones = np.linalg.norm(joints[:, 1:] - joints[:, PARENTS], axis=-1)
    assert bones.std(axis=0).max() < 1e-4
    # planted feet stay put, and no joint teleports
    slides = stance_slides(joints.astype(np.float64))
    assert slides.size == 0 or slides.max() < 0.02
    assert np.linalg.norm(np.diff(joints[:, 0], axis=0), axis=-1).max() < 0.3


def test_same_seed_same_clip_and_clips_vary():
    prog = make_program(make_segment("wave", count=2))
    a = animate(prog, np.random.default_rng(7))
    b = animate(prog, np.random.default_rng(7))
    c = animate(prog, np.random.default_rng(8))
    assert np.array_equal(a, b)
    n = min(len(a), len(c))
    assert np.abs(a[:n] - c[:n]).max() > 0.02


def test_body_scale_comes_from_the_style():
    small = clip("walk", style=Style(scale=0.9))
    large = clip("walk", style=Style(scale=1.1))
    leg = lambda j: np.linalg.norm(j[0, 4] - j[0, 1]) + np.linalg.norm(j[0, 7] - j[0, 4])  # noqa: E731
    assert leg(large) / leg(small) == pytest.approx(1.1 / 0.9, rel=1e-3)
    heights = [clip("walk", seed=s)[0, 15, 1] for s in range(6)]
    assert max(heights) - min(heights) > 0.03  # sampled styles give different bodies


def test_directions_follow_the_conventions():
    walk = clip("walk", count=4)
    assert walk[-1, 0, 2] > 1.5 and abs(walk[-1, 0, 0]) < 0.3  # forward is +z
    back = clip("walk_backward", count=4)
    assert back[-1, 0, 2] < -0.8
    left = clip("sidestep", direction="left", count=3)
    right = clip("sidestep", direction="right", count=3)
    assert left[-1, 0, 0] > 0.5 and right[-1, 0, 0] < -0.5  # the body's left is +x
    turn_left = clip("turn", direction="left", angle=90)
    assert np.degrees(facing(turn_left)[-1]) == pytest.approx(90, abs=12)  # + yaw is a turn to the left
    assert np.degrees(facing(clip("turn", direction="right", angle=45))[-1]) == pytest.approx(-45, abs=10)
    around = clip("turn_around", direction="right")
    assert np.degrees(facing(around)[-1]) == pytest.approx(-180, abs=15)
    circle = clip("circle", direction="left", count=8)
    assert np.degrees(facing(circle)[-1]) == pytest.approx(360, abs=25)
    assert circle[len(circle) // 2, 0, 0] > 0.5  # the centre is on the left
    assert np.linalg.norm(circle[-1, 0, [0, 2]]) < 0.35  # and the path closes


def test_speed_bands():
    def cruise(name, speed):
        j = clip(name, speed=speed, count=8)
        v = np.linalg.norm(np.diff(j[:, 0, [0, 2]], axis=0), axis=-1) * 20
        return np.convolve(v, np.ones(10) / 10, mode="valid").max()

    slow, normal, fast = (cruise("walk", s) for s in ("slow", "normal", "fast"))
    assert 0.6 < slow < normal < fast < 2.0
    assert slow == pytest.approx(0.85, abs=0.2) and normal == pytest.approx(1.25, abs=0.2)
    assert fast == pytest.approx(1.65, abs=0.25)
    assert cruise("run", "slow") > fast + 0.3


def lifts(j: np.ndarray, foot: int, height: float = 0.04) -> int:
    """Number of times a foot joint rises above ``height`` (m)."""
    up = (j[:, foot, 1] > height).astype(int)
    return int(np.sum(np.diff(np.concatenate([[0], up])) == 1))


@pytest.mark.parametrize("count", [2, 5])
def test_step_and_repetition_counts(count):
    walk = clip("walk", count=count)
    assert lifts(walk, 10) + lifts(walk, 11) == count
    jumps = clip("jump", count=min(count, 4))
    both_up = (jumps[:, [10, 11], 1].min(axis=1) > 0.05).astype(int)
    assert np.sum(np.diff(np.concatenate([[0], both_up])) == 1) == min(count, 4)
    squats = clip("squat", count=min(count, 4))
    low = (squats[:, 0, 1] < squats[0, 0, 1] - 0.15).astype(int)
    assert np.sum(np.diff(np.concatenate([[0], low])) == 1) == min(count, 4)


def test_kicks_raise_the_named_foot_above_the_knee():
    for side, foot, other in (("left", 7, 8), ("right", 8, 7)):
        j = clip("kick", side=side, count=2)
        knee_height = j[0, 4, 1]
        assert j[:, foot, 1].max() > knee_height
        assert j[:, other, 1].max() < 0.1  # the standing foot stays down
    small = clip("kick", amplitude="small")[:, 7, 1].max()
    large = clip("kick", amplitude="large")[:, 7, 1].max()
    assert large > small + 0.2


def test_amplitudes_change_heights_and_depths():
    jump = {a: clip("jump", amplitude=a, speed="slow")[:, 0, 1].max() for a in ("small", "large")}
    assert jump["large"] > jump["small"] + 0.1
    squat = {a: clip("squat", amplitude=a)[:, 0, 1].min() for a in ("small", "large")}
    assert squat["large"] < squat["small"] - 0.1
    bow = {a: clip("bow", amplitude=a)[:, 15, 1].min() for a in ("small", "large")}
    assert bow["large"] < bow["small"] - 0.15


def test_arm_gestures():
    wave = clip("wave", side="right", count=3)
    assert (wave[:, 21, 1] > wave[:, 15, 1]).mean() > 0.3  # right hand above the head
    assert (wave[:, 20, 1] < wave[:, 16, 1]).all()  # the left hand stays down
    raised = clip("raise_arms", side="both")
    assert (raised[:, [20, 21], 1] > raised[:, [15], 1] + 0.1).all(axis=1).any()
    clap = clip("clap", count=3)
    assert np.linalg.norm(clap[:, 20] - clap[:, 21], axis=-1).min() < 0.08  # hands meet in front
    punch = clip("punch", side="left")
    reach = punch[:, 20] - punch[:, 16]
    assert reach[:, 2].max() > 0.4  # the left fist goes forward
    assert (punch[:, 21] - punch[:, 17])[:, 2].max() < 0.3
    throw = clip("throw", side="right")
    assert (throw[:, 21, 1] > throw[:, 15, 1]).any()  # over the head
    assert np.diff(throw[:, 21, 2]).max() * 20 > 2.5  # released fast


def test_sitting_down_ends_on_the_floor():
    j = clip("sit_down")
    assert j[0, 0, 1] > 0.8 and j[-1, 0, 1] < 0.25
    j = animate(make_program(make_segment("wave"), make_segment("sit_down")), np.random.default_rng(0))
    assert j[0, 0, 1] > 0.8 and j[-1, 0, 1] < 0.25
    with pytest.raises(ProgramError, match="can only come last"):
        make_program(make_segment("sit_down"), make_segment("wave"))


def test_segments_chain_smoothly():
    prog = make_program(make_segment("walk", count=4), make_segment("turn", direction="left"), make_segment("jump"))
    j = animate(prog, np.random.default_rng(3))
    half = len(j) // 2
    assert j[half, 0, 2] > 1.0  # walked first
    assert (j[: len(j) // 3, [10, 11], 1].min(axis=1) < 0.05).all()  # no jump while walking
    assert (j[-len(j) // 3 :, [10, 11], 1].min(axis=1) > 0.05).any()  # and a jump at the end
    assert np.degrees(facing(j)[-1]) == pytest.approx(90, abs=15)
    assert np.linalg.norm(np.diff(j, axis=0), axis=-1).max() < 0.6  # no jumps between segments


def test_invalid_programs_are_rejected():
    with pytest.raises(ProgramError, match="count"):
        animate(Program((Segment("walk", count=99),)), np.random.default_rng(0))


def test_animation_is_fast():
    prog = [make_program(make_segment(n)) for n in PRIMITIVES]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for p in prog * 3:
        animate(p, rng)
    rate = 3 * len(prog) / (time.perf_counter() - start)
    assert rate > 40  # clips per second on one core (typically several hundred)
