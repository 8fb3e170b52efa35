"""Stage label: judgments from labelers that are not people, into data/prefs/labels/simulated/.

``labels.labeler: simulated`` (the embedded default) asks N labelers driven by the synthetic judge;
``ai`` asks the retrieval scorer (AI feedback, works on real data). Humans label in ``motionpref label-app``,
which appends to ``data/prefs/labels/<labeler>.jsonl`` beside this folder; ingestion reads both.
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import MODELS, PREFS, StageContext

READS = ("data", "labels")


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from collections import Counter

    from motionpref.io import atomic_dir, write_text
    from motionpref.prefs.pairs import read_pairs
    from motionpref.prefs.simulate import ai_labels, judgments_jsonl, score_pairs, simulate_labels

    cfg = params.labels
    pairs = read_pairs(ctx.path(PREFS, "pairs.parquet"))
    if cfg.labeler == "simulated":
        scores = score_pairs(pairs, ctx.root, ctx.dataset(params.data).skeleton)
        prompts = dict(zip(pairs["pair_id"], pairs["prompt"], strict=True))
        files = simulate_labels(scores, prompts, cfg.simulated, params.stage_seed("label"))
    else:
        from motionpref.models.retrieval import RetrievalModel

        scorer = RetrievalModel.load(ctx.path(MODELS, "retrieval"))
        files = {"ai-tmr": ai_labels(pairs, ctx.root, scorer, cfg.ai)}
    with atomic_dir(ctx.path(PREFS, "labels", "simulated")) as tmp:
        for labeler, judgments in files.items():
            write_text(tmp / f"{labeler}.jsonl", judgments_jsonl(judgments))
    counts = Counter(j.degree or "skip" for judgments in files.values() for j in judgments)
    return {"judgments": sum(counts.values()), "labelers": len(files), **counts}
