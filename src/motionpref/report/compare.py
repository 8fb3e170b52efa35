"""Cross-model comparison: the test metrics of every model side by side, each finetuned model's difference from
the baseline (the supervised policy) with its interval, and the win rates, as one JSON and one markdown table.

Every model's evaluation uses the same seed, so replication r of each model scores samples for the same
captions, crops and R-precision batches. The difference of two models is therefore taken replication by
replication (a paired difference): the batch composition, the largest source of R-precision spread, cancels,
and the interval is that of the paired differences, 1.96 std / sqrt(n) as the metrics' own intervals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# metric -> (label, whether higher is better); the order of the table's columns
METRICS: dict[str, tuple[str, bool]] = {
    "r_precision_top1": ("R@1", True),
    "r_precision_top2": ("R@2", True),
    "r_precision_top3": ("R@3", True),
    "fid": ("FID", False),
    "mm_dist": ("MM Dist", False),
    "diversity": ("Diversity", True),
    "multimodality": ("MModality", True),
}
PAIRED = ("r_precision_top1", "r_precision_top3", "mm_dist", "fid")


class ReportError(ValueError):
    """A metrics or win-rate file that is missing or does not hold what the report needs."""


def read_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: missing; run the stage that writes it first") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return data


def replications(report: Mapping[str, Any], metric: str, where: str) -> np.ndarray:
    try:
        values = report["replications"][metric]
    except (KeyError, TypeError):
        raise ReportError(f"{where}: no replications.{metric}") from None
    return np.asarray(values, np.float64)


def paired_difference(model: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Mean of model_r - baseline_r over replications r and its 95% interval, 1.96 std / sqrt(n) with the
    population std (as ``evaluate.metrics.confidence_interval``)."""
    a, b = np.asarray(model, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ReportError(f"paired difference needs two equal, non-empty series; got {a.shape} and {b.shape}")
    d = a - b
    return {"mean": float(d.mean()), "ci95": float(1.96 * d.std() / np.sqrt(d.size)), "n": int(d.size)}


def verdict(diff: Mapping[str, float], higher_is_better: bool) -> str:
    """better | worse | within the interval, from a paired difference."""
    if abs(diff["mean"]) <= diff["ci95"]:
        return "within"
    return "better" if (diff["mean"] > 0) == higher_is_better else "worse"


def compare_models(
    metrics: Mapping[str, Mapping[str, Any]], baseline: str, where: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``metrics``: model -> its ``reports/metrics/<model>.json``. Returns the table rows and, for every model
    but the baseline and ``gt``, its paired differences from the baseline."""
    where = where or {}
    if baseline not in metrics:
        raise ReportError(f"the baseline {baseline!r} has no metrics (models: {', '.join(metrics)})")
    for name, report in metrics.items():
        if not isinstance(report.get("metrics"), Mapping):
            raise ReportError(f"{where.get(name, name)}: no 'metrics' object (is it a reports/metrics file?)")
    rows = {
        name: {k: report["metrics"][k] for k in (*METRICS, "judge", "invalid_rate") if k in report["metrics"]}
        for name, report in metrics.items()
    }
    base = metrics[baseline]
    diffs: dict[str, dict[str, Any]] = {}
    for name, report in metrics.items():
        if name in (baseline, "gt"):
            continue
        diffs[name] = {}
        for metric in PAIRED:
            model_reps = replications(report, metric, where.get(name, name))
            base_reps = replications(base, metric, where.get(baseline, baseline))
            if model_reps.shape != base_reps.shape:
                raise ReportError(
                    f"{where.get(name, name)}: {model_reps.size} replications of {metric} against "
                    f"{base_reps.size} in {where.get(baseline, baseline)}; evaluate both with the same evaluate.sizes"
                )
            d = paired_difference(model_reps, base_reps)
            diffs[name][metric] = {**d, "verdict": verdict(d, METRICS[metric][1])}
    return {"baseline": baseline, "metrics": rows, "vs_baseline": diffs}


def winrate_rows(winrates: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per model and temperature from ``reports/winrate/<model>.json``."""
    rows = []
    for name, study in winrates.items():
        for cell in study.get("cells", []):
            rows.append(
                {
                    "model": name,
                    "temperature": cell["temperature"],
                    "n": cell["n"],
                    "win": cell["win"]["rate"],
                    "tie": cell["tie"]["rate"],
                    "loss": cell["loss"]["rate"],
                    "win_excluding_ties": cell["win_excluding_ties"],
                }
            )
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"{value['mean']:.3f} ± {value['ci95']:.3f}"
    return f"{value:.3f}"


def _signed(diff: Mapping[str, Any]) -> str:
    mark = {"better": " ▲", "worse": " ▼", "within": ""}[diff["verdict"]]
    return f"{diff['mean']:+.3f} ± {diff['ci95']:.3f}{mark}"


def markdown(comparison: Mapping[str, Any], winrates: Sequence[Mapping[str, Any]]) -> str:
    baseline = comparison["baseline"]
    rows = comparison["metrics"]
    columns = [k for k in (*METRICS, "judge", "invalid_rate") if any(k in r for r in rows.values())]
    labels = {**{k: v[0] for k, v in METRICS.items()}, "judge": "judge", "invalid_rate": "invalid"}
    out = [
        "# Models compared",
        "",
        "Test split, mean ± 95% interval over the evaluation's replications (`reports/metrics/`); `gt` is the "
        "test motions themselves; judge = the synthetic judge's score of the samples; invalid = first samples "
        "that never closed their motion.",
        "",
        "| model | " + " | ".join(labels[c] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, row in rows.items():
        out.append(f"| {name} | " + " | ".join(_cell(row[c]) if c in row else "" for c in columns) + " |")
    if comparison["vs_baseline"]:
        out += [
            "",
            f"## Against `{baseline}`, replication by replication",
            "",
            f"Model minus `{baseline}` on the same captions, crops and batches, mean ± 95% interval of the paired "
            "differences; ▲ better or ▼ worse by more than the interval.",
            "",
            "| model | " + " | ".join(METRICS[m][0] for m in PAIRED) + " |",
            "|---|" + "---:|" * len(PAIRED),
        ]
        for name, diffs in comparison["vs_baseline"].items():
            out.append(f"| {name} | " + " | ".join(_signed(diffs[m]) for m in PAIRED) + " |")
    if winrates:
        out += [
            "",
            f"## Win rates against `{baseline}`",
            "",
            "Held-out preference prompts judged by the labelers (`reports/winrate/`); win excluding ties with its "
            "95% Wilson interval.",
            "",
            "| model | T | n | win | tie | loss | win excl. ties |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in winrates:
            w = r["win_excluding_ties"]
            decisive = (
                "no decisive pair" if w["rate"] is None else f"{w['rate']:.1%} [{w['ci95'][0]:.1%}, {w['ci95'][1]:.1%}]"
            )
            out.append(
                f"| {r['model']} | {r['temperature']:g} | {r['n']} | {r['win']:.1%} | {r['tie']:.1%} | "
                f"{r['loss']:.1%} | {decisive} |"
            )
    return "\n".join(out) + "\n"
