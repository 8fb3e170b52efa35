from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from motionpref.models.checkpoint import CheckpointError
from motionpref.models.retrieval import (
    RetrievalConfig,
    RetrievalModel,
    build_tokenizer,
    cosine_to_score,
    info_nce_with_filtering,
)
from motionpref.motion.text import Caption
from motionpref.train.retrieval import (
    RetrievalTrainConfig,
    false_negative_mask,
    recall_at_k,
    tfidf_idf,
    train_retrieval,
)

D = 8
CLASS_CAPTIONS = [
    ["a person walks forward", "someone walks ahead slowly"],
    ["a person jumps up high", "someone jumps in place"],
    ["a person waves the right hand", "someone waves with a hand"],
    ["a person sits down on a chair", "someone sits down"],
]
TINY = RetrievalConfig(latent_dim=32, ff_dim=64, n_layers=1, n_heads=2, dropout=0.0, max_words=12, frames_per_token=2)


@dataclass
class FakeEntry:
    name: str
    features: np.ndarray
    captions: list[Caption]


def _dataset(n_per_class: int, seed: int) -> tuple[list[FakeEntry], list[int]]:
    """Clips whose features carry their caption class: a class pattern modulated in time, plus noise."""
    patterns = np.random.default_rng(1234).normal(size=(len(CLASS_CAPTIONS), D)) * 2.0
    rng = np.random.default_rng(seed)
    entries, labels = [], []
    for i in range(n_per_class * len(CLASS_CAPTIONS)):
        c = i % len(CLASS_CAPTIONS)
        t = np.arange(int(rng.integers(20, 41)))[:, None]
        wave = 1.0 + 0.5 * np.sin(2 * np.pi * t / 10 + rng.uniform(0, 2 * np.pi))
        features = (patterns[c] * wave + rng.normal(scale=0.3, size=(t.shape[0], D)) + 5.0).astype(np.float32)
        entries.append(FakeEntry(f"clip{i:03d}", features, [Caption(text) for text in CLASS_CAPTIONS[c]]))
        labels.append(c)
    return entries, labels


def _stats(entries: list[FakeEntry]) -> tuple[np.ndarray, np.ndarray]:
    frames = np.concatenate([e.features for e in entries])
    return frames.mean(0), frames.std(0)


def _fresh_model(seed: int = 0) -> RetrievalModel:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer([c for caps in CLASS_CAPTIONS for c in caps])
    return RetrievalModel(TINY, tokenizer, np.full(D, 5.0), np.full(D, 2.0)).eval()


def _train(
    tmp_path: Path, seed: int, epochs: int = 12
) -> tuple[dict[str, float], Path, list[FakeEntry], list[tuple[str, float, int]]]:
    train, labels = _dataset(8, seed=0)
    val, _ = _dataset(1, seed=1)
    mean, std = _stats(train)
    out = tmp_path / f"model_seed{seed}_e{epochs}"
    cfg = RetrievalTrainConfig(epochs=epochs, batch_size=16, lr=3e-3, val_batch_size=32)
    logged: list[tuple[str, float, int]] = []
    metrics = train_retrieval(
        train,
        val,
        mean,
        std,
        out,
        TINY,
        cfg,
        seed=seed,
        train_groups=[f"class{c}" for c in labels],  # same-class clips are never each other's negatives
        log_metric=lambda *a: logged.append(a),
    )
    assert {name for name, _, _ in logged} == {
        "retrieval/train_loss",
        "retrieval/val_loss",
        "retrieval/val_recall_at_1",
        "retrieval/val_recall_at_5",
    }
    assert len(logged) == 4 * epochs
    return metrics, out, val, logged


# -- loss and metrics against hand computations ---------------------------------------------------

SIM = [[0.9, 0.1, 0.2], [0.3, 0.8, 0.0], [0.1, 0.4, 0.7]]


def _nll(own: float, others: list[float], tau: float) -> float:
    return -math.log(math.exp(own / tau) / (math.exp(own / tau) + sum(math.exp(o / tau) for o in others)))


def test_info_nce_matches_hand_computation() -> None:
    tau = 0.1
    rows = _nll(0.9, [0.1, 0.2], tau) + _nll(0.8, [0.3, 0.0], tau) + _nll(0.7, [0.1, 0.4], tau)
    cols = _nll(0.9, [0.3, 0.1], tau) + _nll(0.8, [0.1, 0.4], tau) + _nll(0.7, [0.2, 0.0], tau)
    loss = info_nce_with_filtering(torch.tensor(SIM, dtype=torch.float64), tau)
    assert loss.item() == pytest.approx((rows / 3 + cols / 3) / 2, rel=1e-12)


def test_info_nce_drops_filtered_negatives_only() -> None:
    tau = 0.1
    # Texts 0 and 1 say the same thing: (0, 1) and (1, 0) leave both softmaxes; the diagonal never does.
    filtered = torch.tensor([[True, True, False], [True, True, False], [False, False, False]])
    rows = _nll(0.9, [0.2], tau) + _nll(0.8, [0.0], tau) + _nll(0.7, [0.1, 0.4], tau)
    cols = _nll(0.9, [0.1], tau) + _nll(0.8, [0.4], tau) + _nll(0.7, [0.2, 0.0], tau)
    loss = info_nce_with_filtering(torch.tensor(SIM, dtype=torch.float64), tau, filtered)
    assert loss.item() == pytest.approx((rows / 3 + cols / 3) / 2, rel=1e-12)
    assert loss.item() < info_nce_with_filtering(torch.tensor(SIM, dtype=torch.float64), tau).item()


def test_info_nce_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="square"):
        info_nce_with_filtering(torch.zeros(2, 3), 0.1)
    with pytest.raises(ValueError, match="false_negatives"):
        info_nce_with_filtering(torch.zeros(2, 2), 0.1, torch.zeros(3, 3, dtype=torch.bool))


def test_recall_at_k_hand_computation() -> None:
    sim = np.array([[0.9, 0.1, 0.2], [0.8, 0.5, 0.0], [0.7, 0.7, 0.7]])
    # Ranks: row 0 -> 0; row 1 -> 1 (0.8 beats 0.5); row 2 -> 2 (ties count against the query).
    assert recall_at_k(sim, (1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_false_negative_mask_filters_near_duplicates_and_groups() -> None:
    docs = [[2, 3, 4], [2, 3, 4], [2, 5, 6], [7, 8]]
    idf = tfidf_idf(docs, 9)
    assert idf[0] == 0 and idf[1] == 0  # padding and unknown words never match captions
    assert idf[2] < idf[5]  # a word in every caption weighs less than a rare one
    mask = false_negative_mask(docs, idf, threshold=0.8)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 1] = expected[1, 0] = True
    np.testing.assert_array_equal(mask, expected)
    grouped = false_negative_mask(docs, idf, threshold=0.8, groups=["a", "b", "c", "c"])
    expected[2, 3] = expected[3, 2] = True
    np.testing.assert_array_equal(grouped, expected)


def test_tokenizer_lowercases_drops_punctuation_and_maps_unknown_words() -> None:
    tokenizer = build_tokenizer(["A person walks forward.", "Someone walks; then stops"])
    tokens = tokenizer.encode("A PERSON walks, backward!").tokens
    assert tokens == ["a", "person", "walks", "[UNK]"]
    assert tokenizer.token_to_id("[PAD]") == 0 and tokenizer.token_to_id("[UNK]") == 1


# -- scoring ------------------------------------------------------------------------------------------


def test_scores_are_half_cosine_plus_half_and_in_unit_interval() -> None:
    model = _fresh_model()
    rng = np.random.default_rng(0)
    texts = ["a person walks forward", "someone sits down", "an unseen prompt zigzags"]
    motions = [rng.normal(5.0, 2.0, size=(n, D)).astype(np.float32) for n in (12, 30, 7)]
    t, m = model.encode_text(texts), model.encode_motion(motions)
    np.testing.assert_allclose(t.norm(dim=-1).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(m.norm(dim=-1).numpy(), 1.0, atol=1e-6)
    cos = (t @ m.T).numpy()
    matrix = model.score_matrix(texts, motions)
    np.testing.assert_allclose(matrix, cos / 2 + 0.5, atol=1e-6)
    np.testing.assert_allclose(model.score(texts, motions), np.diag(cos) / 2 + 0.5, atol=1e-6)
    assert matrix.shape == (3, 3) and (matrix >= 0).all() and (matrix <= 1).all()
    np.testing.assert_array_equal(cosine_to_score(torch.tensor([-1.0, 0.0, 1.0, 1.0000001])), [0, 0.5, 1, 1])


def test_padding_does_not_change_embeddings() -> None:
    model = _fresh_model()
    rng = np.random.default_rng(1)
    short, long = (rng.normal(5.0, 2.0, size=(n, D)).astype(np.float32) for n in (9, 25))
    alone = model.encode_motion([short])
    batched = model.encode_motion([short, long])
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
    padded = torch.zeros(2, 40, D)
    padded[0, :9], padded[1, :25] = torch.from_numpy(short), torch.from_numpy(long)
    padded[0, 9:] = 1e3  # whatever lies past a length is ignored
    torch.testing.assert_close(model.encode_motion(padded, lengths=[9, 25]), batched, atol=1e-5, rtol=1e-5)
    text_alone = model.encode_text(["someone sits down"])
    text_batched = model.encode_text(["someone sits down", "a person waves the right hand slowly"])
    torch.testing.assert_close(text_batched[0], text_alone[0], atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_named() -> None:
    model = _fresh_model()
    with pytest.raises(ValueError, match=r"motion 1 has shape \(5, 3\), expected \(T, 8\)"):
        model.encode_motion([np.zeros((4, D), np.float32), np.zeros((5, 3), np.float32)])
    with pytest.raises(ValueError, match="2 texts, 1 motions"):
        model.score(["a", "b"], [np.zeros((4, D), np.float32)])
    with pytest.raises(TypeError, match="list of strings"):
        model.encode_text("a person walks")
    with pytest.raises(ValueError, match="lengths must be"):
        model.encode_motion(torch.zeros(2, 5, D), lengths=[5, 6])


# -- training, determinism, disk ------------------------------------------------------------------


def test_training_learns_caption_classes(tmp_path: Path) -> None:
    metrics, out, val, logged = _train(tmp_path, seed=3)
    assert metrics["val_recall_at_1"] == 1.0
    assert metrics["steps"] == 24 and metrics["seconds_per_step"] > 0
    # The kept checkpoint is the logged epoch with the best recall, ties going to the lower val loss.
    val_logs = {(n, s): v for n, v, s in logged if n.startswith("retrieval/val")}
    epochs = sorted({s for _, s in val_logs})
    best = max(
        epochs,
        key=lambda s: (val_logs["retrieval/val_recall_at_1", s], -val_logs["retrieval/val_loss", s]),
    )
    assert metrics["best_epoch"] == epochs.index(best) + 1
    assert metrics["val_loss"] == val_logs["retrieval/val_loss", best]

    model = RetrievalModel.load(out)
    prompts = [caps[0] for caps in CLASS_CAPTIONS]  # val clip i is of class i
    scores = model.score_matrix(prompts, [e.features for e in val])
    matched = np.diag(scores)
    mismatched = scores[~np.eye(4, dtype=bool)].reshape(4, 3)
    assert (matched[:, None] > mismatched + 0.1).all(), scores
    # Paraphrases and a prompt with an unseen word still pick the right clip.
    paraphrases = ["someone walks ahead", "a man jumps in place", "a person waves a hand", "he sits down"]
    assert (model.score_matrix(paraphrases, [e.features for e in val]).argmax(1) == np.arange(4)).all()


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first, out_first, _, _ = _train(tmp_path / "a", seed=3, epochs=2)
    again, out_again, _, _ = _train(tmp_path / "b", seed=3, epochs=2)
    other, out_other, _, _ = _train(tmp_path / "c", seed=4, epochs=2)
    assert again["train_loss"] == first["train_loss"] and again["val_loss"] == first["val_loss"]
    assert other["train_loss"] != first["train_loss"]
    weights = {name: RetrievalModel.load(out).state_dict() for name, out in [("a", out_first), ("b", out_again)]}
    for name, tensor in weights["a"].items():
        assert torch.equal(tensor, weights["b"][name]), name
    other_weights = RetrievalModel.load(out_other).state_dict()
    assert not torch.equal(other_weights["motion_projection.weight"], weights["a"]["motion_projection.weight"])


def test_save_load_round_trip_and_overwrite(tmp_path: Path) -> None:
    model = _fresh_model(seed=5)
    texts = ["a person walks forward", "someone jumps in place"]
    motions = [np.random.default_rng(2).normal(5, 2, size=(n, D)).astype(np.float32) for n in (10, 20)]
    target = tmp_path / "retrieval"
    _fresh_model(seed=6).save(target)  # saving again replaces a previous model whole
    model.save(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retrieval"]  # no temporary leftovers
    loaded = RetrievalModel.load(target)
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.score_matrix(texts, motions), model.score_matrix(texts, motions))
    np.testing.assert_array_equal(loaded.motion_mean.numpy(), np.full(D, 5.0, np.float32))


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    target = tmp_path / "retrieval"
    _fresh_model().save(target)
    meta = json.loads((target / "config.json").read_text())
    meta["n_layer"] = meta.pop("n_layers")
    (target / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"retrieval: config\.json lacks field 'n_layers' \(an old folder\?"):
        RetrievalModel.load(target)
    meta["n_layers"] = 2
    (target / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"config\.json: invalid parameters\n  n_layer: unknown key"):
        RetrievalModel.load(target)
    (target / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        RetrievalModel.load(target)


def test_training_rejects_mismatched_features(tmp_path: Path) -> None:
    train, _ = _dataset(1, seed=0)
    mean, std = _stats(train)
    with pytest.raises(ValueError, match=r"entry 'clip000': features of shape \(\d+, 8\), expected \(T, 7\)"):
        train_retrieval(train, train, mean[:7], std[:7], tmp_path / "m", TINY)
