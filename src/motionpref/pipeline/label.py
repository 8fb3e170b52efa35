"""Stage label@<policy>: judgments from labelers that are not people of the pairs sampled from ``policy``
(``sample_pairs@<policy>``), into data/prefs/labels/simulated/ (``sft``) or data/prefs/<policy>/labels/simulated/.

``labels.labeler: simulated`` (the embedded default) asks N labelers driven by the synthetic judge;
``ai`` asks the retrieval scorer (AI feedback, works on real data); ``labels.labeler_for`` overrides it per
policy (the default labels MDM's pairs with AI feedback: the judge fails every CPU MDM sample). Humans label in
``motionpref label-app``, which appends to ``<labels>/<labeler>.jsonl`` beside this folder; ingestion reads both.
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext, artifacts

ITEM = "policy"


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    from collections import Counter
    from functools import partial

    from motionpref.io import atomic_dir, write_text
    from motionpref.models.retrieval import RetrievalModel
    from motionpref.prefs.judges import make_judge
    from motionpref.prefs.pairs import read_pairs
    from motionpref.prefs.simulate import judgments_jsonl, label_pairs, pair_prompts, perceive_pairs

    policy = ctx.item
    assert policy is not None
    pairs_path = ctx.path(artifacts.prefs_path(policy, artifacts.PAIRS))
    pairs = read_pairs(pairs_path)
    scorer = partial(RetrievalModel.load, ctx.path(artifacts.RETRIEVAL))
    judge = make_judge(
        params.labels.for_policy(policy),
        pair_prompts(pairs),
        ctx.dataset(params.data).skeleton,
        scorer,
        str(pairs_path),
    )
    files = label_pairs(pairs, perceive_pairs(pairs, ctx.root, judge), judge, params.stage_seed("label"))
    with atomic_dir(ctx.path(artifacts.prefs_path(policy, artifacts.SIMULATED_LABELS))) as tmp:
        for labeler, judgments in files.items():
            write_text(tmp / f"{labeler}.jsonl", judgments_jsonl(judgments))
    counts = Counter(j.degree or "skip" for judgments in files.values() for j in judgments)
    return {"judgments": sum(counts.values()), "labelers": len(files), **counts}


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
