"""The synthetic judge: membership functions by hand, the acceptance criteria (confusion matrix, modifiers,
segment order, real motion capture, realism), robustness to decoded-motion errors, and the report/gallery."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d

from motionpref.motion.features import extract_features, recover_joints
from motionpref.motion.mocap import load_cmu_joints
from motionpref.motion.rotations import rotate_y
from motionpref.synth.animate import animate
from motionpref.synth.gallery import judge_report, render_gallery, write_judge_report
from motionpref.synth.judge import (
    band,
    confusion_matrix,
    count_score,
    falls,
    judge,
    judge_details,
    near,
    ratio_near,
    realism,
    realism_details,
    rises,
    soft,
    weighted_product,
)
from motionpref.synth.programs import PRIMITIVES, make_segment, program


def clips(prog, n, seed):
    rng = np.random.default_rng(seed)
    return [animate(prog, rng) for _ in range(n)]


def mean_judge(prog, joints_list):
    return float(np.mean([judge(prog, j) for j in joints_list]))


@pytest.fixture(scope="module")
def cmu(cmu_dir):
    return {
        "walk": load_cmu_joints(cmu_dir / "12_01_walk.bvh"),
        "kick": load_cmu_joints((cmu_dir / "11.asf", cmu_dir / "11_01_kick.amc")),
    }


# ---------------------------------------------------------------------------------------- memberships


def test_membership_functions_by_hand():
    assert rises(0.5, 0.0, 1.0) == pytest.approx(0.5)  # smoothstep midpoint
    assert rises(0.25, 0.0, 1.0) == pytest.approx(3 * 0.25**2 - 2 * 0.25**3)
    assert rises(-1.0, 0.0, 1.0) == 0.0 and rises(2.0, 0.0, 1.0) == 1.0
    assert falls(0.25, 0.0, 1.0) == pytest.approx(1 - 0.15625)
    assert band(1.5, 1.0, 2.0, 0.5) == 1.0 and band(0.75, 1.0, 2.0, 0.5) == pytest.approx(0.5)
    assert near(3.0, 1.0, 2.0) == pytest.approx(math.exp(-0.5))
    assert ratio_near(2.0 * math.exp(0.3), 2.0, 0.3) == pytest.approx(math.exp(-0.5))
    assert ratio_near(0.0, 1.0, 0.3) == 0.0
    assert count_score(3, 4, 1.0) == pytest.approx(math.exp(-0.5))
    assert soft(0.0, 0.3) == pytest.approx(0.3) and soft(1.0, 0.3) == 1.0
    # prod s^w with scores floored at 1e-4
    assert weighted_product({"a": (0.5, 1.0), "b": (0.25, 0.5)}) == pytest.approx(0.5 * 0.5)
    assert weighted_product({"a": (0.0, 1.0)}) == pytest.approx(1e-4)


# ------------------------------------------------------------------------------------ acceptance criteria


def test_confusion_matrix_separates_the_primitives():
    m, labels = confusion_matrix(3, seed=11)
    assert labels == list(PRIMITIVES) and m.shape == (19, 19)
    off = ~np.eye(19, dtype=bool)
    assert np.diag(m).mean() >= 0.8, dict(zip(labels, np.diag(m).round(2), strict=True))
    assert np.diag(m).min() >= 0.5, dict(zip(labels, np.diag(m).round(2), strict=True))
    assert m[off].mean() <= 0.3
    assert max(m[i][off[i]].mean() for i in range(19)) <= 0.3  # under every other primitive, on average
    assert ((m >= 0) & (m <= 1)).all()


def test_modifiers_matter():
    slow = clips(program(make_segment("walk", speed="slow")), 3, 1)
    assert mean_judge(program(make_segment("walk", speed="slow")), slow) > 0.8
    assert mean_judge(program(make_segment("walk", speed="fast")), slow) < 0.4
    left = clips(program(make_segment("kick", side="left")), 3, 2)
    assert mean_judge(program(make_segment("kick", side="left")), left) > 0.8
    assert mean_judge(program(make_segment("kick", side="right")), left) < 0.3
    two = clips(program(make_segment("jump", count=2)), 3, 3)
    assert mean_judge(program(make_segment("jump", count=2)), two) > 0.8
    assert mean_judge(program(make_segment("jump", count=4)), two) < 0.3


def test_segment_order_matters():
    walk_jump = program(make_segment("walk", count=4), make_segment("jump"))
    jump_walk = program(make_segment("jump"), make_segment("walk", count=4))
    shown = clips(walk_jump, 3, 4)
    assert mean_judge(walk_jump, shown) > 0.8
    assert mean_judge(jump_walk, shown) < 0.3


def test_three_segment_programs_and_details():
    prog = program(make_segment("sidestep", direction="left", count=3), make_segment("wave"), make_segment("bow"))
    joints = animate(prog, np.random.default_rng(5))
    details = judge_details(prog, joints)
    assert details["score"] > 0.7 and details["score"] == pytest.approx(judge(prog, joints))
    segs = details["segments"]
    assert [s["segment"] for s in segs] == [s.key() for s in prog.segments]
    assert segs[0]["frames"][0] == 0 and segs[-1]["frames"][1] == len(joints)
    assert all(a["frames"][1] == b["frames"][0] for a, b in zip(segs, segs[1:], strict=False))  # they tile
    assert all(0.0 <= v <= 1.0 for s in segs for v in s["criteria"].values())
    # a wrong middle segment sinks the program
    wrong = program(make_segment("sidestep", direction="left", count=3), make_segment("squat"), make_segment("bow"))
    assert judge(wrong, joints) < 0.3


def test_real_motion_capture(cmu):
    walk, kick = cmu["walk"], cmu["kick"]
    # the judge reads ~8 steps at a normal pace in the CMU walk; a plain walk of any count still passes
    assert judge(program(make_segment("walk", count=8, speed="normal")), walk) >= 0.7
    assert judge(program(make_segment("walk")), walk) >= 0.6
    assert judge(program(make_segment("jump")), walk) <= 0.3
    for side in ("left", "right"):
        assert judge(program(make_segment("kick", side=side)), walk) <= 0.3
    # the CMU kick (a run-up, then a right-footed kick) is a kick before it is a walk
    as_kick = max(judge(program(make_segment("kick", side=s)), kick) for s in ("left", "right"))
    assert as_kick > judge(program(make_segment("walk")), kick) + 0.1
    assert judge(program(make_segment("kick", side="right")), kick) > judge(
        program(make_segment("kick", side="left")), kick
    )


def test_realism_separates_plausible_from_broken(cmu):
    rng = np.random.default_rng(6)
    names = list(PRIMITIVES)
    clean = [animate(program(make_segment(n)), rng).astype(np.float64) for n in names]
    assert min(realism(j) for j in clean) >= 0.7
    assert realism(cmu["walk"]) >= 0.7 and realism(cmu["kick"]) >= 0.7
    for j in clean[::3]:
        assert realism(j + rng.normal(0.0, 0.02, j.shape)) < 0.5
        assert realism(np.repeat(j[len(j) // 2][None], len(j), axis=0)) < 0.5
        assert realism(j[rng.permutation(len(j))]) < 0.5
    details = realism_details(clean[0])
    assert set(details) >= {"skating", "floor", "bones", "smooth", "moves", "no_teleport", "score"}
    # a foot sliding on the floor and a body sinking into it are caught
    skating = clean[0].copy()
    skating[:, [7, 10], 0] += 0.025 * np.arange(len(skating))[:, None]  # 2.5 cm a frame, on the floor or not
    assert realism_details(skating)["skating"] < 0.5
    sunk = clean[0].copy()
    sunk[len(sunk) // 2 :, 15:, 1] -= 1.7
    assert realism_details(sunk)["floor"] < 0.5


# ------------------------------------------------------------------------------------------ robustness


def decoded_like(joints, rng, noise=0.006):
    """A VQ-VAE-style reconstruction: the clip through every 4th frame (cubic), smooth small jitter."""
    idx = np.arange(0, len(joints), 4)
    out = CubicSpline(idx, joints[idx], axis=0)(np.arange(idx[-1] + 1))
    return out + 2.2 * gaussian_filter1d(rng.normal(0.0, noise, out.shape), 1.5, axis=0)


@pytest.mark.parametrize("name", ["walk", "jump", "squat", "wave", "turn", "sidestep"])
def test_tolerant_to_decoder_style_errors(name):
    rng = np.random.default_rng(7)
    prog = program(make_segment(name))
    scores, real = [], []
    for joints in clips(prog, 3, 8):
        degraded = decoded_like(joints.astype(np.float64), rng)
        scores.append(judge(prog, degraded))
        real.append(realism(degraded))
    assert np.mean(scores) >= 0.7 and np.mean(real) >= 0.7


def test_invariant_to_placement_and_heading():
    prog = program(make_segment("sidestep", direction="right", count=3))
    joints = clips(prog, 1, 9)[0].astype(np.float64)
    moved = rotate_y(joints, 1.1) + np.array([3.0, 0.4, -2.0])
    assert judge(prog, moved) == pytest.approx(judge(prog, joints), abs=0.05)
    assert judge(prog, moved) > 0.8


def test_reads_joints_recovered_from_features():
    prog = program(make_segment("lunge", side="left"))
    joints = clips(prog, 1, 10)[0]
    recovered = np.asarray(recover_joints(extract_features(joints)))
    assert judge(prog, recovered) == pytest.approx(judge(prog, joints), abs=0.1)
    assert realism(recovered) >= 0.7


def test_bad_input_is_a_clear_error():
    prog = program(make_segment("walk"))
    with pytest.raises(ValueError, match=r"\(T, 22, 3\)"):
        judge(prog, np.zeros((50, 21, 3)))
    with pytest.raises(ValueError, match="NaN"):
        judge(prog, np.full((50, 22, 3), np.nan))
    with pytest.raises(ValueError, match="at least 8 frames"):
        realism_details(np.zeros((3, 22, 3)))
    # a model can emit a motion too short to show anything: it does not do what was asked, and is not real
    assert judge(prog, np.zeros((4, 22, 3))) == 0.0 and realism(np.zeros((4, 22, 3))) == 0.0


# ---------------------------------------------------------------------------------------- report, gallery


def test_judge_report_and_its_files(tmp_path, cmu_dir):
    report = judge_report(1, seed=0, cmu_dir=cmu_dir)
    assert len(report["confusion"]) == 19 and report["labels"] == list(PRIMITIVES)
    assert report["diagonal_mean"] > report["off_diagonal_mean"] + 0.5
    assert report["cmu"]["walk_as_walk_8_steps"] >= 0.7
    assert all(v["as_itself"] > v["as_modified"] for v in report["modifiers"].values())
    assert report["animate_clips_per_second"] > 10
    write_judge_report(report, tmp_path / "j.json", tmp_path / "j.md")
    assert json.loads((tmp_path / "j.json").read_text())["labels"] == list(PRIMITIVES)
    md = (tmp_path / "j.md").read_text()
    assert "| **walk** |" in md and "Real motion capture" in md
    with pytest.raises(FileNotFoundError, match="CMU"):
        judge_report(1, seed=0, cmu_dir=tmp_path)


def test_render_gallery(tmp_path, cmu_dir):
    paths = render_gallery(tmp_path / "g", seed=0, cmu_dir=cmu_dir, primitives=["clap"], size=96, every=4)
    names = sorted(p.name for p in paths)
    assert names == ["clap.gif", "cmu_kick_vs_synthetic.gif", "cmu_walk_vs_synthetic.gif", "index.md"]
    assert all(p.stat().st_size < 300_000 for p in paths)
    assert "clap.gif" in (tmp_path / "g" / "index.md").read_text()
    with pytest.raises(ValueError, match="unknown primitives"):
        render_gallery(tmp_path / "h", seed=0, cmu_dir=None, primitives=["dance"])
