"""Import the InstructMotion preference release (Sheng et al., "Exploring Text-to-Motion Generation with Human
Preference", CVPR 2024 HuMoGen workshop; github.com/THU-LYJ-Lab/InstructMotion).

The release is `preference_data/preference_labels.jsonl`, one JSON object a line (layout as the authors' own
loader reads it, src/utils/motiongpt_utils.py and src/scripts/get_test_set.py):

    {"id": 468, "prompt": "the individual is shaking their head from side to side",
     "sample_1": {"features": "<path of the .npy>", "gif": "...", "from": "motionGPT", "seed": 1234},
     "sample_2": {...},
     "chosen": [{"choice": "sample_1", "degree of preference": "Much better", "user": "Matt"}, ...]}

- `chosen` lists every annotation of the pair, oldest first (the authors train on `chosen[-1]`, "the most
  recent"); `choice` is "sample_1", "sample_2" or "skipped"; `degree of preference` is "Much better",
  "Better", "Slightly better" or "Negligibly better/unsure", and for a skipped pair "skipped" (their skip
  filter) or "null" (their docstring) or a JSON null.
- Motion tokens of a sample live beside its features: `<features without .npy>_token.npy` with "features"
  replaced by "tokens" in the path, an int array of shape (1, N); paths are relative to `preference_data/`.
  They are VQ codes, 0..codebook_size-1 (MotionGPT's codebook has 512): the authors, like this repo's
  policy, add the start and end tokens around them, so no special id belongs in a token file.
- Their docstring calls the id "ID" while their code reads "id"; both are accepted. Keys not used here
  ("gif", "from", ...) are ignored.

Each `chosen[]` entry becomes one :class:`Judgment` with source "import" and labeler `user` (or `import-<k>`,
k its position). The release has no timestamps, so entry k gets 1970-01-01T00:00:00Z + k seconds: with the
`last_wins` rule, ingestion then picks `chosen[-1]` exactly as the authors did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from motionpref.io import parquet_writer, text_writer, write_all
from motionpref.prefs.labels import Choice, Degree, Judgment, LabelError, encodable
from motionpref.prefs.pairs import PAIRS_SCHEMA
from motionpref.prefs.prompts import group_key, split_groups

CHOICES: dict[str, Choice] = {"sample_1": "a", "sample_2": "b", "skipped": "skip"}
DEGREE_NAMES: dict[str, Degree] = {
    "Much better": "much_better",
    "Better": "better",
    "Slightly better": "slightly_better",
    "Negligibly better/unsure": "negligible",
}
SKIP_DEGREES = ("skipped", "null", None)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# the paper held out 10% of its pairs; the release has no programs, so each distinct prompt is its own group
SPLIT = {"train": 0.9, "val": 0.1}
SPLIT_SEED = 0
UNKNOWN_SEED = -1  # the release's samples may lack a seed; int64 column, so a sentinel rather than null
MOTIONGPT_CODEBOOK = 512


@dataclass
class InstructMotionImport:
    judgments: list[Judgment]
    pairs: pd.DataFrame  # columns of PAIRS_SCHEMA


def token_path(features: str) -> str:
    """Where the release keeps the motion tokens of a sample whose features are at `features`."""
    return features.removesuffix(".npy").replace("features", "tokens") + "_token.npy"


def _field(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, path: Path, n: int) -> Any:
    if key not in record:
        raise LabelError(path, n, f"{where}missing key {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise LabelError(path, n, f"{where}{key!r} has type {type(value).__name__}, expected {expected}")
    if isinstance(value, str):
        _check_text(value, key, where, path, n)
    return value


def _check_text(value: str, key: str, where: str, path: Path, n: int) -> None:
    try:
        encodable(value)
    except ValueError as e:
        raise LabelError(path, n, f"{where}{key!r} {e}") from None


def _load_tokens(root: Path, features: str, codebook_size: int, path: Path, n: int) -> list[int]:
    file = root / token_path(features)
    if not file.is_file():
        raise LabelError(path, n, f"token file {file} not found (derived from features {features!r})")
    tokens = np.load(file, allow_pickle=False)
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise LabelError(path, n, f"{file}: expected integer tokens of shape (1, N) or (N,), got {tokens.shape}")
    bad = np.flatnonzero((tokens < 0) | (tokens >= codebook_size))
    if bad.size:
        raise LabelError(
            path,
            n,
            f"{file}: token {int(tokens[bad[0]])} at position {int(bad[0])} is outside the codebook "
            f"[0, {codebook_size})",
        )
    return [int(t) for t in tokens]


def _judgment(entry: Any, k: int, pair_id: str, prompt: str, path: Path, n: int) -> Judgment:
    where = f"chosen[{k}]: "
    if not isinstance(entry, dict):
        raise LabelError(path, n, f"{where}expected an object, got {type(entry).__name__}")
    choice_name = _field(entry, "choice", str, where, path, n)
    if choice_name not in CHOICES:
        raise LabelError(path, n, f"{where}unknown choice {choice_name!r}; expected one of {list(CHOICES)}")
    if "degree of preference" not in entry:
        raise LabelError(path, n, f"{where}missing key 'degree of preference'")
    degree_name = entry["degree of preference"]
    choice = CHOICES[choice_name]
    if choice == "skip":
        if degree_name not in SKIP_DEGREES:
            raise LabelError(path, n, f"{where}skipped pair with degree {degree_name!r}; expected 'skipped'")
        degree = None
    elif degree_name not in DEGREE_NAMES:
        raise LabelError(
            path,
            n,
            f"{where}unknown degree of preference {degree_name!r}; expected one of {list(DEGREE_NAMES)}",
        )
    else:
        degree = DEGREE_NAMES[degree_name]
    user = entry.get("user")
    if user is not None and not isinstance(user, str):
        raise LabelError(path, n, f"{where}'user' has type {type(user).__name__}, expected str")
    if user:
        if not user.strip():
            raise LabelError(path, n, f"{where}'user' is blank ({user!r}); expected a name, or no 'user' key")
        _check_text(user, "user", where, path, n)
    labeler = user if user else f"import-{k}"
    stamp = (EPOCH + timedelta(seconds=k)).isoformat().replace("+00:00", "Z")
    return Judgment(
        pair_id=pair_id,
        prompt=prompt,
        choice=choice,
        degree=degree,
        labeler=labeler,
        source="import",
        created_at=stamp,
    )


def _read_record(
    raw: bytes,
    path: Path,
    n: int,
    root: Path | None,
    codebook_size: int,
    seen: dict[str, int],
) -> tuple[list[Judgment], dict[str, Any]]:
    """The judgments and the pairs-table row of one release line."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise LabelError(path, n, "not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise LabelError(path, n, f"malformed JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(record, dict):
        raise LabelError(path, n, f"expected a JSON object, got {type(record).__name__}")
    id_key = "id" if "id" in record else "ID"
    pair_id = f"im-{_field(record, id_key, (int, str), '', path, n)}"
    if pair_id in seen:
        raise LabelError(path, n, f"duplicate {id_key} {record[id_key]!r} (first on line {seen[pair_id]})")
    seen[pair_id] = n
    prompt = _field(record, "prompt", str, "", path, n)
    samples = []
    for key in ("sample_1", "sample_2"):
        sample = _field(record, key, dict, "", path, n)
        features = _field(sample, "features", str, f"{key}: ", path, n)
        seed = _field(sample, "seed", int, f"{key}: ", path, n) if "seed" in sample else UNKNOWN_SEED
        tokens = [] if root is None else _load_tokens(root, features, codebook_size, path, n)
        samples.append((str(root / features) if root is not None else features, seed, tokens))
    entries = _field(record, "chosen", list, "", path, n)
    if not entries:
        raise LabelError(path, n, "'chosen' is empty: the record has no annotation")
    judgments = [_judgment(e, k, pair_id, prompt, path, n) for k, e in enumerate(entries)]
    (features_a, seed_a, tokens_a), (features_b, seed_b, tokens_b) = samples
    row = {
        "pair_id": pair_id,
        "prompt_id": pair_id,
        "prompt": prompt,
        "program": None,
        "seed_a": seed_a,
        "seed_b": seed_b,
        "temperature": float("nan"),  # not recorded per sample in the release
        "tokens_a": tokens_a,
        "tokens_b": tokens_b,
        "features_a": features_a,
        "features_b": features_b,
        "valid_a": True,
        "valid_b": True,
        "policy_hash": "instructmotion",
        "preview": None,
    }
    return judgments, row


def read_instructmotion(
    path: str | Path, root: str | Path | None = None, codebook_size: int = MOTIONGPT_CODEBOOK
) -> InstructMotionImport:
    """Judgments and the pairs table of an InstructMotion `preference_labels.jsonl`.

    With `root` (the release's `preference_data/` folder) feature paths are joined to it and motion tokens are
    loaded and checked to lie in [0, codebook_size); without it, feature paths stay as written and token lists
    are empty. Any malformed record raises :class:`LabelError` naming `path:line`. Pairs are split 90/10 into
    train and val by prompt (``SPLIT``), so one prompt's pairs never sit on both sides.
    """
    path = Path(path)
    root = Path(root) if root is not None else None
    judgments: list[Judgment] = []
    rows = []
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                found, row = _read_record(raw, path, n, root, codebook_size, seen)
            except RecursionError:
                # json's decoder recurses per nesting level (and so does repr on what it returns)
                raise LabelError(path, n, "JSON nested too deeply to parse") from None
            judgments += found
            rows.append(row)
    splits = split_groups((group_key(r["prompt"], None) for r in rows), SPLIT, SPLIT_SEED)
    for r in rows:
        r["group"] = group_key(r["prompt"], None)
        r["split"] = splits[r["group"]]
    return InstructMotionImport(judgments, pd.DataFrame(rows, columns=PAIRS_SCHEMA.names))


def write_import(imported: InstructMotionImport, labels_path: str | Path, pairs_path: str | Path) -> None:
    """Write the imported judgments as a label file and the pairs table, all or nothing.

    Raw label files are never rewritten: an existing `labels_path` is left alone if it already holds exactly
    these judgments, and is an error otherwise.
    """
    labels_path, pairs_path = Path(labels_path), Path(pairs_path)
    lines = b"".join(j.to_line() for j in imported.judgments)
    writers = {pairs_path: parquet_writer(imported.pairs, PAIRS_SCHEMA)}
    if labels_path.exists():
        if labels_path.read_bytes() != lines:
            raise FileExistsError(f"{labels_path} exists with other judgments; label files are never rewritten")
    else:
        writers[labels_path] = text_writer(lines.decode("utf-8"))
    write_all(writers)
