"""Stage prepare_data: the dataset every later stage reads, in HumanML3D's folder layout.

``data.source: synthetic`` builds the synthetic world (plus the judge's validation report and a gallery of
rendered clips) in the layout ``data.format`` names, HumanML3D's or KIT-ML's; ``humanml3d`` / ``kit`` validate the
user's folder and link it in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts


def link_real_dataset(root: Path, link: Path, skeleton_name: str) -> dict[str, int]:
    """Validate a real HumanML3D / KIT-ML folder (every problem named at once) and point ``link`` at it."""
    from motionpref.motion.dataset import validate_dataset
    from motionpref.motion.skeleton import SKELETONS

    root = root.expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: {root} is not a folder")
    counts = validate_dataset(root, SKELETONS[skeleton_name])
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(root, tmp, target_is_directory=True)
    os.replace(tmp, link)
    return counts


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.io import write_json
    from motionpref.motion.skeleton import SKELETONS
    from motionpref.synth.gallery import judge_report, render_gallery, write_judge_report
    from motionpref.synth.world import build_dataset

    data = params.data
    out = ctx.path(artifacts.DATASET)
    seed = params.stage_seed("prepare_data")
    if data.source == "synthetic":
        summary = build_dataset(
            out,
            n_clips=data.n_clips,
            seed=seed,
            split_fractions=(data.split.train, data.split.val, data.split.test),
            mirror=data.mirror,
            n_captions=data.n_captions,
            n_novel=data.n_novel,
            workers=data.workers,
            skeleton=SKELETONS[data.skeleton_name],
        )
        metrics: dict[str, Any] = {
            "clips": summary.n_clips,
            "mirrored": summary.n_mirrored,
            "novel_programs": summary.n_novel,
            "frames": summary.frames,
            "splits": summary.splits,
            "seconds": summary.seconds,
        }
    else:
        metrics = {"clips": link_real_dataset(data.root, out, data.skeleton_name)}  # type: ignore[arg-type]
    # dvc.yaml's outs in either mode: the synthetic judge's validation (on its own clips and the CMU ones) and the
    # synthetic world's gallery do not depend on the dataset
    cmu_dir = ctx.path(str(data.cmu_dir))
    report = judge_report(data.judge_clips_per_primitive, seed=seed, cmu_dir=cmu_dir)
    reports = ctx.path(artifacts.REPORTS)
    write_judge_report(report, reports / "judge_validation.json", reports / "judge_validation.md")
    render_gallery(reports / "gallery", seed=seed, cmu_dir=cmu_dir)
    for name in ("judge_validation.json", "judge_validation.md"):
        ctx.run.log_artifact(reports / name)
    ctx.run.log_artifact(reports / "gallery", "gallery")
    metrics["judge"] = {
        k: report[k] for k in ("diagonal_mean", "diagonal_min", "off_diagonal_mean", "off_diagonal_max")
    }
    metrics["judge_cmu"] = report["cmu"]
    write_json(reports / "prepare_data.json", metrics)
    return metrics


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
