"""The cross-model comparison: paired differences by hand, verdicts, errors that name the file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from motionpref.report.compare import (
    ReportError,
    compare_models,
    markdown,
    paired_difference,
    read_report,
    seed_gains,
    stability_line,
    stable_replications,
    verdict,
    winrate_rows,
)


def metrics_report(r1: list[float], fid: list[float]) -> dict:
    reps = {"r_precision_top1": r1, "r_precision_top3": [x + 0.2 for x in r1], "mm_dist": [3.0] * len(r1), "fid": fid}
    summary = {k: {"mean": sum(v) / len(v), "ci95": 0.01} for k, v in reps.items()}
    return {"metrics": summary, "replications": reps}


T_975_DF2 = 4.302652729749464  # Student t quantile, 97.5%, 2 degrees of freedom (tables)
T_975_DF9 = 2.262157162798205


def test_paired_difference_is_a_student_t_interval() -> None:
    d = paired_difference([0.5, 0.6, 0.7], [0.4, 0.6, 0.5])  # differences 0.1, 0.0, 0.2
    assert d["mean"] == pytest.approx(0.1)
    sd = math.sqrt((0.0**2 + 0.1**2 + 0.1**2) / 2)  # sample sd (n - 1)
    assert d["ci95"] == pytest.approx(T_975_DF2 * sd / math.sqrt(3))
    assert d["ci95"] > 1.96 * math.sqrt((0.0**2 + 0.1**2 + 0.1**2) / 3) / math.sqrt(3)  # wider than the old 1.96 σ
    assert d["n"] == 3
    # t = 0.1 / (0.1 / √3) = √3 on 2 degrees of freedom: p = 1 - t / √(t² + 2) = 1 - √3 / √5 (closed form for df 2)
    assert d["p"] == pytest.approx(1 - math.sqrt(3) / math.sqrt(5))


def test_a_gain_significant_under_the_old_interval_is_not_under_the_t_interval() -> None:
    # ten paired differences whose mean sits between the two half-widths: 1.96 σ/√n excludes 0, the t interval not
    diffs = [0.017, -0.003] * 5  # mean 0.7 σ: above 1.96 / √10 = 0.62 σ, below 2.262 · √(10/9) / √10 = 0.75 σ
    mean, n = sum(diffs) / 10, 10
    pop = math.sqrt(sum((x - mean) ** 2 for x in diffs) / n)
    sample = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1))
    assert mean > 1.96 * pop / math.sqrt(n)  # the old interval called this a gain
    d = paired_difference([0.5 + x for x in diffs], [0.5] * 10)
    assert d["ci95"] == pytest.approx(T_975_DF9 * sample / math.sqrt(n))
    assert verdict(d, True) == "within"


def test_paired_difference_rejects_unequal_or_single_series() -> None:
    with pytest.raises(ReportError, match="equal"):
        paired_difference([0.5, 0.6], [0.4])
    with pytest.raises(ReportError, match="2 or more"):
        paired_difference([0.5], [0.4])


def test_seed_gains_rest_on_the_seeds_and_mark_only_intervals_excluding_zero() -> None:
    base = [0.45, 0.50, 0.55]
    sft = metrics_report(base, [0.2] * 3)
    steady = [metrics_report([b + g for b in base], [0.2] * 3) for g in (0.02, 0.03, 0.025)]
    noisy = [metrics_report([b + g for b in base], [0.2] * 3) for g in (0.05, -0.04, 0.02)]
    comparison = compare_models(
        {"sft": sft, "dpo": steady[0], "sopo": noisy[0]}, "sft", replicates={"dpo": steady, "sopo": noisy}
    )
    gains = comparison["seed_gains"]
    dpo = gains["dpo"]["r_precision_top1"]
    assert dpo["per_seed"] == pytest.approx([0.02, 0.03, 0.025])
    assert dpo["mean"] == pytest.approx(0.025)
    assert dpo["ci95"] == pytest.approx(T_975_DF2 * 0.005 / math.sqrt(3))
    assert dpo["verdict"] == "better"
    assert gains["sopo"]["r_precision_top1"]["verdict"] == "within"  # seed 0 alone (+0.05) would look like a gain
    assert comparison["vs_baseline"]["sopo"]["r_precision_top1"]["verdict"] == "better"
    text = markdown(comparison, [])
    assert "## Gains over `sft` across seed replicates" in text
    assert "| dpo | +0.025 ± 0.012 ▲ |" in text
    assert "+0.050, -0.040, +0.020" in text
    assert "first k of its 3 replications for every k from 2 up." in text  # gains equal in every replication
    with pytest.raises(ReportError, match="2 or more replicates"):
        compare_models({"sft": sft, "dpo": steady[0]}, "sft", replicates={"dpo": steady[:1]})


def test_stable_replications_finds_the_fewest_that_keep_every_verdict() -> None:
    base = [0.50] * 6
    sft = metrics_report(base, [0.2] * 6)
    # each seed's R@1 gain: +0.03 in the first two replications, then -0.03 in the last four
    flips = [metrics_report([0.53 + s, 0.53 + s, 0.47, 0.47, 0.47, 0.47], [0.2] * 6) for s in (0.0, 0.002, 0.004)]
    table = stable_replications(sft, {"dpo": flips}, seed_gains(sft, {"dpo": flips}))
    assert table["replications"] == 6
    # per seed on k replications: (0.06 + 2 s - 0.03 (k - 2)) / k; on all 6, -0.01 + s / 3 (worse)
    assert table["changed"][2] == 2  # +0.03 + s: R@1 and R@3 better instead of worse
    assert table["changed"][3] == 2  # +0.01 + 2 s / 3: still better
    assert table["changed"][4] == 2  # s / 2: 0.000, 0.001, 0.002, within
    assert table["changed"][5] == 0 and table["changed"][6] == 0  # -0.006 + 0.4 s: worse
    assert table["stable_from"] == 5
    assert stability_line(table).endswith("from 5 up; verdicts that change with fewer: 2 at 2, 2 at 3, 2 at 4.")
    steady = [metrics_report([b + g for b in base], [0.2] * 6) for g in (0.02, 0.03, 0.025)]
    assert stable_replications(sft, {"dpo": steady}, seed_gains(sft, {"dpo": steady}))["stable_from"] == 2
    assert compare_models({"sft": sft, "dpo": flips[0]}, "sft", replicates={"dpo": flips})["stability"] == table
    one = [metrics_report([0.5], [0.2])] * 2
    with pytest.raises(ReportError, match="2 or more"):
        stable_replications(metrics_report([0.5], [0.2]), {"dpo": one}, {})


def test_retried_metrics_are_a_secondary_table() -> None:
    sft = metrics_report([0.5, 0.4], [0.1, 0.1])
    sft["retried"] = {"metrics": {"r_precision_top1": {"mean": 0.47, "ci95": 0.01}, "invalid_after_retries": 3}}
    comparison = compare_models({"sft": sft}, "sft")
    assert comparison["retried"]["sft"]["invalid_after_retries"] == 3
    text = markdown(comparison, [])
    first, second = text.index("**first samples**"), text.index("## Secondary: with invalid samples resampled")
    assert first < second
    assert "| sft | 0.470 ± 0.010 | 3 |" in text


@pytest.mark.parametrize(
    ("mean", "higher", "expected"),
    [(0.05, True, "better"), (-0.05, True, "worse"), (-0.05, False, "better"), (0.01, True, "within")],
)
def test_verdict(mean: float, higher: bool, expected: str) -> None:
    assert verdict({"mean": mean, "ci95": 0.02}, higher) == expected


def test_pairing_cancels_what_the_models_share() -> None:
    # the batches move both models alike: unpaired intervals overlap, the paired one does not
    base = [0.45, 0.50, 0.55, 0.48, 0.52]
    model = [b + 0.01 for b in base]
    comparison = compare_models(
        {
            "gt": metrics_report([0.7] * 5, [0.0] * 5),
            "sft": metrics_report(base, [0.2] * 5),
            "dpo": metrics_report(model, [0.3, 0.1, 0.3, 0.1, 0.2]),
        },
        "sft",
    )
    assert set(comparison["vs_baseline"]) == {"dpo"}  # neither the baseline nor gt
    r1 = comparison["vs_baseline"]["dpo"]["r_precision_top1"]
    assert r1["mean"] == pytest.approx(0.01) and r1["ci95"] == pytest.approx(0.0, abs=1e-12)
    assert r1["verdict"] == "better"
    assert comparison["vs_baseline"]["dpo"]["fid"]["verdict"] == "within"
    text = markdown(comparison, [])
    assert "| dpo | +0.010 ± 0.000 ▲ |" in text
    assert "| gt | 0.700 ± 0.010 |" in text


def test_missing_baseline_and_replications_are_named() -> None:
    with pytest.raises(ReportError, match="baseline 'sft'"):
        compare_models({"dpo": metrics_report([0.5, 0.6], [0.1, 0.1])}, "sft")
    broken = {"metrics": {}, "replications": {}}
    with pytest.raises(ReportError, match=r"reports/metrics/dpo.json: no replications.r_precision_top1"):
        compare_models({"sft": metrics_report([0.5], [0.1]), "dpo": broken}, "sft", {"dpo": "reports/metrics/dpo.json"})


def test_models_evaluated_differently_are_not_paired() -> None:
    with pytest.raises(ReportError, match=r"dpo.json: 3 replications of r_precision_top1 against 2 in sft.json"):
        compare_models(
            {"sft": metrics_report([0.5, 0.4], [0.1, 0.1]), "dpo": metrics_report([0.5, 0.4, 0.6], [0.1] * 3)},
            "sft",
            {"sft": "sft.json", "dpo": "dpo.json"},
        )
    with pytest.raises(ReportError, match=r"winrate/dpo.json: no 'metrics' object"):
        compare_models({"sft": metrics_report([0.5], [0.1]), "dpo": {"cells": []}}, "sft", {"dpo": "winrate/dpo.json"})


def test_read_report_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"nothing.json: missing"):
        read_report(tmp_path / "nothing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match=r"bad.json: not valid JSON"):
        read_report(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ReportError, match=r"bad.json: expected a JSON object"):
        read_report(bad)


def test_winrate_rows_and_table() -> None:
    cell = {
        "temperature": 1.2,
        "n": 10,
        "win": {"rate": 0.5},
        "tie": {"rate": 0.3},
        "loss": {"rate": 0.2},
        "win_excluding_ties": {"rate": 5 / 7, "ci95": [0.36, 0.92]},
    }
    empty = {
        **cell,
        "temperature": 2.0,
        "win": {"rate": 0.0},
        "tie": {"rate": 1.0},
        "loss": {"rate": 0.0},
        "win_excluding_ties": {"rate": None, "ci95": None},
    }
    rows = winrate_rows({"dpo": json.loads(json.dumps({"cells": [cell, empty]}))})
    assert [r["temperature"] for r in rows] == [1.2, 2.0]
    comparison = compare_models({"sft": metrics_report([0.5], [0.1])}, "sft")
    text = markdown(comparison, rows)
    assert "| dpo | 1.2 | 10 | 50.0% | 30.0% | 20.0% | 71.4% [36.0%, 92.0%] |" in text
    assert "| dpo | 2 | 10 | 0.0% | 100.0% | 0.0% | no decisive pair |" in text


def test_report_config_needs_an_evaluated_baseline() -> None:
    from motionpref.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match="report"):
        parse_params({"report": {"baseline": "dpo", "models": ["gt", "sft"]}}, "params.yaml")
    with pytest.raises(ConfigError, match=r"replicated \['rlhf'\]"):
        parse_params({"report": {"models": ["gt", "sft", "dpo"], "replicated": ["dpo", "rlhf"]}}, "params.yaml")
