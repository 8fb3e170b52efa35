"""Cross-model comparison: the test metrics of every model side by side, each finetuned model's difference from
the baseline (the supervised policy) with its interval, its gain across seed replicates, and the win rates, as
one JSON and one markdown table.

Three kinds of interval, each for what it can support:

- a model's own metric: mean ± 1.96 σ / √n over the evaluation's replications (σ the population std), the
  convention of Guo et al. 2022 that every text-to-motion table uses, kept so the columns read as the field's;
- a paired difference from the baseline: every model's evaluation uses the same seed, so replication r of each
  model scores samples for the same captions, crops and R-precision batches, and the difference is taken
  replication by replication (the batch composition, the largest source of R-precision spread, cancels); its
  interval is Student's t with n - 1 degrees of freedom, as a small-sample mean needs. It covers the
  evaluation's noise for one trained model only;
- a seed-replicate gain: each finetuning algorithm trained with several seeds (``finetune@<algo>_s<k>``), each
  seed's mean paired difference one observation, mean ± t(s - 1) · sd / √s across the s seeds. This is the
  interval the headline claims rest on: training noise included; a gain is marked only when it excludes 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

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


def t_interval(values: Sequence[float]) -> dict[str, float]:
    """Mean and the half-width of its 95% Student t interval, t(0.975, n - 1) · sd / √n with the sample sd
    (ddof 1); ``p`` is the two-sided one-sample t-test of mean 0. Needs n >= 2."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ReportError(f"a t-interval needs at least two values, got {v.size}")
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, v.size - 1) * sd / np.sqrt(v.size))
    p = float(2 * stats.t.sf(abs(v.mean()) / (sd / np.sqrt(v.size)), v.size - 1)) if sd > 0 else float(v.mean() == 0)
    return {"mean": float(v.mean()), "ci95": half, "n": int(v.size), "p": p}


def paired_difference(model: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Mean of model_r - baseline_r over replications r with its 95% Student t interval (``t_interval``)."""
    a, b = np.asarray(model, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ReportError(f"paired difference needs two equal series of 2 or more; got {a.shape} and {b.shape}")
    return t_interval(a - b)


def verdict(diff: Mapping[str, float], higher_is_better: bool) -> str:
    """better | worse | within the interval, from a paired difference."""
    if abs(diff["mean"]) <= diff["ci95"]:
        return "within"
    return "better" if (diff["mean"] > 0) == higher_is_better else "worse"


def _paired(
    report: Mapping[str, Any], base: Mapping[str, Any], metric: str, where: str, base_where: str
) -> dict[str, Any]:
    model_reps = replications(report, metric, where)
    base_reps = replications(base, metric, base_where)
    if model_reps.shape != base_reps.shape:
        raise ReportError(
            f"{where}: {model_reps.size} replications of {metric} against {base_reps.size} in {base_where}; "
            "evaluate both with the same evaluate.sizes"
        )
    d = paired_difference(model_reps, base_reps)
    return {**d, "verdict": verdict(d, METRICS[metric][1])}


def _check(metrics: Mapping[str, Mapping[str, Any]], where: Mapping[str, str]) -> None:
    for name, report in metrics.items():
        if not isinstance(report.get("metrics"), Mapping):
            raise ReportError(f"{where.get(name, name)}: no 'metrics' object (is it a reports/metrics file?)")


def compare_models(
    metrics: Mapping[str, Mapping[str, Any]],
    baseline: str,
    where: Mapping[str, str] | None = None,
    replicates: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """``metrics``: model -> its ``reports/metrics/<model>.json`` (first-sample metrics, and the retried ones
    under ``retried`` where the file has them). ``replicates``: model -> the metrics files of its seed
    replicates, the model's own (seed 0) first. Returns the table rows (first samples, and retried), for every
    model but the baseline and ``gt`` its paired differences from the baseline, and for every replicated model
    its gain across seeds (``seed_gains``)."""
    where = where or {}
    if baseline not in metrics:
        raise ReportError(f"the baseline {baseline!r} has no metrics (models: {', '.join(metrics)})")
    _check(metrics, where)
    keys = (*METRICS, "judge", "invalid_rate")
    rows = {name: {k: r["metrics"][k] for k in keys if k in r["metrics"]} for name, r in metrics.items()}
    retried = {
        name: {k: r["retried"]["metrics"][k] for k in (*keys, "invalid_after_retries") if k in r["retried"]["metrics"]}
        for name, r in metrics.items()
        if isinstance(r.get("retried"), Mapping) and isinstance(r["retried"].get("metrics"), Mapping)
    }
    base = metrics[baseline]
    bw = where.get(baseline, baseline)
    diffs = {
        name: {m: _paired(report, base, m, where.get(name, name), bw) for m in PAIRED}
        for name, report in metrics.items()
        if name not in (baseline, "gt")
    }
    gains = seed_gains(base, replicates or {}, bw)
    out = {"baseline": baseline, "metrics": rows, "retried": retried, "vs_baseline": diffs, "seed_gains": gains}
    return {**out, "stability": stable_replications(base, replicates, gains)} if replicates else out


def seed_gains(
    base: Mapping[str, Any], replicates: Mapping[str, Sequence[Mapping[str, Any]]], base_where: str = "baseline"
) -> dict[str, dict[str, Any]]:
    """Each replicated model's gain over ``base`` in every paired metric: one mean paired difference per seed
    replicate, their t interval across the seeds and its verdict."""
    gains: dict[str, dict[str, Any]] = {}
    for name, reports in replicates.items():
        if len(reports) < 2:
            raise ReportError(f"{name}: a gain across seeds needs 2 or more replicates, got {len(reports)}")
        gains[name] = {}
        for m in PAIRED:
            per_seed = [_paired(r, base, m, f"{name} replicate {k}", base_where)["mean"] for k, r in enumerate(reports)]
            g = t_interval(per_seed)
            gains[name][m] = {**g, "per_seed": per_seed, "verdict": verdict(g, METRICS[m][1])}
    return gains


def stability_line(stability: Mapping[str, Any]) -> str:
    """One sentence on ``stable_replications``' answer, for a table of seed-replicate gains."""
    n, k = stability["replications"], stability["stable_from"]
    changed = {int(c): v for c, v in stability["changed"].items()}
    flips = ", ".join(f"{v} at {c}" for c, v in sorted(changed.items()) if v)
    return (
        f"Evaluation size: every verdict above (▲, ▼ or none) is the same when each evaluation keeps only its first "
        f"k of its {n} replications for every k from {k} up"
        + (f"; verdicts that change with fewer: {flips}." if flips else ".")
    )


def _first(report: Mapping[str, Any], k: int) -> dict[str, Any]:
    """``report`` as an evaluation of only its first ``k`` replications would have written it (the same seed
    draws the same captions, crops and batches for replication r whatever the count)."""
    return {**report, "replications": {m: list(v)[:k] for m, v in report["replications"].items()}}


def stable_replications(
    base: Mapping[str, Any], replicates: Mapping[str, Sequence[Mapping[str, Any]]], gains: Mapping[str, Any]
) -> dict[str, Any]:
    """How few of the evaluation's replications give the seed-replicate gains the same verdicts: every gain
    recomputed on the first k replications of each evaluation, k = 2 .. n - 1, against ``gains`` (``seed_gains``
    on all n). ``changed[k]`` counts the (model, metric) verdicts that differ from those on all n (none at
    k = n); ``stable_from`` is the smallest k from which none differs, at k and every larger count. A check of
    the evaluation's size for a table's conclusions, not of the training seeds: those stay as they are."""
    n = len(replications(base, PAIRED[0], "baseline"))
    if n < 2:
        raise ReportError(f"the baseline's evaluation has {n} replication; a stability check needs 2 or more")
    cuts = {
        k: seed_gains(_first(base, k), {m: [_first(r, k) for r in reps] for m, reps in replicates.items()})
        for k in range(2, n)
    }
    changed = {
        k: sum(cut[m][x]["verdict"] != gains[m][x]["verdict"] for m in gains for x in PAIRED) for k, cut in cuts.items()
    }
    changed[n] = 0
    stable_from = n
    while stable_from > 2 and changed[stable_from - 1] == 0:
        stable_from -= 1
    return {"replications": n, "stable_from": stable_from, "changed": changed}


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
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return f"{value['mean']:.3f} ± {value['ci95']:.3f}"
    return f"{value:.3f}"


def signed(diff: Mapping[str, Any]) -> str:
    mark = {"better": " ▲", "worse": " ▼", "rises": " ▲", "falls": " ▼", "within": ""}[diff["verdict"]]
    return f"{diff['mean']:+.3f} ± {diff['ci95']:.3f}{mark}"


_LABELS = {
    **{k: v[0] for k, v in METRICS.items()},
    "judge": "judge",
    "invalid_rate": "invalid",
    "invalid_after_retries": "still invalid",
}


def _metric_table(rows: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    columns = [k for k in keys if any(k in r for r in rows.values())]
    out = ["| model | " + " | ".join(_LABELS[c] for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, row in rows.items():
        out.append(f"| {name} | " + " | ".join(_cell(row[c]) if c in row else "" for c in columns) + " |")
    return out


def markdown(
    comparison: Mapping[str, Any],
    winrates: Sequence[Mapping[str, Any]],
    title: str = "Models compared",
    preference_time: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """``comparison`` (``compare_models``) and its win-rate rows as markdown under the heading ``title``;
    ``preference_time``: model -> its ``preference_seconds`` and ``preference_seconds_per_caption``."""
    baseline = comparison["baseline"]
    out = [
        f"# {title}",
        "",
        "Test split, **first samples** (an invalid sample is scored as the standing figure it stands for, so it "
        "counts against its model); mean ± 1.96 σ / √n over the evaluation's replications, the convention of Guo "
        "et al. 2022 (`reports/metrics/`). `gt` is the test motions themselves; judge = the synthetic judge's "
        "score of the samples; invalid = the share of first samples that never closed their motion.",
        "",
        *_metric_table(comparison["metrics"], (*METRICS, "judge", "invalid_rate")),
    ]
    seed_gains = comparison.get("seed_gains") or {}
    if seed_gains:
        n = {len(g[PAIRED[0]]["per_seed"]) for g in seed_gains.values()}
        out += [
            "",
            f"## Gains over `{baseline}` across seed replicates",
            "",
            f"Each algorithm finetuned with {'/'.join(map(str, sorted(n)))} seeds; each seed's gain is its mean "
            f"paired difference from `{baseline}`; mean ± 95% Student t interval across the seeds (training and "
            "evaluation noise). ▲ better or ▼ worse only when the interval excludes 0; p is the two-sided t-test.",
            "",
            "| model | " + " | ".join(METRICS[m][0] for m in PAIRED) + " | per-seed R@1 gains | p (R@1) |",
            "|---|" + "---:|" * len(PAIRED) + "---|---:|",
        ]
        for name, gains in seed_gains.items():
            r1 = gains["r_precision_top1"]
            out.append(
                f"| {name} | "
                + " | ".join(signed(gains[m]) for m in PAIRED)
                + f" | {', '.join(f'{g:+.3f}' for g in r1['per_seed'])} | {r1['p']:.3f} |"
            )
        out += ["", stability_line(comparison["stability"])]
    if comparison["vs_baseline"]:
        out += [
            "",
            f"## Against `{baseline}`, replication by replication (seed 0)",
            "",
            f"Model minus `{baseline}` on the same captions, crops and batches, mean ± 95% Student t interval of "
            "the paired differences over the replications: one trained model's evaluation noise only. ▲ better or ▼ "
            "worse by more than the interval.",
            "",
            "| model | " + " | ".join(METRICS[m][0] for m in PAIRED) + " |",
            "|---|" + "---:|" * len(PAIRED),
        ]
        for name, diffs in comparison["vs_baseline"].items():
            out.append(f"| {name} | " + " | ".join(signed(diffs[m]) for m in PAIRED) + " |")
    if comparison.get("retried"):
        out += [
            "",
            "## Secondary: with invalid samples resampled",
            "",
            "The same evaluation with each invalid first sample resampled up to `evaluate.sampling.retries` times "
            "(the valid first samples kept): what the model gives when failures are retried, not what it gives "
            "first. still invalid = samples invalid after every retry.",
            "",
            *_metric_table(comparison["retried"], (*METRICS, "judge", "invalid_after_retries")),
        ]
    if winrates:
        out += [
            "",
            f"## Win rates against `{baseline}`",
            "",
            "First samples for prompts of test programs (never in a preference pair), judged by the labelers "
            "(`reports/winrate/`); win excluding ties with its 95% Wilson interval.",
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
    if preference_time:
        out += [
            "",
            "## Preference generation time",
            "",
            "Seconds spent sampling and scoring the motions that make the preference pairs (the SoPo paper's "
            'Table 1 "Time"), in total and per caption, on this machine.',
            "",
            "| model | seconds | per caption |",
            "|---|---:|---:|",
        ]
        for name, t in preference_time.items():
            out.append(f"| {name} | {t['preference_seconds']:.1f} | {t['preference_seconds_per_caption']:.3f} |")
    return "\n".join(out) + "\n"
