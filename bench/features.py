"""Throughput of the HumanML3D feature extraction (and of its inverse) on the two real CMU clips.

    python bench/features.py [--runs 7] [--min-seconds 0.5]

Each run repeats the work until ``--min-seconds`` have passed; the median of the runs is reported, printed,
and written to ``reports/bench/features.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from motionpref.motion.features import extract_features, recover_joints
from motionpref.motion.mocap import load_cmu_joints

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "bench" / "features.json"
CMU = ROOT / "tests" / "fixtures" / "cmu"


def _rate(work: Callable[[], None], frames: int, runs: int, min_seconds: float) -> tuple[float, list[float]]:
    """Median frames per second over ``runs`` timed runs of repeated ``work``."""
    work()  # warm-up: imports, caches, allocator
    rates = []
    for _ in range(runs):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_seconds or count == 0:
            work()
            count += 1
        rates.append(frames * count / elapsed)
    return statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    args = parser.parse_args()

    cmu = CMU
    start = time.perf_counter()
    clips = {
        "12_01_walk": load_cmu_joints(cmu / "12_01_walk.bvh"),
        "11_01_kick": load_cmu_joints((cmu / "11.asf", cmu / "11_01_kick.amc")),
    }
    import_seconds = time.perf_counter() - start
    frames = sum(len(j) for j in clips.values())

    def extract() -> None:
        for joints in clips.values():
            extract_features(joints)

    extract_rate, extract_runs = _rate(extract, frames, args.runs, args.min_seconds)

    feats = [extract_features(j) for j in clips.values()]
    feat_frames = sum(len(f) for f in feats)
    recover_rate, _ = _rate(lambda: [recover_joints(f) for f in feats], feat_frames, args.runs, args.min_seconds)
    batch = torch.from_numpy(np.stack([feats[1][:96]] * 32))  # an evaluation-sized batch, 32 x 96 frames
    # one intra-op thread: on a busy machine more threads only measure lock contention on these small ops
    torch.set_num_threads(1)
    with torch.no_grad():
        torch_rate, _ = _rate(lambda: recover_joints(batch), batch.shape[0] * batch.shape[1], args.runs, 0.5)

    result = {
        "extract_features_frames_per_s": round(extract_rate),
        "extract_features_runs_frames_per_s": [round(r) for r in extract_runs],
        "recover_joints_numpy_frames_per_s": round(recover_rate),
        "recover_joints_torch_batch32_frames_per_s": round(torch_rate),
        "cmu_import_seconds_both_clips": round(import_seconds, 4),
        "clips": {name: {"frames_20fps": len(j)} for name, j in clips.items()},
        "runs": args.runs,
        "min_seconds_per_run": args.min_seconds,
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
    }
    print(json.dumps(result, indent=2))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=OUT.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(result, tmp, indent=2)
        tmp.write("\n")
    os.replace(tmp.name, OUT)


if __name__ == "__main__":
    main()
