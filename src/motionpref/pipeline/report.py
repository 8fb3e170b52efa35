"""Stage report: every evaluated model side by side, each finetuned model against the supervised one
(paired, replication by replication, and across its seed replicates) and the win rates, into
reports/comparison.{json,md}."""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.io import write_json, write_text
    from motionpref.report.compare import compare_models, markdown, read_report, winrate_rows

    cfg = params.report
    paths = {m: ctx.path(artifacts.model_metrics(m)) for m in cfg.models}
    replicates = {
        m: [read_report(ctx.path(artifacts.model_metrics(artifacts.replicate(m, k)))) for k in range(cfg.seeds)]
        for m in cfg.replicated
        if cfg.seeds > 1
    }
    comparison = compare_models(
        {m: read_report(p) for m, p in paths.items()}, cfg.baseline, {m: str(p) for m, p in paths.items()}, replicates
    )
    winrates = winrate_rows({m: read_report(ctx.path(artifacts.winrate_report(m, "json"))) for m in cfg.winrate_models})
    write_json(ctx.path(artifacts.REPORTS, "comparison.json"), {**comparison, "winrates": winrates})
    md = ctx.path(artifacts.REPORTS, "comparison.md")
    write_text(md, markdown(comparison, winrates))
    ctx.run.log_artifact(md)
    return {
        f"{name}/{metric}_{kind}_{cfg.baseline}": diff["mean"]
        for kind, table in (("vs", comparison["vs_baseline"]), ("seed_gain_over", comparison["seed_gains"]))
        for name, diffs in table.items()
        for metric, diff in diffs.items()
    }


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
