"""Stage ingest_labels: validate every raw judgment, resolve pairs judged more than once, split 90/10,
and write the preference table and its statistics. Raw label files are only read, never edited."""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import PREFS, REPORTS, StageContext

READS = ("ingest",)


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.prefs.ingest import ingest, write_outputs
    from motionpref.prefs.pairs import read_pairs

    cfg = params.ingest
    labels_dir = ctx.path(str(cfg.labels_dir))
    paths = sorted(labels_dir.rglob("*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"{labels_dir}: no label files (*.jsonl): run the label stage or the labeling app")
    result = ingest(
        paths,
        read_pairs(ctx.path(str(cfg.pairs))),
        cfg.rule,
        cfg.val_fraction,
        seed=params.stage_seed("ingest_labels"),
        margins=dict(cfg.margins),
        on_error=cfg.on_error,
        quarantine_path=ctx.path(PREFS, "quarantine.jsonl"),  # written even when empty, so DVC can track it
    )
    write_outputs(
        result,
        ctx.path(PREFS, "preferences.parquet"),
        ctx.path(REPORTS, "prefs_stats.json"),
        ctx.path(REPORTS, "prefs_stats.md"),
    )
    ctx.run.log_artifact(ctx.path(REPORTS, "prefs_stats.md"))
    return result.stats
