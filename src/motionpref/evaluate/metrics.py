"""Text-to-motion metrics of Guo et al. 2022 as the T2M evaluator computes them.

Each metric follows text-to-motion's ``utils/metrics.py`` and ``final_evaluations.py`` (MotionGPT's
``mGPT/metrics/t2m.py`` computes the same): R-precision and MM Dist over batches of 32 pairs,
FID between generated and real motion embeddings, Diversity over random pairs, MultiModality over
repeated generations of one text; every number averaged over replications with a 95% interval.

A model is scored on its first samples, as MotionGPT's protocol does: an invalid sample is not drawn again but
scored as the failure motion its sampler returns for it. A sampler may also say what resampling the invalid ones
gave; the same protocol then scores a second, retried column, on the same captions, crops, seeds and random draws,
in which only those motions differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import linalg
from scipy.spatial.distance import cdist

from motionpref.config import EvalSizes
from motionpref.models.evaluator import CaptionedClip, Evaluator, random_crop
from motionpref.progress import track

# A sampler answers with its motions, or with the pair (first, retried) of ``models.generator.Samples``: the first
# samples (an invalid one already the failure motion) and, by index, what resampling each invalid one gave.
Retried = dict[int, np.ndarray]
Sampled = list[np.ndarray] | tuple[list[np.ndarray], Retried]
SampleFn = Callable[[list[str], list[int], list[int]], Sampled]
METRICS = (
    "r_precision_top1",
    "r_precision_top2",
    "r_precision_top3",
    "mm_dist",
    "fid",
    "diversity",
    "multimodality",
)


def euclidean_distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """D[i, j] = ||a_i - b_j||_2 for a (N, d), b (M, d)."""
    return cdist(np.asarray(a, np.float64), np.asarray(b, np.float64))


def r_precision(text_emb: np.ndarray, motion_emb: np.ndarray, top_k: int = 3) -> np.ndarray:
    """Fraction of texts whose own motion is among the ``k`` nearest motions of the batch, k = 1..top_k.

    Guo et al. 2022, Sec. 5 (``calculate_R_precision``): text i is matched with motion i; the other
    rows of the batch are the distractors; distances are Euclidean. Returns (top_k,), non-decreasing.
    """
    dist = euclidean_distance_matrix(text_emb, motion_emb)
    # Rank of the true motion = number of motions strictly closer; a tie counts in its favour.
    rank = (dist < np.diag(dist)[:, None]).sum(axis=1)
    return np.array([(rank < k).mean() for k in range(1, top_k + 1)])


def matching_score(text_emb: np.ndarray, motion_emb: np.ndarray) -> float:
    """MM Dist: mean Euclidean distance between each text and its own motion, (1/N) sum_i ||t_i - m_i||."""
    return float(np.linalg.norm(np.asarray(text_emb, np.float64) - motion_emb, axis=1).mean())


def batched_r_precision(
    text_emb: np.ndarray, motion_emb: np.ndarray, batch_size: int = 32, top_k: int = 3
) -> tuple[np.ndarray, float]:
    """(R-precision top 1..top_k, MM Dist) over consecutive batches of ``batch_size`` pairs.

    As ``evaluate_matching_score``: each batch is its own retrieval pool, results are averaged over
    pairs, and pairs past the last full batch are left out (the loader's ``drop_last``).
    """
    n_batches = len(text_emb) // batch_size
    if n_batches == 0:
        raise ValueError(f"R-precision needs at least batch_size={batch_size} pairs, got {len(text_emb)}")
    if len(text_emb) != len(motion_emb):
        raise ValueError(f"{len(text_emb)} text embeddings but {len(motion_emb)} motion embeddings")
    hits = np.zeros(top_k)
    dist_sum = 0.0
    for b in range(n_batches):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        hits += r_precision(text_emb[sl], motion_emb[sl], top_k)
        dist_sum += matching_score(text_emb[sl], motion_emb[sl])
    return hits / n_batches, dist_sum / n_batches


def activation_statistics(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), covariance (d, d)) of embeddings (N, d), the unbiased ``np.cov`` the original uses."""
    emb = np.asarray(emb, np.float64)
    if emb.ndim != 2 or len(emb) < 2:
        raise ValueError(f"need embeddings (N >= 2, d), got shape {emb.shape}")
    return emb.mean(axis=0), np.cov(emb, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance of two Gaussians (Heusel et al. 2017, FID; Dowson & Landau 1982):

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    As the original ``calculate_frechet_distance``: if the matrix square root is not finite, eps is
    added to both diagonals; a negligible imaginary part from numerical error is dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shape mismatch: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the covariance square root")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(real_emb: np.ndarray, gen_emb: np.ndarray) -> float:
    """FID between real and generated motion embeddings: ``frechet_distance`` of their statistics."""
    return frechet_distance(*activation_statistics(real_emb), *activation_statistics(gen_emb))


def diversity(emb: np.ndarray, times: int, rng: np.random.Generator) -> float:
    """Mean distance of ``times`` random pairs (``calculate_diversity``, Guo et al. 2022, Sec. 5):

    (1/S) sum_i ||v_{a_i} - v_{b_i}||, with a and b two draws of S distinct indices out of N > S.
    """
    n = len(emb)
    if n <= times:
        raise ValueError(f"diversity needs more than times={times} embeddings, got {n}")
    first = rng.choice(n, times, replace=False)
    second = rng.choice(n, times, replace=False)
    return float(np.linalg.norm(np.asarray(emb, np.float64)[first] - emb[second], axis=1).mean())


def multimodality(emb: np.ndarray, times: int, rng: np.random.Generator) -> float:
    """Mean distance between generations of the same text (``calculate_multimodality``):

    emb (C, R, d), R generations of each of C texts; draw two index sets of ``times`` distinct
    generations (shared by all texts) and average ||v_{c, a_i} - v_{c, b_i}|| over texts and pairs.
    """
    if emb.ndim != 3:
        raise ValueError(f"expected embeddings (texts, repeats, d), got shape {emb.shape}")
    if emb.shape[1] <= times:
        raise ValueError(f"multimodality needs more than times={times} repeats per text, got {emb.shape[1]}")
    first = rng.choice(emb.shape[1], times, replace=False)
    second = rng.choice(emb.shape[1], times, replace=False)
    return float(np.linalg.norm(np.asarray(emb, np.float64)[:, first] - emb[:, second], axis=2).mean())


def confidence_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, 1.96 * std / sqrt(n)) over replications, std the population std (``np.std``) as the original.

    This is the field's convention (Guo et al. 2022's ``final_evaluations.py``, and every text-to-motion table
    since), kept so that a model's numbers read as the papers' do; it is a normal interval, narrower than a
    Student t interval at 10 or 20 replications. Differences between models are the report's, with t intervals.
    """
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("no values")
    return float(v.mean()), float(1.96 * v.std() / np.sqrt(v.size))


def split_samples(
    out: Sampled, captions: Sequence[str], dim: int, min_frames: int
) -> tuple[list[np.ndarray], Retried | None]:
    """(first motions, retried motions by index, or None from a sampler that does not retry) of a ``sample_fn``'s
    answer for ``captions``, each motion checked to be un-normalised features (T >= min_frames, dim)."""
    first, retried = out if isinstance(out, tuple) else (out, None)
    if len(first) != len(captions):
        raise ValueError(f"sample_fn returned {len(first)} motions for {len(captions)} captions")
    if retried is not None and not set(retried) <= set(range(len(captions))):
        raise ValueError(f"sample_fn retried indices {sorted(set(retried) - set(range(len(captions))))} out of range")

    def checked(i: int, m: np.ndarray, what: str) -> np.ndarray:
        m = np.asarray(m, np.float32)
        if m.ndim != 2 or m.shape[1] != dim or len(m) < min_frames:
            raise ValueError(
                f"sample_fn {what} {i} (caption {captions[i]!r}): expected un-normalised features "
                f"(T >= {min_frames}, {dim}), got shape {m.shape}"
            )
        return m

    motions = [checked(i, m, "motion") for i, m in enumerate(first)]
    if retried is None:
        return motions, None
    return motions, {i: checked(i, m, "retried motion") for i, m in retried.items()}


def _generate(
    sample_fn: SampleFn,
    captions: list[str],
    lengths: list[int],
    seeds: list[int],
    sizes: EvalSizes,
    dim: int,
    description: str,
) -> tuple[list[np.ndarray], Retried | None]:
    """``split_samples`` over chunks of ``sizes.generate_batch`` captions, retried indices made global."""
    motions: list[np.ndarray] = []
    retried: Retried | None = None
    chunk = sizes.generate_batch
    for s in track(range(0, len(captions), chunk), description=description, total=-(-len(captions) // chunk)):
        sl = slice(s, s + chunk)
        first, again = split_samples(
            sample_fn(captions[sl], lengths[sl], seeds[sl]), captions[sl], dim, sizes.unit_length
        )
        if s and (again is None) != (retried is None):
            raise ValueError("sample_fn returned retried motions for some captions only; answer every call alike")
        motions += first
        if again is not None:
            retried = {} if retried is None else retried
            retried.update({s + i: m for i, m in again.items()})
    return motions, retried


def _splice(emb: np.ndarray, retried: Mapping[int, np.ndarray], evaluator: Evaluator, batch: int) -> np.ndarray:
    """``emb`` with the rows of the resampled motions replaced by theirs. The evaluator embeds a clip the same
    whatever its batch (``Evaluator.motion_batch``), so only the resampled motions need embedding: the others keep
    their first-sample embeddings exactly."""
    out = emb.copy()
    if retried:
        rows = sorted(retried)
        out[rows] = evaluator.embed_motions([retried[i] for i in rows], batch)
    return out


def _matching_and_fid(
    text_emb: np.ndarray, gen_emb: np.ndarray, real_emb: np.ndarray, sizes: EvalSizes
) -> dict[str, float]:
    top, mm_dist = batched_r_precision(text_emb, gen_emb, sizes.r_precision_batch, sizes.top_k)
    out = {f"r_precision_top{k + 1}": float(v) for k, v in enumerate(top)}
    out["mm_dist"] = mm_dist
    out["fid"] = fid(real_emb, gen_emb)
    return out


def _same_draws(
    columns: Mapping[str, np.ndarray],
    score: Callable[[np.ndarray, np.random.Generator], float],
    rng: np.random.Generator,
) -> dict[str, float]:
    """``score(emb, rng)`` of every column from the same rng state, so each column's Diversity or MultiModality
    is taken over the same random pairs; ``rng`` ends as after one call."""
    state = rng.bit_generator.state
    out = {}
    for name, emb in columns.items():
        rng.bit_generator.state = state
        out[name] = score(emb, rng)
    return out


def ground_truth_sample_fn(entries: Sequence[CaptionedClip], unit_length: int = 4) -> SampleFn:
    """A ``sample_fn`` returning real motions: for each caption, a clip of ``entries`` captioned with
    that text (drawn by the seed when several are), cropped to the asked length at a seeded offset.

    Scoring it with ``evaluate_model`` gives the "Real motion" row of the papers' tables.
    """
    by_text: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        for c in e.captions:
            if i not in by_text.setdefault(c.text, []):
                by_text[c.text].append(i)

    def sample(captions: list[str], lengths: list[int], seeds: list[int]) -> list[np.ndarray]:
        out = []
        for text, length, seed in zip(captions, lengths, seeds, strict=True):
            if text not in by_text:
                raise KeyError(f"ground truth: no entry has the caption {text!r}")
            rng = np.random.default_rng(seed)
            clip = entries[by_text[text][int(rng.integers(len(by_text[text])))]].features
            n = min(length, len(clip) // unit_length * unit_length)
            start = int(rng.integers(0, len(clip) - n + 1))
            out.append(np.asarray(clip[start : start + n], np.float32))
        return out

    return sample


def _seeds(rng: np.random.Generator, n: int) -> list[int]:
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=n)]


def evaluate_replication(
    sample_fn: SampleFn, entries: Sequence[CaptionedClip], evaluator: Evaluator, sizes: EvalSizes, seed: int
) -> tuple[dict[str, float], dict[str, float] | None]:
    """One replication of the protocol (``final_evaluations.evaluation`` loop body):

    shuffle the entries, draw one caption and one T2M crop per entry, generate a motion for each
    caption at the crop's length, embed texts, generated and real motions, then R-precision and MM
    Dist (batches of ``r_precision_batch``), FID (generated vs real), Diversity (generated), and
    MultiModality over ``mm_num_repeats`` generations of ``mm_num_samples`` of the captions.

    Returns the metrics of the first samples and, when ``sample_fn`` answers with retried motions, those of the
    retried column (None otherwise): the first samples' embeddings with the resampled motions' spliced in, scored
    with the same batches and random pairs. Only the resampled motions are embedded again.
    """
    rng = np.random.default_rng(seed)
    n = len(entries)
    order = rng.permutation(n)
    captions = [entries[i].captions[int(rng.integers(len(entries[i].captions)))] for i in order]
    real = [random_crop(entries[i].features, sizes.unit_length, rng) for i in order]
    lengths = [len(r) for r in real]
    dim = evaluator.config.feature_dim
    texts = [c.text for c in captions]
    generated, retried = _generate(sample_fn, texts, lengths, _seeds(rng, n), sizes, dim, "evaluate: generate")
    text_emb, gen_emb = evaluator.embed(captions, generated, sizes.embed_batch)
    real_emb = evaluator.embed_motions(real, sizes.embed_batch)

    columns = {"first": gen_emb}
    if retried is not None:
        columns["retried"] = _splice(gen_emb, retried, evaluator, sizes.embed_batch)
    results = {name: _matching_and_fid(text_emb, emb, real_emb, sizes) for name, emb in columns.items()}
    for name, v in _same_draws(columns, lambda e, r: diversity(e, sizes.diversity_times, r), rng).items():
        results[name]["diversity"] = v
    if sizes.mm_num_samples:
        if n < sizes.mm_num_samples:
            raise ValueError(f"EvalSizes.mm_num_samples={sizes.mm_num_samples} exceeds the {n} entries")
        picked = rng.choice(n, sizes.mm_num_samples, replace=False)
        reps = sizes.mm_num_repeats
        mm_texts = [texts[i] for i in picked for _ in range(reps)]
        mm_lengths = [lengths[i] for i in picked for _ in range(reps)]
        mm_seeds = _seeds(rng, len(mm_texts))
        mm_motions, mm_retried = _generate(sample_fn, mm_texts, mm_lengths, mm_seeds, sizes, dim, "evaluate: repeats")
        if (mm_retried is None) != (retried is None):
            raise ValueError("sample_fn returned retried motions for some captions only; answer every call alike")
        mm_emb = evaluator.embed_motions(mm_motions, sizes.embed_batch)
        mm_columns = {"first": mm_emb}
        if mm_retried is not None:
            mm_columns["retried"] = _splice(mm_emb, mm_retried, evaluator, sizes.embed_batch)
        shaped = {k: e.reshape(sizes.mm_num_samples, reps, -1) for k, e in mm_columns.items()}
        for name, v in _same_draws(shaped, lambda e, r: multimodality(e, sizes.mm_times, r), rng).items():
            results[name]["multimodality"] = v
    return results["first"], results.get("retried")


def _summary(raw: Mapping[str, list[float]]) -> dict:
    out: dict = {}
    for k in METRICS:
        if k in raw:
            mean, ci = confidence_interval(raw[k])
            out[k] = {"mean": mean, "ci95": ci}
    out["replications"] = dict(raw)
    return out


def evaluate_model(
    sample_fn: SampleFn, entries: Sequence[CaptionedClip], evaluator: Evaluator, sizes: EvalSizes, seed: int
) -> dict:
    """The full protocol: ``sizes.replications`` replications of ``evaluate_replication``.

    ``sample_fn(captions, lengths, seeds)`` returns one un-normalised feature array (T, D) per
    caption, so any policy plugs in (``ground_truth_sample_fn`` scores real motions), or the pair
    (first, retried) of ``models.generator.Samples``. Returns
    ``{metric: {"mean": m, "ci95": 1.96 * std / sqrt(n)}}`` for each metric in ``METRICS``
    (MultiModality only when ``mm_num_samples > 0``) and ``"replications": {metric: [values]}``, of the first
    samples; with retried motions, the retried column in the same form under ``"retried"``.
    """
    if len(entries) < sizes.r_precision_batch:
        raise ValueError(f"need at least r_precision_batch={sizes.r_precision_batch} entries, got {len(entries)}")
    seeds = np.random.SeedSequence(seed).generate_state(sizes.replications)
    raw: dict[str, list[float]] = {}
    raw_retried: dict[str, list[float]] = {}
    for r in range(sizes.replications):
        first, retried = evaluate_replication(sample_fn, entries, evaluator, sizes, int(seeds[r]))
        for k, v in first.items():
            raw.setdefault(k, []).append(v)
        for k, v in (retried or {}).items():
            raw_retried.setdefault(k, []).append(v)
    out = _summary(raw)
    if raw_retried:
        out["retried"] = _summary(raw_retried)
    return out
