"""Read and write a dataset folder in the HumanML3D / KIT-ML release layout.

```
<root>/new_joint_vecs/<id>.npy   (T, D) features (263 for HumanML3D, 251 for KIT-ML)
<root>/new_joints/<id>.npy       (T, J, 3) joint positions recovered from those features (same T)
<root>/texts/<id>.txt            captions, see ``motion.text``
<root>/Mean.npy, Std.npy         (D,) feature statistics
<root>/train.txt val.txt test.txt [train_val.txt all.txt]   one id a line, ``M<id>`` = mirrored clip
```

``load_split`` reproduces what the T2M / MotionGPT ``Text2MotionDataset`` builds from such a folder
(without normalising, cropping or batching, which belong to the models' torch datasets).
Arrays are always read with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motionpref.io import npy_bytes, write_bytes
from motionpref.motion.skeleton import HUMANML3D, Skeleton
from motionpref.motion.text import Caption, CaptionFormatError, read_text_file, write_text_file

FEATURES_DIR = "new_joint_vecs"
JOINTS_DIR = "new_joints"
TEXTS_DIR = "texts"
MEAN_FILE = "Mean.npy"
STD_FILE = "Std.npy"
REQUIRED_SPLITS = ("train", "val", "test")
OPTIONAL_SPLITS = ("train_val", "all")
MIRROR_PREFIX = "M"
# The T2M loaders keep clips of at least 40 frames for HumanML3D and 24 for KIT-ML.
DEFAULT_MIN_LEN = {"humanml3d": 40, "kit": 24}
# Names of the extra entries cut from spanned captions; the original draws a random letter from these.
_SEGMENT_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVW"
_MAX_LISTED = 20


class DatasetError(ValueError):
    """One or more problems with a dataset folder; ``problems`` lists them, each naming its file."""

    def __init__(self, root: str | os.PathLike, problems: Sequence[str]):
        self.root = Path(root)
        self.problems = list(problems)
        shown = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(shown)
        lines = [f"dataset {self.root}: {len(self.problems)} problem(s)"] + [f"  {p}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


@dataclass
class Entry:
    """One training example: a clip (or a captioned segment of one) with its captions."""

    name: str  # clip id, or "<letter>_<id>" for a segment cut by a spanned caption
    features: np.ndarray  # (T, D) float32, not normalised
    captions: list[Caption]
    source_id: str  # the id in the split file the entry was read from

    @property
    def length(self) -> int:
        return len(self.features)


def is_mirrored(clip_id: str) -> bool:
    return clip_id.startswith(MIRROR_PREFIX)


def mirrored_id(clip_id: str) -> str:
    """The id of the mirrored twin of a clip (``000021`` <-> ``M000021``)."""
    return clip_id[len(MIRROR_PREFIX) :] if is_mirrored(clip_id) else MIRROR_PREFIX + clip_id


def _check_id(clip_id: str) -> None:
    if not clip_id or clip_id != clip_id.strip() or any(c in clip_id for c in "/\\ \t\n") or clip_id[0] == ".":
        raise ValueError(f"invalid clip id {clip_id!r}: expected a non-empty file stem without spaces or slashes")


def _load_npy(root: Path, rel: str, mmap: bool = False) -> np.ndarray:
    path = root / rel
    if not path.is_file():
        raise DatasetError(root, [f"{rel}: missing"])
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as err:
        raise DatasetError(root, [f"{rel}: not a readable .npy array ({err})"]) from None


# ----------------------------------------------------------------------------------------------- stats


def compute_mean_std(
    features_list: Iterable[np.ndarray], skeleton: Skeleton = HUMANML3D
) -> tuple[np.ndarray, np.ndarray]:
    """``Mean.npy``/``Std.npy`` of HumanML3D's ``cal_mean_variance``.

    Mean and (population) std per dimension over all frames of all clips; then every std inside one
    feature group (root rotation velocity, root linear velocity, root height, ric positions, 6D
    rotations, local velocities, foot contacts) is replaced by the group's mean std (the original
    divides each by 1.0). Clips containing nan/inf are skipped with a warning, as the original skips them.
    """
    from motionpref.motion.features import feature_slices  # features imports torch; keep io light

    # Streaming (Chan et al.'s pairwise merge of per-clip moments): one clip in float64 at a time, not the
    # whole dataset, which for a few thousand clips would take gigabytes.
    count, mean, m2, skipped = 0, np.zeros(skeleton.feature_dim), np.zeros(skeleton.feature_dim), 0
    for i, f in enumerate(features_list):
        f = np.asarray(f)
        if f.ndim != 2 or f.shape[1] != skeleton.feature_dim:
            raise ValueError(f"clip {i}: expected features (T, {skeleton.feature_dim}), got shape {f.shape}")
        if not np.isfinite(f).all():
            skipped += 1
            continue
        x = f.astype(np.float64)
        n_b, mean_b = len(x), x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        delta, total = mean_b - mean, count + n_b
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta**2 * (count * n_b / total)
        count = total
    if skipped:
        warnings.warn(f"compute_mean_std: skipped {skipped} clip(s) with nan/inf features", stacklevel=2)
    if not count:
        raise ValueError("compute_mean_std: no finite clips to compute statistics from")
    std = np.sqrt(m2 / count)
    groups = feature_slices(skeleton)
    for name, sl in groups.items():
        std[sl] = std[sl].mean()
        if not std[sl][0] > 0:
            raise ValueError(f"compute_mean_std: feature group {name!r} is constant over all frames (std 0)")
    return mean.astype(np.float32), std.astype(np.float32)


def write_stats(root: str | os.PathLike, mean: np.ndarray, std: np.ndarray) -> None:
    mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    if mean.ndim != 1 or mean.shape != std.shape:
        raise ValueError(f"mean and std must be equal-length vectors, got {mean.shape} and {std.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ValueError("mean must be finite and std finite and positive")
    root = Path(root)
    write_bytes(root / MEAN_FILE, npy_bytes(mean))
    write_bytes(root / STD_FILE, npy_bytes(std))


def load_stats(root: str | os.PathLike, skeleton: Skeleton | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 of ``Mean.npy``/``Std.npy``, checked against ``skeleton.feature_dim`` if given."""
    root = Path(root)
    problems, arrays = [], []
    for rel in (MEAN_FILE, STD_FILE):
        try:
            arrays.append(_load_npy(root, rel))
        except DatasetError as err:
            problems += err.problems
            continue
        problems += _stats_problems(rel, arrays[-1], skeleton)
    if problems:
        raise DatasetError(root, problems)
    mean, std = arrays
    if mean.shape != std.shape:
        raise DatasetError(root, [f"{MEAN_FILE} has shape {mean.shape} but {STD_FILE} has {std.shape}"])
    return mean.astype(np.float32), std.astype(np.float32)


def _stats_problems(rel: str, array: np.ndarray, skeleton: Skeleton | None) -> list[str]:
    dim = skeleton.feature_dim if skeleton is not None else None
    if array.ndim != 1 or (dim is not None and array.shape[0] != dim):
        return [f"{rel}: expected shape ({dim if dim is not None else 'D'},), got {array.shape}"]
    if not np.isfinite(array).all():
        return [f"{rel}: contains nan or inf"]
    if rel == STD_FILE and not (array > 0).all():
        return [f"{rel}: {int((array <= 0).sum())} dimension(s) have std <= 0"]
    return []


# ----------------------------------------------------------------------------------------------- splits


def available_splits(root: str | os.PathLike) -> list[str]:
    root = Path(root)
    return [s for s in REQUIRED_SPLITS + OPTIONAL_SPLITS if (root / f"{s}.txt").is_file()]


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    """Clip ids of ``<split>.txt``, in file order (blank lines skipped)."""
    root = Path(root)
    path = root / f"{split}.txt"
    if not path.is_file():
        have = ", ".join(f"{s}.txt" for s in available_splits(root)) or "none"
        raise DatasetError(root, [f"{split}.txt: missing split file (present: {have})"])
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_split(root: str | os.PathLike, name: str, ids: Iterable[str]) -> None:
    ids = list(ids)
    for clip_id in ids:
        _check_id(clip_id)
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dupes:
        raise ValueError(f"split {name!r}: duplicate ids {dupes[:5]}")
    write_bytes(Path(root) / f"{name}.txt", "".join(f"{i}\n" for i in ids).encode("utf-8"))


# ----------------------------------------------------------------------------------------------- clips


def write_clip(
    root: str | os.PathLike,
    clip_id: str,
    features: np.ndarray,
    joints: np.ndarray | None,
    captions: Sequence[Caption],
    skeleton: Skeleton = HUMANML3D,
) -> None:
    """Write one clip's features, joints and captions, each file atomically.

    ``joints`` are the positions HumanML3D stores, recovered from the features (same number of
    frames); pass None to recover them here with ``features.recover_joints``.
    """
    _check_id(clip_id)
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != skeleton.feature_dim:
        raise ValueError(f"clip {clip_id}: expected features (T, {skeleton.feature_dim}), got {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"clip {clip_id}: features contain nan or inf")
    if joints is None:
        from motionpref.motion.features import recover_joints  # imports torch, needed only here

        joints = recover_joints(features, skeleton)
    joints = np.asarray(joints, dtype=np.float32)
    if joints.shape != (len(features), skeleton.n_joints, 3):
        raise ValueError(
            f"clip {clip_id}: expected joints ({len(features)}, {skeleton.n_joints}, 3), got {joints.shape}"
        )
    if not captions:
        raise ValueError(f"clip {clip_id}: at least one caption is required")
    root = Path(root)
    write_bytes(root / FEATURES_DIR / f"{clip_id}.npy", npy_bytes(features))
    write_bytes(root / JOINTS_DIR / f"{clip_id}.npy", npy_bytes(joints))
    write_text_file(root / TEXTS_DIR / f"{clip_id}.txt", captions)


def read_features(root: str | os.PathLike, clip_id: str, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    root = Path(root)
    rel = f"{FEATURES_DIR}/{clip_id}.npy"
    array = _load_npy(root, rel)
    problems = _features_problems(rel, array, skeleton)
    if problems:
        raise DatasetError(root, problems)
    return array.astype(np.float32, copy=False)


def read_joints(root: str | os.PathLike, clip_id: str, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    root = Path(root)
    rel = f"{JOINTS_DIR}/{clip_id}.npy"
    array = _load_npy(root, rel)
    if array.ndim != 3 or array.shape[1:] != (skeleton.n_joints, 3):
        raise DatasetError(root, [f"{rel}: expected shape (T, {skeleton.n_joints}, 3), got {array.shape}"])
    return array.astype(np.float32, copy=False)


def read_captions(root: str | os.PathLike, clip_id: str) -> list[Caption]:
    root = Path(root)
    rel = f"{TEXTS_DIR}/{clip_id}.txt"
    if not (root / rel).is_file():
        raise DatasetError(root, [f"{rel}: missing"])
    try:
        captions = read_text_file(root / rel)
    except CaptionFormatError as err:
        raise DatasetError(root, [str(err)]) from None
    if not captions:
        raise DatasetError(root, [f"{rel}: no captions"])
    return captions


def _features_problems(rel: str, array: np.ndarray, skeleton: Skeleton) -> list[str]:
    if array.ndim != 2:
        return [f"{rel}: expected a 2-d (T, {skeleton.feature_dim}) array, got shape {array.shape}"]
    if array.shape[1] != skeleton.feature_dim:
        return [f"{rel}: expected {skeleton.feature_dim} columns, got {array.shape[1]}"]
    if array.shape[0] == 0:
        return [f"{rel}: has no frames"]
    return []


# ----------------------------------------------------------------------------------------------- loading


def _keeps(length: int, min_len: int, max_len: int, unit_len: int) -> bool:
    # The original keeps min_len <= T < 200 and crops each sample to a multiple of unit_len <= 196;
    # "T cropped to units fits max_len" is that same rule written with the loader's own parameters.
    return length >= min_len and (length // unit_len) * unit_len <= max_len


def _segment_name(k: int, clip_id: str) -> str:
    letter = _SEGMENT_LETTERS[k % len(_SEGMENT_LETTERS)]
    suffix = str(k // len(_SEGMENT_LETTERS)) if k >= len(_SEGMENT_LETTERS) else ""
    return f"{letter}{suffix}_{clip_id}"


def entries_of_clip(
    clip_id: str,
    features: np.ndarray,
    captions: Sequence[Caption],
    fps: float,
    min_len: int,
    max_len: int = 196,
    unit_len: int = 4,
) -> list[Entry]:
    """The entries the T2M loader makes of one clip.

    The clip is dropped whole when its length is out of range. Whole-clip captions make one entry
    named ``clip_id``; each spanned caption cuts ``features[int(start*fps):int(end*fps)]`` into its own
    entry (``A_<id>``, ``B_<id>``, ... in caption order, where the original picks random letters),
    kept only if that segment is in range.
    """
    if not _keeps(len(features), min_len, max_len, unit_len):
        return []
    whole = [c for c in captions if c.is_whole_clip]
    entries = [Entry(clip_id, features, whole, clip_id)] if whole else []
    k = 0
    for caption in captions:
        if caption.is_whole_clip:
            continue
        a, b = caption.frame_span(fps)
        segment = features[a:b]
        if _keeps(len(segment), min_len, max_len, unit_len):
            entries.append(Entry(_segment_name(k, clip_id), segment.copy(), [caption], clip_id))
            k += 1
    return entries


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and the length filter its loader applies."""

    root: Path
    skeleton: Skeleton = HUMANML3D
    min_len: int | None = None  # None: 40 for HumanML3D, 24 for KIT-ML, as the original loaders
    max_len: int = 196
    unit_len: int = 4

    def load(self, split: str) -> list[Entry]:
        return load_split(self.root, split, self.skeleton, self.min_len, self.max_len, self.unit_len)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        return load_stats(self.root, self.skeleton)

    def validate(self) -> dict[str, int]:
        return validate_dataset(self.root, self.skeleton)


def load_split(
    root: str | os.PathLike,
    split: str,
    skeleton: Skeleton = HUMANML3D,
    min_len: int | None = None,
    max_len: int = 196,
    unit_len: int = 4,
) -> list[Entry]:
    """Entries of one split, in split-file order (segments after their clip's whole-clip entry).

    Features are float32 and not normalised. Every missing or malformed file of the split is
    reported at once in a ``DatasetError``; clips with nan/inf features are skipped with a warning.
    """
    root = Path(root)
    if min_len is None:
        min_len = DEFAULT_MIN_LEN.get(skeleton.name, 40)
    if unit_len < 1 or not 1 <= min_len <= max_len:
        raise ValueError(f"need unit_len >= 1 and 1 <= min_len <= max_len, got {unit_len}, {min_len}, {max_len}")
    ids = read_split(root, split)
    entries: list[Entry] = []
    problems: list[str] = []
    non_finite: list[str] = []
    for clip_id in ids:
        try:
            features = read_features(root, clip_id, skeleton)
            captions = read_captions(root, clip_id)
        except DatasetError as err:
            problems += err.problems
            continue
        if not np.isfinite(features).all():
            non_finite.append(clip_id)
            continue
        entries += entries_of_clip(clip_id, features, captions, skeleton.fps, min_len, max_len, unit_len)
    if problems:
        raise DatasetError(root, [f"{p} (listed in {split}.txt)" for p in problems])
    if non_finite:
        warnings.warn(
            f"{root}: skipped {len(non_finite)} clip(s) of {split}.txt with nan/inf features: "
            f"{', '.join(non_finite[:5])}",
            stacklevel=2,
        )
    return entries


def validate_dataset(
    root: str | os.PathLike, skeleton: Skeleton = HUMANML3D, splits: Sequence[str] | None = None
) -> dict[str, int]:
    """Check a dataset folder: stats, split files, and every listed clip's three files and shapes.

    Array shapes are read from the .npy headers (memory-mapped), so this is cheap even for the full
    release. Returns the number of ids per split; raises ``DatasetError`` listing every problem found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, ["dataset folder does not exist"])
    problems: list[str] = []
    for rel in (MEAN_FILE, STD_FILE):
        try:
            problems += _stats_problems(rel, _load_npy(root, rel), skeleton)
        except DatasetError as err:
            problems += err.problems
    for sub in (FEATURES_DIR, JOINTS_DIR, TEXTS_DIR):
        if not (root / sub).is_dir():
            problems.append(f"{sub}/: missing folder")
    names = (
        list(splits)
        if splits is not None
        else list(REQUIRED_SPLITS) + [s for s in OPTIONAL_SPLITS if (root / f"{s}.txt").is_file()]
    )
    counts: dict[str, int] = {}
    all_ids: dict[str, None] = {}
    for split in names:
        try:
            ids = read_split(root, split)
        except DatasetError as err:
            problems += err.problems
            continue
        if not ids:
            problems.append(f"{split}.txt: lists no clips")
        seen: set[str] = set()
        for clip_id in ids:
            if clip_id in seen:
                problems.append(f"{split}.txt: id {clip_id} listed twice")
            seen.add(clip_id)
            all_ids.setdefault(clip_id)
        counts[split] = len(ids)
    for clip_id in all_ids:
        problems += _clip_problems(root, clip_id, skeleton)
    if problems:
        raise DatasetError(root, problems)
    return counts


def _clip_problems(root: Path, clip_id: str, skeleton: Skeleton) -> list[str]:
    problems: list[str] = []
    n_frames = None
    rel = f"{FEATURES_DIR}/{clip_id}.npy"
    try:
        features = _load_npy(root, rel, mmap=True)
        found = _features_problems(rel, features, skeleton)
        problems += found
        if not found:
            n_frames = features.shape[0]
    except DatasetError as err:
        problems += err.problems
    rel = f"{JOINTS_DIR}/{clip_id}.npy"
    try:
        joints = _load_npy(root, rel, mmap=True)
        if joints.ndim != 3 or joints.shape[1:] != (skeleton.n_joints, 3):
            problems.append(f"{rel}: expected shape (T, {skeleton.n_joints}, 3), got {joints.shape}")
        elif n_frames is not None and joints.shape[0] != n_frames:
            problems.append(f"{rel}: has {joints.shape[0]} frames but {FEATURES_DIR}/{clip_id}.npy has {n_frames}")
    except DatasetError as err:
        problems += err.problems
    try:
        read_captions(root, clip_id)
    except DatasetError as err:
        problems += err.problems
    return problems
