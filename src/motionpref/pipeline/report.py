"""Stage report: every evaluated model side by side, each finetuned model against the model it started from
(paired, replication by replication) and the win rates, into reports/comparison.{json,md}: the token policies
against ``report.baseline``, then each of ``report.tables`` (the diffusion policies) against its own baseline,
with the preference-generation time of each finetuned model that generates its own pairs (``preference_seconds``
of reports/finetune/<model>.json, the SoPo paper's Table 1 "Time"). Seed 0 alone: the gains across seed
replicates are report_seeds' (replicates/dvc.yaml).
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params, ReportConfig
from motionpref.pipeline import StageContext, artifacts


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    return write_comparison(params.report, ctx, seeds=1, stem="comparison")


def write_comparison(cfg: ReportConfig, ctx: StageContext, seeds: int, stem: str) -> dict[str, Any]:
    """The comparison with each replicated model's first ``seeds`` seed replicates (1: seed 0 alone), into
    reports/<stem>.{json,md}; returns its headline differences as MLflow metrics."""
    from motionpref.io import write_json, write_text
    from motionpref.report.compare import compare_models, markdown, read_report, winrate_rows

    def table(baseline: str, models: list[str], replicated: list[str], winrate_models: list[str]) -> dict[str, Any]:
        paths = {m: ctx.path(artifacts.model_metrics(m)) for m in models}
        replicates = {
            m: [read_report(ctx.path(artifacts.model_metrics(artifacts.replicate(m, k)))) for k in range(seeds)]
            for m in replicated
            if seeds > 1
        }
        comparison = compare_models(
            {m: read_report(p) for m, p in paths.items()}, baseline, {m: str(p) for m, p in paths.items()}, replicates
        )
        winrates = winrate_rows({m: read_report(ctx.path(artifacts.winrate_report(m, "json"))) for m in winrate_models})
        return {**comparison, "winrates": winrates}

    main_table = table(cfg.baseline, cfg.models, cfg.replicated, cfg.winrate_models)
    tables = []
    for t in cfg.tables:
        extra = table(t.baseline, t.models, t.replicated, t.winrate_models)
        extra["title"] = t.title
        finetuned = {
            m: read_report(ctx.path(artifacts.finetune_report(m))) for m in t.models if m not in ("gt", t.baseline)
        }
        # a model finetuned on labelled pairs (mdm_dpo) generated none: sample_pairs@mdm drew them, people judge them
        extra["preference_time"] = {
            m: {k: report[k] for k in ("preference_seconds", "preference_seconds_per_caption")}
            for m, report in finetuned.items()
            if "preference_seconds" in report
        }
        tables.append(extra)
    write_json(ctx.path(artifacts.REPORTS, f"{stem}.json"), {**main_table, "tables": tables})
    md = ctx.path(artifacts.REPORTS, f"{stem}.md")
    text = markdown(main_table, main_table["winrates"])
    for extra in tables:
        text += "\n" + markdown(extra, extra["winrates"], extra["title"], extra["preference_time"])
    if seeds == 1:
        text += (
            "\nEach finetuned model's seed 0 alone. Its gains across seed replicates are in "
            "`reports/comparison_seeds.md` (`dvc repro replicates/dvc.yaml`).\n"
        )
    write_text(md, text)
    ctx.run.log_artifact(md)
    return {
        f"{name}/{metric}_{kind}_{comparison['baseline']}": diff["mean"]
        for comparison in (main_table, *tables)
        for kind, rows in (("vs", comparison["vs_baseline"]), ("seed_gain_over", comparison["seed_gains"]))
        for name, diffs in rows.items()
        for metric, diff in diffs.items()
    }


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
