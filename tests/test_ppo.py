from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedModel,
    T5Config,
    T5ForSequenceClassification,
)

from motionpref.config import LoraConfig, PPOConfig, SamplingConfig
from motionpref.models.policy import MotionPolicy
from motionpref.models.reward import RewardModel
from motionpref.train import ppo as ppo_module
from motionpref.train.ppo import (
    NEFTune,
    PPOData,
    RunningMoments,
    ValueModel,
    answer_layout,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalised_rewards,
    masked_whiten,
    motion_grammar,
    scale_scores,
    token_stats,
)
from motionpref.train.ppo import run as ppo_run
from motionpref.train.preference import disable_dropout
from tests.policies import ARCHS, CAPTIONS, K, job, tiny_generator
from tests.policies import tiny_policy as tiny_policy_without_dropout

TARGET_CODE = 3
NO_LORA = LoraConfig(enabled=False)


# these tests train with dropout on, as a real SFT policy has it
tiny_policy = partial(tiny_policy_without_dropout, dropout=0.1)


def tiny_reward_model(arch: str, vocab_size: int) -> PreTrainedModel:
    torch.manual_seed(1)
    if arch == "t5":
        config = T5Config(vocab_size=vocab_size, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, num_labels=1)
        return T5ForSequenceClassification(config)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
        num_labels=1,
    )
    return LlamaForSequenceClassification(config)


def fraction_of_target(prompts: list[str], codes: list[list[int]]) -> torch.Tensor:
    return torch.tensor([sum(c == TARGET_CODE for c in row) / len(row) for row in codes])


def fast_config(**overrides: object) -> PPOConfig:
    values: dict[str, object] = {
        "steps": 8,
        "batch_size": 16,
        "mini_batch_size": 8,
        "ppo_epochs": 4,
        "lr": 2e-3,
        "sampling": SamplingConfig(max_new_tokens=overrides.pop("max_new_tokens", 48), retries=0),
    }
    return PPOConfig(**{**values, **overrides})


def train_ppo(policy, reward_fn, value_init, captions, config, lora, seed, log_metric=None, out_dir=None) -> dict:  # noqa: ANN001
    """PPO as the stage runs it; the policy is saved to ``out_dir`` (a scratch folder when not asked)."""
    import tempfile

    data = PPOData(tiny_generator(policy, config.sampling), reward_fn, value_init, captions)
    with tempfile.TemporaryDirectory() as scratch:
        return ppo_run(job(Path(out_dir or scratch), lora, seed, log=log_metric), config, data)


def mean_reward(policy: MotionPolicy, n: int = 64) -> float:
    samples = policy.sample(CAPTIONS * (n // len(CAPTIONS)), list(range(1000, 1000 + n)), max_new_tokens=48)
    codes = [c for c, ok in zip(samples.codes, samples.valid, strict=True) if ok]
    return fraction_of_target([], codes).mean().item()


# ------------------------------------------------------------------------------------------------------ math
def test_gae_matches_hand_computation() -> None:
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.2, -0.1], [0.3, 0.4, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])  # row 2's last entry is padding
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    # delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last token); A_t = delta_t + gamma lam A_{t+1}
    d02, d01, d00 = 2.0 - (-0.1), 0.0 + 0.9 * -0.1 - 0.2, 1.0 + 0.9 * 0.2 - 0.5
    a02 = d02
    a01 = d01 + 0.72 * a02
    a00 = d00 + 0.72 * a01
    d11, d10 = 1.0 - 0.4, 0.5 + 0.9 * 0.4 - 0.3
    a11 = d11
    a10 = d10 + 0.72 * a11
    expected = torch.tensor([[a00, a01, a02], [a10, a11, 0.0]])
    assert torch.allclose(advantages, expected, atol=1e-6)
    assert math.isclose(a00, 1.55984, abs_tol=1e-6)
    assert torch.allclose(returns, expected + values * mask, atol=1e-6)


def test_clipped_policy_loss_matches_hand_computation() -> None:
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.5, 3.0]])
    old = torch.zeros_like(ratios)
    advantages = torch.tensor([[1.0, 1.0, -2.0, -1.0, 5.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    loss, clip_frac = clipped_policy_loss(torch.log(ratios), old, advantages, mask, clip_range=0.2)
    # per token max(-A r, -A clip(r, 0.8, 1.2)): -1.2 (clipped), -0.5, 2.2, 0.8 (clipped); last token masked
    assert math.isclose(loss.item(), (-1.2 - 0.5 + 2.2 + 0.8) / 4, abs_tol=1e-6)
    assert math.isclose(clip_frac.item(), 0.5)


def test_clipped_value_loss_matches_hand_computation() -> None:
    values = torch.tensor([[0.5, 0.1, 0.7, 4.0]])
    old = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    returns = torch.tensor([[1.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss, clip_frac = clipped_value_loss(values, old, returns, mask, clip_range=0.2)
    # clipped values 0.2, 0.1, 0.8: max((V - R)^2, (V_clip - R)^2) = 0.64 (clipped), 1.21, 0.64 (clipped)
    assert math.isclose(loss.item(), 0.5 * (0.64 + 1.21 + 0.64) / 3, abs_tol=1e-6)
    assert math.isclose(clip_frac.item(), 2 / 3, abs_tol=1e-6)


def test_masked_whiten() -> None:
    x = torch.tensor([[2.0, 4.0], [6.0, 100.0]])
    mask = torch.tensor([[True, True], [True, False]])
    # mean 4, unbiased variance ((-2)^2 + 0 + 2^2) / 2 = 4
    assert torch.allclose(masked_whiten(x, mask), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(masked_whiten(x, mask, shift_mean=False), torch.tensor([[3.0, 4.0], [5.0, 0.0]]), atol=1e-6)


def test_kl_penalised_rewards() -> None:
    scores = torch.tensor([1.0, 2.0])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    rewards = kl_penalised_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, 0.1, 0.0 + 1.0], [-0.1, 0.0 + 2.0, 0.0]])
    assert torch.allclose(rewards, expected, atol=1e-6)


def test_running_moments_and_score_scaling() -> None:
    moments = RunningMoments()
    first, second = torch.tensor([1.0, 2.0, 6.0]), torch.tensor([-3.0, 0.5])
    moments.update(first)
    assert math.isclose(moments.std, math.sqrt((4 + 1 + 9) / 2), rel_tol=1e-9)  # mean 3
    moments.update(second)
    # all five: mean 1.3, squared deviations 0.09 + 0.49 + 22.09 + 18.49 + 0.64 = 41.8
    assert math.isclose(moments.mean, 1.3, rel_tol=1e-9)
    assert math.isclose(moments.std, math.sqrt(41.8 / 4), rel_tol=1e-9)
    scaled = scale_scores(torch.tensor([4.0, -1.0]), std=2.0, scale=3.0, clip=5.0)
    assert torch.equal(scaled, torch.tensor([5.0, -1.5]))  # 6 clipped to 5
    assert torch.equal(scale_scores(torch.tensor([4.0]), std=0.0, scale=1.0, clip=None), torch.tensor([4.0]))


# ------------------------------------------------------------------------------------------ layout / models
@pytest.mark.parametrize("arch", ARCHS)
def test_token_stats_match_token_scores_and_respect_the_grammar(arch: str) -> None:
    policy = tiny_policy(arch, dropout=0.0)
    prompts = [policy.prompt(CAPTIONS[0]), policy.prompt(CAPTIONS[1])]
    codes = [[1, 3, 5], [2]]
    layout = answer_layout(policy, prompts, codes, policy.model.config)
    with torch.no_grad():
        free, entropy = token_stats(policy.model, layout, 1.0, None)
        expected = policy.token_scores(prompts, codes)
        constrained, constrained_entropy = token_stats(policy.model, layout, 1.0, motion_grammar(policy))
        hot, _ = token_stats(policy.model, layout, 2.0, motion_grammar(policy))
    # token_scores keeps the decoder-only model's sequence columns; compare answer token by answer token.
    assert torch.allclose(free[layout.mask], expected.logprobs[expected.mask], atol=1e-5)
    assert layout.mask.sum(1).tolist() == [6, 4]
    assert bool((entropy[layout.mask] > 0).all()) and bool((entropy <= math.log(len(policy.tokenizer))).all())
    # The grammar forces start and </s> (log-prob 0) and renormalises codes and end over the allowed tokens only.
    lengths = [len(c) + 3 for c in codes]
    for row, n in enumerate(lengths):
        assert constrained[row, 0] == 0 and constrained[row, n - 1] == 0
        assert constrained_entropy[row, 0] == 0 and constrained_entropy[row, n - 1] == 0
        assert bool((constrained[row, 1 : n - 1] > free[row, 1 : n - 1]).all())
    assert not torch.equal(hot, constrained)
    assert torch.isfinite(constrained_entropy).all() and bool((constrained_entropy[:, 1] <= math.log(K) + 1e-5).all())


@pytest.mark.parametrize(("policy_arch", "value_arch"), [("t5", "t5"), ("causal", "causal"), ("t5", "causal")])
def test_value_model_never_sees_later_tokens(policy_arch: str, value_arch: str) -> None:
    policy = tiny_policy(policy_arch)
    reward_model = tiny_reward_model(value_arch, len(policy.tokenizer))
    before = {k: v.clone() for k, v in reward_model.state_dict().items()}
    value_model = ValueModel(reward_model)
    disable_dropout(value_model)
    # initialised from the whole reward model, head included
    assert all(torch.equal(v, before[k]) for k, v in value_model.model.state_dict().items())
    # Prompts of different lengths, so the layout gathers from different columns per row.
    prompt_rows = policy.prompt_ids([policy.prompt(CAPTIONS[0]), policy.prompt(CAPTIONS[1])])
    original = [policy.target_ids(c) for c in ([1, 2, 3, 4], [5, 6, 7])]
    edited = [policy.target_ids(c) for c in ([1, 2, 9, 4], [5, 6, 7])]
    with torch.no_grad():
        values = value_model(prompt_rows, original)
        changed = value_model(prompt_rows, edited)
        alone = value_model(prompt_rows[1:], original[1:])
    # Code index 2 is answer token 3 (after start): values up to token 3 depend only on earlier tokens.
    assert torch.allclose(values[0, :4], changed[0, :4], atol=1e-6)
    assert not torch.allclose(values[0, 4:7], changed[0, 4:7], atol=1e-4)
    assert torch.allclose(values[1], changed[1], atol=1e-6)
    assert torch.allclose(values[1, :6], alone[0], atol=1e-5)  # padding does not leak in
    assert values[1, 6:].abs().sum() == 0
    for param in value_model.parameters():
        param.data.add_(1.0)
    assert all(torch.equal(v, reward_model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_value_model_reads_the_reward_models_layout(arch: str) -> None:
    policy = tiny_policy(arch)
    reward = RewardModel.from_policy(policy, seed=3)
    value_model = ValueModel(reward.model)
    prompts = [policy.prompt(CAPTIONS[0]), policy.prompt(CAPTIONS[1])]
    codes = [[1, 2, 3, 4], [5, 6]]
    rows = reward.input_ids(prompts, codes)  # what the reward model was trained on
    prompt_rows, targets = policy.prompt_ids(prompts), [policy.target_ids(c) for c in codes]
    inputs = value_model.body_inputs(prompt_rows, targets)
    padded = reward.tokenizer.pad({"input_ids": rows}, padding_side="right", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        values = value_model(prompt_rows, targets)
    if arch == "t5":
        # the decoder reads the reward model's decoder input token for token, the encoder the prompt row
        # (up to padding: a padded row shifted as a whole moves its </s> into the padding, which nothing reads)
        shifted = reward.model._shift_right(padded)
        for row, ids in enumerate(rows):
            assert torch.equal(inputs["decoder_input_ids"][row, : len(ids)], shifted[row, : len(ids)])
        assert [inputs["input_ids"][row, : len(p)].tolist() for row, p in enumerate(prompt_rows)] == prompt_rows
        # the last state (before the final </s>) is read where the reward model reads: the last decoder position
        assert [len(p) + len(t) - 1 for p, t in zip(prompt_rows, targets, strict=True)] == [len(r) - 1 for r in rows]
    else:
        assert torch.equal(inputs["input_ids"], padded)
        # at initialisation the value of each state is the reward model's score of that prefix
        for row, (p, t) in enumerate(zip(prompt_rows, targets, strict=True)):
            prefix_scores = reward.score_ids([rows[row][: len(p) + k] for k in range(len(t))])
            assert torch.allclose(values[row, : len(t)], prefix_scores, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_disable_dropout_makes_training_forwards_deterministic(arch: str) -> None:
    policy = tiny_policy(arch, dropout=0.5)
    layout = answer_layout(policy, [policy.prompt(CAPTIONS[0])], [[1, 2, 3]], policy.model.config)
    policy.model.train()
    assert not torch.equal(policy.model(**layout.inputs).logits, policy.model(**layout.inputs).logits)
    disable_dropout(policy.model)
    assert torch.equal(policy.model(**layout.inputs).logits, policy.model(**layout.inputs).logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_neftune_noise_is_drawn_once_per_sample_and_replayed(arch: str) -> None:
    policy = tiny_policy(arch, dropout=0.0)
    prompts = [policy.prompt(CAPTIONS[0]), policy.prompt(CAPTIONS[1]), policy.prompt(CAPTIONS[2])]
    codes = [[1, 2, 3], [4, 5, 6, 7, 8], [2]]
    model = policy.model

    def logits(rows: list[int]) -> torch.Tensor:
        layout = answer_layout(policy, [prompts[i] for i in rows], [codes[i] for i in rows], model.config)
        with torch.no_grad():
            return layout.select(model(**layout.inputs).logits)[layout.mask]

    clean = logits([0, 1, 2])
    noise = NEFTune(0.1, torch.Generator().manual_seed(0))
    noise.attach(model)
    assert torch.equal(logits([0, 1, 2]), clean)  # no noise outside rows(): generation stays clean
    with noise.rows([0, 1, 2]):
        noisy = logits([0, 1, 2])
    assert not torch.allclose(noisy, clean, atol=1e-6)
    with noise.rows([2, 0]):  # a narrower mini-batch of the same samples replays their noise
        replay = logits([2, 0])
    first = len(policy.target_ids(codes[0]))
    assert torch.allclose(replay[-first:], noisy[:first], atol=1e-5)
    noise.new_rollout()
    with noise.rows([0, 1, 2]):
        assert not torch.allclose(logits([0, 1, 2]), noisy, atol=1e-6)
    noise.detach()
    assert torch.equal(logits([0, 1, 2]), clean)


@pytest.mark.parametrize(("arch", "lora"), [("t5", NO_LORA), ("causal", NO_LORA), ("t5", LoraConfig(dropout=0.3))])
def test_first_update_starts_at_ratio_one(arch: str, lora: LoraConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    # dropout in the policy config and in LoRA, NEFTune on: PPO must remove the one and replay the other
    policy = tiny_policy(arch, dropout=0.3)
    reward_model = tiny_reward_model(arch, len(policy.tokenizer))
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    loss = ppo_module.clipped_policy_loss

    def spy(logprobs, old_logprobs, advantages, mask, clip_range):  # noqa: ANN001, ANN202
        calls.append((logprobs.detach(), old_logprobs, mask))
        return loss(logprobs, old_logprobs, advantages, mask, clip_range)

    monkeypatch.setattr(ppo_module, "clipped_policy_loss", spy)
    config = fast_config(steps=1, lr=1e-2, neftune_alpha=0.1, lora=lora.enabled)
    train_ppo(policy, fraction_of_target, reward_model, CAPTIONS, config, lora, seed=0)
    logprobs, old, mask = calls[0]
    ratio = torch.exp(logprobs - old)[mask]
    # float32 rounding only: the rollout batch is wider (padding) than the mini-batch, so the sums round differently
    assert (ratio - 1).abs().max().item() < 1e-5
    assert 0.5 * ((logprobs - old)[mask] ** 2).mean().item() < 1e-12  # approx KL
    # the later mini-batches follow updates, so they move: the check above is not vacuous
    assert max((torch.exp(lp - o)[m] - 1).abs().max().item() for lp, o, m in calls[1:]) > 1e-4


# ------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize(("arch", "lora"), [("t5", NO_LORA), ("causal", NO_LORA), ("t5", LoraConfig(enabled=True))])
def test_ppo_raises_the_reward(arch: str, lora: LoraConfig) -> None:
    policy = tiny_policy(arch)
    reward_model = tiny_reward_model(arch, len(policy.tokenizer))
    before = mean_reward(policy)
    logged: dict[str, list[tuple[int, float]]] = {}
    config = fast_config(lr=3e-2 if lora.enabled else 2e-3, lora=lora.enabled)
    result = train_ppo(
        policy,
        fraction_of_target,
        reward_model,
        CAPTIONS,
        config,
        lora,
        seed=0,
        log_metric=lambda name, value, step: logged.setdefault(name, []).append((step, value)),
    )
    after = mean_reward(policy)
    assert after > before + 0.3, (before, after)
    names = {
        "score_mean",
        "rlhf_reward",
        "kl",
        "entropy",
        "value_loss",
        "policy_loss",
        "clip_frac",
        "value_clip_frac",
        "approx_kl",
        "invalid_rate",
        "length_mean",
    }
    assert set(logged) == {f"ppo/{n}" for n in names}
    assert all([s for s, _ in logged[f"ppo/{n}"]] == list(range(1, config.steps + 1)) for n in names)
    kl = [v for _, v in logged["ppo/kl"]]
    assert abs(kl[0]) < 1e-5  # the first rollout comes from the reference itself
    assert kl[-1] > 0.5
    assert result["kl"] == kl[-1] and result["score_mean_first"] == logged["ppo/score_mean"][0][1]
    assert all(0 <= v <= 1 for _, v in logged["ppo/clip_frac"]) and max(v for _, v in logged["ppo/clip_frac"]) > 0
    if lora.enabled:
        assert type(policy.model).__name__ == "T5ForConditionalGeneration"  # adapters merged away


def test_lora_policy_saves_as_a_plain_model(tmp_path: Path) -> None:
    policy = tiny_policy("t5")
    initial = {k: v.clone() for k, v in policy.model.state_dict().items()}
    reward_model = tiny_reward_model("t5", len(policy.tokenizer))
    train_ppo(
        policy, fraction_of_target, reward_model, CAPTIONS, fast_config(steps=2, lr=3e-2, lora=True), LoraConfig(), 0
    )
    state = policy.model.state_dict()
    assert set(state) == set(initial)
    assert not torch.equal(
        state["decoder.block.0.layer.0.SelfAttention.q.weight"],
        initial["decoder.block.0.layer.0.SelfAttention.q.weight"],
    )
    assert torch.equal(
        state["decoder.block.0.layer.0.SelfAttention.k.weight"],
        initial["decoder.block.0.layer.0.SelfAttention.k.weight"],
    )  # LoRA on q and v only
    policy.save(tmp_path / "policy")
    loaded = MotionPolicy.load(tmp_path / "policy")
    prompts, codes = [policy.prompt(CAPTIONS[0])], [[1, 2]]
    with torch.no_grad():
        assert torch.allclose(
            loaded.token_scores(prompts, codes).logprobs, policy.token_scores(prompts, codes).logprobs
        )


@pytest.mark.parametrize("lora", [NO_LORA, LoraConfig()])
def test_ppo_is_deterministic_for_a_seed(lora: LoraConfig) -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        policy = tiny_policy("t5")
        reward_model = tiny_reward_model("t5", len(policy.tokenizer))
        train_ppo(
            policy, fraction_of_target, reward_model, CAPTIONS, fast_config(steps=2, lora=lora.enabled), lora, seed
        )
        return policy.model.state_dict()

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_bad_inputs_are_clear_errors() -> None:
    policy = tiny_policy("t5")
    small = tiny_reward_model("t5", len(policy.tokenizer) - 5)
    with pytest.raises(ValueError, match="embedding rows"):
        train_ppo(policy, fraction_of_target, small, CAPTIONS, fast_config(steps=1), NO_LORA, 0)
    reward_model = tiny_reward_model("t5", len(policy.tokenizer))
    with pytest.raises(ValueError, match="finite scores"):
        train_ppo(policy, lambda p, c: torch.zeros(len(p), 1), reward_model, CAPTIONS, fast_config(steps=1), NO_LORA, 0)
    with pytest.raises(ValueError, match="no captions"):
        train_ppo(policy, fraction_of_target, reward_model, [], fast_config(steps=1), NO_LORA, 0)


def test_invalid_samples_are_dropped_and_counted() -> None:
    # Three new tokens hold start, one code and end at best: most samples never close their motion.
    policy = tiny_policy("t5")
    reward_model = tiny_reward_model("t5", len(policy.tokenizer))
    logged: dict[str, list[float]] = {}
    config = fast_config(steps=3, max_new_tokens=3)
    train_ppo(
        policy,
        fraction_of_target,
        reward_model,
        CAPTIONS,
        config,
        NO_LORA,
        seed=0,
        log_metric=lambda name, value, step: logged.setdefault(name, []).append(value),
    )
    assert len(logged["ppo/invalid_rate"]) == config.steps
    assert all(rate > 0.5 for rate in logged["ppo/invalid_rate"])
    assert logged["ppo/length_mean"] and all(length == 1 for length in logged["ppo/length_mean"])
