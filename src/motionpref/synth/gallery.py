"""Evidence that the synthetic world is sound: the judge's validation report and a gallery of rendered clips.

``judge_report`` measures what the preference experiments rest on: the judge's confusion matrix over the
primitives (clips of one primitive scored under programs of every primitive), whether modifiers change the
score (speed, side, count, order of segments), how real motion capture scores (the CMU walk as a walk, as a
jump, as a kick; the CMU kick as a kick and as a walk), what ``realism`` makes of clean, noisy, frozen and
scrambled motion, and how fast ``animate`` runs. ``render_gallery`` shows one clip per primitive and the real
CMU walk and kick beside synthetic ones, so a reader can check by eye that the world looks human.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from motionpref.io import atomic_dir, write_json, write_text
from motionpref.motion.mocap import load_cmu_joints
from motionpref.motion.render import render_motion, render_side_by_side
from motionpref.synth.animate import animate
from motionpref.synth.judge import confusion_matrix, judge, realism
from motionpref.synth.programs import PRIMITIVES, Program, make_segment, program

CMU_WALK = "12_01_walk.bvh"
CMU_KICK = ("11.asf", "11_01_kick.amc")


def _title(prog: Program) -> str:
    """A program's key without the modifiers left at "normal" (short enough for a small GIF)."""
    return " > ".join(
        f"{s.primitive}({','.join(f'{k}={v}' for k, v in s.to_dict().items() if k != 'primitive' and v != 'normal')})"
        for s in prog.segments
    )


def _modifier_checks(n: int, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Mean scores of clips of one program under itself and under a program that differs in one modifier."""
    cases = {
        "walk slowly (as fast)": (
            program(make_segment("walk", speed="slow")),
            program(make_segment("walk", speed="fast")),
        ),
        "kick left (as right)": (
            program(make_segment("kick", side="left")),
            program(make_segment("kick", side="right")),
        ),
        "jump twice (as 4 times)": (program(make_segment("jump", count=2)), program(make_segment("jump", count=4))),
        "turn left 90 (as right)": (
            program(make_segment("turn", direction="left")),
            program(make_segment("turn", direction="right")),
        ),
        "walk, then jump (as jump, then walk)": (
            program(make_segment("walk", count=4), make_segment("jump")),
            program(make_segment("jump"), make_segment("walk", count=4)),
        ),
    }
    out = {}
    for name, (own, other) in cases.items():
        clips = [animate(own, rng) for _ in range(n)]
        out[name] = {
            "as_itself": float(np.mean([judge(own, j) for j in clips])),
            "as_modified": float(np.mean([judge(other, j) for j in clips])),
        }
    return out


def _realism_checks(n: int, rng: np.random.Generator) -> dict[str, float]:
    clean, noisy, frozen, scrambled = [], [], [], []
    names = list(PRIMITIVES)
    for k in range(n):
        j = animate(program(make_segment(names[k % len(names)])), rng).astype(np.float64)
        clean.append(realism(j))
        noisy.append(realism(j + rng.normal(0.0, 0.02, j.shape)))
        frozen.append(realism(np.repeat(j[len(j) // 2][None], len(j), axis=0)))
        scrambled.append(realism(j[rng.permutation(len(j))]))
    return {
        "synthetic_mean": float(np.mean(clean)),
        "synthetic_min": float(np.min(clean)),
        "gaussian_noise_2cm_mean": float(np.mean(noisy)),
        "frozen_mean": float(np.mean(frozen)),
        "scrambled_mean": float(np.mean(scrambled)),
    }


def _cmu_checks(cmu_dir: Path) -> dict[str, float]:
    walk = load_cmu_joints(cmu_dir / CMU_WALK)
    kick = load_cmu_joints(tuple(cmu_dir / f for f in CMU_KICK))
    return {
        "walk_as_walk_8_steps": judge(program(make_segment("walk", count=8)), walk),
        "walk_as_walk_default": judge(program(make_segment("walk")), walk),
        "walk_as_jump": judge(program(make_segment("jump")), walk),
        "walk_as_kick_left": judge(program(make_segment("kick", side="left")), walk),
        "walk_as_kick_right": judge(program(make_segment("kick", side="right")), walk),
        "kick_as_kick_right": judge(program(make_segment("kick", side="right")), kick),
        "kick_as_kick_left": judge(program(make_segment("kick", side="left")), kick),
        "kick_as_walk": judge(program(make_segment("walk")), kick),
        "walk_realism": realism(walk),
        "kick_realism": realism(kick),
    }


def _clips_per_second(rng: np.random.Generator, rounds: int = 5) -> float:
    progs = [program(make_segment(name)) for name in PRIMITIVES]
    start = time.perf_counter()
    for _ in range(rounds):
        for p in progs:
            animate(p, rng)
    return rounds * len(progs) / (time.perf_counter() - start)


def judge_report(n_per_primitive: int, seed: int, cmu_dir: Path | None) -> dict[str, Any]:
    """The judge's validation numbers (see the module docstring); ``cmu_dir`` None skips the real clips."""
    if n_per_primitive < 1:
        raise ValueError(f"n_per_primitive must be at least 1, got {n_per_primitive}")
    start = time.perf_counter()
    matrix, labels = confusion_matrix(n_per_primitive, seed)
    off = ~np.eye(len(labels), dtype=bool)
    rng = np.random.default_rng(seed + 1)
    report: dict[str, Any] = {
        "n_per_primitive": n_per_primitive,
        "seed": seed,
        "labels": labels,
        "confusion": matrix.round(4).tolist(),
        "self_score": {name: float(matrix[i, i]) for i, name in enumerate(labels)},
        "off_diagonal_row_mean": {name: float(matrix[i][off[i]].mean()) for i, name in enumerate(labels)},
        "diagonal_mean": float(np.diag(matrix).mean()),
        "diagonal_min": float(np.diag(matrix).min()),
        "off_diagonal_mean": float(matrix[off].mean()),
        "off_diagonal_max": float(matrix[off].max()),
        "modifiers": _modifier_checks(max(2, n_per_primitive // 4), rng),
        "realism": _realism_checks(max(len(labels), n_per_primitive), rng),
        "animate_clips_per_second": _clips_per_second(rng),
    }
    if cmu_dir is not None:
        missing = [f for f in (CMU_WALK, *CMU_KICK) if not (Path(cmu_dir) / f).is_file()]
        if missing:
            raise FileNotFoundError(f"judge_report: {cmu_dir} lacks the CMU clips {missing}")
        report["cmu"] = _cmu_checks(Path(cmu_dir))
    report["seconds"] = time.perf_counter() - start
    return report


def _markdown(report: dict[str, Any]) -> str:
    labels = report["labels"]
    short = [name.replace("_", " ")[:9] for name in labels]
    lines = [
        "# Synthetic judge: validation",
        "",
        f"{report['n_per_primitive']} clips per primitive, seed {report['seed']}. Rows: the primitive a clip "
        "shows; columns: the primitive of the program it is judged under (the diagonal uses the clip's own "
        "program, other columns a random program of that primitive).",
        "",
        "| summary | value |",
        "|---|---:|",
        f"| diagonal mean (clips under their own program) | {report['diagonal_mean']:.3f} |",
        f"| diagonal min | {report['diagonal_min']:.3f} |",
        f"| off-diagonal mean (under another primitive) | {report['off_diagonal_mean']:.3f} |",
        f"| off-diagonal max | {report['off_diagonal_max']:.3f} |",
        f"| animate, clips per second (one core) | {report['animate_clips_per_second']:.0f} |",
        "",
        "## Confusion matrix",
        "",
        "| clip \\ judged as | " + " | ".join(short) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name, row in zip(short, report["confusion"], strict=True):
        lines.append(f"| **{name}** | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    lines += ["", "## Modifiers", "", "| clips of | as themselves | as modified |", "|---|---:|---:|"]
    for name, v in report["modifiers"].items():
        lines.append(f"| {name} | {v['as_itself']:.3f} | {v['as_modified']:.3f} |")
    lines += ["", "## Realism", "", "| motion | realism |", "|---|---:|"]
    lines += [f"| {k.replace('_', ' ')} | {v:.3f} |" for k, v in report["realism"].items()]
    if "cmu" in report:
        lines += ["", "## Real motion capture (CMU)", "", "| check | score |", "|---|---:|"]
        lines += [f"| {k.replace('_', ' ')} | {v:.3f} |" for k, v in report["cmu"].items()]
    return "\n".join(lines) + "\n"


def write_judge_report(report: dict[str, Any], json_path: str | Path, md_path: str | Path) -> None:
    """The report as JSON and as a markdown page (each written whole or not at all)."""
    write_json(json_path, report)
    write_text(md_path, _markdown(report))


def render_gallery(
    out_dir: str | Path,
    seed: int,
    cmu_dir: Path | None,
    *,
    primitives: Sequence[str] | None = None,
    size: int = 200,
    every: int = 2,
) -> list[Path]:
    """One GIF per primitive (default modifiers) plus the CMU walk and kick beside synthetic ones, and an
    ``index.md`` with each clip's program, judge score and realism. ``every`` keeps every k-th frame."""
    names = list(PRIMITIVES) if primitives is None else list(primitives)
    unknown = [n for n in names if n not in PRIMITIVES]
    if unknown:
        raise ValueError(f"render_gallery: unknown primitives {unknown}; expected some of {list(PRIMITIVES)}")
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    rows = ["# Gallery", "", "| clip | program | judge | realism |", "|---|---|---:|---:|"]
    with atomic_dir(out_dir) as tmp:
        for name in names:
            prog = program(make_segment(name))
            joints = animate(prog, rng)
            render_motion(joints, tmp / f"{name}.gif", title=_title(prog), size=size, every=every)
            score, real = judge(prog, joints), realism(joints)
            rows.append(f"| ![{name}]({name}.gif) | `{prog.key()}` | {score:.2f} | {real:.2f} |")
        if cmu_dir is not None:
            cmu = {
                "walk": (load_cmu_joints(Path(cmu_dir) / CMU_WALK), program(make_segment("walk", count=8))),
                "kick": (
                    load_cmu_joints(tuple(Path(cmu_dir) / f for f in CMU_KICK)),
                    program(make_segment("kick", side="right")),
                ),
            }
            for name, (real, prog) in cmu.items():
                synthetic = animate(prog, rng)
                render_side_by_side(
                    real,
                    synthetic,
                    tmp / f"cmu_{name}_vs_synthetic.gif",
                    titles=(f"CMU {name} (real)", "synthetic"),
                    caption=_title(prog),
                    size=int(size * 0.85),  # two panels: keep the file small
                    every=every,
                )
                rows.append(
                    f"| ![cmu {name}](cmu_{name}_vs_synthetic.gif) | real CMU {name} / `{prog.key()}` | "
                    f"{judge(prog, real):.2f} / {judge(prog, synthetic):.2f} | "
                    f"{realism(real):.2f} / {realism(synthetic):.2f} |"
                )
        write_text(tmp / "index.md", "\n".join(rows) + "\n")
    return sorted(out_dir.iterdir())
