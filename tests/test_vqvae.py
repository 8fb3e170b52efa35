from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from motionpref.config import ConfigError, section_from_file
from motionpref.models.checkpoint import CheckpointError
from motionpref.models.vqvae import (
    MotionVQVAE,
    QuantizeEMAReset,
    VQVAEConfig,
    perplexity_of_counts,
    tokenize,
)
from motionpref.train.vqvae import (
    VQVAETrainConfig,
    lr_factor,
    mpjpe,
    reconstruction_loss,
    train_vqvae,
    velocity_loss,
    vqvae_loss,
    write_tokens,
)

D = 263
TINY = VQVAEConfig(feature_dim=D, nb_code=16, code_dim=8, width=16, depth=1)


def prototype_clips(n: int, seed: int) -> list[np.ndarray]:
    """Clips of 8-frame segments, each one of 4 fixed poses: a VQ-VAE can learn them in a few steps."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((4, D)).astype(np.float32)
    return [np.repeat(protos[rng.integers(0, 4, size=int(rng.integers(5, 10)))], 8, axis=0) for _ in range(n)]


def test_config_defaults_are_small_and_real_is_motiongpt():
    real = VQVAEConfig.real()
    assert (real.nb_code, real.code_dim, real.width, real.depth, real.down_t) == (512, 512, 512, 3, 2)
    assert real.downsample == 4
    cpu = VQVAEConfig()
    assert cpu.downsample == 4 and cpu.width < real.width and cpu.nb_code <= real.nb_code
    with pytest.raises(ValueError, match="activation"):
        VQVAEConfig(activation="tanh")
    with pytest.raises(ConfigError, match=r"config\.json: invalid parameters\n  nb_codes: unknown key"):
        section_from_file(VQVAEConfig, {"nb_codes": 3}, "vq/config.json")


def test_dilations_grow_in_encoder_and_shrink_in_decoder():
    model = MotionVQVAE(VQVAEConfig(feature_dim=D, nb_code=8, code_dim=8, width=8, depth=3))
    enc = [b.conv1.dilation[0] for b in model.encoder.model[2][1].model]
    dec = [b.conv1.dilation[0] for b in model.decoder.model[2][0].model]
    assert enc == [1, 3, 9]
    assert dec == [9, 3, 1]


def test_encode_decode_shapes_and_validation():
    torch.manual_seed(0)
    model = MotionVQVAE(TINY)
    x = torch.randn(3, 32, D)
    recon, commit, perplexity = model.train()(x)
    assert recon.shape == x.shape and commit.ndim == 0 and 1.0 <= perplexity.item() <= TINY.nb_code
    codes = model.eval().encode(x)
    assert codes.shape == (3, 8) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < model.codebook_size
    assert model.decode(codes).shape == (3, 32, D)
    with pytest.raises(ValueError, match="expected features"):
        model.encode(torch.randn(1, 32, 10))
    with pytest.raises(ValueError, match=r"integers in \[0, 16\)"):
        model.decode(torch.tensor([[16]]))


def test_quantize_picks_the_nearest_code_and_gradient_passes_straight_through():
    q = QuantizeEMAReset(nb_code=3, code_dim=2, mu=0.99)
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    x = torch.tensor([[1.0, 1.0], [9.0, 2.0], [-1.0, 8.0], [6.0, 0.0]])
    assert q.quantize(x).tolist() == [0, 1, 2, 1]
    q.initialised.fill_(True)
    z = x.t()[None].clone().requires_grad_(True)  # (1, C=2, N=4)
    z_q, commit, _, codes = q.eval()(z)
    assert codes.tolist() == [[0, 1, 2, 1]]
    expected = ((x - q.codebook[torch.tensor([0, 1, 2, 1])]) ** 2).mean()
    assert commit.item() == pytest.approx(expected.item())
    z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_ema_update_and_dead_code_reset_by_hand():
    torch.manual_seed(0)
    mu = 0.5
    q = QuantizeEMAReset(nb_code=2, code_dim=1, mu=mu).train()
    q.codebook.copy_(torch.tensor([[0.0], [100.0]]))
    q.code_sum.copy_(torch.tensor([[0.0], [100.0]]))
    q.code_count.fill_(1.0)
    q.initialised.fill_(True)
    x = torch.tensor([[1.0], [3.0], [2.0]])  # all nearest to code 0
    q(x.t()[None])
    # code 0: sum 0.5*0 + 0.5*6 = 3, count 0.5*1 + 0.5*3 = 2 -> centre 1.5
    assert q.code_sum[0, 0].item() == pytest.approx(3.0)
    assert q.code_count.tolist() == pytest.approx([2.0, 0.5])
    assert q.codebook[0, 0].item() == pytest.approx(1.5)
    # code 1 got nothing: count 0.5 < 1, so it is reset onto a latent of the batch (plus tiny noise)
    assert min(abs(q.codebook[1, 0].item() - v) for v in (1.0, 2.0, 3.0)) < 0.05


def test_perplexity_of_counts():
    assert perplexity_of_counts(torch.tensor([5.0, 5.0, 5.0, 5.0])).item() == pytest.approx(4.0, rel=1e-4)
    assert perplexity_of_counts(torch.tensor([7.0, 0.0, 0.0])).item() == pytest.approx(1.0, rel=1e-4)


def test_losses_by_hand():
    pred = torch.tensor([[[0.0], [1.0], [4.0]]])
    target = torch.tensor([[[0.0], [0.5], [1.0]]])
    # smooth L1: |d| < 1 -> 0.5 d^2, else |d| - 0.5
    assert reconstruction_loss(pred, target).item() == pytest.approx((0 + 0.125 + 2.5) / 3)
    # deltas: pred (1, 3), target (0.5, 0.5) -> differences 0.5, 2.5
    assert velocity_loss(pred, target).item() == pytest.approx((0.125 + 2.0) / 2)
    loss, parts = vqvae_loss(pred, target, torch.tensor(4.0), commit=0.02, vel=0.5)
    assert loss.item() == pytest.approx(2.625 / 3 + 0.08 + 0.5 * 1.0625)
    assert set(parts) == {"loss", "recon", "commit", "velocity"}


def test_lr_schedule():
    assert lr_factor(0, 4, (10,), 0.1) == pytest.approx(1 / 5)
    assert lr_factor(3, 4, (10,), 0.1) == pytest.approx(4 / 5)
    assert lr_factor(4, 4, (10,), 0.1) == 1.0
    assert lr_factor(13, 4, (10,), 0.1) == 1.0
    assert lr_factor(14, 4, (10, 20), 0.1) == pytest.approx(0.1)
    assert lr_factor(24, 4, (10, 20), 0.1) == pytest.approx(0.01)


def test_mpjpe_by_hand():
    a = np.zeros((2, 3, 3))
    b = np.zeros((2, 3, 3))
    b[:, 1, 0] = 3.0  # joint 1 off by 3 on every frame
    b[:, 2, 1] = 4.0  # joint 2 off by 4
    assert mpjpe(b, a, align_root=False) == pytest.approx((0 + 3 + 4) / 3)
    shifted = a + np.array([1.0, 2.0, 3.0])  # the whole body moved: no error once root-aligned
    assert mpjpe(shifted, a, align_root=True) == pytest.approx(0.0)
    assert mpjpe(shifted, a, align_root=False) == pytest.approx(np.sqrt(14))


def test_save_load_roundtrip_and_bad_weights(tmp_path):
    torch.manual_seed(1)
    model = MotionVQVAE(TINY).train()
    model(torch.randn(2, 16, D))  # initialise the codebook
    model.eval().save(tmp_path / "vq")
    loaded = MotionVQVAE.load(tmp_path / "vq")
    x = torch.randn(2, 24, D)
    assert torch.equal(model.encode(x), loaded.encode(x))
    assert torch.allclose(model.decode(model.encode(x)), loaded.decode(loaded.encode(x)))
    assert bool(loaded.quantizer.initialised)

    state = load_file(str(tmp_path / "vq" / "model.safetensors"))
    state["quantizer.codebook"] = torch.zeros(5, 8)
    save_file(state, str(tmp_path / "vq" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"quantizer.codebook.*expected shape \(16, 8\), got \(5, 8\)"):
        MotionVQVAE.load(tmp_path / "vq")
    with pytest.raises(FileNotFoundError, match="config.json"):
        MotionVQVAE.load(tmp_path / "nothing")


def test_a_bad_saved_config_is_a_checkpoint_error(tmp_path):
    MotionVQVAE(TINY).save(tmp_path / "vq")
    config = json.loads((tmp_path / "vq" / "config.json").read_text())
    (tmp_path / "vq" / "config.json").write_text(json.dumps({**config, "activation": "tanh"}))
    with pytest.raises(CheckpointError, match=r"vq/config\.json: invalid parameters\n  activation:"):
        MotionVQVAE.load(tmp_path / "vq")


def test_tokenize_crops_the_tail_to_a_multiple_of_4():
    torch.manual_seed(2)
    model = MotionVQVAE(TINY).train()
    model(torch.randn(2, 16, D))
    clip = np.random.default_rng(0).standard_normal((70, D)).astype(np.float32)
    codes = tokenize(model, clip)
    assert codes.shape == (17,) and codes.dtype == np.int64
    assert np.array_equal(codes, model.eval().encode(torch.from_numpy(clip[:68])[None])[0].numpy())
    assert model.training is False
    with pytest.raises(ValueError, match="fewer than the 4"):
        tokenize(model, clip[:3])


def _train(tmp_path, name, seed, steps=40, logged=None):
    clips = prototype_clips(12, seed=0)
    data = np.concatenate(clips)
    mean, std = data.mean(0), data.std(0) + 1e-3
    model_cfg = VQVAEConfig(feature_dim=D, nb_code=16, code_dim=16, width=32, depth=1)
    cfg = VQVAETrainConfig(steps=steps, warmup_steps=3, batch_size=8, window=16, lr=3e-3, log_every=10)
    log = None if logged is None else (lambda k, v, s: logged.append((k, v, s)))
    metrics = train_vqvae(clips[:10], clips[10:], mean, std, model_cfg, cfg, seed, tmp_path / name, log_metric=log)
    return metrics, load_file(str(tmp_path / name / "model.safetensors"))


def test_training_reduces_loss_reports_metrics_and_is_deterministic(tmp_path):
    logged: list = []
    metrics, weights = _train(tmp_path, "a", seed=3, logged=logged)
    losses = [v for k, v, _ in logged if k == "vqvae/train_loss"]
    assert len(losses) == 4
    assert losses[-1] < 0.8 * losses[0]
    for key in (
        "val_mpjpe_mm",
        "val_mpjpe_global_mm",
        "val_codebook_usage",
        "val_perplexity",
        "seconds_per_step",
    ):
        assert np.isfinite(metrics[key]), key
    assert 0 < metrics["val_codebook_usage"] <= 1
    assert 1 <= metrics["val_perplexity"] <= 16
    _, again = _train(tmp_path, "b", seed=3)
    assert weights.keys() == again.keys()
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    _, other = _train(tmp_path, "c", seed=4, steps=2)
    assert not torch.equal(weights["encoder.model.0.weight"], other["encoder.model.0.weight"])


def test_train_rejects_clips_shorter_than_the_window(tmp_path):
    clips = [np.zeros((10, D), np.float32)]
    with pytest.raises(ValueError, match="window=16"):
        train_vqvae(clips, [], np.zeros(D), np.ones(D), TINY, VQVAETrainConfig(window=16), 0, tmp_path / "x")


def test_write_tokens(tmp_path):
    torch.manual_seed(5)
    model = MotionVQVAE(TINY).train()
    model(torch.randn(2, 16, D))
    clips = prototype_clips(3, seed=1)
    mean, std = np.zeros(D, np.float32), np.ones(D, np.float32)
    assert write_tokens(model, ["a", "b", "M_c"], clips, mean, std, tmp_path / "tokens") == 3
    for name, clip in zip(["a", "b", "M_c"], clips, strict=True):
        saved = np.load(tmp_path / "tokens" / f"{name}.npy", allow_pickle=False)
        assert np.array_equal(saved, tokenize(model, clip)) and len(saved) == len(clip) // 4
    with pytest.raises(ValueError, match="not a plain file stem"):
        write_tokens(model, ["../evil"], clips[:1], mean, std, tmp_path / "tokens")
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == ["M_c.npy", "a.npy", "b.npy"]
