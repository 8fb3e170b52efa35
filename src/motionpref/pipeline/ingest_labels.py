"""Stage ingest_labels: validate every raw judgment, resolve pairs judged more than once, keep each pair's split
(its prompt's program's, train or val, from pairs.parquet), and write the preference table and its statistics.
Raw label files are only read, never edited."""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.prefs.ingest import ingest, write_outputs
    from motionpref.prefs.pairs import read_pairs

    cfg = params.ingest
    labels_dir = ctx.path(str(cfg.labels_dir))
    paths = sorted(labels_dir.rglob("*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"{labels_dir}: no label files (*.jsonl): run the label stage or the labeling app")
    pairs_path = ctx.path(str(cfg.pairs))
    result = ingest(
        paths,
        read_pairs(pairs_path),
        cfg.rule,
        seed=params.stage_seed("ingest_labels"),
        margins=dict(cfg.margins),
        on_error=cfg.on_error,
        quarantine_path=ctx.path(artifacts.QUARANTINE),  # written even when empty, so DVC can track it
        labels_dir=labels_dir,  # refused if it holds the quarantine file, which would be read back every run
        pairs_source=str(pairs_path),
    )
    write_outputs(
        result,
        ctx.path(artifacts.PREFERENCES),
        ctx.path(artifacts.stage_report("prefs_stats")),
        ctx.path(artifacts.REPORTS, "prefs_stats.md"),
    )
    ctx.run.log_artifact(ctx.path(artifacts.REPORTS, "prefs_stats.md"))
    return result.stats


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
