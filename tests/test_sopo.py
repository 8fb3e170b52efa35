"""SoPo: semi-online pairs from retrieval embeddings, and training on tiny policy / VQ-VAE / retrieval models."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from motionpref.config import LoraConfig, PolicyTrainConfig, RetrievalConfig, SamplingConfig, SoPoConfig
from motionpref.models.generator import Generation, MotionGenerator
from motionpref.models.policy import MotionPolicy
from motionpref.models.retrieval import RetrievalModel, build_tokenizer
from motionpref.models.vqvae import MotionVQVAE, VQVAEConfig
from motionpref.train import sopo
from motionpref.train.policy import PolicyExample, train_policy
from motionpref.train.sopo import semi_online_pairs
from tests.policies import CAPTIONS, K, Recorder, job, tiny_policy


def train_sopo(generator, scorer, examples, motions, config, beta, lora, seed, out_dir, log=None) -> dict:  # noqa: ANN001
    return sopo.run(job(out_dir, lora, seed, beta, log), config, sopo.SoPoData(generator, scorer, examples, motions))


D = 7
EXAMPLES = [PolicyExample(f"clip{i}", (c,), (3 * i % K,) * 3 + (i + 1,)) for i, c in enumerate(CAPTIONS)]
MOTIONS = [np.random.default_rng(i).normal(size=(16, D)).astype(np.float32) for i in range(len(EXAMPLES))]
MEAN, STD = np.zeros(D, np.float32), np.ones(D, np.float32)
BETA = 0.1
LORA = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)
METRICS = (
    "loss",
    "preferred_term",
    "unpreferred_term",
    "beta_w",
    "beta_w_min",
    "beta_w_max",
    "valuable_fraction",
    "unpreferred_score",
    "best_sample_score",
    "similarity",
    "invalid_rate",
    "preferred_logratio",
)


# --------------------------------------------------------------------------------------- semi-online pairs
def test_semi_online_pairs_hand_computation() -> None:
    def unit(x: float, y: float) -> list[float]:
        return [float(x), float(y)]

    text = torch.tensor([unit(1, 0), unit(0, 1), unit(1, 0), unit(0, 1)])
    preferred = torch.tensor([unit(-0.6, 0.8), unit(0, -1), unit(1, 0), unit(0, -1)])
    samples = torch.tensor(
        [
            [unit(1, 0), unit(0, 1), unit(-0.6, 0.8)],  # scores 1.0, 0.5, 0.2 (the last is invalid)
            [unit(0.6, 0.8), unit(0.8, -0.6), unit(1, 0)],  # scores 0.9, 0.2, 0.5
            [unit(1, 0), unit(0, 1), unit(-1, 0)],  # nothing valid
            [unit(0, 1), unit(1, 0), unit(-1, 0)],  # only the first is valid: score 1.0
        ]
    )
    valid = torch.tensor([[True, True, False], [True, True, True], [False, False, False], [True, False, False]])
    loser, score, valuable, similarity = semi_online_pairs(text, preferred, samples, valid, tau=0.45)
    # The lowest TMR score cos / 2 + 0.5 among valid samples; the invalid 0.2 of row 0 is never the loser.
    assert loser[[0, 1, 3]].tolist() == [1, 1, 0]
    torch.testing.assert_close(score[[0, 1, 3]], torch.tensor([0.5, 0.2, 1.0]))
    assert valuable.tolist() == [False, True, False, False]  # 0.5 and 1.0 are not below 0.45; row 2 has none
    # S(x_w), Eq. 14: the lowest score cos / 2 + 0.5 of the dataset motion to a valid sample. Row 0: cosines -0.6,
    # 0.8 (the invalid sample's 1.0 is ignored); row 1: -0.8, 0.6, 0; row 2: no valid sample, 0; row 3: -1 with its
    # only valid sample.
    torch.testing.assert_close(similarity, torch.tensor([0.2, 0.1, 0.0, 0.0]))
    closest = semi_online_pairs(text, preferred, samples, valid, tau=0.45, s_w="max")
    torch.testing.assert_close(closest[3], torch.tensor([0.9, 0.8, 0.0, 0.0]))  # the named variant: the closest
    for a, b in zip(closest[:3], (loser, score, valuable), strict=True):  # S(x_w) alone depends on s_w
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="s_w must be 'min' or 'max', got 'mean'"):
        semi_online_pairs(text, preferred, samples, valid, tau=0.45, s_w="mean")
    # tau is a strict upper bound, and never makes a caption without a valid sample valuable
    assert semi_online_pairs(text, preferred, samples, valid, tau=0.5)[2].tolist() == [False, True, False, False]
    assert semi_online_pairs(text, preferred, samples, valid, tau=0.6)[2].tolist() == [True, True, False, False]
    assert semi_online_pairs(text, preferred, samples, valid, tau=1.0)[2].tolist() == [True, True, False, False]
    everything = semi_online_pairs(text, preferred, samples, torch.ones_like(valid), tau=0.45)
    assert everything[0][0].item() == 2 and everything[1][0].item() == pytest.approx(0.2)
    assert everything[3][0].item() == pytest.approx(0.2)
    # counted once valid, the identical third sample is the closest (score 1.0), never the farthest
    everything = semi_online_pairs(text, preferred, samples, torch.ones_like(valid), tau=0.45, s_w="max")
    assert everything[3][0].item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- tiny models
TINY_RETRIEVAL = RetrievalConfig(
    latent_dim=16, ff_dim=32, n_layers=1, n_heads=2, dropout=0.0, max_words=12, frames_per_token=2
)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny T5 policy taught the clips' codes, so its samples are well-formed motions."""
    policy = tiny_policy("t5", seed=0)
    out = tmp_path_factory.mktemp("sopo") / "sft"
    train_policy(
        policy, EXAMPLES, EXAMPLES, PolicyTrainConfig(epochs=30, batch_size=4, lr=1e-2, warmup_steps=0), 0, out
    )
    return out


@pytest.fixture(scope="module")
def vqvae() -> MotionVQVAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MotionVQVAE(VQVAEConfig(feature_dim=D, nb_code=K, code_dim=8, width=8, depth=1)).eval()


@pytest.fixture(scope="module")
def scorer() -> RetrievalModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return RetrievalModel(TINY_RETRIEVAL, build_tokenizer(CAPTIONS), MEAN, STD).eval()


Run = Callable[..., tuple[dict[str, float], Recorder, Path]]


@pytest.fixture()
def run_sopo(sft_dir: Path, vqvae: MotionVQVAE, scorer: RetrievalModel, tmp_path: Path) -> Run:
    def run(
        name: str = "out",
        policy: MotionPolicy | None = None,
        sampling: SamplingConfig | None = None,
        seed: int = 0,
        lora: LoraConfig = LORA,
        **overrides: object,
    ) -> tuple[dict[str, float], Recorder, Path]:
        values: dict[str, object] = {"k": 2, "epochs": 2, "batch_size": 2, "lr": 1e-2}
        config = SoPoConfig(**{**values, **overrides})
        policy = MotionPolicy.load(sft_dir) if policy is None else policy
        sampling = SamplingConfig(max_new_tokens=16, retries=2) if sampling is None else sampling
        generator = MotionGenerator(policy, vqvae, MEAN, STD, sampling)
        record = Recorder("sopo/")
        out = tmp_path / name
        metrics = train_sopo(generator, scorer, EXAMPLES, MOTIONS, config, BETA, lora, seed, out, record)
        return metrics, record, out

    return run


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------------------- training
def test_train_sopo_runs_logs_and_saves_a_loadable_policy(run_sopo: Run) -> None:
    metrics, record, out = run_sopo(variant="sopo", tau=0.45)
    steps = 2 * 2  # epochs * ceil(4 clips / batch 2)
    assert metrics["steps"] == steps and metrics["epochs"] == 2.0
    assert set(metrics) == {*METRICS, "first_loss", "steps", "epochs"}
    for name in METRICS:
        assert [s for n, _, s in record.logged if n == f"sopo/{name}"] == list(range(1, steps + 1)), name
    assert all(math.isfinite(v) for v in metrics.values())
    # the last epoch's means are what is returned, but beta_w's extremes are the run's
    assert metrics["loss"] == pytest.approx(np.mean(record.series("loss")[2:]))
    assert metrics["valuable_fraction"] == pytest.approx(np.mean(record.series("valuable_fraction")[2:]))
    assert metrics["unpreferred_term"] == pytest.approx(np.mean(record.series("unpreferred_term")[2:]))
    assert metrics["beta_w_min"] == min(record.series("beta_w_min"))
    assert metrics["beta_w_max"] == max(record.series("beta_w_max"))
    for low, mean, high in zip(*(record.series(n) for n in ("beta_w_min", "beta_w", "beta_w_max")), strict=True):
        assert BETA * (2.0 - 1.0) - 1e-6 <= low <= mean + 1e-6 and mean <= high + 1e-6 <= BETA * 2.0 + 2e-6
    # policy == reference at the first step (LoRA's B starts at zero): the loss is -log sigma(0), both terms 0
    assert record.series("loss")[0] == pytest.approx(math.log(2), abs=1e-6) == metrics["first_loss"]
    assert record.series("preferred_logratio")[0] == pytest.approx(0.0, abs=1e-6)
    assert record.series("preferred_term")[0] == pytest.approx(0.0, abs=1e-6)
    assert record.series("unpreferred_term")[0] == pytest.approx(0.0, abs=1e-6)
    assert all(0.0 <= s <= 1.0 for s in record.series("unpreferred_score"))
    loaded = MotionPolicy.load(out)
    assert not (out / "adapter_config.json").exists()  # the adapters are merged into a plain model
    batch = loaded.sample(CAPTIONS, [0, 1, 2, 3], max_new_tokens=16)
    assert len(batch.codes) == 4


def test_tau_and_variants_decide_which_losers_train(run_sopo: Run) -> None:
    def valuable(variant: str, tau: float) -> list[float]:
        _, record, _ = run_sopo(f"{variant}-{tau}", variant=variant, tau=tau)
        assert record.series("invalid_rate") == [0.0] * 4  # every caption has valid samples
        beta_w, similarity = record.series("beta_w"), record.series("similarity")
        if variant in ("sopo", "sopo_no_vu"):  # beta_w = beta (C - S(x_w)), C = 2
            assert beta_w == pytest.approx([BETA * (2.0 - s) for s in similarity], abs=1e-6)
        else:
            assert beta_w == pytest.approx([BETA] * 4)
        return record.series("valuable_fraction")

    assert valuable("sopo", 1.0) == [1.0] * 4  # every sample scores below 1: every loser is valuable
    assert valuable("sopo", 0.0) == [0.0] * 4  # no score is below 0: only the preferred term trains
    assert valuable("usopo", 0.0) == [0.0] * 4
    assert valuable("dsopo", 0.0) == [1.0] * 4  # no filter: the worst valid sample always trains
    assert valuable("sopo_no_vu", 0.0) == [1.0] * 4


def test_variants_differ_exactly_where_the_paper_says(run_sopo: Run, tmp_path: Path) -> None:
    for variant, tau in (("dsopo", 0.0), ("usopo", 1.0), ("usopo", 0.0), ("sopo_no_vu", 0.0), ("sopo", 1.0)):
        run_sopo(f"{variant}-{tau}", variant=variant, tau=tau)
    # with every loser valuable, the filter changes nothing
    assert same_weights(tmp_path / "dsopo-0.0", tmp_path / "usopo-1.0")
    assert same_weights(tmp_path / "sopo_no_vu-0.0", tmp_path / "sopo-1.0")
    # the loser term and the reweighting each change the update
    assert not same_weights(tmp_path / "dsopo-0.0", tmp_path / "usopo-0.0")
    assert not same_weights(tmp_path / "dsopo-0.0", tmp_path / "sopo_no_vu-0.0")


@pytest.mark.parametrize("variant", ["dsopo", "usopo", "sopo_no_vu", "sopo"])
@pytest.mark.parametrize("s_w", ["min", "max"])
def test_beta_w_is_beta_times_c_minus_s_per_sample(
    run_sopo: Run, monkeypatch: pytest.MonkeyPatch, variant: str, s_w: str
) -> None:
    """What each step hands the loss, caption by caption: beta_w = beta (C - S(x_w)) where the variant reweights
    (beta elsewhere), S(x_w) from ``semi_online_pairs`` with the configured ``s_w``, and the filter's mask."""
    pairs: list[tuple[torch.Tensor, torch.Tensor, str]] = []
    handed: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy_pairs(*args: object) -> tuple[torch.Tensor, ...]:
        out = semi_online_pairs(*args)  # type: ignore[arg-type]
        pairs.append((out[3], out[2], str(args[5])))
        return out

    loss = sopo.sopo_loss

    def spy_loss(*args: torch.Tensor) -> torch.Tensor:  # (pw, ref_w, pl, ref_l, beta_w, beta, valuable)
        handed.append((args[4].detach().cpu(), args[6].cpu()))
        return loss(*args)

    monkeypatch.setattr(sopo, "semi_online_pairs", spy_pairs)
    monkeypatch.setattr(sopo, "sopo_loss", spy_loss)
    c = 2.0 if s_w == "min" else 1.5
    _, record, _ = run_sopo(variant=variant, tau=0.9, c=c, s_w=s_w)
    assert len(pairs) == len(handed) == 4 and {s for _, _, s in pairs} == {s_w}
    for (similarity, valuable, _), (beta_w, used) in zip(pairs, handed, strict=True):
        assert similarity.shape == beta_w.shape == (2,)
        if variant in ("sopo_no_vu", "sopo"):
            torch.testing.assert_close(beta_w, BETA * (c - similarity))
        else:
            torch.testing.assert_close(beta_w, torch.full((2,), BETA))
        # the filter: the variants with it train the loser only where it scored below tau
        assert torch.equal(used, valuable) if variant in ("usopo", "sopo") else used.all()
    assert record.series("beta_w_min") == pytest.approx([float(b.min()) for b, _ in handed])
    assert record.series("beta_w_max") == pytest.approx([float(b.max()) for b, _ in handed])


def test_s_w_defaults_to_the_min_and_max_is_never_below_it(run_sopo: Run) -> None:
    assert SoPoConfig().s_w == "min"
    _, low, _ = run_sopo("min")
    _, high, _ = run_sopo("max", s_w="max")
    # the first step samples the same K motions (same seed, policy = reference): the closest is at least as close
    assert high.series("similarity")[0] >= low.series("similarity")[0]
    assert high.series("beta_w")[0] <= low.series("beta_w")[0]


def test_logged_terms_make_the_loss(run_sopo: Run) -> None:
    # one caption a step: the logged loss is exactly -log sigma(preferred_term - unpreferred_term)
    _, record, _ = run_sopo(batch_size=1, epochs=1, tau=1.0)
    terms = zip(record.series("preferred_term"), record.series("unpreferred_term"), strict=True)
    expected = [-torch.nn.functional.logsigmoid(torch.tensor(p - u)).item() for p, u in terms]
    assert record.series("loss") == pytest.approx(expected, abs=1e-5)
    assert record.series("loss")[-1] != pytest.approx(math.log(2), abs=1e-4)  # it trained


@dataclass
class HopelessGenerator(MotionGenerator):
    """Every sample of a caption in ``hopeless`` comes back invalid (no features), as when a policy never
    reaches the end token."""

    hopeless: frozenset[str] = frozenset()

    def generate(self, captions: Sequence[str], seeds: Sequence[int], temperature: float | None = None) -> Generation:
        out = super().generate(captions, seeds, temperature)
        out.features = [None if c in self.hopeless else f for c, f in zip(captions, out.features, strict=True)]
        return out


@pytest.mark.parametrize(("variant", "tau"), [("dsopo", 0.0), ("sopo", 1.0)])
def test_captions_without_a_valid_sample_have_no_loser(
    sft_dir: Path, vqvae: MotionVQVAE, scorer: RetrievalModel, tmp_path: Path, variant: str, tau: float
) -> None:
    config = SoPoConfig(variant=variant, tau=tau, k=2, epochs=2, batch_size=4, lr=1e-2)
    sampling = SamplingConfig(max_new_tokens=16, retries=2)
    record = Recorder("sopo/")
    generator = HopelessGenerator(
        MotionPolicy.load(sft_dir), vqvae, MEAN, STD, sampling, hopeless=frozenset(CAPTIONS[:1])
    )
    train_sopo(generator, scorer, EXAMPLES, MOTIONS, config, BETA, LORA, 0, tmp_path / "one", record)
    assert record.series("invalid_rate") == [0.25, 0.25]  # the first of four captions, both samples
    assert record.series("valuable_fraction") == [0.75, 0.75]

    # Nothing valid at all: no caption has a loser, S(x_w) = 0, and the preferred term alone still trains. (Were
    # the stand-in loser, the dataset motion itself, not masked out, dsopo's two terms would cancel exactly.)
    record = Recorder("sopo/")
    generator = HopelessGenerator(MotionPolicy.load(sft_dir), vqvae, MEAN, STD, sampling, hopeless=frozenset(CAPTIONS))
    config = config.model_copy(update={"lr": 1e-3})  # small steps: the log-ratio rises without overshooting
    metrics = train_sopo(generator, scorer, EXAMPLES, MOTIONS, config, BETA, LORA, 0, tmp_path / "none", record)
    assert record.series("invalid_rate") == [1.0, 1.0] and record.series("valuable_fraction") == [0.0, 0.0]
    assert record.series("similarity") == [0.0, 0.0] and math.isnan(metrics["unpreferred_score"])
    assert record.series("beta_w") == pytest.approx([BETA * (2.0 if variant == "sopo" else 1.0)] * 2)
    assert record.series("preferred_logratio")[1] > 1e-3
    assert not same_weights(tmp_path / "none", sft_dir)


def test_only_the_preferred_term_raises_the_preferred_log_ratio(run_sopo: Run) -> None:
    # usopo with tau = 0 never has a valuable loser: -log sigma(beta_w rho_w) pulls the dataset motion up.
    _, record, _ = run_sopo(variant="usopo", tau=0.0, batch_size=4, epochs=6, lr=1e-3)
    ratios = record.series("preferred_logratio")
    assert ratios[0] == pytest.approx(0.0, abs=1e-6)
    assert all(b > a for a, b in zip(ratios, ratios[1:], strict=False))
    assert record.series("loss")[-1] < math.log(2) - 1e-3


def test_captions_per_epoch_is_a_subset(run_sopo: Run) -> None:
    metrics, record, _ = run_sopo(captions_per_epoch=2, epochs=3)
    assert metrics["steps"] == 3.0 and len(record.series("loss")) == 3


@pytest.mark.parametrize("lora", [LORA, LoraConfig(enabled=False)], ids=["lora", "full"])
def test_train_sopo_is_deterministic_for_a_seed(run_sopo: Run, tmp_path: Path, lora: LoraConfig) -> None:
    a, _, _ = run_sopo("a", lora=lora)
    b, _, _ = run_sopo("b", lora=lora)
    c, _, _ = run_sopo("c", lora=lora, seed=1)
    assert a == b and same_weights(tmp_path / "a", tmp_path / "b")
    assert not same_weights(tmp_path / "a", tmp_path / "c")


def test_train_sopo_rejects_bad_inputs(
    sft_dir: Path, vqvae: MotionVQVAE, scorer: RetrievalModel, tmp_path: Path
) -> None:
    generator = MotionGenerator(MotionPolicy.load(sft_dir), vqvae, MEAN, STD)
    with pytest.raises(ValueError, match="4 examples but 3 motions"):
        train_sopo(generator, scorer, EXAMPLES, MOTIONS[:3], SoPoConfig(), BETA, LORA, 0, tmp_path / "x")
    with pytest.raises(ValueError, match="sopo: no training examples"):
        train_sopo(generator, scorer, [], [], SoPoConfig(), BETA, LORA, 0, tmp_path / "x")
    assert not (tmp_path / "x").exists()
