"""Labels from a judge that is not a person (:mod:`motionpref.prefs.judges`) for the table of sampled pairs.

Each pair goes to one of the judge's labelers, picked by a seeded hash, and a shared fraction to a second one
too (for agreement); every labeler draws its noise from its own seeded stream, so the labels are deterministic
for a seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from motionpref.prefs.judges import PairJudge, Perception
from motionpref.prefs.labels import Judgment
from motionpref.progress import track

# Simulated judgments get fixed timestamps (one second apart from this epoch) so reruns are byte-identical.
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def pair_prompts(pairs: pd.DataFrame) -> pd.DataFrame:
    """The prompts to make a judge of the pairs for (``make_judge``): one per pair, in the table's order, so a
    pair's row number names the prompt both its motions answer."""
    return pairs.rename(columns={"prompt": "text"})


def perceive_pairs(pairs: pd.DataFrame, root: Path, judge: PairJudge) -> list[tuple[Perception, Perception]]:
    """The perception of both motions of every pair by a judge made for ``pair_prompts(pairs)``."""
    out = []
    for i, row in enumerate(track(pairs.itertuples(), "judge pairs", total=len(pairs))):
        motions = [
            np.load(root / row.features_a, allow_pickle=False),
            np.load(root / row.features_b, allow_pickle=False),
        ]
        a, b = judge.perceive(motions, [i, i])
        out.append((a, b))
    return out


def _assignments(pair_ids: Sequence[str], n_labelers: int, shared_fraction: float, seed: int) -> list[list[int]]:
    """Which labelers judge each pair: one by a seeded hash, plus a second for the shared fraction."""
    out = []
    for pid in pair_ids:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{pid}".encode()).digest()[:8], "little")
        first = h % n_labelers
        shared = n_labelers > 1 and (h >> 32) / 2**32 < shared_fraction
        out.append([first, (first + 1 + (h >> 16) % (n_labelers - 1)) % n_labelers] if shared else [first])
    return out


def label_pairs(
    pairs: pd.DataFrame, seen: Sequence[tuple[Perception, Perception]], judge: PairJudge, seed: int
) -> dict[str, list[Judgment]]:
    """Judgments per labeler of the judge on the pairs (``pair_id``, ``prompt``) perceived as ``seen``."""
    per_labeler: dict[str, list[Judgment]] = {name: [] for name in judge.labelers}
    assignments = _assignments(list(pairs["pair_id"]), len(judge.labelers), judge.shared_fraction, seed)
    rngs = [np.random.default_rng([seed, k]) for k in range(len(judge.labelers))]
    for row, (a, b), labelers in zip(pairs.itertuples(), seen, assignments, strict=True):
        for k in labelers:
            choice, degree = judge.judgment(a, b, rngs[k])
            name = judge.labelers[k]
            per_labeler[name].append(
                Judgment(
                    pair_id=row.pair_id,
                    prompt=row.prompt,
                    choice=choice,
                    degree=degree,
                    labeler=name,
                    source=judge.name,
                    created_at=(EPOCH + timedelta(seconds=len(per_labeler[name]))).strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
            )
    return per_labeler


def judgments_jsonl(judgments: Sequence[Judgment]) -> str:
    return b"".join(j.to_line() for j in judgments).decode("utf-8")
