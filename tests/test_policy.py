from __future__ import annotations

import json

import pytest
import torch

from motionpref.models.policy import (
    CAPTION_PLACEHOLDER,
    DEFAULT_TEMPLATE,
    T2M_TEMPLATES,
    MotionPolicy,
    _RowSeededGumbel,
)
from motionpref.models.vqvae import MotionVQVAE, VQVAEConfig
from motionpref.train.policy import PolicyExample, PolicyTrainConfig, evaluate_policy, train_policy
from tests.policies import ARCHS, CAPTIONS, K, tiny_policy


@pytest.fixture(scope="module", params=ARCHS)
def policy(request: pytest.FixtureRequest) -> MotionPolicy:
    return tiny_policy(request.param)


def test_motion_tokens_survive_tokenizer_round_trip(policy: MotionPolicy) -> None:
    codes = [0, 5, K - 1, 5]
    text = policy.motion_text(codes)
    assert text == f"<motion_id_{K}><motion_id_0><motion_id_5><motion_id_{K - 1}><motion_id_5><motion_id_{K + 1}>"
    ids = policy.tokenizer(text + policy.tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert ids == policy.target_ids(codes)
    assert ids[1:-2] == [policy.motion_offset + c for c in codes]
    assert policy.tokenizer.convert_ids_to_tokens(ids[:-1]) == [f"<motion_id_{i}>" for i in [K, *codes, K + 1]]
    assert policy.parse_motion(ids) == codes
    # The word-level text side lowercases and maps unseen words to <unk>.
    words = policy.tokenizer("A MAN zyzzyva", add_special_tokens=False)["input_ids"]
    assert words[:2] == policy.tokenizer("a man", add_special_tokens=False)["input_ids"]
    assert words[2] == policy.tokenizer.unk_token_id
    assert policy.mask_id == policy.motion_offset + K + 2 == len(policy.tokenizer) - 1


def test_prompt_formatting(policy: MotionPolicy) -> None:
    assert policy.prompt("  a man walks ") == "Generate motion: a man walks"
    assert DEFAULT_TEMPLATE in policy.templates and CAPTION_PLACEHOLDER in policy.templates
    assert policy.prompt("x", f"Show {CAPTION_PLACEHOLDER} please") == "Show x please"
    with pytest.raises(ValueError, match="Caption_Placeholder"):
        policy.prompt("x", "no placeholder here")
    enc = policy.encode_prompts(["a man walks", "a person jumps up and down twice"])
    eos = policy.tokenizer.eos_token_id
    lengths = enc["attention_mask"].sum(1).tolist()
    assert lengths == [4, 8]  # words + </s>
    for row, n in zip(enc["input_ids"].tolist(), lengths, strict=True):
        assert row[n - 1] == eos and all(t == policy.tokenizer.pad_token_id for t in row[n:])
    left = policy.encode_prompts(["a man walks", "a person jumps up and down twice"], padding_side="left")
    assert left["input_ids"][0, -1].item() == eos and left["attention_mask"][0, :3].sum() == 0


def test_parse_motion_valid_and_invalid(policy: MotionPolicy) -> None:
    o, s, e, m = policy.motion_offset, policy.start_id, policy.end_id, policy.mask_id
    word = policy.tokenizer.convert_tokens_to_ids("man")
    eos = policy.tokenizer.eos_token_id
    assert policy.parse_motion([s, o + 3, o + 1, e]) == [3, 1]
    assert policy.parse_motion([word, s, o + 2, e, word, eos]) == [2]  # text around the motion is ignored
    assert policy.parse_motion([s, o + 3, e, s, o + 4, e]) == [3]  # first motion only
    invalid = {
        "no start": [o + 3, o + 1, e],
        "no end": [s, o + 3, o + 1],
        "end before start": [e, o + 3, s],
        "no code": [s, e],
        "mask token inside": [s, o + 3, m, e],
        "word inside": [s, o + 3, word, e],
        "eos inside": [s, o + 3, eos, e],
        "empty": [],
    }
    for name, ids in invalid.items():
        assert policy.parse_motion(ids) is None, name
    with pytest.raises(ValueError, match="outside"):
        policy.motion_text([K])


def _manual_logprobs(policy: MotionPolicy, prompt: str, codes: list[int]) -> torch.Tensor:
    """One sample at a time, no padding: log_softmax of the model's logits gathered at the answer tokens."""
    prompt_ids = policy.prompt_ids([prompt])[0]
    target = policy.target_ids(codes)
    if policy.arch == "t5":
        start = policy.model.config.decoder_start_token_id
        logits = policy.model(
            input_ids=torch.tensor([prompt_ids]), decoder_input_ids=torch.tensor([[start, *target[:-1]]])
        ).logits[0]
    else:
        full = policy.model(input_ids=torch.tensor([prompt_ids + target])).logits[0]
        logits = full[len(prompt_ids) - 1 : -1]
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[i, t] for i, t in enumerate(target))


def test_sequence_logprobs_equal_manual_gather(policy: MotionPolicy) -> None:
    policy.model.eval()
    prompts = [policy.prompt(c) for c in CAPTIONS[:3]]
    codes = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 0, 1]]
    got = policy.sequence_logprobs(prompts, codes)
    want = torch.stack([_manual_logprobs(policy, p, c) for p, c in zip(prompts, codes, strict=True)])
    assert got.shape == (3,)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    mean = policy.sequence_logprobs(prompts, codes, reduction="mean")
    torch.testing.assert_close(mean, want / torch.tensor([6.0, 4.0, 10.0]), atol=1e-5, rtol=1e-5)
    got.sum().backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    policy.model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="2 prompts but 1"):
        policy.sequence_logprobs(prompts[:2], codes[:1])


def test_sampling_depends_only_on_each_seed(policy: MotionPolicy) -> None:
    captions = [CAPTIONS[i % 4] for i in range(6)]
    seeds = [11, 12, 13, 14, 15, 16]
    full = policy.sample(captions, seeds, max_new_tokens=8, batch_size=6)
    assert all(1 <= len(t) <= 8 for t in full.token_ids)
    # Other batch sizes and another composition (reversed, a subset) give the same sample per seed.
    chunked = policy.sample(captions, seeds, max_new_tokens=8, batch_size=4)
    alone = policy.sample(captions[::-1][:3], seeds[::-1][:3], max_new_tokens=8, batch_size=1)
    assert chunked.token_ids == full.token_ids
    assert alone.token_ids == full.token_ids[::-1][:3]
    # Same caption, different seeds -> different samples; same seed twice -> same sample.
    assert full.token_ids[0] != full.token_ids[4]
    again = policy.sample([captions[0], captions[0]], [11, 11], max_new_tokens=8)
    assert again.token_ids[0] == again.token_ids[1] == full.token_ids[0]


def test_gumbel_processor_samples_softmax() -> None:
    """argmax(scores + Gumbel noise) must follow softmax(scores) (Gumbel-max trick)."""
    n = 4000
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    noisy = _RowSeededGumbel(range(n), torch.device("cpu"))(None, logits.expand(n, 4).clone())
    freq = torch.bincount(noisy.argmax(-1), minlength=4).float() / n
    torch.testing.assert_close(freq, torch.softmax(logits, 0), atol=0.025, rtol=0)


def test_invalid_generations_are_reported(policy: MotionPolicy) -> None:
    # Three tokens (start, code, end) are the shortest motion, so two new tokens can never be valid.
    batch = policy.sample(CAPTIONS, [1, 2, 3, 4], max_new_tokens=2)
    assert batch.valid == [False] * 4 and batch.n_invalid == 4
    assert batch.codes == [[]] * 4 and all(len(t) == 2 for t in batch.token_ids)
    with pytest.raises(ValueError, match="temperature"):
        policy.sample(CAPTIONS[:1], [0], temperature=0.0)
    with pytest.raises(ValueError, match="seeds"):
        policy.sample(CAPTIONS[:2], [0])


def test_constrained_decoding_emits_only_motion_grammar(policy: MotionPolicy) -> None:
    # An untrained model puts words anywhere; constrained, every output is start, codes, end (or runs out).
    free = policy.sample(CAPTIONS * 4, list(range(16)), max_new_tokens=40, constrained=False)
    bound = policy.sample(CAPTIONS * 4, list(range(16)), max_new_tokens=40)
    code_ids = range(policy.motion_offset, policy.motion_offset + K)
    assert bound.n_invalid < free.n_invalid
    for ids, ok in zip(bound.token_ids, bound.valid, strict=True):
        assert ids[0] == policy.start_id
        body = ids[1 : ids.index(policy.end_id)] if ok else ids[1:]
        assert all(t in code_ids for t in body)
        assert ok or len(ids) == 40  # only running out of tokens makes a constrained sample invalid


def test_save_load_round_trip_gives_identical_logits(policy: MotionPolicy, tmp_path) -> None:
    policy.model.eval()
    prompts, codes = [policy.prompt(c) for c in CAPTIONS], [[1, 2], [3], [4, 5, 6], [7]]
    before = policy.token_scores(prompts, codes).logprobs
    policy.save(tmp_path / "pol")
    meta = json.loads((tmp_path / "pol" / "motionpref_policy.json").read_text())
    assert meta["arch"] == policy.arch and meta["codebook_size"] == K and meta["templates"] == list(T2M_TEMPLATES)
    assert (tmp_path / "pol" / "model.safetensors").is_file()
    loaded = MotionPolicy.load(tmp_path / "pol")
    loaded.model.eval()
    assert loaded.arch == policy.arch and loaded.motion_offset == policy.motion_offset
    assert torch.equal(loaded.token_scores(prompts, codes).logprobs, before)
    assert loaded.prompt_ids(prompts) == policy.prompt_ids(prompts)
    assert loaded.sample(CAPTIONS[:2], [5, 6], max_new_tokens=6).token_ids == (
        policy.sample(CAPTIONS[:2], [5, 6], max_new_tokens=6).token_ids
    )
    with pytest.raises(FileNotFoundError, match="motionpref_policy.json"):
        MotionPolicy.load(tmp_path)


def _examples() -> list[PolicyExample]:
    return [
        PolicyExample("walk", (CAPTIONS[0], "a man walks forward quickly"), (1, 2, 3, 4, 5)),
        PolicyExample("jump", (CAPTIONS[1],), (9, 9, 8, 8)),
        PolicyExample("wave", (CAPTIONS[2],), (12, 13, 12, 13, 12, 13)),
        PolicyExample("turn", (CAPTIONS[3],), (0, 15, 7)),
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_training_reduces_loss_and_is_deterministic(arch: str, tmp_path) -> None:
    examples = _examples()
    config = PolicyTrainConfig(epochs=30, batch_size=4, lr=1e-2, warmup_steps=2)
    results = []
    for run in ("a", "b"):
        policy = tiny_policy(arch, dropout=0.1)
        before = evaluate_policy(policy, examples)["loss"]
        logged: list[tuple[str, float, int]] = []
        metrics = train_policy(
            policy,
            examples,
            examples,
            config,
            seed=3,
            out_dir=tmp_path / run,
            log_metric=lambda *a, sink=logged: sink.append(a),
        )
        results.append((metrics, policy.model.state_dict()))
        assert metrics["val_loss"] < 0.3 * before
        assert metrics["steps"] == 30 and metrics["epochs"] == 30
        assert {name for name, _, _ in logged} >= {
            "policy/train_loss",
            "policy/val_loss",
            "policy/val_token_acc",
        }
        reloaded = MotionPolicy.load(tmp_path / run)
        assert evaluate_policy(reloaded, examples)["loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)
    (m_a, w_a), (m_b, w_b) = results
    assert m_a == m_b
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)


def test_overfitted_policy_samples_its_motion_and_decodes(tmp_path) -> None:
    example = PolicyExample("walk", (CAPTIONS[0],), (3, 1, 4, 5))
    policy = tiny_policy("t5")
    config = PolicyTrainConfig(epochs=60, batch_size=1, lr=1e-2, warmup_steps=2)
    metrics = train_policy(policy, [example], [example], config, seed=0, out_dir=tmp_path / "p")
    assert metrics["val_token_acc"] == 1.0
    batch = policy.sample([CAPTIONS[0]] * 2, [0, 1], top_k=1, max_new_tokens=12)
    assert batch.valid == [True, True] and batch.n_invalid == 0
    assert batch.codes == [[3, 1, 4, 5]] * 2
    vqvae = MotionVQVAE(VQVAEConfig(feature_dim=7, nb_code=K, code_dim=8, width=8, depth=1)).eval()
    invalid = type(batch)(token_ids=[[0]], codes=[[]], valid=[False])
    features = batch.decode(vqvae) + invalid.decode(vqvae)
    assert features[0].shape == (16, 7) and torch.equal(features[0], features[1])
    assert features[2] is None


def test_best_validation_checkpoint_is_kept(tmp_path) -> None:
    # Validation asks for other codes than training teaches, so validation loss is lowest early on.
    train = [PolicyExample("a", (CAPTIONS[0],), (1, 2, 3))]
    val = [PolicyExample("a", (CAPTIONS[0],), (9, 10, 11))]
    policy = tiny_policy("t5")
    config = PolicyTrainConfig(epochs=12, batch_size=1, lr=1e-2, warmup_steps=0)
    metrics = train_policy(policy, train, val, config, seed=0, out_dir=tmp_path / "best")
    assert metrics["best_epoch"] < metrics["epochs"] == 12
    assert evaluate_policy(policy, val)["loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)
    reloaded = MotionPolicy.load(tmp_path / "best")
    assert evaluate_policy(reloaded, val)["loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)
