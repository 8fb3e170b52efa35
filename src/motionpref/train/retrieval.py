"""Training of the TMR-style retrieval model (``models/retrieval.py``) with filtered symmetric InfoNCE.

Each step draws a batch of clips, one random caption of each and a random crop of each motion.
Negatives that are not really negatives are filtered out of the loss: TMR drops pairs whose captions'
sentence embeddings are closer than a threshold; with no sentence encoder we use the cosine of the
captions' TF-IDF bag-of-words vectors (threshold 0.8 by default), and, when the caller gives one, the
same group key (e.g. the synthetic program id behind both clips).

Across launched processes (``motionpref.distributed``) every process draws each global batch whole (rows, captions,
crops, word-dropout masks, the false-negative mask) and embeds its contiguous share of it. InfoNCE ranks every
text against every motion of the batch, so the embeddings are gathered with autograd (``gather_with_grad``) and
every process computes the whole batch's loss; gradients are averaged over the processes (``average_gradients``),
so every process takes the step one process takes. Validation runs whole in each; only the main one saves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from scipy import sparse

from motionpref.config import LaunchConfig, RetrievalTrainConfig
from motionpref.distributed import accelerator, average_gradients, gather_with_grad, share_to_train
from motionpref.models.retrieval import (
    PAD_ID,
    UNK_ID,
    RetrievalConfig,
    RetrievalModel,
    build_tokenizer,
    info_nce_with_filtering,
)
from motionpref.motion.text import Caption
from motionpref.progress import track

if TYPE_CHECKING:
    from accelerate import Accelerator

LogMetric = Callable[[str, float, int], None]


class RetrievalEntry(Protocol):
    """What training reads of a dataset entry (``motion.dataset.Entry`` fits: the loader has already cut
    spanned captions into entries of their own, so every caption describes all of ``features``)."""

    name: str
    features: np.ndarray  # (T, D) un-normalised
    captions: Sequence[Caption]


def _check_entries(entries: Sequence[RetrievalEntry], motion_dim: int, what: str) -> None:
    for entry in entries:
        features = entry.features
        if not isinstance(features, np.ndarray) or features.ndim != 2 or features.shape[1] != motion_dim:
            raise ValueError(
                f"{what} entry {entry.name!r}: features of shape {getattr(features, 'shape', None)}, "
                f"expected (T, {motion_dim}) like the dataset mean"
            )
        if features.shape[0] < 1 or not entry.captions:
            raise ValueError(f"{what} entry {entry.name!r}: needs at least one frame and one caption")


def tfidf_idf(documents: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    """Smoothed inverse document frequency ``log((1 + N) / (1 + df)) + 1`` (scikit-learn's default).

    Padding and unknown words weigh 0 so they never make two captions look alike.
    """
    df = np.zeros(vocab_size)
    for doc in documents:
        df[np.unique(np.asarray(doc, dtype=np.int64))] += 1
    idf = np.log((1 + len(documents)) / (1 + df)) + 1
    idf[[PAD_ID, UNK_ID]] = 0.0
    return idf


def false_negative_mask(
    documents: Sequence[Sequence[int]],
    idf: np.ndarray,
    threshold: float,
    groups: Sequence[str] | None = None,
) -> np.ndarray:
    """(B, B) bool: pairs whose TF-IDF cosine exceeds ``threshold`` or that share a group; diagonal False.

    Stands in for TMR's filtering of negatives by sentence-embedding similarity (Petrovich et al. 2023).
    """
    rows = np.repeat(np.arange(len(documents)), [len(doc) for doc in documents])
    ids = np.concatenate([np.asarray(doc, dtype=np.int64) for doc in documents] + [np.zeros(0, np.int64)])
    # Sparse: a caption holds a dozen of the vocabulary's thousands of words (coo sums repeated words).
    tfidf = sparse.csr_matrix((idf[ids], (rows, ids)), shape=(len(documents), len(idf)))
    norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel())
    unit = sparse.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ tfidf
    mask = (unit @ unit.T).toarray() > threshold
    if groups is not None:
        keys = np.asarray(groups, dtype=object)
        mask |= keys[:, None] == keys[None, :]
    np.fill_diagonal(mask, False)
    return mask


def recall_at_k(sim: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Text-to-motion recall@k of a square similarity matrix whose diagonal holds the true pairs.

    A query's rank counts the other motions scoring at least as high as its own (ties count against it).
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be square, got shape {sim.shape}")
    own = np.diag(sim)[:, None]
    rank = (sim >= own).sum(axis=1) - 1
    return {k: float((rank < k).mean()) for k in ks}


def _crop(features: np.ndarray, config: RetrievalTrainConfig, rng: np.random.Generator) -> np.ndarray:
    n = features.shape[0]
    length = min(int(rng.integers(max(1, math.ceil(config.min_crop * n)), n + 1)), config.max_frames)
    start = int(rng.integers(0, n - length + 1))
    return features[start : start + length]


def _word_dropout(ids: torch.Tensor, p: float, rng: np.random.Generator) -> torch.Tensor:
    if p == 0.0:
        return ids
    drop = torch.from_numpy(rng.random(tuple(ids.shape)) < p) & (ids != PAD_ID)
    return ids.masked_fill(drop, UNK_ID)


def _validate(
    model: RetrievalModel,
    entries: Sequence[RetrievalEntry],
    order: np.ndarray,
    idf: np.ndarray,
    config: RetrievalTrainConfig,
) -> dict[str, float]:
    """Mean recall@1/@5 and filtered InfoNCE over batches of ``val_batch_size`` (each clip's first caption,
    its whole motion up to ``max_frames``)."""
    texts = [entries[i].captions[0].text for i in order]
    motions = [entries[i].features[: config.max_frames] for i in order]
    sim = model.encode_text(texts) @ model.encode_motion(motions).T
    size = min(config.val_batch_size, len(order))
    n_batches = len(order) // size  # an incomplete last batch would rank among fewer candidates: left out
    out = {"val_loss": 0.0, "val_recall_at_1": 0.0, "val_recall_at_5": 0.0}
    for b in range(n_batches):
        rows = slice(b * size, (b + 1) * size)
        docs = [model.tokenizer.encode(t).ids[: model.config.max_words] for t in texts[rows]]
        filtered = torch.from_numpy(false_negative_mask(docs, idf, config.filter_threshold)).to(sim.device)
        batch_sim = sim[rows, rows]
        out["val_loss"] += info_nce_with_filtering(batch_sim, config.temperature, filtered).item() / n_batches
        for k, r in recall_at_k(batch_sim.cpu().numpy(), (1, 5)).items():
            out[f"val_recall_at_{k}"] += r / n_batches
    return out


def _rank(metrics: dict[str, float]) -> tuple[float, float, float]:
    return metrics["val_recall_at_1"], metrics["val_recall_at_5"], -metrics["val_loss"]


def train_retrieval(
    train_entries: Sequence[RetrievalEntry],
    val_entries: Sequence[RetrievalEntry],
    mean: np.ndarray,
    std: np.ndarray,
    out_dir: str | Path,
    model_config: RetrievalConfig | None = None,
    train_config: RetrievalTrainConfig | None = None,
    seed: int = 0,
    train_groups: Sequence[str] | None = None,
    log_metric: LogMetric | None = None,
    accel: Accelerator | None = None,
) -> dict[str, float]:
    """Train the retrieval model, keep the epoch with the best validation recall@1 (ties: recall@5, then
    the lower validation loss), save it.

    ``train_groups`` (one key per training entry, optional) marks clips that must never be each other's
    negatives. Returns the best epoch's metrics; the model is written to ``out_dir``.

    Under ``accelerate launch`` (``accel`` of several processes) each process trains on its share of every global
    batch (the module's docstring) and only the main one saves.
    """
    model_config = model_config or RetrievalConfig()
    config = train_config or RetrievalTrainConfig()
    if len(train_entries) < 2 or len(val_entries) < 2:
        raise ValueError(
            f"need at least 2 training and 2 validation entries, got {len(train_entries)} and {len(val_entries)}"
        )
    if train_groups is not None and len(train_groups) != len(train_entries):
        raise ValueError(f"train_groups has {len(train_groups)} keys for {len(train_entries)} training entries")
    mean = np.asarray(mean, dtype=np.float32)
    _check_entries(train_entries, mean.shape[0], "training")
    _check_entries(val_entries, mean.shape[0], "validation")
    train_texts = [[c.text for c in entry.captions] for entry in train_entries]

    accel = accel or accelerator(LaunchConfig())
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer([text for texts in train_texts for text in texts])
    model = RetrievalModel(model_config, tokenizer, mean, std).to(accel.device)
    word_ids = {text: tokenizer.encode(text).ids[: model_config.max_words] for texts in train_texts for text in texts}
    idf = tfidf_idf(list(word_ids.values()), tokenizer.get_vocab_size())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    val_order = rng.permutation(len(val_entries))

    batch_size = min(config.batch_size, len(train_entries))
    steps_per_epoch = len(train_entries) // batch_size
    mine = share_to_train(range(batch_size), accel).rows
    rows = slice(mine[0], mine[-1] + 1)
    best: dict[str, float] = {}
    best_state: dict[str, torch.Tensor] = {}
    step, train_seconds = 0, 0.0
    for epoch in track(range(1, config.epochs + 1), description="retrieval", total=config.epochs):
        model.train()
        order = rng.permutation(len(train_entries))
        losses = []
        for b in range(steps_per_epoch):
            tic = time.perf_counter()
            batch = order[b * batch_size : (b + 1) * batch_size]
            texts = [train_texts[i][rng.integers(len(train_texts[i]))] for i in batch]
            motions = [_crop(train_entries[i].features, config, rng) for i in batch]
            ids, padding = model.tokenize(texts)
            ids = _word_dropout(ids, config.word_dropout, rng)
            groups = None if train_groups is None else [train_groups[i] for i in batch]
            filtered = false_negative_mask([word_ids[t] for t in texts], idf, config.filter_threshold, groups)
            filtered = torch.from_numpy(filtered).to(model.device)

            # each text is ranked against every motion of the batch: the whole batch's loss, from every share
            text = torch.nn.functional.normalize(model.embed_text(ids[rows], padding[rows]), dim=-1)
            motion = torch.nn.functional.normalize(model.embed_motion(*model.pad_motions(motions[rows])), dim=-1)
            text, motion = (gather_with_grad(x, batch_size, accel) for x in (text, motion))
            loss = info_nce_with_filtering(text @ motion.T, config.temperature, filtered)
            optimizer.zero_grad()
            loss.backward()
            average_gradients(list(model.parameters()), accel)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            train_seconds += time.perf_counter() - tic
            step += 1
            losses.append(loss.item())

        metrics = {
            "train_loss": float(np.mean(losses)),
            **_validate(model, val_entries, val_order, idf, config),
        }
        if log_metric is not None:
            for name, value in metrics.items():
                log_metric(f"retrieval/{name}", value, step)
        if not best or _rank(metrics) > _rank(best):
            best = {**metrics, "best_epoch": float(epoch)}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    model.load_state_dict(best_state)
    if accel.is_main_process:
        model.save(out_dir)
    return {**best, "steps": float(step), "seconds_per_step": train_seconds / max(step, 1)}
