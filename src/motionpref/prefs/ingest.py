"""Label ingestion: validate raw judgments, resolve several judgments of a pair, split, report statistics.

:func:`ingest` is pure: it reads the label files (never writes them) and returns the resolved preference
table, the statistics and the problems found. :func:`write_outputs` writes them, all or nothing.

A preference's split is its pair's, which is its prompt's: generate_prompts splits whole programs into train,
val and test, and sample_pairs makes pairs for train and val prompts only, so no program is in two splits. A
pair in the test split is refused (its preference would train on a win-rate prompt). :func:`assign_splits`
moves one whole program when a tiny run would leave a split empty.
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
from motionpref.prefs.pairs import PAIR_SPLITS

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
    "group",
    "split",
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


def group_hash(group: str, seed: int) -> int:
    """The group's sha256-based number in [0, 2**64): which group :func:`assign_splits` moves to fill a split."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def assign_splits(splits: Sequence[str], groups: Sequence[str], seed: int) -> list[str]:
    """Each preference's split: its pair's (``splits``, train or val), leaving neither split empty when whole
    groups (``groups``, the pairs' programs) can fill both.

    Every consumer needs both splits (the validation split picks the best epoch), and a handful of preferences
    often comes from train programs alone. So with preferences from two or more groups: if none is in val,
    every preference of the group with the smallest :func:`group_hash` moves to val; if none is in train, every
    one of the group with the largest moves to train. A whole group moves, so no program ends in both splits;
    from a single group nothing can move. When both splits are filled already nothing moves, so large runs
    keep exactly the prompts' split; a moved group moves back once another group fills the split it filled.
    """
    out = list(splits)
    distinct = set(groups)
    if len(distinct) >= 2:
        for empty, pick in (("val", min), ("train", max)):
            if empty not in out:
                moved = pick(distinct, key=lambda g: group_hash(g, seed))
                out = [empty if g == moved else split for split, g in zip(out, groups, strict=True)]
    return out


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


def _check_pair_splits(pairs: pd.DataFrame, where: str) -> None:
    """Every pair in train or val, and every group in one of them: a test pair or a program on both sides would
    put a held-out task into training."""
    outside = pairs.loc[~pairs["split"].isin(PAIR_SPLITS)]
    if len(outside):
        row = outside.iloc[0]
        if row["split"] == "test":
            raise ValueError(
                f"{where}: pair {row['pair_id']!r} (prompt {row['prompt_id']!r}) is in the test split, whose "
                "prompts are kept for the win rates: a preference on it would train on a held-out program; "
                "sample pairs for train and val prompts only (as the sample_pairs stage does)"
            )
        found = "no split" if pd.isna(row["split"]) else f"split {row['split']!r}"
        raise ValueError(
            f"{where}: pair {row['pair_id']!r} has {found}; expected one of {list(PAIR_SPLITS)} (its prompt's "
            "split in prompts.parquet)"
        )
    if pairs["group"].isna().any():
        raise ValueError(f"{where}: pair {pairs.loc[pairs['group'].isna(), 'pair_id'].iloc[0]!r} has no group")
    splits_per_group = pairs.groupby("group")["split"].nunique()
    crossing = splits_per_group[splits_per_group > 1].index.tolist()
    if crossing:
        raise ValueError(
            f"{where}: {len(crossing)} group(s) have pairs in both train and val, e.g. {crossing[0][:80]!r}; "
            "every pair of a program must share its prompts' split"
        )


def _check_inputs(
    pairs: pd.DataFrame,
    where: str,
    rule: str,
    margins: dict[str, float],
    on_error: str,
    quarantine: Path | None,
) -> None:
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise ValueError(
            f"{where}: lacks column(s) {missing}; expected at least {list(PAIR_COLUMNS)} (pairs sampled before "
            "the program-level split have no group or split: rerun the sample_pairs stage)"
        )
    dup = pairs["pair_id"][pairs["pair_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{where}: duplicate pair_id {dup.iloc[0]!r}")
    _check_pair_splits(pairs, where)
    if rule not in ("last_wins", "majority", "drop_conflicts"):
        raise ValueError(f"rule must be last_wins, majority or drop_conflicts, got {rule!r}")
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
    *,
    seed: int,
    margins: dict[str, float],
    on_error: OnError = "fail",
    quarantine_path: Path | None = None,
    labels_dir: Path | None = None,
    pairs_source: str = "pairs table",
) -> IngestResult:
    """Validate every judgment of `label_paths` against the schema and `pairs`, resolve each pair by `rule`.

    Rules: last_wins takes the latest judgment (created_at, then file and line order); majority takes the
    choice (a/b/skip) with most votes, dropping ties as conflicts; drop_conflicts drops pairs whose votes
    disagree. For majority and drop_conflicts, each labeler's vote is their latest judgment of the pair (a
    labeler correcting themselves is not a conflict), and the degree is the most common degree among the
    winning votes, ties going to the weaker one. With on_error="fail" the first bad line raises
    :class:`LabelError`; with "quarantine" bad lines are returned as problems (for `quarantine_path`) and
    skipped. A `quarantine_path` inside `labels_dir` (the folder `label_paths` were gathered from, if given)
    or among `label_paths` is refused with ValueError. A preference's split is its pair's, as
    :func:`assign_splits` leaves it; a pair in the test split, or a group on both sides, is refused with
    ValueError naming `pairs_source` (where `pairs` came from).
    """
    if not label_paths:
        raise ValueError("no label files given")
    _check_inputs(pairs, pairs_source, rule, margins, on_error, quarantine_path)
    if quarantine_path is not None:
        _check_quarantine(quarantine_path, label_paths, labels_dir)
    prompts = dict(zip(pairs["pair_id"], pairs["prompt"], strict=True))
    group_of = dict(zip(pairs["pair_id"], pairs["group"], strict=True))

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
                "split": record.split,  # may move below, once every preference is known
                "n_judgments": len(ordered),
                "labelers": sorted(latest),
                "source": source,
            }
        )

    groups = [group_of[row["pair_id"]] for row in rows]
    splits = assign_splits([row["split"] for row in rows], groups, seed)
    moved = [split for row, split in zip(rows, splits, strict=True) if row["split"] != split]
    for row, split in zip(rows, splits, strict=True):
        row["split"] = split
    table = pd.DataFrame(rows, columns=PREFERENCES_SCHEMA.names)
    judged = sum(outcome.values())
    programs_in = {name: {g for g, s in zip(groups, splits, strict=True) if s == name} for name in PAIR_SPLITS}

    def share(n: int) -> float:
        return n / judged if judged else 0.0

    stats = {
        "rule": rule,
        "seed": seed,
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
        "split": {name: splits.count(name) for name in PAIR_SPLITS},
        "split_programs": {name: len(found) for name, found in programs_in.items()},
        # the one program assign_splits moved to fill an empty split, if any
        "moved_to_fill_split": {"to": moved[0], "preferences": len(moved)} if moved else None,
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
        f"- preferences: {stats['preferences']:,} (train {stats['split']['train']:,} from "
        f"{stats['split_programs']['train']:,} programs, val {stats['split']['val']:,} from "
        f"{stats['split_programs']['val']:,}; a program's pairs all share its prompts' split)",
    ]
    moved = stats["moved_to_fill_split"]
    if moved is not None:
        lines.append(f"- {moved['preferences']:,} preference(s) of one program moved to {moved['to']}, which was empty")
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
