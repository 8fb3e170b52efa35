"""Stage ingest_labels@<policy>: validate every raw judgment, resolve pairs judged more than once, keep each pair's
split (its prompt's program's, train or val, from pairs.parquet), and write the preference table and its
statistics. Raw label files are only read, never edited.

``sft``: the pairs and labels of ``ingest.pairs`` and ``ingest.labels_dir`` (the token policy's, or an import's)
into data/prefs/preferences.parquet; a diffusion base's (``mdm``): those of data/prefs/<policy>/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from motionpref.config import IngestConfig, Params
from motionpref.pipeline import StageContext, artifacts

ITEM = "policy"


def sources(ingest: IngestConfig, policy: str) -> tuple[str, str]:
    """The pairs table and labels folder of ``policy``'s pairs: ``ingest.pairs`` and ``ingest.labels_dir`` for
    ``sft``, a diffusion base's under data/prefs/<policy>/; the labeling app serves the same two."""
    if policy == "sft":
        return str(ingest.pairs), str(ingest.labels_dir)
    return artifacts.prefs_path(policy, artifacts.PAIRS), artifacts.prefs_path(policy, artifacts.LABELS_DIR)


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from motionpref.prefs.ingest import ingest, write_outputs
    from motionpref.prefs.pairs import read_pairs

    cfg = params.ingest
    policy = ctx.item
    assert policy is not None

    def at(path: str) -> Path:
        return ctx.path(artifacts.prefs_path(policy, path))

    pairs_path, labels_dir = (ctx.path(p) for p in sources(cfg, policy))
    paths = sorted(labels_dir.rglob("*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"{labels_dir}: no label files (*.jsonl): run the label stage or the labeling app")
    result = ingest(
        paths,
        read_pairs(pairs_path),
        cfg.rule,
        seed=params.stage_seed("ingest_labels"),
        margins=dict(cfg.margins),
        on_error=cfg.on_error,
        quarantine_path=at(artifacts.QUARANTINE),  # written even when empty, so DVC can track it
        labels_dir=labels_dir,  # refused if it holds the quarantine file, which would be read back every run
        pairs_source=str(pairs_path),
    )
    stats_json = ctx.path(artifacts.prefs_report("prefs_stats", policy))
    write_outputs(result, at(artifacts.PREFERENCES), stats_json, stats_json.with_suffix(".md"))
    ctx.run.log_artifact(stats_json.with_suffix(".md"))
    return result.stats


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
