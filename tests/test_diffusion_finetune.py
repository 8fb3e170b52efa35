"""Preference finetuning of the diffusion policies (``train.diffusion``: SoPo and MoDiPO on MDM and MLD), the
diffusion sampler of the evaluation (``models.generator.DiffusionGenerator``), and the report pieces they feed.

Every model is tiny (width 16, one layer, a few frames, 2 DDIM steps) and untrained: the tests check what holds
by construction (policy = reference at the first step, shared noise, shapes, counts, bounds), never that a few
steps of training improve anything."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from motionpref.config import (
    DiffusionAlgoConfig,
    DiffusionSamplingConfig,
    DiffusionSoPoConfig,
    DiffusionTrainConfig,
    LoraConfig,
    MDMConfig,
    MLDConfig,
    MoDiPOConfig,
    RetrievalConfig,
    TextEncoderConfig,
)
from motionpref.evaluate.winrate import compare
from motionpref.models.diffusion import (
    DiffusionPolicy,
    MDMPolicy,
    MLDPolicy,
    build_text_encoder,
    is_diffusion_policy,
    load_policy,
)
from motionpref.models.diffusion_generator import DiffusionGenerator
from motionpref.models.generator import Generation
from motionpref.models.retrieval import RetrievalModel, build_tokenizer
from motionpref.pipeline import artifacts
from motionpref.prefs.judges import Perception
from motionpref.report.compare import compare_models, markdown
from motionpref.train.diffusion import (
    DiffusionExamples,
    DiffusionFinetuneData,
    DiffusionPair,
    _Finetune,
    encode_latents,
    labelled_pairs,
    length_batch,
    pad,
    run_diffusion_dpo,
    run_modipo,
    run_sopo,
    train_policy,
)
from motionpref.train.losses import diffusion_dpo_loss, dpo_sigmoid_loss
from motionpref.train.preference import FinetuneJob
from tests.policies import Recorder, tiny_policy

CAPTIONS = ["a man walks forward", "a person jumps up", "someone waves the left hand", "the figure turns around"]
F = 5
# Dropout stays at the configs' default (0.1), as the pipeline's policies have it: finetuning must switch it off.
TEXT = TextEncoderConfig(width=16, num_heads=2, ff_size=32)
MDM_TINY = MDMConfig(
    feature_dim=F, latent_dim=16, ff_size=32, num_layers=1, num_heads=2, clip_dim=16, diffusion_steps=50
)
MLD_TINY = MLDConfig(
    feature_dim=F,
    latent_dim=16,
    vae_ff_size=32,
    vae_num_layers=1,
    denoiser_ff_size=32,
    denoiser_num_layers=1,
    num_heads=2,
    text_encoded_dim=16,
    diffusion_steps=50,
)
SAMPLING = DiffusionSamplingConfig(steps=2, guidance=2.0)
TINY_RETRIEVAL = RetrievalConfig(
    latent_dim=16, ff_dim=32, n_layers=1, n_heads=2, dropout=0.0, max_words=12, frames_per_token=2
)
MEAN, STD = np.zeros(F, np.float32), np.ones(F, np.float32)
LENGTHS = [4, 6, 5, 7, 4]
MOTIONS = [np.random.default_rng(i).normal(size=(n, F)).astype(np.float32) for i, n in enumerate(LENGTHS)]
CLIP_CAPTIONS = [[CAPTIONS[i % 4], CAPTIONS[(i + 1) % 4]] for i in range(len(LENGTHS))]
LOG2 = math.log(2.0)


def policy(family: str, seed: int = 0) -> DiffusionPolicy:
    """A fresh tiny policy, as ``train_policy`` leaves it (train mode)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text = build_text_encoder(TEXT, CAPTIONS)
        return MDMPolicy(MDM_TINY, text) if family == "mdm" else MLDPolicy(MLD_TINY, text)


@pytest.fixture(scope="module")
def scorer() -> RetrievalModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return RetrievalModel(TINY_RETRIEVAL, build_tokenizer(CAPTIONS), MEAN, STD).eval()


def finetune_data(family: str, scorer: RetrievalModel) -> DiffusionFinetuneData:
    return DiffusionFinetuneData(policy(family), scorer, DiffusionExamples(MOTIONS, CLIP_CAPTIONS), MEAN, STD, SAMPLING)


def algo(captions: int = 4, epochs: int = 1) -> DiffusionAlgoConfig:
    return DiffusionAlgoConfig(
        captions_per_epoch=captions,
        batch_size=2,
        sopo=DiffusionSoPoConfig(k={"mdm": 2, "mld": 2}, beta=0.5, c=3.0),
        modipo=MoDiPOConfig(k=2, epochs=epochs),
    )


def job(out_dir: Path, beta: float | None = 10.0, log: Recorder | None = None) -> FinetuneJob:
    return FinetuneJob(seed=0, lora=LoraConfig(), out_dir=out_dir, beta=beta, log_metric=log)


def assert_saved(out: Path, trained: DiffusionPolicy) -> None:
    assert is_diffusion_policy(out)
    loaded = load_policy(out)
    assert type(loaded) is type(trained)
    state = trained.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key


# ------------------------------------------------------------------------------------------------ the loss


def test_diffusion_dpo_loss_is_the_hand_computation_and_dpo_on_negated_losses() -> None:
    policy_w, policy_l = [0.30, 1.20, 0.05], [0.50, 0.40, 0.90]
    ref_w, ref_l = [0.40, 1.00, 0.05], [0.45, 0.70, 0.60]
    beta = 3.0
    got = diffusion_dpo_loss(*(torch.tensor(v, dtype=torch.float64) for v in (policy_w, policy_l, ref_w, ref_l)), beta)
    for i in range(3):
        inside = (policy_w[i] - ref_w[i]) - (policy_l[i] - ref_l[i])
        want = -math.log(1.0 / (1.0 + math.exp(-(-beta / 2 * inside))))
        assert got[i].item() == pytest.approx(want, rel=1e-12)
    # the third pair's preferred loss equals the reference's: only the unpreferred term (policy worse) acts
    assert got[2].item() < LOG2 < got[1].item()
    negated = [-torch.tensor(v, dtype=torch.float64) for v in (policy_w, policy_l, ref_w, ref_l)]
    torch.testing.assert_close(got, dpo_sigmoid_loss(*negated, beta / 2), rtol=1e-12, atol=1e-12)
    # policy = reference: log 2 whatever the losses
    same = torch.tensor([0.3, 7.0])
    torch.testing.assert_close(
        diffusion_dpo_loss(same, same.flip(0), same, same.flip(0), 100.0), torch.full((2,), LOG2)
    )


# ------------------------------------------------------------------------------------------------ the sampler


@pytest.mark.parametrize("family", ["mdm", "mld"])
def test_generator_features_depend_on_each_rows_caption_length_and_seed_alone(family: str) -> None:
    # eta 1: the per-step noise is drawn from the row seeds too
    sampling = DiffusionSamplingConfig(steps=2, guidance=2.0, eta=1.0)
    captions = [CAPTIONS[0], CAPTIONS[1], CAPTIONS[2], CAPTIONS[3], CAPTIONS[0]]
    lengths, seeds = [3, 7, 5, 4, 6], [11, 12, 13, 14, 15]
    mean, std = np.arange(F, dtype=np.float32), np.full(F, 2.0, np.float32)
    gen = DiffusionGenerator(policy(family), mean, std, sampling, batch_size=2)  # 5 rows: batches of 2, 2, 1
    batched = gen.features(captions, lengths, seeds)
    assert [f.shape for f in batched] == [(n, F) for n in lengths]
    for i in range(len(captions)):
        alone = gen.features([captions[i]], [lengths[i]], [seeds[i]])[0]
        np.testing.assert_allclose(batched[i], alone, atol=1e-5, rtol=0, err_msg=f"row {i}")
    # un-normalised: x * std + mean of the policy's own normalised sample
    raw = gen.policy.sample([captions[1]], [lengths[1]], sampling, seeds=[seeds[1]])[0].numpy()
    np.testing.assert_allclose(batched[1], raw * std + mean, atol=1e-5, rtol=0)
    flat = DiffusionGenerator(gen.policy, mean, np.zeros(F, np.float32), sampling, batch_size=2)
    for motion, n in zip(flat.features(captions, lengths, seeds), lengths, strict=True):
        np.testing.assert_array_equal(motion, np.tile(mean, (n, 1)))


def test_generate_draws_lengths_from_the_pool_by_seed_and_has_no_temperature() -> None:
    pool = [3, 4, 6]
    gen = DiffusionGenerator(policy("mdm"), MEAN, STD, SAMPLING, lengths=pool, batch_size=2)
    captions, seeds = CAPTIONS[:3], [101, 202, 303]
    out = gen.generate(captions, seeds)
    want = [pool[np.random.default_rng(s).integers(len(pool))] for s in seeds]
    assert [len(f) for f in out.features] == want
    assert out.valid == [True] * 3 and out.attempts == [1] * 3 and out.codes == [[], [], []]
    assert out.seeds == seeds and out.n_invalid == 0 and out.n_invalid_first == 0
    again = gen.generate(captions, seeds, temperature=1.0)
    for a, b in zip(out.features, again.features, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    # a prompt's length is its seed's alone: another batch of prompts changes nothing
    assert len(gen.generate([CAPTIONS[3]], [seeds[1]]).features[0]) == want[1]
    with pytest.raises(ValueError, match="temperature"):
        gen.generate(captions, seeds, temperature=1.2)
    empty = DiffusionGenerator(gen.policy, MEAN, STD, SAMPLING)
    with pytest.raises(ValueError, match="lengths is empty"):
        empty.generate(captions, seeds)


def test_sample_fn_counts_samples_and_no_invalid_ones() -> None:
    gen = DiffusionGenerator(policy("mld"), MEAN, STD, SAMPLING, batch_size=2)
    counter: dict[str, int] = {}
    sample = gen.sample_fn(counter)
    motions = sample(CAPTIONS[:3], [4, 6, 5], [1, 2, 3])
    assert [m.shape for m in motions] == [(4, F), (6, F), (5, F)]  # the protocol's lengths
    assert counter == {"samples": 3, "invalid_first": 0, "invalid": 0}
    sample(CAPTIONS[:2], [3, 3], [4, 5])
    assert counter == {"samples": 5, "invalid_first": 0, "invalid": 0}
    assert len(gen.sample_fn()(CAPTIONS[:1], [3], [0])) == 1  # no counter: nothing to count


# ------------------------------------------------------------------------------------------------ batching


def test_length_batch_takes_neighbours_in_length_order_and_pad_masks() -> None:
    lengths = [7, 3, 9, 3, 5, 8, 4, 5]
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    rng = random.Random(0)
    starts = set()
    for _ in range(30):
        rows = length_batch(lengths, 3, rng)
        assert len(rows) == 3
        start = order.index(rows[0])
        assert rows == order[start : start + 3]
        starts.add(start)
    assert len(starts) > 1  # the batch is drawn at random, not always the shortest clips
    assert sorted(length_batch(lengths, 20, rng)) == list(range(len(lengths)))  # fewer clips than the batch

    motions = [np.full((n, F), i + 1, np.float32) for i, n in enumerate([2, 4, 3])]
    x, mask = pad(motions)
    assert x.shape == (3, 4, F) and x.dtype == torch.float32
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, True, True, False]]
    for i, n in enumerate([2, 4, 3]):
        assert torch.equal(x[i, :n], torch.from_numpy(motions[i]))
        assert not x[i, n:].any()


# ------------------------------------------------------------------------------------------------ finetuning


@pytest.mark.parametrize("family", ["mdm", "mld"])
def test_pair_losses_share_timestep_and_noise_and_start_at_the_reference(
    family: str, scorer: RetrievalModel, tmp_path: Path
) -> None:
    run = _Finetune(job(tmp_path), finetune_data(family, scorer), algo())
    x, _ = pad(MOTIONS[:3])
    lengths = LENGTHS[:3]
    l_w, l_l, r_w, r_l = run.pair_losses(x, x.clone(), lengths, CAPTIONS[:3])
    assert l_w.shape == (3,) and l_w.requires_grad and not r_w.requires_grad
    assert torch.isfinite(l_w).all() and (l_w > 0).all()
    # one timestep, noise (and, for MLD, latent) per pair: the same motion twice has the same losses
    torch.testing.assert_close(l_l, l_w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(r_l, r_w, rtol=1e-6, atol=1e-7)
    # the reference is a frozen copy and dropout is off: at the start the policy denoises as the reference
    torch.testing.assert_close(l_w.detach(), r_w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["mdm", "mld"])
def test_run_sopo_starts_at_log2_bounds_beta_w_and_saves(family: str, scorer: RetrievalModel, tmp_path: Path) -> None:
    data = finetune_data(family, scorer)
    before = {k: v.clone() for k, v in data.policy.state_dict().items()}
    trained = "model." if family == "mdm" else "denoiser."
    log = Recorder("sopo/")
    cfg = algo(captions=4)
    out = run_sopo(job(tmp_path / "out", beta=None, log=log), cfg, data, family)
    assert out["steps"] == 2.0  # 4 captions in batches of 2
    assert out["first_loss"] == pytest.approx(LOG2, abs=1e-5)  # policy = reference at step 1
    assert log.series("loss")[0] == out["first_loss"] and len(log.series("loss")) == 2
    beta, c = cfg.sopo.beta, cfg.sopo.c
    assert beta * (c - 1) - 1e-6 <= out["beta_w_min"] <= out["beta_w_max"] <= beta * c + 1e-6
    assert 0.0 <= out["valuable_fraction"] <= 1.0
    assert out["preference_seconds"] > 0
    assert out["preference_seconds_per_caption"] == pytest.approx(out["preference_seconds"] / 4)
    # only the denoiser trains (in place): the text encoder and MLD's VAE stay as they were
    after = data.policy.state_dict()
    for k, v in before.items():
        assert k.startswith(trained) or torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith(trained))
    assert_saved(tmp_path / "out", data.policy)
    token = tmp_path / "token"
    tiny_policy("t5").save(token)
    assert not is_diffusion_policy(token)
    assert not is_diffusion_policy(tmp_path / "missing")


@pytest.mark.parametrize(("family", "online"), [("mdm", False), ("mdm", True), ("mld", False), ("mld", True)])
def test_run_modipo_starts_at_log2_counts_steps_and_saves(
    family: str, online: bool, scorer: RetrievalModel, tmp_path: Path
) -> None:
    data = finetune_data(family, scorer)
    cfg = algo(captions=3, epochs=2)
    with pytest.raises(ValueError, match="needs a beta"):
        run_modipo(job(tmp_path / "out", beta=None), cfg, data, online)
    log = Recorder("modipo/")
    out = run_modipo(job(tmp_path / "out", log=log), cfg, data, online)
    assert out["first_loss"] == pytest.approx(LOG2, abs=1e-5)
    assert out["steps"] == 2 * math.ceil(3 / 2) and out["epochs"] == 2.0
    assert len(log.series("loss")) == 4 and log.series("loss")[0] == out["first_loss"]
    assert out["score_gap"] >= 0.0 and 0.0 <= out["accuracy"] <= 1.0  # best minus worst of K samples
    assert out["preference_seconds"] > 0
    generated = 3 * (2 if online else 1)  # offline draws the pairs once
    assert out["preference_seconds_per_caption"] == pytest.approx(out["preference_seconds"] / generated)
    assert_saved(tmp_path / "out", data.policy)


@pytest.mark.parametrize("family", ["mdm", "mld"])
def test_pair_losses_of_motions_of_different_lengths_are_each_motions_own(
    family: str, scorer: RetrievalModel, tmp_path: Path
) -> None:
    """A labelled pair's two samples may differ in length: each loss is the one of its motion at its own length
    (its mask), so the padding of the longer one changes nothing."""
    run = _Finetune(job(tmp_path), finetune_data(family, scorer), algo())
    x_w, _ = pad([MOTIONS[0][:4], MOTIONS[1][:4]])
    x_l, _ = pad([MOTIONS[2][:5], MOTIONS[3][:7]])
    x_w = torch.nn.functional.pad(x_w, (0, 0, 0, 3))  # both padded to 7 frames
    state = run.generator.get_state()
    l_w, l_l, r_w, r_l = run.pair_losses(x_w, x_l, [4, 4], CAPTIONS[:2], [5, 7])
    run.generator.set_state(state)
    l_w2, _, _, _ = run.pair_losses(x_w, x_w.clone(), [4, 4], CAPTIONS[:2])
    torch.testing.assert_close(l_w, l_w2, rtol=1e-6, atol=1e-7)  # the preferred side is blind to the other's length
    assert not torch.allclose(l_l, l_w)
    with pytest.raises(ValueError, match="padded to 7 and 5 frames"):
        run.pair_losses(x_w, x_l[:, :5], [4, 4], CAPTIONS[:2], [5, 5])


def test_labelled_pairs_read_and_normalise_the_training_split_and_name_a_bad_file(tmp_path: Path) -> None:
    import pandas as pd

    mean, std = np.full(F, 2.0, np.float32), np.full(F, 4.0, np.float32)
    for name, n in (("a", 4), ("b", 6), ("c", 5)):
        np.save(tmp_path / f"{name}.npy", np.full((n, F), 6.0, np.float32))
    table = pd.DataFrame(
        {
            "pair_id": ["p1", "p2"],
            "prompt": ["a man walks forward", "a person jumps up"],
            "split": ["train", "val"],
            "chosen_features": ["a.npy", "c.npy"],
            "rejected_features": ["b.npy", "a.npy"],
        }
    )
    (pair,) = labelled_pairs(table, tmp_path, mean, std, "train", "prefs.parquet")
    assert pair.caption == "a man walks forward" and pair.score_gap is None
    assert pair.preferred.shape == (4, F) and pair.rejected.shape == (6, F)
    assert torch.equal(pair.preferred, torch.ones(4, F))  # (6 - 2) / 4
    with pytest.raises(ValueError, match=r"prefs.parquet: no preferences in split 'test'"):
        labelled_pairs(table, tmp_path, mean, std, "test", "prefs.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['chosen_features'\]"):
        labelled_pairs(table.drop(columns="chosen_features"), tmp_path, mean, std, "train", "prefs.parquet")
    np.save(tmp_path / "b.npy", np.zeros((6, F + 1), np.float32))
    with pytest.raises(ValueError, match=r"pair 'p1': b.npy has shape \(6, 6\); expected \(T, 5\)"):
        labelled_pairs(table, tmp_path, mean, std, "train", "prefs.parquet")
    (tmp_path / "b.npy").write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match=r"pair 'p1': cannot read b.npy"):
        labelled_pairs(table, tmp_path, mean, std, "train", "prefs.parquet")


@pytest.mark.parametrize("family", ["mdm", "mld"])
def test_run_diffusion_dpo_on_labelled_pairs_starts_at_log2_and_counts_steps(
    family: str, scorer: RetrievalModel, tmp_path: Path
) -> None:
    data = finetune_data(family, scorer)
    pairs = [
        DiffusionPair(CAPTIONS[i % 4], torch.from_numpy(MOTIONS[i]), torch.from_numpy(MOTIONS[(i + 1) % 5]))
        for i in range(5)
    ]
    cfg = algo().model_copy(update={"dpo": algo().dpo.model_copy(update={"epochs": 2})})
    with pytest.raises(ValueError, match="at least one labelled pair"):
        run_diffusion_dpo(job(tmp_path / "out"), cfg, data, [])
    log = Recorder("dpo/")
    out = run_diffusion_dpo(job(tmp_path / "out", log=log), cfg, data, pairs)
    assert out["first_loss"] == pytest.approx(LOG2, abs=1e-5)  # policy = reference at step 1
    assert out["steps"] == 2 * math.ceil(5 / 2) and out["pairs"] == 5.0 and out["epochs"] == 2.0
    assert len(log.series("loss")) == 6 and "score_gap" not in out  # no scorer ranked labelled pairs
    assert 0.0 <= out["accuracy"] <= 1.0
    assert_saved(tmp_path / "out", data.policy)


def test_train_policy_needs_the_vae_stage_for_mld_and_trains_mdm() -> None:
    data = DiffusionExamples(MOTIONS, CLIP_CAPTIONS)
    train = DiffusionTrainConfig(steps=3, batch_size=2, log_every=1)
    with pytest.raises(ValueError, match="vae_train"):
        train_policy(policy("mld"), data, train, seed=0)
    log = Recorder()
    out = train_policy(policy("mdm"), data, train, seed=0, log=log)
    assert set(out) == {"denoiser_first_loss", "denoiser_loss", "denoiser_steps"}
    assert math.isfinite(out["denoiser_first_loss"]) and math.isfinite(out["denoiser_loss"])
    assert out["denoiser_steps"] == 3.0 and out["denoiser_loss"] == log.series("denoiser/loss")[-1]
    assert len(log.series("denoiser/loss")) == 3

    # MLD: the VAE stage, then the denoiser on the frozen VAE
    mld = policy("mld")
    vae_after_its_stage: list[dict[str, torch.Tensor]] = []

    def snapshot(name: str, value: float, step: int) -> None:
        if name == "vae/loss":
            vae_after_its_stage[:] = [{k: v.clone() for k, v in mld.vae.state_dict().items()}]

    vae_train = DiffusionTrainConfig(steps=2, batch_size=2, log_every=1)
    out = train_policy(mld, data, DiffusionTrainConfig(steps=2, batch_size=2, log_every=1), 0, vae_train, snapshot)
    assert set(out) == {f"{s}_{k}" for s in ("vae", "denoiser") for k in ("first_loss", "loss", "steps")}
    assert all(math.isfinite(v) for v in out.values())
    for k, v in mld.vae.state_dict().items():
        assert torch.equal(v, vae_after_its_stage[0][k]), k
    with pytest.raises(ValueError, match="no training clips"):
        DiffusionExamples([], [])


@pytest.mark.parametrize(
    ("schedule", "factors"),
    [("constant", [1.0] * 4), ("linear", [1.0, 0.75, 0.5, 0.25]), ("cosine", [1.0, 0.8536, 0.5, 0.1464])],
)
def test_train_policy_steps_the_learning_rate_schedule(
    schedule: str, factors: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def recording(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    train = DiffusionTrainConfig(steps=4, batch_size=2, lr=0.01, lr_schedule=schedule)
    train_policy(policy("mdm"), DiffusionExamples(MOTIONS, CLIP_CAPTIONS), train, seed=0)
    assert seen == pytest.approx([0.01 * f for f in factors], abs=1e-6)


def test_mld_denoiser_trains_on_latents_encoded_once() -> None:
    data = DiffusionExamples(MOTIONS, CLIP_CAPTIONS)
    mld = policy("mld")
    mld.vae.eval()
    # batched with padding, each clip's latent is the posterior mean of the clip encoded alone
    latents = encode_latents(mld, data, batch_size=2)
    for i, motion in enumerate(MOTIONS):
        x, mask = pad([motion])
        alone = mld.to_diffusion(x, mask)[0][0]
        torch.testing.assert_close(latents[i], alone, atol=1e-5, rtol=1e-5)

    encoder_calls: list[str] = []
    vae_steps: list[int] = []

    def after_a_vae_step(name: str, value: float, step: int) -> None:
        if name == "vae/loss":
            vae_steps.append(step)
            encoder_calls.clear()  # count only the calls after the VAE stage's last step

    hook = mld.vae.encoder.register_forward_hook(lambda *_: encoder_calls.append("encode"))
    vae_train = DiffusionTrainConfig(steps=2, batch_size=2, log_every=1)
    try:
        train_policy(mld, data, DiffusionTrainConfig(steps=4, batch_size=2), 0, vae_train, after_a_vae_step)
    finally:
        hook.remove()
    assert vae_steps == [1, 2]
    # ceil(5 clips / 2) caching batches; the 4 denoiser steps never run the VAE
    assert len(encoder_calls) == math.ceil(len(MOTIONS) / 2)


# ------------------------------------------------------------------------------------------------ win rates


class ChoosesB:
    """A labeler who always prefers side b, clearly: only ``identical`` turns a pair into a tie."""

    def judgment(self, a: Perception, b: Perception, rng: np.random.Generator) -> tuple[str, str | None]:
        return "b", "better"


def generation(features: list[np.ndarray | None], codes: list[list[int]]) -> Generation:
    n = len(features)
    return Generation(features, codes, list(range(n)), [1] * n, [f is not None for f in features])


SEEN = [Perception(0.5, 1.0, True)] * 3


def test_compare_tells_diffusion_motions_apart_by_their_features() -> None:
    motion = np.random.default_rng(0).normal(size=(4, F)).astype(np.float32)
    sft = generation([motion, motion, motion], [[], [], []])
    finetuned = generation([motion.copy(), motion + 1e-3, None], [[], [], []])
    verdicts = compare(sft, finetuned, SEEN, SEEN, ChoosesB(), np.random.default_rng(0))  # type: ignore[arg-type]
    assert verdicts == ["identical", "win", "win"]


def test_compare_ties_token_motions_with_equal_codes_whatever_the_decoders_rounding() -> None:
    # The same codes decoded in batches of different sizes differ in the last bits (the VQ-VAE's convolutions
    # round differently); sampling the same tokens is still the same motion.
    motion = np.random.default_rng(1).normal(size=(8, F)).astype(np.float32)
    rounded = np.nextafter(motion, np.float32(np.inf))
    sft = generation([motion, motion, motion], [[1, 2], [1, 2], [3, 4]])
    finetuned = generation([rounded, motion, motion], [[1, 2], [1, 2, 5], [3, 4]])
    verdicts = compare(sft, finetuned, SEEN, SEEN, ChoosesB(), np.random.default_rng(0))  # type: ignore[arg-type]
    assert verdicts == ["identical", "win", "identical"]


# ------------------------------------------------------------------------------------------------ reports


def test_base_model_of_finetuned_models() -> None:
    assert artifacts.base_model("mdm_sopo") == "mdm"
    assert artifacts.base_model("mld_modipo_online") == "mld"
    assert artifacts.base_model("mdm_modipo_s2") == "mdm"
    assert artifacts.base_model("dpo_s1") == "sft"
    assert artifacts.base_model("sopo") == "sft"


def metrics_report(r1: list[float]) -> dict:
    reps = {"r_precision_top1": r1, "r_precision_top3": [x + 0.2 for x in r1], "mm_dist": [3.0] * len(r1)}
    reps["fid"] = [0.5] * len(r1)
    return {"metrics": {k: {"mean": sum(v) / len(v), "ci95": 0.01} for k, v in reps.items()}, "replications": reps}


def test_report_markdown_has_the_title_and_a_preference_time_row_per_model() -> None:
    comparison = compare_models({"mdm": metrics_report([0.4, 0.5]), "mdm_sopo": metrics_report([0.45, 0.5])}, "mdm")
    times = {
        "mdm_sopo": {"preference_seconds": 12.345, "preference_seconds_per_caption": 0.1234},
        "mdm_modipo": {"preference_seconds": 3.0, "preference_seconds_per_caption": 0.0071},
    }
    text = markdown(comparison, [], title="MDM-style diffusion policy", preference_time=times)
    assert text.startswith("# MDM-style diffusion policy\n")
    assert "## Preference generation time" in text
    assert "| mdm_sopo | 12.3 | 0.123 |" in text and "| mdm_modipo | 3.0 | 0.007 |" in text
    assert text.index("## Against `mdm`") < text.index("## Preference generation time")
    plain = markdown(comparison, [])
    assert plain.startswith("# Models compared\n") and "Preference generation time" not in plain
