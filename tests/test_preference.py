"""What every preference-finetuning method shares: the preference table, data filters, dropout, LoRA, the reference."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, T5ForConditionalGeneration

from motionpref.config import LoraConfig, PreferenceFilter
from motionpref.models.policy import MotionPolicy
from motionpref.prefs.labels import DEGREES
from motionpref.train.preference import (
    PreferencePair,
    Reference,
    apply_lora,
    disable_dropout,
    filter_pairs,
    merge_lora,
    pair_logprobs,
    preference_pairs,
    read_preferences,
    trainable_state,
    uses_lora,
)
from tests.policies import ARCHS, CAPTIONS, K, tiny_policy

CODES = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 0, 1]]
LORA = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)


def table(splits: list[str]) -> pd.DataFrame:
    """One row per split entry; degrees cycle through DEGREES."""
    records = [
        {
            "pair_id": f"pair-{i}",
            "prompt": CAPTIONS[i % len(CAPTIONS)],
            "chosen_tokens": [i % K, 3, 3],
            "rejected_tokens": [7] * (i % 3 + 1),
            "degree": DEGREES[i % len(DEGREES)],
            "margin": float(i % len(DEGREES)),
            "split": split,
        }
        for i, split in enumerate(splits)
    ]
    return pd.DataFrame.from_records(records)


def pairs_of(degrees: list[str]) -> list[PreferencePair]:
    return [PreferencePair(f"p{i}", CAPTIONS[i % 4], (1, 2), (3,), d, 0.0) for i, d in enumerate(degrees)]


def perturb_lora(policy: MotionPolicy, scale: float = 0.5) -> None:
    """LoRA's B starts at zero (adapted == base); give every adapter a seeded non-zero B."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def logprobs(policy: MotionPolicy, codes: list[list[int]] = CODES, reduction: str = "sum") -> torch.Tensor:
    with torch.no_grad():
        return policy.sequence_logprobs([policy.prompt(c) for c in CAPTIONS[: len(codes)]], codes, reduction)


# ---------------------------------------------------------------------------------------------- the table
def test_preference_pairs_reads_each_split_in_order() -> None:
    prefs = table(["train", "val", "train", "train", "val"])
    train = preference_pairs(prefs, "train")
    val = preference_pairs(prefs, "val")
    assert [p.pair_id for p in train] == ["pair-0", "pair-2", "pair-3"]
    assert [p.pair_id for p in val] == ["pair-1", "pair-4"]
    first = train[1]
    assert first == PreferencePair("pair-2", CAPTIONS[2], (2, 3, 3), (7, 7, 7), DEGREES[2], 2.0)
    assert all(isinstance(c, int) for c in first.chosen + first.rejected)


def test_read_preferences_round_trip_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "preferences.parquet"
    table(["train", "val"]).to_parquet(path)
    assert [p.chosen for p in preference_pairs(read_preferences(path), "val")] == [(1, 3, 3)]
    missing = tmp_path / "nope.parquet"
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet: preference table not found \(run the ingest_labels"):
        read_preferences(missing)


def test_preference_pairs_errors_name_the_table_and_what_was_expected() -> None:
    source = "data/prefs/preferences.parquet"
    with pytest.raises(ValueError, match=rf"{source}: no preferences in split 'val' \(splits present: \['train'\]\)"):
        preference_pairs(table(["train", "train"]), "val", source)
    with pytest.raises(ValueError, match=rf"{source}: missing column\(s\) \['degree'\]; expected \['pair_id'"):
        preference_pairs(table(["train"]).drop(columns="degree"), "train", source)
    bad = table(["train", "train"])
    bad.loc[1, "degree"] = "superb"
    with pytest.raises(ValueError, match=rf"{source}: pair 'pair-1': degree 'superb' is not one of \['negligible'"):
        preference_pairs(bad, "train", source)
    bad = table(["train"])
    bad.loc[0, "margin"] = float("nan")
    with pytest.raises(ValueError, match="pair 'pair-0': margin nan is not a finite number"):
        preference_pairs(bad, "train")
    bad = table(["train"])
    bad.at[0, "rejected_tokens"] = []
    with pytest.raises(ValueError, match="pair 'pair-0': empty chosen_tokens or rejected_tokens"):
        preference_pairs(bad, "train")


# ------------------------------------------------------------------------------------------------ filters
# three of each degree, in a fixed interleaved order
MIXED = pairs_of([d for _ in range(3) for d in ("much_better", "better", "slightly_better", "negligible")])


@pytest.mark.parametrize(
    ("degrees", "negligible", "kept"),
    [
        ("all", True, {"much_better", "better", "slightly_better", "negligible"}),
        ("all", False, {"much_better", "better", "slightly_better"}),
        ("all_better", True, {"much_better", "better", "negligible"}),
        ("all_better", False, {"much_better", "better"}),
        ("much_better", True, {"much_better"}),  # negligible only joins the "all" filters
        ("better", False, {"better"}),
        ("slightly_better", True, {"slightly_better"}),
    ],
)
def test_filter_pairs_by_degree(degrees: str, negligible: bool, kept: set[str]) -> None:
    out = filter_pairs(MIXED, PreferenceFilter(degrees=degrees, include_negligible=negligible), seed=0)
    assert {p.degree for p in out} == kept
    assert out == [p for p in MIXED if p.degree in kept]  # all of them, order kept
    assert len(out) == 3 * len(kept)


def test_filter_pairs_fraction_is_a_seeded_subset() -> None:
    config = PreferenceFilter(degrees="all", include_negligible=True, fraction=0.25)
    subset = filter_pairs(MIXED, config, seed=3)
    assert len(subset) == 3  # round(12 * 0.25)
    assert len(set(subset)) == 3 and set(subset) <= set(MIXED)
    assert filter_pairs(MIXED, config, seed=3) == subset
    others = [filter_pairs(MIXED, config, seed=s) for s in range(4, 10)]
    assert any(set(o) != set(subset) for o in others)
    # the fraction applies after the degree filter: half of the 6 "all_better" pairs without negligible
    half = filter_pairs(MIXED, PreferenceFilter(degrees="all_better", include_negligible=False, fraction=0.5), 0)
    assert len(half) == 3 and {p.degree for p in half} <= {"much_better", "better"}
    # at least one pair survives a tiny fraction
    assert len(filter_pairs(MIXED, PreferenceFilter(fraction=0.01), seed=0)) == 1


def test_filter_pairs_errors_when_nothing_is_left() -> None:
    with pytest.raises(ValueError, match=r"no training preferences left with degrees \['much_better'\]"):
        filter_pairs(pairs_of(["negligible", "better"]), PreferenceFilter(degrees="much_better"), seed=0)


# ------------------------------------------------------------------------------------------------ dropout
@pytest.mark.parametrize("arch", ARCHS)
def test_disable_dropout_makes_training_forwards_deterministic(arch: str) -> None:
    policy = tiny_policy(arch, dropout=0.5)
    policy.model.train()
    torch.manual_seed(0)
    a, b = logprobs(policy), logprobs(policy)
    assert not torch.allclose(a, b)  # dropout is live: two training forwards differ
    disable_dropout(policy.model)
    assert policy.model.training
    for module in policy.model.modules():
        if isinstance(module, torch.nn.Dropout):
            assert module.p == 0.0
        for name in ("dropout", "attention_dropout"):
            value = getattr(module, name, None)
            assert not isinstance(value, float) or value == 0.0
    attention = [m for m in policy.model.modules() if type(m).__name__ in ("T5Attention", "LlamaAttention")]
    assert attention and all(getattr(m, "dropout", getattr(m, "attention_dropout", None)) == 0.0 for m in attention)
    a, b = logprobs(policy), logprobs(policy)
    assert torch.equal(a, b)
    policy.model.eval()
    torch.testing.assert_close(logprobs(policy), a)


# --------------------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("arch", ARCHS)
def test_apply_lora_disabled_leaves_the_model_untouched(arch: str) -> None:
    policy = tiny_policy(arch)
    model = policy.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(policy, LoraConfig(enabled=False))
    assert policy.model is model and not uses_lora(policy)
    assert all(p.requires_grad for p in model.parameters())
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    merge_lora(policy)
    assert policy.model is model


@pytest.mark.parametrize("arch", ARCHS)
def test_apply_lora_trains_only_the_adapters(arch: str) -> None:
    policy = tiny_policy(arch)
    base = logprobs(policy)
    apply_lora(policy, LORA)
    assert uses_lora(policy) and isinstance(policy.model, PeftModel)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in policy.model.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    assert all("lora_A" in n or "lora_B" in n for n in trainable)
    assert not any("lora_" in n for n in frozen)
    # peft's defaults: query and value projections (T5: q, v; Llama: q_proj, v_proj)
    wrapped = {n.split(".")[-1] for n, m in policy.model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == ({"q", "v"} if arch == "t5" else {"q_proj", "v_proj"})
    assert policy.model.peft_config["default"].r == 4
    torch.testing.assert_close(logprobs(policy), base)  # B = 0: the adapted model starts as the base
    state = trainable_state(policy.model)
    assert set(state) == {k for k in policy.model.state_dict() if "lora_" in k} and len(state) == len(trainable)
    perturb_lora(policy)
    assert not any(torch.equal(state[k], v) for k, v in policy.model.state_dict().items() if "lora_B" in k)


@pytest.mark.parametrize("arch", ARCHS)
def test_apply_lora_honours_target_modules(arch: str) -> None:
    policy = tiny_policy(arch)
    target = "o" if arch == "t5" else "down_proj"
    apply_lora(policy, LoraConfig(r=2, alpha=4, target_modules=[target]))
    wrapped = {n.split(".")[-1] for n, m in policy.model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {target}


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_lora_gives_a_plain_model_with_the_adapted_outputs(arch: str, tmp_path: Path) -> None:
    policy = tiny_policy(arch)
    base = logprobs(policy)
    apply_lora(policy, LORA)
    perturb_lora(policy)
    policy.model.eval()
    adapted = logprobs(policy)
    assert (adapted - base).abs().max() > 1e-2  # the adapters do change the model
    merge_lora(policy)
    assert not uses_lora(policy)
    assert type(policy.model) is (T5ForConditionalGeneration if arch == "t5" else LlamaForCausalLM)
    assert not any("lora" in k for k in policy.model.state_dict())
    torch.testing.assert_close(logprobs(policy), adapted, atol=1e-5, rtol=1e-5)
    policy.save(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    torch.testing.assert_close(logprobs(MotionPolicy.load(tmp_path / "merged")), adapted, atol=1e-5, rtol=1e-5)


def test_trainable_state_is_a_copy_of_every_trainable_tensor() -> None:
    policy = tiny_policy("t5")
    for name, p in policy.model.named_parameters():
        p.requires_grad_("decoder" in name)
    state = trainable_state(policy.model)
    assert state and all(k.startswith("decoder.") for k in state)
    assert set(state) == {n for n, p in policy.model.named_parameters() if p.requires_grad}
    key = next(iter(state))
    kept = state[key].clone()
    with torch.no_grad():
        policy.model.get_parameter(key).add_(1.0)
    assert torch.equal(state[key], kept)


# -------------------------------------------------------------------------------------------- reference
@pytest.mark.parametrize("arch", ARCHS)
def test_reference_without_lora_is_a_frozen_copy(arch: str) -> None:
    policy = tiny_policy(arch)
    policy.model.eval()
    original = logprobs(policy)
    reference = Reference(policy)
    assert reference.frozen is not None and reference.frozen.model is not policy.model
    assert not any(p.requires_grad for p in reference.frozen.model.parameters())
    assert all(p.requires_grad for p in policy.model.parameters())
    captions = CAPTIONS[:3]
    torch.testing.assert_close(reference.logprobs(captions, CODES), original)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert (logprobs(policy) - original).abs().max() > 1e-2
    ref = reference.logprobs(captions, CODES)
    torch.testing.assert_close(ref, original)
    assert not ref.requires_grad
    torch.testing.assert_close(reference.logprobs(captions, CODES, batch_size=1), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_under_lora_is_the_base_model(arch: str) -> None:
    base = tiny_policy(arch)
    base.model.eval()
    want = logprobs(base)
    policy = tiny_policy(arch)
    apply_lora(policy, LORA)
    reference = Reference(policy)
    assert reference.frozen is None  # no second copy in memory
    perturb_lora(policy)
    policy.model.train()
    adapted = logprobs(policy)
    assert (adapted - want).abs().max() > 1e-2
    torch.testing.assert_close(reference.logprobs(CAPTIONS[:3], CODES), want, atol=1e-6, rtol=1e-6)
    # the adapters are back on and the caller's mode restored afterwards
    assert policy.model.training
    torch.testing.assert_close(logprobs(policy), adapted)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_reference_mean_reduction_divides_by_answer_length(lora: bool) -> None:
    policy = tiny_policy("causal")
    if lora:
        apply_lora(policy, LORA)
    reference = Reference(policy)
    total = reference.logprobs(CAPTIONS[:3], CODES, "sum")
    mean = reference.logprobs(CAPTIONS[:3], CODES, "mean")
    # start + codes + end + </s>
    torch.testing.assert_close(mean, total / torch.tensor([6.0, 4.0, 10.0]))
    assert reference.logprobs([], []).shape == (0,)


@pytest.mark.parametrize("arch", ARCHS)
def test_pair_logprobs_equal_separate_scoring(arch: str) -> None:
    policy = tiny_policy(arch)
    policy.model.eval()
    chosen, rejected = CODES, [[9, 9], [0, 1, 2, 3, 4], [15]]
    for reduction in ("sum", "mean"):
        pw, pl = pair_logprobs(policy, CAPTIONS[:3], chosen, rejected, reduction)
        assert pw.shape == pl.shape == (3,) and pw.requires_grad
        torch.testing.assert_close(pw.detach(), logprobs(policy, chosen, reduction), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pl.detach(), logprobs(policy, rejected, reduction), atol=1e-5, rtol=1e-5)


def test_finish_loads_the_kept_epoch_and_refuses_a_renamed_key(tmp_path: Path) -> None:
    from tests.policies import job

    policy = tiny_policy("t5")
    finetune = job(tmp_path / "out", LoraConfig())
    finetune.start(policy, lr=1e-3, weight_decay=0.0)
    kept = trainable_state(policy.model)
    name = next(k for k in kept if "lora_B" in k)  # B starts at 0: moving A alone would not show in the merge
    with torch.no_grad():
        dict(policy.model.named_parameters())[name].add_(1.0)  # training moved on after the kept epoch
    finetune.finish(policy, kept)
    # saved with the kept weights merged in: what a job that never moved saves
    untouched = tiny_policy("t5")
    same = job(tmp_path / "untouched", LoraConfig())
    same.start(untouched, lr=1e-3, weight_decay=0.0)
    same.finish(untouched)
    saved, expected = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("out", "untouched"))
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
    partial = tiny_policy("t5")
    finetune = job(tmp_path / "partial", LoraConfig())
    finetune.start(partial, lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="lack trainable tensors"):
        finetune.finish(partial, {k: v for k, v in trainable_state(partial.model).items() if k != name})
    assert not (tmp_path / "partial").exists()
    again = tiny_policy("t5")
    finetune = job(tmp_path / "renamed", LoraConfig())
    finetune.start(again, lr=1e-3, weight_decay=0.0)
    renamed = {k.replace("lora_A", "lora_a"): v for k, v in trainable_state(again.model).items()}
    with pytest.raises(ValueError, match="unknown keys"):
        finetune.finish(again, renamed)
    assert not (tmp_path / "renamed").exists()


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_score_sees_the_bare_policy_without_dropout_or_gradients(lora: bool, tmp_path: Path) -> None:
    from tests.policies import job

    policy = tiny_policy("t5", dropout=0.1)
    finetune = job(tmp_path, LORA if lora else LoraConfig(enabled=False))
    finetune.start(policy, lr=1e-3, weight_decay=0.0)
    policy.model.train()
    prepared = policy.model
    seen = []

    def val_score(p: MotionPolicy) -> float:
        seen.append((p.model is finetune.accelerator.unwrap_model(prepared), p.model.training, torch.is_grad_enabled()))
        return 0.25

    assert finetune.score(policy, val_score) == 0.25
    assert seen == [(True, False, False)]
    assert policy.model is prepared and policy.model.training  # handed back as training left it
    with pytest.raises(ValueError, match="validation score of the policy is nan"):
        finetune.score(policy, lambda p: float("nan"))
    assert policy.model is prepared and policy.model.training
