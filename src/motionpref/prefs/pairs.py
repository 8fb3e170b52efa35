"""Pair sampling: two motions per prompt from the supervised policy, different seeds, temperature 1.2.

A pair's id is a hash of what made it (policy, prompt, seeds, temperature), so labels keep pointing at the
same pair when the table is rebuilt from unchanged inputs, and never at a pair that changed.

Only train and val prompts get pairs: the test prompts (whole programs, see :mod:`motionpref.prefs.prompts`)
are kept for the win rates. Each pair carries its prompt's ``group`` (the program, or the normalised text of a
prompt without one) and ``split``, which ingestion takes as the preference's split.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from motionpref.io import write_parquet
from motionpref.progress import track

if TYPE_CHECKING:  # the generator pulls in torch and transformers; reading pair tables should not
    from motionpref.models.generator import MotionGenerator
    from motionpref.motion.skeleton import Skeleton

PAIRS_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("program", pa.string()),
        ("group", pa.string()),  # the prompt's group (prompts.group_key): ingestion moves whole groups only
        ("split", pa.string()),  # the prompt's split, train or val (PAIR_SPLITS)
        ("seed_a", pa.int64()),
        ("seed_b", pa.int64()),
        ("temperature", pa.float64()),
        ("tokens_a", pa.list_(pa.int64())),
        ("tokens_b", pa.list_(pa.int64())),
        ("features_a", pa.string()),
        ("features_b", pa.string()),
        ("valid_a", pa.bool_()),
        ("valid_b", pa.bool_()),
        ("policy_hash", pa.string()),
        ("preview", pa.string()),
    ]
)

PAIR_SPLITS = ("train", "val")  # the prompt splits that get pairs; test prompts are the win rates'


def directory_hash(directory: str | os.PathLike) -> str:
    """Short sha256 of every file in a model folder (names and bytes), to tie pairs to their policy."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def pair_seeds(seed: int, prompt_id: str) -> tuple[int, int]:
    """Two different seeds for a prompt, stable whatever other prompts there are."""
    raw = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    a, b = int.from_bytes(raw[:4], "little") >> 1, int.from_bytes(raw[4:8], "little") >> 1
    return a, b if b != a else a + 1


def pair_id(policy_hash: str, prompt: str, seed_a: int, seed_b: int, temperature: float) -> str:
    key = f"{policy_hash}|{prompt}|{seed_a}|{seed_b}|{temperature!r}"
    return "pair-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def sample_pairs(
    prompts: pd.DataFrame,
    generator: MotionGenerator,
    temperature: float,
    seed: int,
    policy_hash: str,
    store: Callable[[str, np.ndarray], str],
    chunk: int = 256,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Sample motions A and B for every train and val prompt (``prompt_id``, ``text``, ``program``, ``group``,
    ``split``); ``store(file_name, features)`` saves one and returns the path the table records. Returns the
    pairs table (``PAIRS_SCHEMA``) and statistics. A prompt whose A or B stays invalid after the generator's
    retries gets no pair, and is counted. Every motion is drawn from its pair's seeds alone, so a generator that
    shares each chunk across processes (``distributed.sharded_generator``) gives every process this table."""
    missing = [c for c in ("prompt_id", "text", "program", "group", "split") if c not in prompts.columns]
    if missing:
        raise ValueError(f"prompts lack column(s) {missing}; expected the table of prompts.read_prompts")
    rows: list[dict[str, Any]] = []
    frames: list[int] = []
    invalid_first = dropped = 0
    records = prompts.loc[prompts["split"].isin(PAIR_SPLITS)].to_dict("records")
    for start in track(range(0, len(records), chunk), "sample pairs", total=-(-len(records) // chunk)):
        batch = records[start : start + chunk]
        seeds = [pair_seeds(seed, r["prompt_id"]) for r in batch]
        texts = [r["text"] for r in batch]
        gen_a = generator.generate(texts, [s[0] for s in seeds], temperature)
        gen_b = generator.generate(texts, [s[1] for s in seeds], temperature)
        invalid_first += gen_a.n_invalid_first + gen_b.n_invalid_first
        for k, record in enumerate(batch):
            fa, fb = gen_a.features[k], gen_b.features[k]
            if fa is None or fb is None:
                dropped += 1
                continue
            seed_a, seed_b = gen_a.seeds[k], gen_b.seeds[k]
            pid = pair_id(policy_hash, record["text"], seed_a, seed_b, temperature)
            frames += [len(fa), len(fb)]
            rows.append(
                {
                    "pair_id": pid,
                    "prompt_id": record["prompt_id"],
                    "prompt": record["text"],
                    "program": record["program"],
                    "group": record["group"],
                    "split": record["split"],
                    "seed_a": seed_a,
                    "seed_b": seed_b,
                    "temperature": float(temperature),
                    "tokens_a": gen_a.codes[k],
                    "tokens_b": gen_b.codes[k],
                    "features_a": store(f"{pid}_a.npy", fa),
                    "features_b": store(f"{pid}_b.npy", fb),
                    "valid_a": True,
                    "valid_b": True,
                    "policy_hash": policy_hash,
                    "preview": None,
                }
            )
    table = pd.DataFrame(rows, columns=PAIRS_SCHEMA.names)
    stats = {
        "prompts": len(records),
        "test_prompts_reserved": int((prompts["split"] == "test").sum()),
        "pairs": len(table),
        "split": {name: int((table["split"] == name).sum()) for name in PAIR_SPLITS},
        "dropped_invalid": dropped,
        "invalid_first_rate": invalid_first / max(2 * len(records), 1),
        "temperature": temperature,
        "mean_frames": float(np.mean(frames)) if frames else 0.0,
    }
    return table, stats


def write_pairs(table: pd.DataFrame, path: Path) -> None:
    write_parquet(path, table, PAIRS_SCHEMA)


def read_pairs(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no pairs table (run the sample_pairs stage)")
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{path}: cannot read the pairs table: {e}") from None
    missing = [n for n in PAIRS_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(
            f"{path}: pairs table lacks column(s) {missing}; expected columns {PAIRS_SCHEMA.names} (a table written "
            "before the program-level split has no group or split: rerun the sample_pairs stage)"
        )
    return table.to_pandas()


def render_previews(
    table: pd.DataFrame, root: Path, out_dir: Path, limit: int, skeleton: Skeleton, size: int = 240
) -> list[str]:
    """Side-by-side GIFs of the first ``limit`` pairs (motions of ``skeleton``), named ``<pair_id>.gif`` in
    ``out_dir`` (the labeling app renders the others on demand); returns the file names."""
    from motionpref.motion.render import render_side_by_side

    names = []
    for row in table.head(limit).itertuples():
        render_side_by_side(
            np.load(root / row.features_a, allow_pickle=False),
            np.load(root / row.features_b, allow_pickle=False),
            out_dir / f"{row.pair_id}.gif",
            caption=row.prompt,
            skeleton=skeleton,
            size=size,
            every=2,
        )
        names.append(f"{row.pair_id}.gif")
    return names
