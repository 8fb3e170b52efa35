from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from motionpref.models.checkpoint import CheckpointError
from motionpref.models.evaluator import (
    Evaluator,
    EvaluatorConfig,
    build_vocab,
    load_plain_pickle,
    random_crop,
)
from motionpref.motion.text import POS_ENUMERATOR, Caption
from motionpref.train.evaluator import (
    EvaluatorTrainConfig,
    contrastive_loss,
    matching_loss,
    movement_ae_loss,
    train_evaluator,
)

D = 263
TINY = EvaluatorConfig(
    dim_word=8,
    dim_text_hidden=8,
    dim_coemb_hidden=8,
    dim_movement_enc_hidden=8,
    dim_movement_latent=8,
    dim_motion_hidden=8,
    max_motion_length=64,
)


def cap(text: str) -> Caption:
    """A caption whose tokens tag every word NOUN except a few verbs (enough for the tests)."""
    verbs = {"walk", "jump", "run", "wave"}
    return Caption(text=text, tokens=[f"{w}/{'VERB' if w in verbs else 'NOUN'}" for w in text.split()])


@dataclass
class Clip:
    features: np.ndarray
    captions: list[Caption]


def tiny_evaluator(seed: int = 0, config: EvaluatorConfig = TINY) -> Evaluator:
    torch.manual_seed(seed)
    model = Evaluator(config, build_vocab([cap("a person walk forward"), cap("a man jump")]))
    rng = np.random.default_rng(seed)
    model.set_stats(rng.standard_normal(config.feature_dim), rng.uniform(0.5, 2, config.feature_dim))
    return model.eval()


def test_vocab_and_tokenisation_follow_the_t2m_dataset():
    vocab = build_vocab([cap("a person walk"), cap("a person jump"), cap("walk")], min_count=2)
    assert list(vocab) == ["sos", "eos", "unk", "a", "person", "walk"]
    model = tiny_evaluator()
    rows, pos, length = model.tokenize(cap("a person walk left"))
    assert length == 6  # sos + 4 words + eos
    assert len(rows) == len(pos) == TINY.max_text_len + 2
    v = model.vocab
    assert rows[:6] == [v["sos"], v["a"], v["person"], v["walk"], v["unk"], v["eos"]]
    assert rows[6:] == [v["unk"]] * (TINY.max_text_len + 2 - 6)
    # walk is an Act_VIP word; "left" is not in this vocabulary so it reads as unk/OTHER (not Loc_VIP)
    assert pos[:6] == [POS_ENUMERATOR[p] for p in ("OTHER", "NOUN", "NOUN", "Act_VIP", "OTHER", "OTHER")]
    long_rows, _, long_len = model.tokenize(cap(" ".join(["walk"] * 30)))
    assert long_len == TINY.max_text_len + 2 and long_rows[-1] == v["eos"]


def test_random_crop_matches_the_t2m_loader():
    rng = np.random.default_rng(0)
    clip = np.arange(43)[:, None].repeat(2, 1)
    lengths = set()
    for _ in range(60):
        crop = random_crop(clip, 4, rng)
        lengths.add(len(crop))
        start = crop[0, 0]
        assert np.array_equal(crop[:, 0], np.arange(start, start + len(crop)))
    assert lengths == {40, 36}  # single (2/3) and double (1/3) coin
    with pytest.raises(ValueError, match="fewer than one unit"):
        random_crop(clip[:3], 4, rng)


def test_embeddings_shapes_and_independent_of_batching():
    model = tiny_evaluator()
    rng = np.random.default_rng(1)
    motions = [rng.standard_normal((n, D)).astype(np.float32) for n in (40, 23, 64, 70)]
    caps = [cap("a person walk"), cap("a man jump"), cap("walk forward"), cap("jump")]
    text, motion = model.embed(caps, motions, batch_size=3)
    assert text.shape == (4, 8) and motion.shape == (4, 8)
    for i in range(4):
        t1, m1 = model.embed([caps[i]], [motions[i]])
        np.testing.assert_allclose(t1[0], text[i], atol=1e-5)
        np.testing.assert_allclose(m1[0], motion[i], atol=1e-5)
    # 70 frames are cut to max_motion_length=64; 23 to 20
    np.testing.assert_allclose(model.embed_motions([motions[3][:64]])[0], motion[3], atol=1e-5)
    np.testing.assert_allclose(model.embed_motions([motions[1][:20]])[0], motion[1], atol=1e-5)
    # the evaluator renormalises with its own statistics
    mean, std = model.mean.numpy(), model.std.numpy()
    batch, lengths = model.motion_batch([motions[0]])
    np.testing.assert_allclose(batch[0, :40].numpy(), (motions[0] - mean) / std, rtol=1e-5)
    assert lengths.tolist() == [40] and batch.shape == (1, 64, D) and not batch[0, 40:].any()
    with pytest.raises(ValueError, match="motion 0: expected features"):
        model.embed_motions([np.zeros((40, 10))])
    with pytest.raises(ValueError, match="2 captions but 1 motions"):
        model.embed(caps[:2], motions[:1])


def test_embed_text_accepts_word_vectors():
    model = tiny_evaluator()
    rows, pos, lengths = model.text_batch([cap("a man jump")])
    with torch.no_grad():
        by_rows = model.embed_text(rows, pos, lengths)
        by_vectors = model.embed_text(model.word_emb(rows), pos, lengths)
    assert torch.allclose(by_rows, by_vectors)


def test_save_load_roundtrip(tmp_path):
    model = tiny_evaluator(3)
    model.save(tmp_path / "ev")
    assert {p.name for p in (tmp_path / "ev").iterdir()} == {"config.json", "vocab.json", "model.safetensors"}
    loaded = Evaluator.load(tmp_path / "ev")
    assert loaded.vocab == model.vocab and loaded.config == model.config
    motions = [np.random.default_rng(0).standard_normal((48, D)).astype(np.float32)]
    np.testing.assert_array_equal(loaded.embed_motions(motions), model.embed_motions(motions))
    np.testing.assert_array_equal(loaded.embed_captions([cap("a man jump")]), model.embed_captions([cap("a man jump")]))
    assert torch.equal(loaded.std, model.std)


# ---------------------------------------------------------------------------------- published layout


def write_t2m_layout(tmp_path, words=("sos", "eos", "unk", "person", "walk")):
    """Random weights in the published evaluator's exact on-disk layout."""
    torch.manual_seed(0)
    ref = Evaluator(EvaluatorConfig.t2m(), {"sos": 0, "eos": 1, "unk": 2})
    ckpt = {
        key: {k: torch.randn_like(v) for k, v in getattr(ref, key).state_dict().items()}
        for key in ("text_encoder", "movement_encoder", "motion_encoder")
    }
    ckpt["epoch"] = 7
    model_dir = tmp_path / "checkpoints" / "t2m" / "text_mot_match" / "model"
    model_dir.mkdir(parents=True)
    torch.save(ckpt, model_dir / "finest.tar")
    meta = tmp_path / "checkpoints" / "t2m" / "Comp_v6_KLD01" / "meta"
    meta.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(meta / "mean.npy", rng.standard_normal(D).astype(np.float32))
    np.save(meta / "std.npy", rng.uniform(0.5, 1.5, D).astype(np.float32))
    glove = tmp_path / "glove"
    glove.mkdir()
    vectors = rng.standard_normal((len(words) + 2, 300)).astype(np.float32)
    np.save(glove / "our_vab_data.npy", vectors)
    rows = {w: i + 2 for i, w in enumerate(words)}  # rows need not follow the word list
    with open(glove / "our_vab_words.pkl", "wb") as f:
        pickle.dump(list(words), f)
    with open(glove / "our_vab_idx.pkl", "wb") as f:
        pickle.dump(rows, f)
    return ckpt, vectors, rows


def test_from_t2m_loads_the_published_layout(tmp_path):
    ckpt, vectors, rows = write_t2m_layout(tmp_path)
    model = Evaluator.from_t2m(tmp_path / "checkpoints", tmp_path / "glove")
    for key in ("text_encoder", "movement_encoder", "motion_encoder"):
        for name, value in getattr(model, key).state_dict().items():
            assert torch.equal(value, ckpt[key][name]), f"{key}.{name}"
    assert model.vocab == rows
    assert torch.equal(model.word_emb.weight[rows["walk"]], torch.from_numpy(vectors[rows["walk"]]))
    assert not model.word_emb.weight.requires_grad
    meta = tmp_path / "checkpoints" / "t2m" / "Comp_v6_KLD01" / "meta"
    assert np.array_equal(model.mean.numpy(), np.load(meta / "mean.npy"))
    text, motion = model.embed([cap("person walk")], [np.zeros((60, D), np.float32)])
    assert text.shape == motion.shape == (1, 512)


def test_from_t2m_names_the_bad_key(tmp_path):
    ckpt, _, _ = write_t2m_layout(tmp_path)
    path = tmp_path / "checkpoints" / "t2m" / "text_mot_match" / "model" / "finest.tar"
    ckpt["motion_encoder"]["input_emb.weight"] = torch.zeros(1024, 256)
    torch.save(ckpt, path)
    with pytest.raises(
        ValueError,
        match=r"(?s)motion_encoder.*input_emb.weight.*expected shape \(1024, 512\), got \(1024, 256\)",
    ):
        Evaluator.from_t2m(tmp_path / "checkpoints", tmp_path / "glove")
    del ckpt["motion_encoder"]["input_emb.weight"]
    ckpt["motion_encoder"]["extra"] = torch.zeros(1)
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"(?s)missing key .input_emb.weight.*unexpected key 'extra'"):
        Evaluator.from_t2m(tmp_path / "checkpoints", tmp_path / "glove")
    del ckpt["text_encoder"]
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="missing key 'text_encoder'"):
        Evaluator.from_t2m(tmp_path / "checkpoints", tmp_path / "glove")
    with pytest.raises(FileNotFoundError, match="finest.tar"):
        Evaluator.from_t2m(tmp_path / "elsewhere", tmp_path / "glove")


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_glove_pickles_cannot_run_code(tmp_path):
    write_t2m_layout(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "glove" / "our_vab_idx.pkl", "wb") as f:
        pickle.dump({"walk": _RunsCode(str(marker))}, f)
    with pytest.raises(ValueError, match="our_vab_idx.pkl: not a plain-data pickle.*refusing global"):
        Evaluator.from_t2m(tmp_path / "checkpoints", tmp_path / "glove")
    assert not marker.exists()
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"a": [1, 2], "b": "c"}, f)
    assert load_plain_pickle(tmp_path / "plain.pkl") == {"a": [1, 2], "b": "c"}


def test_glove_needs_the_special_words(tmp_path):
    write_t2m_layout(tmp_path, words=("sos", "eos", "walk"))
    with pytest.raises(ValueError, match=r"our_vab_words.pkl: the vocabulary lacks the special word\(s\) \['unk'\]"):
        Evaluator.from_t2m(tmp_path / "checkpoints", tmp_path / "glove")


def test_glove_rows_must_be_integers_not_bools(tmp_path):
    write_t2m_layout(tmp_path)
    with open(tmp_path / "glove" / "our_vab_idx.pkl", "wb") as f:
        pickle.dump({"sos": True, "eos": 3, "unk": 4, "person": 5, "walk": 6}, f)
    with pytest.raises(CheckpointError, match=r"our_vab_idx\.pkl: word 'sos' maps to True, not a row"):
        Evaluator.from_t2m(tmp_path / "checkpoints", tmp_path / "glove")


@pytest.mark.parametrize(
    ("vectors", "found"),
    [
        (np.ones((7, 300), dtype=bool), r"bool of shape \(7, 300\)"),
        (np.full((7, 300), "x"), r"<U1 of shape \(7, 300\)"),
        (np.ones((7, 300), dtype=np.int64), r"int64 of shape \(7, 300\)"),
        (np.ones((7, 299), dtype=np.float32), r"float32 of shape \(7, 299\)"),
        (np.ones(7 * 300, dtype=np.float32), r"float32 of shape \(2100,\)"),
    ],
)
def test_glove_vectors_must_be_float_rows_of_the_word_size(tmp_path, vectors, found):
    write_t2m_layout(tmp_path)
    np.save(tmp_path / "glove" / "our_vab_data.npy", vectors)
    with pytest.raises(
        CheckpointError, match=rf"our_vab_data\.npy: expected float word vectors of shape \(V, 300\), got {found}"
    ):
        Evaluator.from_t2m(tmp_path / "checkpoints", tmp_path / "glove")


@pytest.mark.parametrize("rel", ["glove/our_vab_data.npy", "checkpoints/t2m/Comp_v6_KLD01/meta/std.npy"])
def test_empty_npy_files_of_the_published_layout_are_named(tmp_path, rel):
    write_t2m_layout(tmp_path)
    (tmp_path / rel).write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"{rel}: not a readable \.npy array"):
        Evaluator.from_t2m(tmp_path / "checkpoints", tmp_path / "glove")


def test_saved_vocabulary_rows_must_be_integers_in_the_word_table(tmp_path):
    tiny_evaluator().save(tmp_path / "ev")
    vocab = json.loads((tmp_path / "ev" / "vocab.json").read_text())
    (tmp_path / "ev" / "vocab.json").write_text(json.dumps({**vocab, "walk": True}))
    with pytest.raises(CheckpointError, match=r"ev/vocab\.json: expected a JSON object word -> row"):
        Evaluator.load(tmp_path / "ev")
    (tmp_path / "ev" / "vocab.json").write_text(json.dumps({**vocab, "walk": 10_000}))
    with pytest.raises(CheckpointError, match=r"vocab\.json: a word maps to row 10000, .*model\.safetensors has"):
        Evaluator.load(tmp_path / "ev")


# ---------------------------------------------------------------------------------- losses and training


def test_contrastive_loss_by_hand():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, 4.0], [6.0, 8.0]])  # distances 5 and 10
    assert contrastive_loss(a, b, torch.tensor([0.0, 0.0]), margin=10).item() == pytest.approx((25 + 100) / 2, rel=1e-4)
    # negatives: max(0, 10 - 5)^2 = 25 and max(0, 10 - 10)^2 = 0
    assert contrastive_loss(a, b, torch.tensor([1.0, 1.0]), margin=10).item() == pytest.approx(12.5, rel=1e-4)


def test_matching_loss_pairs_text_i_with_motion_i_plus_shift():
    t = torch.tensor([[0.0], [1.0], [2.0]])
    m = torch.tensor([[0.0], [1.0], [5.0]])
    total, pos, neg = matching_loss(t, m, shift=1, margin=3.0)
    # positives: d = 0, 0, 3 -> (0 + 0 + 9) / 3; negatives t_i vs m_{i+1}: d = 1, 4, 2 -> (4 + 0 + 1) / 3
    assert pos.item() == pytest.approx(3.0, abs=1e-4)
    assert neg.item() == pytest.approx(5 / 3, abs=1e-4)
    assert total.item() == pytest.approx(pos.item() + neg.item())
    with pytest.raises(ValueError, match="shift"):
        matching_loss(t, m, shift=0, margin=3.0)


def test_movement_ae_loss_by_hand():
    x = torch.zeros(1, 4, 2)
    recon = torch.ones(1, 4, 2)
    z = torch.tensor([[[1.0], [3.0]]])
    # L1 1 + 0.1 * mean|z| (2) + 0.5 * |3 - 1| (2)
    assert movement_ae_loss(recon, x, z, 0.1, 0.5).item() == pytest.approx(1 + 0.2 + 1.0)


def synthetic_pairs(n: int, seed: int) -> list[Clip]:
    """Each clip is one of 4 actions: a distinct channel pattern, a distinct caption."""
    rng = np.random.default_rng(seed)
    words = ["walk", "jump", "run", "wave"]
    patterns = rng.standard_normal((4, D)).astype(np.float32)
    clips = []
    for i in range(n):
        a = i % 4
        t = int(rng.integers(24, 48))
        noise = 0.3 * rng.standard_normal((t, D)).astype(np.float32)
        clips.append(Clip(patterns[a] * np.sin(np.arange(t) / 3.0)[:, None] + noise, [cap(f"a person {words[a]}")]))
    return clips


def _train(tmp_path, name, seed, match_steps, logged=None):
    data = synthetic_pairs(40, seed=0)
    cfg = EvaluatorTrainConfig(
        batch_size=8, decomp_steps=5, decomp_window=16, match_steps=match_steps, lr=3e-3, margin=2.0,
        eval_every=15, log_every=10,
    )  # fmt: skip
    log = None if logged is None else (lambda k, v, s: logged.append((k, v, s)))
    metrics = train_evaluator(data[:32], data[32:], TINY, cfg, seed, tmp_path / name, log_metric=log)
    return metrics, load_file(str(tmp_path / name / "model.safetensors"))


def test_training_reduces_loss(tmp_path):
    logged: list = []
    metrics, _ = _train(tmp_path, "a", seed=1, match_steps=30, logged=logged)
    losses = [v for k, v, _ in logged if k == "evaluator/train_loss"]
    assert len(losses) == 3
    assert losses[-1] < 0.7 * losses[0]
    assert metrics["val_loss"] == pytest.approx(metrics["val_loss_pos"] + metrics["val_loss_neg"])
    assert metrics["val_step"] in (15.0, 30.0)
    loaded = Evaluator.load(tmp_path / "a")
    assert "walk" in loaded.vocab and loaded.config.max_motion_length == 64
    # its own statistics, computed from the training clips
    assert not torch.equal(loaded.mean, torch.zeros(D))


def test_training_is_deterministic(tmp_path):
    _, weights = _train(tmp_path, "a", seed=1, match_steps=6)
    _, again = _train(tmp_path, "b", seed=1, match_steps=6)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    _, other = _train(tmp_path, "c", seed=2, match_steps=6)
    assert not torch.equal(weights["text_encoder.input_emb.weight"], other["text_encoder.input_emb.weight"])


def test_train_rejects_bad_inputs(tmp_path):
    data = synthetic_pairs(8, seed=0)
    with pytest.raises(ValueError, match="at least batch_size=32"):
        train_evaluator(data, [], TINY, EvaluatorTrainConfig(), 0, tmp_path / "x")
    bad = [Clip(np.zeros((40, 10), np.float32), [cap("walk")])] * 8
    with pytest.raises(ValueError, match=r"train\[0\]: expected features \(T, 263\)"):
        train_evaluator(bad, [], TINY, EvaluatorTrainConfig(batch_size=8), 0, tmp_path / "x")
