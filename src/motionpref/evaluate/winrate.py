"""Win rates of finetuned models against the supervised one, as the human study of the MotionGPT preference
paper (its Figure 3): held-out prompts, one motion per prompt from each model with the same seed, several
temperatures, and a labeler judging every pair as win, tie or loss for the finetuned model.

Held out means the test split of prompts.parquet: whole programs that no preference pair was sampled for
(:mod:`motionpref.prefs.prompts` splits by program before any sampling), so the pool is fixed before any label
exists and no studied prompt rewords a training one. Each motion is a model's first sample (``winrate.sampling``
does not retry by default): an invalid one is that model's failure, never a resampled second chance.

The judge is the label stage's (:mod:`motionpref.prefs.judges`): in the embedded world the simulated labelers
(the synthetic judge seen through each labeler's noise); on real data the retrieval scorer (AI feedback).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd

from motionpref.evaluate.metrics import confidence_interval
from motionpref.io import text_writer, write_all
from motionpref.prefs.judges import PairJudge, Perception
from motionpref.prefs.labels import Choice, Degree
from motionpref.progress import track

if TYPE_CHECKING:  # torch and transformers come with the generator; the report helpers do not need them
    from motionpref.models.generator import Generation

Outcome = Literal["win", "tie", "loss"]
# why a pair ended as it did: the labeler saw the same motion twice, skipped (both failed), or saw no real gap
Verdict = Literal["win", "loss", "identical", "both_failed", "negligible"]
OUTCOMES: tuple[Outcome, ...] = ("win", "tie", "loss")
TIE_REASONS: tuple[Verdict, ...] = ("identical", "both_failed", "negligible")
Z95 = 1.959963984540054  # standard normal quantile of 0.975


# ---- statistics -------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927), 95% for the default ``z``.

    With p = k / n:  centre = (p + z^2 / 2n) / (1 + z^2 / n),
    half width = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2).
    Unlike the normal approximation p +- z sqrt(p (1 - p) / n), it stays inside [0, 1] and keeps a width at
    p = 0 or 1, which win rates of a few hundred pairs reach (every pair a tie, say).
    """
    if n <= 0:
        raise ValueError(f"a proportion needs at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    shrink = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: int, n: int) -> dict[str, Any]:
    """A count with its rate and 95% Wilson interval; rate and interval are None when there were no trials."""
    if n == 0:
        return {"count": successes, "n": 0, "rate": None, "ci95": None}
    return {"count": successes, "n": n, "rate": successes / n, "ci95": list(wilson_interval(successes, n))}


# ---- prompts ----------------------------------------------------------------------------------------------


def held_out_prompts(prompts: pd.DataFrame, n: int, seed: int, where: str = "prompts") -> pd.DataFrame:
    """A seeded sample of ``n`` prompts of the test split of ``prompts`` (the table of ``prompts.read_prompts``,
    from ``where``), all of them when fewer are there, in the table's order. Labels play no part: the pool is
    the same before and after any judgment."""
    held = prompts.loc[prompts["split"] == "test"]
    if held.empty:
        raise ValueError(
            f"{where}: none of the {len(prompts)} prompts is in the test split, which the win rates study; "
            "raise prompts.split.test or generate prompts for more programs"
        )
    picked = np.sort(np.random.default_rng(seed).permutation(len(held))[:n])
    return held.iloc[picked].reset_index(drop=True)


def prompt_seeds(seed: int, prompt_ids: Sequence[str]) -> list[int]:
    """One sampling seed per prompt, stable whatever other prompts are studied; both models use it."""
    return [int.from_bytes(hashlib.sha256(f"{seed}:{pid}".encode()).digest()[:4], "little") >> 1 for pid in prompt_ids]


# ---- verdicts ---------------------------------------------------------------------------------------------


def verdict(choice: Choice, degree: Degree | None, identical: bool) -> Verdict:
    """The finetuned model's verdict on a pair in which it is side ``b`` and the supervised model side ``a``.

    The same motion twice (both models sampled the same tokens) is a tie whatever the labeler's noise says, as
    is a skipped pair (both failed) and a negligible difference; otherwise the chosen side wins."""
    if identical:
        return "identical"
    if choice == "skip":
        return "both_failed"
    if degree == "negligible":
        return "negligible"
    return "win" if choice == "b" else "loss"


def outcome_of(v: Verdict) -> Outcome:
    return v if v in ("win", "loss") else "tie"  # type: ignore[return-value]


# ---- the study --------------------------------------------------------------------------------------------


class MotionSampler(Protocol):
    def generate(
        self, captions: Sequence[str], seeds: Sequence[int], temperature: float | None = None
    ) -> Generation: ...


def _cell_seed(seed: int, model: str, temperature: float) -> int:
    """The labelers' noise for one (model, temperature), independent of which other cells are studied."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{model}:{temperature!r}".encode()).digest()[:8], "little")


def _mean_ci(values: Sequence[float]) -> dict[str, float]:
    mean, ci95 = confidence_interval(values)
    return {"mean": mean, "ci95": ci95}


def summarise(
    verdicts: Sequence[Verdict],
    sft: Sequence[Perception],
    finetuned: Sequence[Perception],
    retried: Mapping[str, int],
) -> dict[str, Any]:
    """Counts, rates and 95% Wilson intervals of one (model, temperature) cell, and each side's mean score."""
    n = len(verdicts)
    counts = Counter(outcome_of(v) for v in verdicts)
    reasons = Counter(verdicts)
    out: dict[str, Any] = {"n": n, **{o: proportion(counts[o], n) for o in OUTCOMES}}
    out["win_excluding_ties"] = proportion(counts["win"], counts["win"] + counts["loss"])
    out["ties"] = {r: reasons[r] for r in TIE_REASONS}
    out["score"] = {
        "sft": _mean_ci([p.score for p in sft]),
        "finetuned": _mean_ci([p.score for p in finetuned]),
    }
    out["invalid"] = {"sft": sum(not p.valid for p in sft), "finetuned": sum(not p.valid for p in finetuned)}
    out["retried"] = dict(retried)
    return out


def compare(
    sft: Generation,
    finetuned: Generation,
    sft_seen: Sequence[Perception],
    finetuned_seen: Sequence[Perception],
    judge: PairJudge,
    rng: np.random.Generator,
) -> list[Verdict]:
    """The verdict on every (supervised, finetuned) pair, the supervised motion as side ``a``."""
    out = []
    for i in range(len(sft_seen)):
        # every pair draws its noise, so a pair's verdict does not depend on which others were identical
        choice, degree = judge.judgment(sft_seen[i], finetuned_seen[i], rng)
        a, b = sft.features[i], finetuned.features[i]
        if sft.codes[i] or finetuned.codes[i]:
            # token motions: the codes are the motion (decoded in batches of other sizes, equal codes may differ
            # in the features' last bits)
            identical = sft.codes[i] == finetuned.codes[i] and (a is None) == (b is None)
        else:
            # a diffusion sample has no codes, only its features
            identical = (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
        out.append(verdict(choice, degree, identical))
    return out


def winrate_study(
    sft: MotionSampler,
    finetuned: Mapping[str, MotionSampler],
    prompts: pd.DataFrame,
    temperatures: Sequence[float],
    judge: PairJudge,
    seed: int,
) -> dict[str, Any]:
    """Every finetuned model against the supervised one at every temperature, on ``prompts`` (prompt_id, text).

    Each prompt has one seed, used by every model at every temperature, and the supervised samples of a
    temperature are drawn and judged once for all the finetuned models. Each motion depends on its prompt and
    seed alone, so samplers that share the prompts across processes (``distributed.sharded_generator``) give
    every process this study."""
    if not finetuned:
        raise ValueError("no finetuned model to compare with the supervised one")
    texts = list(prompts["text"])
    seeds = prompt_seeds(seed, list(prompts["prompt_id"]))
    cells = []
    # the supervised model first at each temperature: its samples are shared by every comparison
    steps = track([(t, name) for t in temperatures for name in [None, *finetuned]], description="win rates")
    base: tuple[Generation, list[Perception]] | None = None
    for t, name in steps:
        sampler = sft if name is None else finetuned[name]
        gen = sampler.generate(texts, seeds, temperature=t)
        seen = judge.perceive(gen.features)
        if name is None:
            base = (gen, seen)
            continue
        assert base is not None
        verdicts = compare(base[0], gen, base[1], seen, judge, np.random.default_rng(_cell_seed(seed, name, t)))
        retried = {"sft": base[0].n_invalid_first, "finetuned": gen.n_invalid_first}
        cells.append({"model": name, "temperature": t, **summarise(verdicts, base[1], seen, retried)})
    return {
        "judge": judge.name,
        "seed": seed,
        "prompts": len(prompts),
        "models": list(finetuned),
        "temperatures": list(temperatures),
        "cells": cells,
    }


# ---- reports ----------------------------------------------------------------------------------------------


def temperature_label(t: float) -> str:
    text = f"{t:g}"
    return text if "." in text or "e" in text else f"{text}.0"


def flat_metrics(study: Mapping[str, Any]) -> dict[str, float]:
    """``<model>/t<temperature>/<name>`` for MLflow: the rates, the scores of both sides and invalid samples."""
    out: dict[str, float] = {}
    for cell in study["cells"]:
        key = f"{cell['model']}/t{temperature_label(cell['temperature'])}"
        for o in OUTCOMES:
            out[f"{key}/{o}"] = cell[o]["rate"]
        if cell["win_excluding_ties"]["rate"] is not None:
            out[f"{key}/win_excl_ties"] = cell["win_excluding_ties"]["rate"]
        out[f"{key}/score_sft"] = cell["score"]["sft"]["mean"]
        out[f"{key}/score_finetuned"] = cell["score"]["finetuned"]["mean"]
        out[f"{key}/invalid_finetuned"] = float(cell["invalid"]["finetuned"])
    return out


def _pct(p: Mapping[str, Any]) -> str:
    if p["rate"] is None:
        return "n/a"
    lo, hi = p["ci95"]
    return f"{100 * p['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def markdown(study: Mapping[str, Any]) -> str:
    """The study as a markdown table: one row per (model, temperature)."""
    who = {"simulated": "the simulated labelers (synthetic judge)", "ai": "the retrieval scorer (AI feedback)"}
    base = study.get("baseline", "sft")
    lines = [
        f"# Win rates against {'the supervised model' if base == 'sft' else f'the pretrained {base}'}",
        "",
        f"{study['prompts']} held-out prompts (the test split: programs no preference pair was sampled for), one "
        f"motion per prompt from each model with the same seed, judged by {who.get(study['judge'], study['judge'])}. "
        "Rates with 95% Wilson intervals; a tie is the same motion twice, a skipped pair (both failed) or a "
        "negligible difference. Score: the judge's mean score of each side's motions +- 95% interval (an invalid "
        "sample scores 0).",
        "",
        f"| model | T | n | win | tie | loss | win excl. ties | score {base} | score model | invalid {base} / model |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in study["cells"]:
        s, f = c["score"]["sft"], c["score"]["finetuned"]
        lines.append(
            f"| {c['model']} | {temperature_label(c['temperature'])} | {c['n']} | {_pct(c['win'])} | "
            f"{_pct(c['tie'])} | {_pct(c['loss'])} | {_pct(c['win_excluding_ties'])} | "
            f"{s['mean']:.3f} +- {s['ci95']:.3f} | {f['mean']:.3f} +- {f['ci95']:.3f} | "
            f"{c['invalid']['sft']} / {c['invalid']['finetuned']} |"
        )
    return "\n".join(lines) + "\n"


COLOURS = {"win": "#3a923a", "tie": "#b8b8b8", "loss": "#c44e52"}


def plot_png(study: Mapping[str, Any]) -> bytes:
    """Grouped stacked bars as the paper's Figure 3: a group per temperature, a bar per model, its win, tie
    and loss shares stacked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models, temperatures = study["models"], study["temperatures"]
    cell = {(c["model"], c["temperature"]): c for c in study["cells"]}
    width = 0.8 / len(models)
    fig = Figure(figsize=(max(4.0, 1.3 * len(temperatures) * len(models) ** 0.5 + 1.5), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for m, model in enumerate(models):
        xs = np.arange(len(temperatures)) + (m - (len(models) - 1) / 2) * width
        bottom = np.zeros(len(temperatures))
        for o in OUTCOMES:
            share = np.array([100 * cell[model, t][o]["rate"] for t in temperatures])
            ax.bar(xs, share, width * 0.92, bottom=bottom, color=COLOURS[o], label=o if m == 0 else None)
            for x, b, s in zip(xs, bottom, share, strict=True):
                if s >= 6:
                    ax.text(x, b + s / 2, f"{s:.0f}", ha="center", va="center", fontsize=7)
            bottom += share
        if len(models) > 1:
            for x in xs:
                ax.text(x, 101, model, ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(np.arange(len(temperatures)), [f"T = {temperature_label(t)}" for t in temperatures])
    ax.set_ylim(0, 100 if len(models) == 1 else 118)
    ax.set_ylabel("% of prompts")
    base = study.get("baseline", "sft")
    title = f"finetuned models vs {base}" if len(models) > 1 else f"{models[0]} vs {base}"
    ax.set_title(f"{title} ({study['prompts']} prompts, {study['judge']} judge)", fontsize=9)
    fig.legend(loc="outside lower center", fontsize=8, ncols=3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_reports(study: Mapping[str, Any], json_path: Path, md_path: Path, png_path: Path) -> None:
    """The numbers, the table and the plot, all three or none."""
    png = plot_png(study)
    write_all(
        {
            Path(json_path): text_writer(json.dumps(study, indent=2, sort_keys=True) + "\n"),
            Path(md_path): text_writer(markdown(study)),
            Path(png_path): lambda path: path.write_bytes(png),
        }
    )
