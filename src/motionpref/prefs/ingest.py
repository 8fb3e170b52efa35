"""Label ingestion: validate raw judgments, resolve several judgments of a pair, split, report statistics.

:func:`ingest` is pure: it reads the label files (never writes them) and returns the resolved preference
table, the statistics and the problems found. :func:`write_outputs` writes them, all or nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa

from motionpref.io import parquet_writer, text_writer, write_all
from motionpref.prefs.labels import DEGREES, Choice, Degree, Judgment, LabelError, Source, scan_labels

Rule = Literal["last_wins", "majority", "drop_conflicts"]
OnError = Literal["fail", "quarantine"]

PAIR_COLUMNS = (
    "pair_id",
    "prompt_id",
    "prompt",
    "program",
    "tokens_a",
    "tokens_b",
    "features_a",
    "features_b",
)

PREFERENCES_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("program", pa.string()),
        ("chosen", pa.string()),
        ("chosen_tokens", pa.list_(pa.int64())),
        ("rejected_tokens", pa.list_(pa.int64())),
        ("chosen_features", pa.string()),
        ("rejected_features", pa.string()),
        ("degree", pa.string()),
        ("margin", pa.float64()),
        ("split", pa.string()),
        ("n_judgments", pa.int64()),
        ("labelers", pa.list_(pa.string())),
        ("source", pa.string()),
    ]
)


@dataclass(frozen=True)
class Problem:
    """A label line ingestion rejected: where, why, and its exact bytes."""

    file: str
    line: int
    reason: str
    raw: bytes

    def to_json(self) -> dict[str, Any]:
        # base64 keeps the line byte-exact whatever it holds (invalid UTF-8 included).
        return {
            "file": self.file,
            "line": self.line,
            "reason": self.reason,
            "raw": base64.b64encode(self.raw).decode(),
        }


@dataclass
class IngestResult:
    preferences: pd.DataFrame  # columns of PREFERENCES_SCHEMA, one row per resolved (not skipped) pair
    stats: dict[str, Any]
    problems: list[Problem]  # quarantined lines (always empty with on_error="fail")
    quarantine_path: Path | None


def split_key(pair_id: str, seed: int) -> int:
    """The pair's sha256-based number in [0, 2**64) that decides its split: val when below val_fraction."""
    digest = hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def is_val(pair_id: str, seed: int, val_fraction: float) -> bool:
    """Whether the hash split puts a pair in the validation split.

    Each pair's side is a function of (seed, pair_id) alone, sha256 read as a uniform number in [0, 1), so
    adding pairs never moves old ones between train and val. :func:`assign_splits` adds the one exception.
    """
    return split_key(pair_id, seed) / 2**64 < val_fraction


def assign_splits(pair_ids: Sequence[str], seed: int, val_fraction: float) -> list[str]:
    """Each pair's split, "train" or "val": the hash split of :func:`is_val`, leaving neither split empty.

    Every consumer needs both splits (the validation split picks the best epoch), and a handful of pairs
    often hashes all to one side. So with two or more pairs: if no pair is in val, the one with the smallest
    :func:`split_key` moves to val; if none is in train, the one with the largest moves to train (whatever
    val_fraction, 0 and 1 included). When the hash split already fills both, no pair moves, so large runs
    keep exactly the hash split; a moved pair may move back once more pairs are judged.
    """
    splits = ["val" if is_val(p, seed, val_fraction) else "train" for p in pair_ids]
    if len(splits) >= 2:
        keys = [split_key(p, seed) for p in pair_ids]
        if "val" not in splits:
            splits[keys.index(min(keys))] = "val"
        elif "train" not in splits:
            splits[keys.index(max(keys))] = "train"
    return splits


def _degree_vote(votes: Sequence[Judgment]) -> Degree:
    """The most common degree among votes for one side; ties go to the weaker degree."""
    counts = Counter(v.degree for v in votes)
    top = max(counts.values())
    return next(d for d in DEGREES if counts.get(d) == top)


def _resolve(ordered: list[Judgment], votes: list[Judgment], rule: Rule) -> tuple[Choice, Degree | None, Source] | None:
    """(choice, degree, source) of a pair under `rule`, or None when the rule drops it as a conflict."""
    if rule == "last_wins":
        last = ordered[-1]
        return last.choice, last.degree, last.source
    counts = Counter(v.choice for v in votes)
    if rule == "drop_conflicts" and len(counts) > 1:
        return None
    top = max(counts.values())
    winners = [c for c, n in counts.items() if n == top]
    if len(winners) > 1:
        return None
    choice = winners[0]
    side = [v for v in votes if v.choice == choice]
    return choice, None if choice == "skip" else _degree_vote(side), side[-1].source


def _check_quarantine(quarantine: Path, label_paths: Sequence[Path], labels_dir: Path | None) -> None:
    """Refuse a quarantine file that ingestion would read back as labels: it would grow on every run."""
    target = Path(quarantine).resolve()
    if labels_dir is not None and target.is_relative_to(Path(labels_dir).resolve()):
        raise ValueError(
            f"quarantine file {quarantine} lies inside the labels folder {labels_dir}, so the next run would "
            "read its own quarantined lines back as labels; put the quarantine file outside that folder"
        )
    for path in label_paths:
        if Path(path).resolve() == target:
            raise ValueError(
                f"quarantine file {quarantine} is also given as the label file {path}, so every run would read "
                "its own quarantined lines back as labels; keep the quarantine file out of the label files"
            )


def _check_inputs(
    pairs: pd.DataFrame,
    rule: str,
    val_fraction: float,
    margins: dict[str, float],
    on_error: str,
    quarantine: Path | None,
) -> None:
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs table lacks column(s) {missing}; expected at least {list(PAIR_COLUMNS)}")
    dup = pairs["pair_id"][pairs["pair_id"].duplicated()]
    if len(dup):
        raise ValueError(f"pairs table has duplicate pair_id {dup.iloc[0]!r}")
    if rule not in ("last_wins", "majority", "drop_conflicts"):
        raise ValueError(f"rule must be last_wins, majority or drop_conflicts, got {rule!r}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    lacking = [d for d in DEGREES if d not in margins]
    if lacking:
        raise ValueError(f"margins lack degree(s) {lacking}; expected keys {list(DEGREES)}")
    if on_error not in ("fail", "quarantine"):
        raise ValueError(f"on_error must be fail or quarantine, got {on_error!r}")
    if on_error == "quarantine" and quarantine is None:
        raise ValueError("on_error='quarantine' needs a quarantine_path")


def ingest(
    label_paths: Sequence[Path],
    pairs: pd.DataFrame,
    rule: Rule,
    val_fraction: float = 0.1,
    *,
    seed: int,
    margins: dict[str, float],
    on_error: OnError = "fail",
    quarantine_path: Path | None = None,
    labels_dir: Path | None = None,
) -> IngestResult:
    """Validate every judgment of `label_paths` against the schema and `pairs`, resolve each pair by `rule`.

    Rules: last_wins takes the latest judgment (created_at, then file and line order); majority takes the
    choice (a/b/skip) with most votes, dropping ties as conflicts; drop_conflicts drops pairs whose votes
    disagree. For majority and drop_conflicts, each labeler's vote is their latest judgment of the pair (a
    labeler correcting themselves is not a conflict), and the degree is the most common degree among the
    winning votes, ties going to the weaker one. With on_error="fail" the first bad line raises
    :class:`LabelError`; with "quarantine" bad lines are returned as problems (for `quarantine_path`) and
    skipped. A `quarantine_path` inside `labels_dir` (the folder `label_paths` were gathered from, if given)
    or among `label_paths` is refused with ValueError. Splits are assigned by :func:`assign_splits`.
    """
    if not label_paths:
        raise ValueError("no label files given")
    _check_inputs(pairs, rule, val_fraction, margins, on_error, quarantine_path)
    if quarantine_path is not None:
        _check_quarantine(quarantine_path, label_paths, labels_dir)
    prompts = dict(zip(pairs["pair_id"], pairs["prompt"], strict=True))

    problems: list[Problem] = []
    # Per pair: (created_at, file index, line) -> judgment; file and line order break created_at ties.
    by_pair: dict[str, list[tuple[tuple[datetime, int, int], Judgment]]] = {}
    for file_index, path in enumerate(label_paths):
        for lineno, raw, item in scan_labels(path):
            if isinstance(item, Judgment):
                if item.pair_id not in prompts:
                    item = LabelError(path, lineno, f"unknown pair_id {item.pair_id!r} (not in the pairs table)")
                elif item.prompt != prompts[item.pair_id]:
                    item = LabelError(
                        path,
                        lineno,
                        f"prompt {item.prompt!r} differs from the pairs table's {prompts[item.pair_id]!r} "
                        f"for pair {item.pair_id!r}",
                    )
            if isinstance(item, LabelError):
                if on_error == "fail":
                    raise item
                problems.append(Problem(str(path), lineno, item.reason, raw))
                continue
            by_pair.setdefault(item.pair_id, []).append(((item.timestamp, file_index, lineno), item))

    rows = []
    outcome: Counter[str] = Counter()
    disagreeing = dropped = 0
    agree_pairs = agree = both_chose = agree_chose = 0
    for record in pairs.itertuples(index=False):
        ordered = [j for _, j in sorted(by_pair.get(record.pair_id, []), key=lambda entry: entry[0])]
        if not ordered:
            continue
        # A dict keeps first-insertion order, so `latest` lists labelers by their first judgment.
        latest: dict[str, tuple[int, Judgment]] = {}
        for position, judgment in enumerate(ordered):
            latest[judgment.labeler] = (position, judgment)
        votes = [j for _, j in sorted(latest.values(), key=lambda item: item[0])]
        if len({v.choice for v in votes}) > 1:
            disagreeing += 1
        if len(latest) >= 2:
            first, second = (latest[name][1] for name in list(latest)[:2])
            agree_pairs += 1
            agree += first.choice == second.choice
            if "skip" not in (first.choice, second.choice):
                both_chose += 1
                agree_chose += first.choice == second.choice
        resolved = _resolve(ordered, votes, rule)
        if resolved is None:
            dropped += 1
            outcome["conflict"] += 1
            continue
        choice, degree, source = resolved
        if choice == "skip":
            outcome["skipped"] += 1
            continue
        outcome[degree] += 1
        win, lose = ("a", "b") if choice == "a" else ("b", "a")
        rows.append(
            {
                "pair_id": record.pair_id,
                "prompt_id": record.prompt_id,
                "prompt": record.prompt,
                "program": record.program,
                "chosen": choice,
                "chosen_tokens": [int(t) for t in getattr(record, f"tokens_{win}")],
                "rejected_tokens": [int(t) for t in getattr(record, f"tokens_{lose}")],
                "chosen_features": getattr(record, f"features_{win}"),
                "rejected_features": getattr(record, f"features_{lose}"),
                "degree": degree,
                "margin": float(margins[degree]),
                "split": None,  # set below, once every pair's side is known
                "n_judgments": len(ordered),
                "labelers": sorted(latest),
                "source": source,
            }
        )

    splits = assign_splits([row["pair_id"] for row in rows], seed, val_fraction)
    for row, split in zip(rows, splits, strict=True):
        row["split"] = split
    table = pd.DataFrame(rows, columns=PREFERENCES_SCHEMA.names)
    judged = sum(outcome.values())
    n_val = int((table["split"] == "val").sum())

    def share(n: int) -> float:
        return n / judged if judged else 0.0

    stats = {
        "rule": rule,
        "seed": seed,
        "val_fraction": val_fraction,
        "pairs_in_table": len(pairs),
        "pairs_judged": judged,
        "judgments": sum(len(v) for v in by_pair.values()),
        "labelers": len({j.labeler for entries in by_pair.values() for _, j in entries}),
        "degrees": {d: {"pairs": outcome[d], "share": share(outcome[d])} for d in reversed(DEGREES)},
        "skipped": {"pairs": outcome["skipped"], "share": share(outcome["skipped"])},
        "conflicts": {"disagreeing_pairs": disagreeing, "dropped": dropped, "share_dropped": share(dropped)},
        "agreement": {
            "pairs": agree_pairs,
            "agree": agree,
            "rate": agree / agree_pairs if agree_pairs else None,
            "pairs_both_chose": both_chose,
            "agree_both_chose": agree_chose,
            "rate_both_chose": agree_chose / both_chose if both_chose else None,
        },
        "quarantined_lines": len(problems),
        "preferences": len(table),
        "split": {"train": len(table) - n_val, "val": n_val},
    }
    return IngestResult(table, stats, problems, quarantine_path)


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def stats_markdown(stats: dict[str, Any]) -> str:
    """The statistics as the paper reports them: pairs and share per degree, skipped, and the totals."""
    lines = ["| degree | pairs | share |", "|---|---:|---:|"]
    for degree, row in stats["degrees"].items():
        lines.append(f"| {degree} | {row['pairs']:,} | {_percent(row['share'])} |")
    lines.append(f"| skipped | {stats['skipped']['pairs']:,} | {_percent(stats['skipped']['share'])} |")
    conflicts = stats["conflicts"]
    lines.append(f"| conflict (dropped) | {conflicts['dropped']:,} | {_percent(conflicts['share_dropped'])} |")
    total = "100.0%" if stats["pairs_judged"] else "0.0%"
    lines.append(f"| **total** | {stats['pairs_judged']:,} | {total} |")
    agreement = stats["agreement"]
    rate = "n/a" if agreement["rate"] is None else _percent(agreement["rate"])
    rate_chose = "n/a" if agreement["rate_both_chose"] is None else _percent(agreement["rate_both_chose"])
    lines += [
        "",
        f"- judgments: {stats['judgments']:,} by {stats['labelers']} labeler(s); rule `{stats['rule']}`",
        f"- agreement of the first two labelers: {rate} of {agreement['pairs']:,} pairs judged more than "
        f"once; {rate_chose} of {agreement['pairs_both_chose']:,} pairs neither skipped",
        f"- conflicts: {conflicts['disagreeing_pairs']:,} pairs with disagreeing votes, "
        f"{conflicts['dropped']:,} dropped",
        f"- quarantined lines: {stats['quarantined_lines']:,}",
        f"- preferences: {stats['preferences']:,} (train {stats['split']['train']:,}, val {stats['split']['val']:,})",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(result: IngestResult, out_parquet: Path, stats_json: Path, stats_md: Path) -> None:
    """Write the preference table, the statistics (JSON + markdown) and the quarantine file, if any."""
    writers = {
        Path(out_parquet): parquet_writer(result.preferences, PREFERENCES_SCHEMA),
        Path(stats_json): text_writer(json.dumps(result.stats, indent=2) + "\n"),
        Path(stats_md): text_writer(stats_markdown(result.stats)),
    }
    if result.quarantine_path is not None:
        lines = "".join(json.dumps(p.to_json()) + "\n" for p in result.problems)
        writers[Path(result.quarantine_path)] = text_writer(lines)
    write_all(writers)
