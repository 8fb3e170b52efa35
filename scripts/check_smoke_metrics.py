#!/usr/bin/env python3
"""Compare a smoke run's metrics (`dvc exp run -S profile=smoke`) with the committed reference, within tolerances.

    python scripts/check_smoke_metrics.py [--run DIR]            exit 1, with a table, when a number is out of bounds
    python scripts/check_smoke_metrics.py [--run DIR] --update   rewrite the reference's values from this run

DIR is the root of the smoke run (default: the current folder); it reads reports/metrics/*.json (the mean of each
model's R-precision, FID, MM-Dist, diversity and judge score), reports/winrate/*.json (win, tie and loss rates and
sample counts per temperature) and reports/prefs_stats.json (the preference table's counts).

The reference (.ci/smoke_reference.json) holds the values and the tolerances, an ordered list of rules: the first
whose `match` (a glob over `file:key`) fits a value gives its bounds. A rule allows the union of
  abs     |run - ref| <= abs                      (abs 0: exact)
  rel     |run - ref| <= rel * |ref|
  factor  ref / factor <= run <= ref * factor     (for positive values such as FID)
`--update` keeps the rules and rewrites only the values. A value missing from the run, a value the reference lacks
(a new model, a new cell), NaN, or a file that cannot be read fails the check. Same CPU type and same lock: every
value should be identical, and the table counts how many are.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from motionpref.tracking import cpu_type

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / ".ci" / "smoke_reference.json"
EVAL_METRICS = ("r_precision_top1", "r_precision_top3", "fid", "mm_dist", "diversity", "judge")
WINRATE_FIELDS = ("win", "tie", "loss")
PREFS_COUNTS = ("pairs_in_table", "pairs_judged", "judgments", "labelers", "preferences")

# Written into a new reference (one without rules yet); afterwards the reference's own list is the one in force.
DEFAULT_RULES = [
    {
        "match": "reports/metrics/*:metrics.r_precision_top*.mean",
        "abs": 0.2,
        "why": "shares of 4-caption batches over 2 replications (ci95 about 0.1); the 20-step evaluator is near "
        "chance (0.25 top-1, 0.75 top-3)",
    },
    {
        "match": "reports/metrics/*:metrics.fid.mean",
        "factor": 3.0,
        "abs": 0.5,
        "why": "positive and noisy on tiny models: within a factor of 3, or 0.5 near 0; a broken pipeline is off "
        "by orders of magnitude or NaN",
    },
    {
        "match": "reports/metrics/*:metrics.mm_dist.mean",
        "rel": 0.25,
        "why": "a distance in the evaluator's embedding (ci95 about 1% of it), whose scale its 20 steps set",
    },
    {
        "match": "reports/metrics/*:metrics.diversity.mean",
        "factor": 2.0,
        "why": "4 sample pairs (SFT's ci95 is 30% of its mean); outputs collapsed to one motion fall far below half",
    },
    {
        "match": "reports/metrics/*:metrics.judge.mean",
        "abs": 0.2,
        "why": "the synthetic judge's probability, in [0, 1], over 4 texts",
    },
    {"match": "reports/winrate/*:*.n", "abs": 0, "why": "sample counts are set by params.yaml"},
    {"match": "reports/winrate/*:prompts", "abs": 0, "why": "set by params.yaml"},
    {
        "match": "reports/winrate/*:*.rate",
        "abs": 0.5,
        "why": "4 prompts per cell: each re-drawn pair moves a rate by 0.25; catches a missing or NaN cell",
    },
    {"match": "reports/prefs_stats.json:labelers", "abs": 0, "why": "set by params.yaml"},
    {
        "match": "reports/prefs_stats.json:*",
        "rel": 0.2,
        "abs": 3,
        "why": "counts of labeled pairs, which follow the sampled motions: within 20%, or 3 pairs when small",
    },
]


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def collect(run: Path) -> dict[str, float]:
    """The checked numbers of a smoke run, as {"file:key": value}."""
    values: dict[str, float] = {}

    def put(path: Path, key: str, x) -> None:
        v = _num(x)
        values[f"{path.relative_to(run).as_posix()}:{key}"] = math.nan if v is None else v

    for path in sorted((run / "reports" / "metrics").glob("*.json")):
        metrics = json.loads(path.read_text()).get("metrics") or {}
        for name in EVAL_METRICS:
            if name in metrics:
                put(path, f"metrics.{name}.mean", (metrics[name] or {}).get("mean"))
    for path in sorted((run / "reports" / "winrate").glob("*.json")):
        data = json.loads(path.read_text())
        put(path, "prompts", data.get("prompts"))
        for cell in data.get("cells", []):
            cell_key = f"T={cell.get('temperature')}"
            put(path, f"{cell_key}.n", cell.get("n"))
            for field in WINRATE_FIELDS:
                put(path, f"{cell_key}.{field}.rate", (cell.get(field) or {}).get("rate"))
    prefs = run / "reports" / "prefs_stats.json"
    if prefs.exists():
        data = json.loads(prefs.read_text())
        for name in PREFS_COUNTS:
            put(prefs, name, data.get(name))
        for name, entry in sorted((data.get("degrees") or {}).items()):
            put(prefs, f"degrees.{name}.pairs", (entry or {}).get("pairs"))
        put(prefs, "skipped.pairs", (data.get("skipped") or {}).get("pairs"))
        for name, n in sorted((data.get("split") or {}).items()):
            put(prefs, f"split.{name}", n)
    return values


def rule_for(key: str, rules: list[dict]) -> dict | None:
    return next((r for r in rules if fnmatch.fnmatchcase(key, r["match"])), None)


def bounds(ref: float, rule: dict) -> tuple[float, float]:
    """The interval a run's value must fall in: the union of the rule's criteria around the reference."""
    d = max(rule.get("abs", 0.0), rule.get("rel", 0.0) * abs(ref))
    lo, hi = ref - d, ref + d
    if "factor" in rule and ref > 0:
        f = rule["factor"]
        lo, hi = min(lo, ref / f), max(hi, ref * f)
    return lo, hi


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e9:
        return str(int(x))
    return f"{x:.4g}"


def check(run_values: dict[str, float], reference: dict) -> tuple[list[tuple], int]:
    """Rows of (key, ref, run, allowed, status) and the number of failures."""
    rules, ref_values = reference["tolerances"], reference["values"]
    rows, failed = [], 0
    for key in sorted(set(ref_values) | set(run_values)):
        ref, got = ref_values.get(key), run_values.get(key)
        rule = rule_for(key, rules)
        if ref is None:
            rows.append((key, None, got, "-", "FAIL: not in the reference (--update)"))
        elif got is None:
            rows.append((key, ref, None, "-", "FAIL: missing from the run"))
        elif rule is None:
            rows.append((key, ref, got, "-", "FAIL: no tolerance rule matches"))
        else:
            lo, hi = bounds(ref, rule)
            allowed = f"[{fmt(lo)}, {fmt(hi)}]"
            if math.isnan(got) or not lo <= got <= hi:
                rows.append((key, ref, got, allowed, "FAIL"))
            else:
                rows.append((key, ref, got, allowed, "same" if got == ref else "ok"))
        failed += rows[-1][4].startswith("FAIL")
    return rows, failed


def table(rows: list[tuple]) -> str:
    head = ("value (file:key)", "reference", "run", "allowed", "status")
    cells = [head] + [(k, fmt(r), fmt(g), a, s) for k, r, g, a, s in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(head) - 1)) + "  " + c[-1] for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(lines)


def machine() -> dict[str, str]:
    cpu = cpu_type()
    info = {"cpu": cpu, "python": platform.python_version()}
    lock = ROOT / "requirements" / "lock.txt"
    if lock.exists():
        info["lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("."), help="root of the smoke run (holds reports/)")
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--update", action="store_true", help="rewrite the reference's values from this run")
    args = ap.parse_args(argv)

    args.run = args.run.resolve()
    try:
        values = collect(args.run)
    except (OSError, ValueError) as err:
        print(f"check_smoke_metrics: cannot read the run's reports under {args.run}: {err}", file=sys.stderr)
        return 1
    if not values:
        print(f"check_smoke_metrics: no reports under {args.run / 'reports'}", file=sys.stderr)
        return 1

    if args.update:
        old = json.loads(args.reference.read_text()) if args.reference.exists() else {}
        rules = old.get("tolerances") or DEFAULT_RULES
        nan = [k for k, v in values.items() if math.isnan(v)]
        if nan:
            print("check_smoke_metrics: not a number, not written: " + ", ".join(nan), file=sys.stderr)
            return 1
        unmatched = [k for k in values if rule_for(k, rules) is None]
        if unmatched:
            print("check_smoke_metrics: no tolerance rule for " + ", ".join(unmatched), file=sys.stderr)
            return 1
        reference = {
            "about": old.get("about")
            or (
                "Metrics of `dvc exp run -S profile=smoke`, checked by scripts/check_smoke_metrics.py in .ci/run. "
                "Same CPU type and requirements/lock.txt: identical values. Elsewhere: within the tolerances."
            ),
            "produced": {**machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")},
            "tolerances": rules,
            "values": dict(sorted(values.items())),
        }
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        args.reference.write_text(json.dumps(reference, indent=2) + "\n")
        print(f"check_smoke_metrics: wrote {len(values)} values to {args.reference}")
        return 0

    try:
        reference = json.loads(args.reference.read_text())
    except (OSError, ValueError) as err:
        print(f"check_smoke_metrics: cannot read the reference {args.reference}: {err}", file=sys.stderr)
        return 1
    rows, failed = check(values, reference)
    if reference.get("note"):
        print(f"reference note: {reference['note']}\n")
    print(table(rows))
    same = sum(r[4] == "same" for r in rows)
    ref_env, env = reference.get("produced", {}), machine()
    print(
        f"\nreference: {ref_env.get('cpu', '?')}, lock {ref_env.get('lock_sha256', '?')} ({ref_env.get('date', '?')}); "
        f"this run: {env['cpu']}, lock {env.get('lock_sha256', '?')}; {same} of {len(rows)} values identical"
    )
    if failed:
        print(f"\nsmoke metrics: {failed} of {len(rows)} values failed:", file=sys.stderr)
        print(table([r for r in rows if r[4].startswith("FAIL")]), file=sys.stderr)
        print(
            "a deliberate change of results: python scripts/check_smoke_metrics.py --run DIR --update", file=sys.stderr
        )
        return 1
    print(f"smoke metrics: all {len(rows)} values within tolerance of {args.reference.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
