"""Labelers that are not people: simulated ones driven by the synthetic judge, and AI feedback.

Simulated labelers perceive each motion's quality, ``perceived_quality(judge score)``, through their own noise,
pick the better one, take the degree from the perceived gap and skip when both motions fail, as the paper's
labelers were told to. The AI labeler ranks with the retrieval scorer instead (MoDiPO's AI feedback); it needs
no programs, so it works on real data too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from motionpref.config import AIFeedbackConfig, SimulatedLabelersConfig
from motionpref.motion.features import recover_joints
from motionpref.motion.skeleton import HUMANML3D, Skeleton
from motionpref.prefs.labels import Choice, Degree, Judgment
from motionpref.progress import track
from motionpref.synth.judge import judge, realism
from motionpref.synth.programs import Program

JUDGE_FLOOR = 1e-4  # the judge's own floor for one failed criterion


def perceived_quality(score: np.ndarray | float) -> np.ndarray | float:
    """The judge's score on a log scale, 1 + log10(score) / 4, in [0, 1].

    The judge multiplies its criteria (a soft AND), so a motion that gets the walk right but misses the count
    scores orders of magnitude below a perfect one, yet far above one that does nothing asked. A person
    comparing the two sees that difference: the log scale makes "how many things went wrong" the quality.
    """
    return 1.0 + np.log10(np.maximum(score, JUDGE_FLOOR)) / 4.0


# Simulated judgments get fixed timestamps (one second apart from this epoch) so reruns are byte-identical.
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def score_pairs(pairs: pd.DataFrame, root: Path, skeleton: Skeleton = HUMANML3D) -> pd.DataFrame:
    """The judge's score and the realism of both motions of every pair (what simulated labelers perceive)."""
    if pairs["program"].isna().any():
        missing = pairs.loc[pairs["program"].isna(), "pair_id"].iloc[0]
        raise ValueError(
            f"pair {missing!r} has no program: simulated labelers need synthetic prompts "
            "(use labels.labeler: ai, or label in the app)"
        )
    rows = []
    for row in track(pairs.itertuples(), "judge pairs", total=len(pairs)):
        program = Program.from_json(row.program)
        scores = {"pair_id": row.pair_id}
        for side in ("a", "b"):
            joints = recover_joints(np.load(root / getattr(row, f"features_{side}"), allow_pickle=False), skeleton)
            scores[f"judge_{side}"] = judge(program, joints)
            scores[f"realism_{side}"] = realism(joints)
        rows.append(scores)
    return pd.DataFrame(rows, columns=["pair_id", "judge_a", "judge_b", "realism_a", "realism_b"])


def degree_of(gap: float, gaps: Mapping[str, float]) -> Degree:
    """The strongest degree whose threshold the gap reaches; below every threshold, negligible."""
    for name in ("much_better", "better", "slightly_better"):
        if gap >= gaps[name]:
            return name  # type: ignore[return-value]
    return "negligible"


def decide(score_a: float, score_b: float, fail_a: bool, fail_b: bool, gaps: Mapping[str, float]):  # noqa: ANN201
    """(choice, degree) from two perceived scores: skip when both motions fail, else the higher one wins."""
    if fail_a and fail_b:
        return "skip", None
    choice: Choice = "a" if score_a >= score_b else "b"
    return choice, degree_of(abs(score_a - score_b), gaps)


def labeler_judgment(
    scores: tuple[float, float],
    realism: tuple[float, float],
    config: SimulatedLabelersConfig,
    rng: np.random.Generator,
    failed: tuple[bool, bool] = (False, False),
) -> tuple[Choice, Degree | None]:
    """One simulated labeler's (choice, degree) for motions a and b from their judge scores and realism: each
    perceived quality is off by N(0, noise); a motion perceived below ``fail_below``, less real than
    ``realism_min`` or already ``failed`` (no motion at all) fails the prompt."""
    noise = rng.normal(0.0, config.noise, size=2)
    perceived = [perceived_quality(score) + n for score, n in zip(scores, noise, strict=True)]
    fails = [
        bad or q < config.fail_below or r < config.realism_min
        for bad, q, r in zip(failed, perceived, realism, strict=True)
    ]
    return decide(perceived[0], perceived[1], fails[0], fails[1], config.gaps)


def _assignments(pair_ids: Sequence[str], n_labelers: int, shared_fraction: float, seed: int) -> list[list[int]]:
    """Which labelers judge each pair: one by a seeded hash, plus a second for the shared fraction."""
    out = []
    for pid in pair_ids:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{pid}".encode()).digest()[:8], "little")
        first = h % n_labelers
        shared = n_labelers > 1 and (h >> 32) / 2**32 < shared_fraction
        out.append([first, (first + 1 + (h >> 16) % (n_labelers - 1)) % n_labelers] if shared else [first])
    return out


def simulate_labels(
    scores: pd.DataFrame, prompts: Mapping[str, str], config: SimulatedLabelersConfig, seed: int
) -> dict[str, list[Judgment]]:
    """Judgments per simulated labeler (``sim-<k>``), deterministic for a seed."""
    per_labeler: dict[str, list[Judgment]] = {f"sim-{k}": [] for k in range(config.n_labelers)}
    pair_ids = list(scores["pair_id"])
    assignments = _assignments(pair_ids, config.n_labelers, config.shared_fraction, seed)
    rngs = [np.random.default_rng([seed, k]) for k in range(config.n_labelers)]
    for row, labelers in zip(scores.itertuples(), assignments, strict=True):
        for k in labelers:
            choice, degree = labeler_judgment(
                (row.judge_a, row.judge_b), (row.realism_a, row.realism_b), config, rngs[k]
            )
            name = f"sim-{k}"
            per_labeler[name].append(
                Judgment(
                    pair_id=row.pair_id,
                    prompt=prompts[row.pair_id],
                    choice=choice,
                    degree=degree,
                    labeler=name,
                    source="simulated",
                    created_at=(EPOCH + timedelta(seconds=len(per_labeler[name]))).strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
            )
    return per_labeler


def ai_labels(
    pairs: pd.DataFrame, root: Path, scorer, config: AIFeedbackConfig, labeler: str = "ai-tmr"
) -> list[Judgment]:  # noqa: ANN001 (scorer: models.retrieval.RetrievalModel)
    """One judgment per pair from the retrieval scorer's text-motion scores (``source: ai``)."""
    out = []
    for i, row in enumerate(track(pairs.itertuples(), "AI feedback", total=len(pairs))):
        motions = [
            np.load(root / row.features_a, allow_pickle=False),
            np.load(root / row.features_b, allow_pickle=False),
        ]
        score_a, score_b = scorer.score([row.prompt, row.prompt], motions)
        fail = config.fail_below
        choice, degree = decide(float(score_a), float(score_b), score_a < fail, score_b < fail, config.gaps)
        out.append(
            Judgment(
                pair_id=row.pair_id,
                prompt=row.prompt,
                choice=choice,
                degree=degree,
                labeler=labeler,
                source="ai",
                created_at=(EPOCH + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        )
    return out


def judgments_jsonl(judgments: Sequence[Judgment]) -> str:
    return b"".join(j.to_line() for j in judgments).decode("utf-8")
