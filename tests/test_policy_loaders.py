from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration, T5TokenizerFast

from motionpref.models.checkpoint import CheckpointError
from motionpref.models.policy import MotionPolicy
from motionpref.motion.dataset import Entry
from motionpref.motion.text import Caption
from motionpref.train.policy import PolicyExample, load_examples

K = 8
EXTRA_IDS = 4
# Vocabulary padding past len(tokenizer), as flan-t5's 32128 rows for 32100 tokens.
VOCAB_PADDING = 5


@pytest.fixture(scope="module")
def flan_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny flan-t5-like folder: sentencepiece-style (Unigram + Metaspace) T5 tokenizer + T5 config."""
    directory = tmp_path_factory.mktemp("flan-t5-tiny")
    pieces = ["▁", "▁generate", "▁motion", ":", "▁a", "▁man", "▁walk", "s", *"abcdefghijklmnopqrstuvwxyz"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -1.0 - i) for i, p in enumerate(pieces)]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=EXTRA_IDS)
    tokenizer.save_pretrained(directory)
    config = T5Config(
        vocab_size=len(tokenizer) + VOCAB_PADDING,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
    )
    T5ForConditionalGeneration(config).save_pretrained(directory)
    return directory


def motiongpt_checkpoint(flan_dir, path, codebook_size: int = K, drop: str | None = None) -> T5ForConditionalGeneration:
    """Write ``{"state_dict": {"lm.language_model.*", "vae.*"}}`` as MotionGPT builds its LM; return it."""
    tokenizer = AutoTokenizer.from_pretrained(flan_dir)
    tokenizer.add_tokens([f"<motion_id_{i}>" for i in range(codebook_size + 3)])
    torch.manual_seed(7)
    lm = T5ForConditionalGeneration.from_pretrained(flan_dir)
    lm.resize_token_embeddings(len(tokenizer))
    state = {f"lm.language_model.{k}": v.clone() for k, v in lm.state_dict().items() if k != drop}
    state["vae.encoder.conv.weight"] = torch.randn(4, 3, 3)
    state["vae.quantizer.codebook"] = torch.randn(codebook_size, 4)
    torch.save({"state_dict": state, "epoch": 3}, path)
    return lm.eval()


def test_motiongpt_checkpoint_loads_with_matching_ids_and_weights(flan_dir, tmp_path) -> None:
    reference = motiongpt_checkpoint(flan_dir, tmp_path / "motiongpt.tar")
    policy, vae = MotionPolicy.from_motiongpt(tmp_path / "motiongpt.tar", flan_dir, codebook_size=K)
    base = AutoTokenizer.from_pretrained(flan_dir)
    assert policy.motion_offset == len(base) and policy.end_id == len(base) + K + 1
    assert policy.model.get_input_embeddings().weight.shape[0] == len(base) + K + 3
    assert set(vae) == {"encoder.conv.weight", "quantizer.codebook"} and vae["quantizer.codebook"].shape == (
        K,
        4,
    )
    # The sentencepiece-style tokenizer keeps each motion token whole, as MotionGPT relies on.
    text = policy.prompt("a man walks") + " " + policy.motion_text([0, 7, 3])
    ids = policy.tokenizer(text, add_special_tokens=True)["input_ids"]
    assert ids[-6:] == policy.target_ids([0, 7, 3])[:-1] + [policy.tokenizer.eos_token_id]
    prompts, codes = [policy.prompt("a man walks"), policy.prompt("walks")], [[1, 2], [7]]
    scores = policy.token_scores(prompts, codes)
    enc = policy.encode_prompts(prompts[:1])
    decoder = torch.tensor([[0, *policy.target_ids(codes[0])[:-1]]])
    want = torch.log_softmax(reference(**enc, decoder_input_ids=decoder).logits[0], -1)
    want = want[torch.arange(5), torch.tensor(policy.target_ids(codes[0]))]
    torch.testing.assert_close(scores.logprobs[0], want, atol=1e-5, rtol=1e-5)
    assert policy.sample(["a man walks"], [0], max_new_tokens=4).token_ids[0]  # generation runs end to end
    policy.save(tmp_path / "saved")
    again = MotionPolicy.load(tmp_path / "saved")
    assert torch.equal(again.token_scores(prompts, codes).logprobs, scores.logprobs)


def test_motiongpt_head_apart_from_the_embeddings_stays_apart(flan_dir, tmp_path) -> None:
    """flan-t5's output head is its own matrix; transformers 5 builds T5 with it tied to the input embeddings, so a
    plain load would leave both holding the head. Through a save and a load too."""
    motiongpt_checkpoint(flan_dir, tmp_path / "tied.tar")
    payload = torch.load(tmp_path / "tied.tar", weights_only=True)
    state = payload["state_dict"]
    head = torch.randn_like(state["lm.language_model.lm_head.weight"])
    state["lm.language_model.lm_head.weight"] = head
    torch.save(payload, tmp_path / "motiongpt.tar")
    policy, _ = MotionPolicy.from_motiongpt(tmp_path / "motiongpt.tar", flan_dir, codebook_size=K)
    embeddings = state["lm.language_model.shared.weight"]
    assert not torch.equal(head, embeddings)
    assert torch.equal(policy.model.lm_head.weight, head)
    assert torch.equal(policy.model.get_input_embeddings().weight, embeddings)
    policy.save(tmp_path / "saved")
    again = MotionPolicy.load(tmp_path / "saved").model
    assert torch.equal(again.lm_head.weight, head) and torch.equal(again.get_input_embeddings().weight, embeddings)


def test_motiongpt_wrong_codebook_names_key_and_shapes(flan_dir, tmp_path) -> None:
    motiongpt_checkpoint(flan_dir, tmp_path / "ckpt.tar", codebook_size=K + 2)
    rows = len(AutoTokenizer.from_pretrained(flan_dir)) + K + 3
    with pytest.raises(CheckpointError) as info:
        MotionPolicy.from_motiongpt(tmp_path / "ckpt.tar", flan_dir, codebook_size=K)
    message = str(info.value)
    assert "lm.language_model." in message and "'shared.weight'" in message
    assert f"({rows}, 16)" in message and f"({rows + 2}, 16)" in message


def test_motiongpt_missing_key_is_named(flan_dir, tmp_path) -> None:
    motiongpt_checkpoint(flan_dir, tmp_path / "ckpt.tar", drop="encoder.final_layer_norm.weight")
    message = r"missing key 'encoder.final_layer_norm.weight' \(expected shape \(16,\)\)"
    with pytest.raises(CheckpointError, match=message):
        MotionPolicy.from_motiongpt(tmp_path / "ckpt.tar", flan_dir, codebook_size=K)


def test_motiongpt_bad_files_are_refused(flan_dir, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.tar"):
        MotionPolicy.from_motiongpt(tmp_path / "nowhere.tar", flan_dir, codebook_size=K)
    torch.save({"state_dict": {"vae.w": torch.zeros(1)}}, tmp_path / "no_lm.tar")
    with pytest.raises(CheckpointError, match=r"no 'lm\.language_model\.\*' keys"):
        MotionPolicy.from_motiongpt(tmp_path / "no_lm.tar", flan_dir, codebook_size=K)
    torch.save({"state_dict": {"lm.language_model.shared.weight": torch.zeros(1)}}, tmp_path / "no_vae.tar")
    with pytest.raises(CheckpointError, match=r"no 'vae\.\*' keys"):
        MotionPolicy.from_motiongpt(tmp_path / "no_vae.tar", flan_dir, codebook_size=K)
    torch.save({"weights": {}}, tmp_path / "layout.tar")
    with pytest.raises(CheckpointError, match="'state_dict'"):
        MotionPolicy.from_motiongpt(tmp_path / "layout.tar", flan_dir, codebook_size=K)
    # An arbitrary pickled object is refused by weights_only=True, never executed.
    torch.save({"state_dict": {}, "hparams": PolicyExample("x", ("y",), (1,))}, tmp_path / "pickled.tar")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        MotionPolicy.from_motiongpt(tmp_path / "pickled.tar", flan_dir, codebook_size=K)
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.tar: cannot be read with torch\.load\(weights_only=True\)"):
        MotionPolicy.from_motiongpt(tmp_path / "empty.tar", flan_dir, codebook_size=K)
    with pytest.raises(FileNotFoundError, match="flan-t5 directory"):
        MotionPolicy.from_motiongpt(tmp_path / "pickled.tar", tmp_path / "nope", codebook_size=K)


def _entry(name: str, *captions: str) -> Entry:
    return Entry(name, np.zeros((40, 263), np.float32), [Caption(c) for c in captions], name)


def test_load_examples_pairs_captions_with_token_files(tmp_path) -> None:
    np.save(tmp_path / "000001.npy", np.array([3, 1, 4], dtype=np.int64))
    np.save(tmp_path / "A_000002.npy", np.array([7], dtype=np.int64))
    entries = [_entry("000001", "a man walks", "someone strolls"), _entry("A_000002", "a man jumps")]
    examples = load_examples(entries, tmp_path, codebook_size=K)
    assert examples == [
        PolicyExample("000001", ("a man walks", "someone strolls"), (3, 1, 4)),
        PolicyExample("A_000002", ("a man jumps",), (7,)),
    ]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([1.0, 2.0]), "non-empty 1-D integer array"),
        (np.zeros((2, 2), np.int64), "non-empty 1-D integer array"),
        (np.zeros(0, np.int64), "non-empty 1-D integer array"),
        (np.array([1, K], np.int64), f"code {K} outside"),
        (np.array([-1], np.int64), "code -1 outside"),
    ],
)
def test_load_examples_rejects_bad_token_files(tmp_path, array: np.ndarray, message: str) -> None:
    np.save(tmp_path / "clip.npy", array)
    with pytest.raises(ValueError, match=message) as info:
        load_examples([_entry("clip", "a man walks")], tmp_path, codebook_size=K)
    assert "clip.npy" in str(info.value)


def test_load_examples_missing_file_and_captions(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.npy.*'absent'"):
        load_examples([_entry("absent", "a man walks")], tmp_path, codebook_size=K)
    np.save(tmp_path / "mute.npy", np.array([1], np.int64))
    with pytest.raises(ValueError, match="'mute' has no caption"):
        load_examples([_entry("mute")], tmp_path, codebook_size=K)
