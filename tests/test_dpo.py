"""Offline preference optimisation (DPO family) on a toy preference set a tiny policy can learn in a few epochs."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from motionpref.config import DPOConfig, LoraConfig, parse_params
from motionpref.models.policy import MotionPolicy
from motionpref.pipeline import StageContext
from motionpref.train import dpo
from motionpref.train.dpo import evaluate_pairs, logprob_reduction, pair_accuracy, reference_logprobs
from motionpref.train.preference import PreferencePair, Reference
from tests.policies import ARCHS, CAPTIONS, Recorder, job
from tests.policies import tiny_policy as tiny_policy_without_dropout


def train_dpo(policy, train, val, cfg, beta, lora, seed, out_dir, log_metric=None, val_score=None) -> dict[str, float]:  # noqa: ANN001
    return dpo.run(job(Path(out_dir), lora, seed, beta, log_metric), cfg, dpo.DPOData(policy, train, val, val_score))


DEGREES = ["much_better", "better", "slightly_better", "negligible"]
GOOD, BAD = 3, 7  # chosen answers repeat GOOD, rejected ones BAD
BETA = 0.1
LORA = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)
NO_LORA = LoraConfig(enabled=False)


# these tests train with dropout on, as a real SFT policy has it
tiny_policy = partial(tiny_policy_without_dropout, dropout=0.1)


def toy_pairs(n: int, offset: int = 0, reverse: bool = False) -> list[PreferencePair]:
    """Chosen = GOOD repeated, rejected = BAD repeated, lengths 2..6; ``reverse`` swaps the preference."""
    out = []
    for i in range(offset, offset + n):
        chosen, rejected = (GOOD,) * (2 + i % 4), (BAD,) * (2 + (i + 1) % 5)
        if reverse:
            chosen, rejected = rejected, chosen
        out.append(PreferencePair(f"p{i}", CAPTIONS[i % 4], chosen, rejected, DEGREES[i % 4], 1.0))
    return out


TRAIN, VAL = toy_pairs(16), toy_pairs(8, offset=100)


def config(**overrides: object) -> DPOConfig:
    # the preference validation loss picks the epoch unless a test says otherwise: no evaluator here
    values: dict[str, object] = {"loss": "sigmoid", "epochs": 4, "batch_size": 8, "lr": 1e-2, "select_by": "val_loss"}
    return DPOConfig(**{**values, **overrides})


def margin(policy: MotionPolicy, pairs: list[PreferencePair]) -> float:
    """Mean log pi(y_w | x) - log pi(y_l | x) of the policy itself (no reference)."""
    policy.model.eval()
    prompts = [policy.prompt(p.caption) for p in pairs]
    with torch.no_grad():
        chosen = policy.sequence_logprobs(prompts, [p.chosen for p in pairs])
        rejected = policy.sequence_logprobs(prompts, [p.rejected for p in pairs])
    return (chosen - rejected).mean().item()


def initial_reference(arch: str, pairs: list[PreferencePair], reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs of ``pairs`` under the untrained policy (same seed, so the same weights)."""
    return reference_logprobs(Reference(tiny_policy(arch)), pairs, reduction)


def test_logprob_reduction_is_mean_for_ipo_only_unless_asked() -> None:
    assert DPOConfig().ipo_form == "mean" and parse_params({}).algo.dpo.ipo_form == "mean"  # the paper's form
    assert logprob_reduction(config(loss="ipo")) == "mean"
    assert logprob_reduction(config(loss="ipo", ipo_form="sum")) == "sum"
    for form in ("mean", "sum"):  # the option is IPO's alone
        assert [logprob_reduction(config(loss=name, ipo_form=form)) for name in ("sigmoid", "hinge", "kto")] == [
            "sum"
        ] * 3


def moved_policy() -> tuple[MotionPolicy, tuple[torch.Tensor, torch.Tensor]]:
    """A tiny T5 policy moved away from its reference (whose summed log-probabilities of VAL come with it)."""
    policy = tiny_policy("t5")
    ref = initial_reference("t5", VAL, "sum")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, ref


def test_ipo_form_scores_answers_by_mean_or_summed_logprobs() -> None:
    """The IPO validation loss of a moved policy against (h - 1 / (2 beta))^2 computed by hand from summed
    log-probabilities, with each answer's log-ratio per token (over its length) or summed."""
    policy, ref = moved_policy()
    policy.model.eval()
    prompts = [policy.prompt(p.caption) for p in VAL]
    with torch.no_grad():
        sum_w = policy.sequence_logprobs(prompts, [p.chosen for p in VAL]).tolist()
        sum_l = policy.sequence_logprobs(prompts, [p.rejected for p in VAL]).tolist()
    losses = {}
    for form in ("mean", "sum"):
        expected = []
        for i, pair in enumerate(VAL):
            # an answer's tokens: start + codes + end + </s>
            len_w, len_l = (len(pair.chosen) + 3, len(pair.rejected) + 3) if form == "mean" else (1, 1)
            rho_w = (sum_w[i] - ref[0][i].item()) / len_w
            rho_l = (sum_l[i] - ref[1][i].item()) / len_l
            expected.append((rho_w - rho_l - 1 / (2 * BETA)) ** 2)
        cfg = config(loss="ipo", ipo_form=form)
        losses[form] = evaluate_pairs(policy, VAL, initial_reference("t5", VAL, form), cfg, BETA)["loss"]
        assert losses[form] == pytest.approx(sum(expected) / len(expected), rel=1e-6)
    assert abs(losses["mean"] - losses["sum"]) > 1e-3  # the pairs' lengths differ: so do the forms


def test_pair_accuracy_counts_a_tie_as_half() -> None:
    margins = torch.tensor([0.3, -1e-6, 0.0, 2.0, -0.0])
    assert pair_accuracy(margins).tolist() == [1.0, 0.0, 0.5, 1.0, 0.5]


# ------------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("lora", [LORA, NO_LORA], ids=["lora", "full"])
def test_dpo_learns_the_toy_preference(arch: str, lora: LoraConfig, tmp_path: Path) -> None:
    policy = tiny_policy(arch)
    before = margin(policy, VAL)
    record = Recorder()
    metrics = train_dpo(policy, TRAIN, VAL, config(), BETA, lora, seed=0, out_dir=tmp_path / "out", log_metric=record)
    assert metrics["val_accuracy"] >= 0.9 and metrics["train_accuracy"] >= 0.9
    assert metrics["val_loss"] < math.log(2) and metrics["val_margin"] > 0
    assert all(metrics[f"val_accuracy_{d}"] >= 0.9 for d in DEGREES)
    after = margin(policy, VAL)
    assert after > before + 0.5  # log pi(y_w) - log pi(y_l) grew
    # the implicit reward margin is beta times the growth of the policy's own margin over the reference's
    assert metrics["val_margin"] == pytest.approx(BETA * (after - before), abs=1e-4)
    assert metrics["epochs"] == 4.0 and 1 <= metrics["best_epoch"] <= 4
    steps = 4 * 2  # epochs * ceil(16 / 8)
    assert [s for n, _, s in record.logged if n == "dpo/train_loss"] == list(range(1, steps + 1))
    assert len(record.series("dpo/val_loss")) == len(record.series("dpo/epoch_train_loss")) == 4
    assert {n for n, _, _ in record.logged} >= {"dpo/train_margin", "dpo/val_accuracy", "dpo/val_accuracy_better"}
    saved = MotionPolicy.load(tmp_path / "out")
    assert not (tmp_path / "out" / "adapter_config.json").exists()  # adapters merged into a plain model
    assert margin(saved, VAL) == pytest.approx(margin(policy, VAL), abs=1e-4)


@pytest.mark.parametrize(("loss", "ipo_form"), [("ipo", "mean"), ("ipo", "sum"), ("hinge", "mean"), ("kto", "mean")])
def test_every_loss_of_the_family_learns(loss: str, ipo_form: str, tmp_path: Path) -> None:
    policy = tiny_policy("t5")
    before = margin(policy, VAL)
    cfg = config(loss=loss, ipo_form=ipo_form)
    metrics = train_dpo(policy, TRAIN, VAL, cfg, BETA, LORA, seed=0, out_dir=tmp_path)
    assert metrics["val_accuracy"] >= 0.9
    assert margin(policy, VAL) > before


def test_sft_weight_adds_the_chosen_nll_and_keeps_chosen_answers_likely(tmp_path: Path) -> None:
    """RPO: val0 loss = the preference loss + weight x the reference's NLL per chosen token, and the chosen
    answers end up likelier than under the plain preference loss."""
    weight = 2.0
    ref = initial_reference("t5", VAL, "mean")
    nll = -sum(ref[0][i].item() * (len(p.chosen) + 3) for i, p in enumerate(VAL)) / sum(len(p.chosen) + 3 for p in VAL)
    chosen = {}
    for w in (0.0, weight):
        policy = tiny_policy("t5")
        metrics = train_dpo(policy, TRAIN, VAL, config(loss="ipo", sft_weight=w), BETA, LORA, 0, tmp_path / str(w))
        assert metrics["val0_loss"] == pytest.approx((1 / (2 * BETA)) ** 2 + w * nll, rel=1e-5)
        policy.model.eval()
        with torch.no_grad():
            chosen[w] = policy.sequence_logprobs([policy.prompt(p.caption) for p in VAL], [p.chosen for p in VAL])
    assert chosen[weight].mean() > chosen[0.0].mean()


@pytest.mark.parametrize(
    ("loss", "loss0"),
    [
        ("sigmoid", math.log(2)),  # -log sigma(0)
        ("ipo", (1 / (2 * BETA)) ** 2),  # (0 - 1 / (2 beta))^2
        ("hinge", 1.0),  # max(0, 1 - 0)
        ("kto", 0.5),  # ((1 - sigma(0)) + (1 - sigma(0))) / 2
    ],
)
@pytest.mark.parametrize("lora", [LORA, NO_LORA], ids=["lora", "full"])
def test_val0_is_the_reference_itself(loss: str, loss0: float, lora: LoraConfig, tmp_path: Path) -> None:
    metrics = train_dpo(tiny_policy("causal"), TRAIN[:8], VAL[:4], config(loss=loss, epochs=1), BETA, lora, 0, tmp_path)
    # policy == reference before training: every margin is exactly zero, a tie on every pair (1/2 each)
    assert metrics["val0_margin"] == 0.0 and metrics["val0_accuracy"] == 0.5
    assert all(metrics[f"val0_accuracy_{d}"] == 0.5 for d in DEGREES)
    assert metrics["val0_loss"] == pytest.approx(loss0, rel=1e-6)


# --------------------------------------------------------------------------------------------- best epoch
@pytest.mark.parametrize("arch", ARCHS)
def test_the_best_validation_epoch_is_what_is_saved(arch: str, tmp_path: Path) -> None:
    # The validation pairs state the opposite preference: every epoch of training makes them worse, so the
    # best epoch comes before the last and the saved weights must be the snapshot, not the final ones.
    val = toy_pairs(8, offset=100, reverse=True)
    record = Recorder()
    cfg = config(epochs=4)
    policy = tiny_policy(arch)
    metrics = train_dpo(policy, TRAIN, val, cfg, BETA, LORA, seed=0, out_dir=tmp_path / "out", log_metric=record)
    losses = record.series("dpo/val_loss")
    best = min(range(4), key=losses.__getitem__)
    assert metrics["best_epoch"] == best + 1 < 4
    assert metrics["val_loss"] == losses[best] and metrics["val_margin"] == record.series("dpo/val_margin")[best]
    ref = initial_reference(arch, val, "sum")
    saved = evaluate_pairs(MotionPolicy.load(tmp_path / "out"), val, ref, cfg, BETA)
    for key in ("loss", "accuracy", "margin"):
        assert saved[key] == pytest.approx(metrics[f"val_{key}"], abs=1e-4)
    assert saved["loss"] < losses[-1] - 1e-3  # not the last epoch's weights
    held = evaluate_pairs(policy, val, ref, cfg, BETA)  # the policy object is left holding the best epoch too
    assert held["loss"] == pytest.approx(metrics["val_loss"], abs=1e-4)


def test_select_by_accuracy_keeps_the_first_epoch_of_a_tie(tmp_path: Path) -> None:
    # With the preference reversed, accuracy is 0 from epoch 1 on: no later epoch beats it, while the
    # validation loss keeps rising.
    val = toy_pairs(8, offset=100, reverse=True)
    record = Recorder()
    metrics = train_dpo(
        tiny_policy("t5"), TRAIN, val, config(select_by="val_accuracy"), BETA, LORA, 0, tmp_path, record
    )
    assert record.series("dpo/val_accuracy") == [0.0] * 4
    losses = record.series("dpo/val_loss")
    assert losses == sorted(losses) and losses[0] < losses[-1]
    # a trained epoch is always kept, even where the reference (all ties, accuracy 1/2) scored higher
    assert metrics["val0_accuracy"] == 0.5
    assert metrics["best_epoch"] == 1.0 and metrics["val_loss"] == record.series("dpo/val_loss")[0]


class FakeScore:
    """A ``val_score`` that rates the policy after epoch e ``scores[e - 1]`` and records how it found the policy
    (training mode, gradients on)."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores
        self.seen: list[tuple[bool, bool]] = []

    def __call__(self, policy: MotionPolicy) -> float:
        self.seen.append((policy.model.training, torch.is_grad_enabled()))
        return self.scores[len(self.seen) - 1]


def test_select_by_val_metric_is_the_default() -> None:
    assert DPOConfig().select_by == "val_metric" and parse_params({}).algo.dpo.select_by == "val_metric"


def test_select_by_val_metric_keeps_the_epoch_the_val_score_prefers(tmp_path: Path) -> None:
    # The validation pairs agree with the training ones, so the validation loss falls epoch after epoch and
    # would keep the last; the validation score prefers epoch 2.
    scores = [0.4, 0.8, 0.5]
    runs, records = {}, {}
    for select_by in ("val_metric", "val_loss"):
        records[select_by], score = Recorder(), FakeScore(scores)
        cfg = config(epochs=3, select_by=select_by)
        out = tmp_path / select_by
        runs[select_by] = train_dpo(tiny_policy("t5"), TRAIN, VAL, cfg, BETA, LORA, 0, out, records[select_by], score)
        assert score.seen == [(False, False)] * 3  # scored once an epoch, without dropout or gradients
        assert records[select_by].series("dpo/val_metric") == scores  # logged whichever metric selects
    metrics, record = runs["val_metric"], records["val_metric"]
    losses = record.series("dpo/val_loss")
    assert metrics["best_epoch"] == 2.0 and metrics["val_metric"] == 0.8 and metrics["val_loss"] == losses[1]
    assert runs["val_loss"]["best_epoch"] == 3.0 and losses == sorted(losses, reverse=True)
    # scoring does not disturb training: both runs trained alike
    assert record.series("dpo/train_loss") == records["val_loss"].series("dpo/train_loss")
    saved = evaluate_pairs(
        MotionPolicy.load(tmp_path / "val_metric"), VAL, initial_reference("t5", VAL, "sum"), config(), BETA
    )
    assert saved["loss"] == pytest.approx(losses[1], abs=1e-4) and saved["loss"] > losses[2] + 1e-3


def test_select_by_val_metric_needs_a_val_score(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="select_by val_metric needs a val_score"):
        train_dpo(tiny_policy(), TRAIN, VAL, config(select_by="val_metric"), BETA, LORA, 0, tmp_path)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------- determinism
def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("lora", [LORA, NO_LORA], ids=["lora", "full"])
def test_same_seed_same_saved_weights(lora: LoraConfig, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        runs[name] = train_dpo(tiny_policy("t5"), TRAIN, VAL, config(epochs=2), BETA, lora, seed, tmp_path / name)
    a, b, c = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert runs["a"] == runs["b"]
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed reaches training (shuffling, LoRA init)


# ------------------------------------------------------------------------------------------------ helpers
def test_evaluate_pairs_is_batch_independent_and_restores_training_mode() -> None:
    policy, ref = moved_policy()
    policy.model.train()
    one = evaluate_pairs(policy, VAL, ref, config(batch_size=1), BETA)
    assert policy.model.training
    policy.model.train()
    whole = evaluate_pairs(policy, VAL, ref, config(batch_size=8), BETA)
    assert one.keys() == whole.keys() == {"loss", "accuracy", "margin", *(f"accuracy_{d}" for d in DEGREES)}
    for key in one:
        assert one[key] == pytest.approx(whole[key], abs=1e-4)
    # a changed policy no longer sits on the reference
    assert whole["loss"] != pytest.approx(math.log(2)) and abs(whole["margin"]) > 1e-3


def test_train_dpo_needs_both_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dpo needs training and validation pairs \(got 16 and 0\)"):
        train_dpo(tiny_policy(), TRAIN, [], config(), BETA, LORA, 0, tmp_path)
    assert not any(tmp_path.iterdir())


def test_finetune_stage_rejects_an_unknown_algorithm(tmp_path: Path) -> None:
    from motionpref.pipeline import finetune as stage

    ctx = StageContext(root=tmp_path, run=None, item="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finetune@nope: unknown algorithm; expected one of dpo, rlhf, sopo"):
        stage.run(parse_params({}), ctx)
    assert not any(tmp_path.iterdir())
