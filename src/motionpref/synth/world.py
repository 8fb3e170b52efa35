"""The synthetic motion world, written as a dataset folder in HumanML3D's own layout (or KIT-ML's).

``build_dataset`` samples programs, animates them, extracts the 263-d features and the joints HumanML3D
stores beside them, captions each clip with paraphrases of its program, and writes::

    new_joint_vecs/<id>.npy  new_joints/<id>.npy  texts/<id>.txt       ids 000000, 000001, ...
    new_joint_vecs/M<id>.npy ...                                      the left-right mirrored copies
    Mean.npy  Std.npy                                                 over every clip, as the release
    train.txt  val.txt  test.txt  train_val.txt  all.txt              originals, then their M copies
    programs.jsonl        one line per clip id: {"id", "program", "split"}
    novel_programs.jsonl  programs with held-out combinations and their captions, for the prompts
    novelty.json          the held-out combinations (``NoveltySplit.to_dict``)

Choices that follow the HumanML3D release: a mirrored clip ``M<id>`` sits in the same split as its
source (the release's ``train_val.txt`` lists ``000000 ... M000000 ...``), its joints are the mirrored
joints before feature extraction and its captions the source's with left and right swapped;
``Mean.npy``/``Std.npy`` are computed over all clips of ``new_joint_vecs`` (``cal_mean_variance`` reads
the whole folder), not only the training split.

With ``skeleton=KIT`` the same clips (same programs, animations, captions and splits) are written in KIT-ML's
layout: each animation is put on KIT-ML's 21 joints at 12.5 fps (``motion.retarget``) before the 251-d features
are extracted, a mirrored clip mirrors those KIT-ML joints, and the statistics are KIT-ML's. A clip of 40..196
frames at 20 fps has 25..122 at 12.5 fps, inside the 24..196 the KIT-ML loaders keep.

Every clip draws its randomness from its own ``SeedSequence(seed, spawn_key=(1, i))``, so a build is
byte-identical whatever the number of workers. The folder is built beside ``root`` and renamed into
place at the end; a failed build leaves no partial dataset.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from motionpref.io import atomic_dir
from motionpref.motion.dataset import (
    MIRROR_PREFIX,
    compute_mean_std,
    validate_dataset,
    write_clip,
    write_split,
    write_stats,
)
from motionpref.motion.features import features_and_joints
from motionpref.motion.retarget import to_skeleton
from motionpref.motion.skeleton import HUMANML3D, Skeleton, mirror_joints
from motionpref.motion.text import mirror_caption
from motionpref.progress import track
from motionpref.synth.animate import animate
from motionpref.synth.captions import captions_for, mirror_program
from motionpref.synth.programs import MAX_FRAMES, MAX_SEGMENTS, MIN_FRAMES, Program
from motionpref.synth.sampling import (
    MAX_NOMINAL_FRAMES,
    SEGMENT_PROBS,
    NoveltySplit,
    sample_novel_program,
    sample_program,
)

PROGRAMS_FILE = "programs.jsonl"
NOVEL_FILE = "novel_programs.jsonl"
NOVELTY_FILE = "novelty.json"
SPLITS = ("train", "val", "test")
_SPLIT_STREAM, _CLIP_STREAM, _NOVEL_STREAM = 0, 1, 2  # spawn keys of the seed's independent streams
_ANIMATION_TRIES = 20
# Files whose presence marks a folder as a dataset build may replace (never an unrelated folder).
_DATASET_MARKERS = (PROGRAMS_FILE, "train.txt", "new_joint_vecs")


@dataclass(frozen=True)
class WorldSummary:
    root: Path
    n_clips: int  # source clips (mirrored copies not counted)
    n_mirrored: int
    n_novel: int
    splits: dict[str, int]  # ids per split file, mirrored copies included
    frames: int  # feature frames over all clips
    seconds: dict[str, float] = field(default_factory=dict)  # "total" wall time; per stage, summed over workers


@dataclass(frozen=True)
class _ClipJob:
    index: int
    seed: int
    out: str
    novelty: NoveltySplit
    n_captions: int
    mirror: bool
    max_segments: int
    segment_probs: tuple[float, ...]
    max_frames: int
    skeleton: Skeleton


@dataclass
class _ClipResult:
    clip_id: str
    program: Program
    features: list[np.ndarray]  # source, then mirrored copy
    seconds: dict[str, float]


def _stream(seed: int, stream: int, index: int | None = None) -> np.random.SeedSequence:
    key = (stream,) if index is None else (stream, index)
    return np.random.SeedSequence(seed, spawn_key=key)


def _build_clip(job: _ClipJob) -> _ClipResult:
    """Sample, animate, featurise, caption and write one clip (and its mirror) into ``job.out``."""
    clip_ss = _stream(job.seed, _CLIP_STREAM, job.index)
    program_rng, animate_rng, caption_rng = (np.random.default_rng(s) for s in clip_ss.spawn(3))
    seconds = dict.fromkeys(("program", "animate", "features", "captions", "write"), 0.0)
    for _ in range(_ANIMATION_TRIES):
        t0 = time.perf_counter()
        program = sample_program(program_rng, job.max_segments, job.segment_probs, job.max_frames, split=job.novelty)
        t1 = time.perf_counter()
        joints = animate(program, animate_rng)
        seconds["program"] += t1 - t0
        seconds["animate"] += time.perf_counter() - t1
        # HumanML3D's loaders drop clips outside 40..196 feature frames (T joint frames give T - 1); draw again rather
        # than write a clip nobody reads. Tested on the 20 fps animation in either layout, so both hold the same clips.
        if MIN_FRAMES <= len(joints) - 1 <= MAX_FRAMES:
            break
    else:
        raise RuntimeError(
            f"clip {job.index}: {_ANIMATION_TRIES} animations in a row fell outside "
            f"{MIN_FRAMES}..{MAX_FRAMES} feature frames (last: {program.key()} with {len(joints) - 1} frames)"
        )
    t0 = time.perf_counter()
    body = to_skeleton(joints, HUMANML3D, job.skeleton)
    features, canonical = features_and_joints(body, job.skeleton)
    seconds["features"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    captions = captions_for(program, caption_rng, job.n_captions)
    t1 = time.perf_counter()
    clip_id = f"{job.index:06d}"
    write_clip(job.out, clip_id, features, canonical, captions, job.skeleton)
    seconds["captions"] += t1 - t0
    seconds["write"] += time.perf_counter() - t1
    out = [features]
    if job.mirror:
        t0 = time.perf_counter()
        m_features, m_canonical = features_and_joints(mirror_joints(body, job.skeleton), job.skeleton)
        t1 = time.perf_counter()
        m_captions = [mirror_caption(c) for c in captions]
        write_clip(job.out, MIRROR_PREFIX + clip_id, m_features, m_canonical, m_captions, job.skeleton)
        seconds["features"] += t1 - t0
        seconds["write"] += time.perf_counter() - t1
        out.append(m_features)
    return _ClipResult(clip_id, program, out, seconds)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # the workers already use every core; nested threads only contend


def split_sizes(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) clip counts: val and test rounded from their fractions, at least one each."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {tuple(fractions)}")
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"n_clips={n} is too few for a train, val and test split with fractions {tuple(fractions)}")
    return n_train, n_val, n_test


def _assign_splits(n: int, fractions: Sequence[float], seed: int) -> list[str]:
    n_train, n_val, _ = split_sizes(n, fractions)
    order = np.random.default_rng(_stream(seed, _SPLIT_STREAM)).permutation(n)
    split = ["test"] * n
    for rank, i in enumerate(order):
        split[int(i)] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return split


def _json_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False) + "\n"


def _check_root(root: Path) -> None:
    if root.exists() and (
        not root.is_dir() or (any(root.iterdir()) and not any((root / m).exists() for m in _DATASET_MARKERS))
    ):
        raise FileExistsError(
            f"{root} exists and is not a dataset folder (no {', '.join(_DATASET_MARKERS)}); refusing to replace it"
        )


def build_dataset(
    root: str | os.PathLike,
    n_clips: int,
    seed: int,
    split_fractions: Sequence[float] = (0.8, 0.05, 0.15),
    mirror: bool = True,
    n_captions: int = 3,
    n_novel: int = 0,
    workers: int = 1,
    novelty: NoveltySplit | None = None,
    max_segments: int = MAX_SEGMENTS,
    segment_probs: Sequence[float] = SEGMENT_PROBS,
    max_frames: int = MAX_NOMINAL_FRAMES,
    skeleton: Skeleton = HUMANML3D,
) -> WorldSummary:
    """Build the synthetic dataset at ``root`` (replacing an earlier build there) and summarise it.

    ``novelty`` defaults to ``NoveltySplit.from_seed(seed)``; no clip's program contains one of its
    held-out combinations, and ``n_novel`` programs that do are written to ``novel_programs.jsonl``.
    ``skeleton`` picks the layout: HumanML3D's, or KIT-ML's (``skeleton.KIT``).
    """
    if n_clips < 3:
        raise ValueError(f"n_clips must be at least 3 (one clip per split), got {n_clips}")
    if n_captions < 1 or n_novel < 0 or workers < 1:
        raise ValueError(f"need n_captions >= 1, n_novel >= 0, workers >= 1; got {n_captions}, {n_novel}, {workers}")
    root = Path(root)
    _check_root(root)
    novelty = NoveltySplit.from_seed(seed) if novelty is None else novelty
    splits = _assign_splits(n_clips, split_fractions, seed)
    start = time.perf_counter()
    with atomic_dir(root) as tmp:
        jobs = [
            _ClipJob(
                i, seed, str(tmp), novelty, n_captions, mirror, max_segments, tuple(segment_probs), max_frames, skeleton
            )
            for i in range(n_clips)
        ]
        results = _run_jobs(jobs, workers)
        seconds = {k: sum(r.seconds[k] for r in results) for k in results[0].seconds}

        t0 = time.perf_counter()
        features = [f for r in results for f in r.features]
        write_stats(tmp, *compute_mean_std(features, skeleton))
        seconds["stats"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        split_ids = _write_splits(tmp, results, splits, mirror)
        _write_programs(tmp, results, splits, mirror)
        _write_novel(tmp, seed, novelty, n_novel, n_captions, max_segments, segment_probs, max_frames)
        seconds["metadata"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        validate_dataset(tmp, skeleton)
        seconds["validate"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start
    return WorldSummary(
        root=root,
        n_clips=n_clips,
        n_mirrored=n_clips if mirror else 0,
        n_novel=n_novel,
        splits={name: len(ids) for name, ids in split_ids.items()},
        frames=int(sum(len(f) for f in features)),
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )


def _run_jobs(jobs: list[_ClipJob], workers: int) -> list[_ClipResult]:
    if workers == 1:
        return list(track(map(_build_clip, jobs), description="synthetic clips", total=len(jobs)))
    # forkserver: torch may already hold threads in this process, which fork would copy in a broken state.
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        chunks = max(1, min(16, len(jobs) // (8 * workers)))
        return list(track(pool.imap(_build_clip, jobs, chunksize=chunks), "synthetic clips", len(jobs)))


def _write_splits(out: Path, results: list[_ClipResult], splits: list[str], mirror: bool) -> dict[str, list[str]]:
    """Split files as the release orders them: the source ids, then their mirrored ids."""

    def ids(names: Sequence[str]) -> list[str]:
        chosen = [r.clip_id for r, s in zip(results, splits, strict=True) if s in names]
        return chosen + ([MIRROR_PREFIX + i for i in chosen] if mirror else [])

    split_ids = {name: ids((name,)) for name in SPLITS}
    split_ids["train_val"] = ids(("train", "val"))
    split_ids["all"] = ids(SPLITS)
    for name, clip_ids in split_ids.items():
        write_split(out, name, clip_ids)
    return split_ids


def _write_programs(out: Path, results: list[_ClipResult], splits: list[str], mirror: bool) -> None:
    lines = [
        _json_line({"id": r.clip_id, "program": r.program.to_dict(), "split": s})
        for r, s in zip(results, splits, strict=True)
    ]
    if mirror:
        lines += [
            _json_line({"id": MIRROR_PREFIX + r.clip_id, "program": mirror_program(r.program).to_dict(), "split": s})
            for r, s in zip(results, splits, strict=True)
        ]
    (out / PROGRAMS_FILE).write_text("".join(lines), encoding="utf-8")


def _write_novel(
    out: Path,
    seed: int,
    novelty: NoveltySplit,
    n_novel: int,
    n_captions: int,
    max_segments: int,
    segment_probs: Sequence[float],
    max_frames: int,
) -> None:
    lines: list[str] = []
    seen: set[str] = set()
    draw = 0
    while len(lines) < n_novel:
        if draw >= 50 * n_novel:
            raise RuntimeError(f"only {len(lines)} distinct novel programs in {draw} draws; lower data.n_novel")
        rng = np.random.default_rng(_stream(seed, _NOVEL_STREAM, draw))
        draw += 1
        program = sample_novel_program(rng, novelty, max_segments, segment_probs, max_frames)
        if program.key() in seen:  # a prompt set of distinct programs, not repeats of a popular one
            continue
        seen.add(program.key())
        j = len(lines)
        captions = captions_for(program, rng, n_captions)
        lines.append(
            _json_line(
                {
                    "id": f"novel_{j:06d}",
                    "program": program.to_dict(),
                    "held_out": novelty.held_out_in(program),
                    "captions": [c.text for c in captions],
                }
            )
        )
    (out / NOVEL_FILE).write_text("".join(lines), encoding="utf-8")
    (out / NOVELTY_FILE).write_text(json.dumps(novelty.to_dict(), indent=1) + "\n", encoding="utf-8")


def read_programs(root: str | os.PathLike) -> dict[str, tuple[Program, str]]:
    """``programs.jsonl`` of a built dataset: clip id -> (program, split); errors name the line."""
    path = Path(root) / PROGRAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (is {root} a synthetic dataset built by build_dataset?)")
    out: dict[str, tuple[Program, str]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[row["id"]] = (Program.from_dict(row["program"]), row["split"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}:{lineno}: expected {{'id', 'program', 'split'}} ({err})") from None
    return out
