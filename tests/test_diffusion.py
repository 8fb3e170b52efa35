from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from pydantic import ValidationError
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config

from motionpref.config import DiffusionSamplingConfig, MDMConfig, MLDConfig, TextEncoderConfig
from motionpref.models.checkpoint import CheckpointError
from motionpref.models.diffusion import (
    CLIPTextEncoder,
    MDMPolicy,
    MLDPolicy,
    WordTextEncoder,
    build_text_encoder,
    denoising_losses,
    lengths_to_mask,
    load_policy,
    snr,
)

CAPTIONS = ["a person walks forward", "a man jumps up", "someone waves the right hand", "the person turns around"]
F = 6
TEXT = TextEncoderConfig(width=16, num_heads=2, ff_size=32)
MDM_TINY = MDMConfig(feature_dim=F, latent_dim=16, ff_size=32, num_layers=2, num_heads=2, clip_dim=16)
MLD_TINY = MLDConfig(
    feature_dim=F, latent_dim=8, vae_ff_size=16, vae_num_layers=3, denoiser_ff_size=16, num_heads=2, text_encoded_dim=16
)
FAST = DiffusionSamplingConfig(steps=5, guidance=2.5)


def mdm(config: MDMConfig = MDM_TINY, seed: int = 0) -> MDMPolicy:
    torch.manual_seed(seed)
    return MDMPolicy(config, WordTextEncoder.from_captions(TEXT, CAPTIONS))


def mld(config: MLDConfig = MLD_TINY, seed: int = 0) -> MLDPolicy:
    torch.manual_seed(seed)
    return MLDPolicy(config, WordTextEncoder.from_captions(TEXT, CAPTIONS))


def batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    mask = lengths_to_mask(lengths)
    motions = torch.randn(len(lengths), mask.shape[1], F, generator=torch.Generator().manual_seed(seed))
    return motions.masked_fill(~mask[..., None], 0.0), mask


# ------------------------------------------------------------------------------------------------ configs


def test_real_sizes_are_the_published_models() -> None:
    real = MDMConfig.real()
    assert (real.latent_dim, real.ff_size, real.num_layers, real.num_heads, real.clip_dim) == (512, 1024, 8, 4, 512)
    assert real.diffusion_steps == 50 and real.mask_frames and MDMConfig.real(251).feature_dim == 251
    m = MLDConfig.real()
    assert (m.latent_size, m.latent_dim, m.vae_num_layers, m.denoiser_num_layers, m.text_encoded_dim) == (
        1,
        256,
        9,
        9,
        768,
    )
    assert DiffusionSamplingConfig.mdm().guidance == 2.5 and DiffusionSamplingConfig.mld().guidance == 7.5
    assert (
        TextEncoderConfig.mdm_clip(Path("c")).max_length == 22
        and TextEncoderConfig.mld_clip(Path("c")).max_length == 77
    )
    with pytest.raises(ValidationError, match="must be odd"):
        MLDConfig(vae_num_layers=2)
    with pytest.raises(ValidationError, match="pos_embed_max_len"):
        MDMConfig(pos_embed_max_len=100)
    with pytest.raises(ValidationError, match="clip_dir"):
        TextEncoderConfig(kind="clip")


# ------------------------------------------------------------------------------------------------ MDM / MLD modules


def test_mdm_state_dict_has_mdm_trans_enc_keys() -> None:
    policy = mdm()
    layer = [
        "self_attn.in_proj_weight",
        "self_attn.in_proj_bias",
        "self_attn.out_proj.weight",
        "self_attn.out_proj.bias",
        "linear1.weight",
        "linear1.bias",
        "linear2.weight",
        "linear2.bias",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
    ]
    expected = {f"seqTransEncoder.layers.{i}.{k}" for i in range(2) for k in layer} | {
        f"{m}.{p}"
        for m in (
            "input_process.poseEmbedding",
            "embed_timestep.time_embed.0",
            "embed_timestep.time_embed.2",
            "embed_text",
            "output_process.poseFinal",
        )
        for p in ("weight", "bias")
    }
    state = policy.model.state_dict()
    assert set(state) == expected
    assert state["input_process.poseEmbedding.weight"].shape == (16, F)
    assert state["embed_text.weight"].shape == (16, 16)
    # MDM's timestep embedder reads the frame table it shares with the sequence
    assert policy.model.embed_timestep.sequence_pos_encoder is policy.model.sequence_pos_encoder
    assert policy.model.sequence_pos_encoder.pe.shape == (5000, 16)


def test_mld_state_dict_has_mld_keys() -> None:
    state = mld().state_dict()
    assert {k.split(".")[0] for k in state} == {"vae", "denoiser", "text_encoder"}
    assert state["vae.global_motion_token"].shape == (2, 8)
    assert state["vae.query_pos_encoder.pe"].shape == (500, 1, 8)
    assert state["vae.skel_embedding.weight"].shape == (8, F) and state["vae.final_layer.weight"].shape == (F, 8)
    assert state["denoiser.time_embedding.linear_1.weight"].shape == (8, 16)
    assert state["denoiser.emb_proj.1.weight"].shape == (8, 16)
    assert state["denoiser.query_pos.pe"].shape == (500, 1, 8)
    for part in ("vae.encoder", "vae.decoder", "denoiser.encoder"):
        assert {f"{part}.input_blocks.0.linear1.weight", f"{part}.middle_block.norm1.bias"} <= set(state)
        assert {f"{part}.output_blocks.0.norm2.weight", f"{part}.linear_blocks.0.weight", f"{part}.norm.bias"} <= set(
            state
        )
    assert "vae.decoder.middle_block.multihead_attn.in_proj_weight" in state
    same_width = MLDConfig(feature_dim=F, latent_dim=16, num_heads=2, text_encoded_dim=16)
    assert not any(k.startswith("denoiser.emb_proj") for k in mld(same_width).state_dict())


def test_shapes_and_masks() -> None:
    policy = mdm()
    motions, mask = batch([5, 9, 7])
    t = torch.tensor([0, 500, 999])
    cond = policy.condition(CAPTIONS[:3])
    assert cond.shape == (3, 16)
    assert policy.denoise(motions, t, cond, mask).shape == (3, 9, F)
    latent = mld()
    z, mu, logvar = latent.vae.encode(motions, mask)
    assert z.shape == mu.shape == logvar.shape == (3, 1, 8)
    decoded = latent.vae.decode(z, mask)
    assert decoded.shape == (3, 9, F) and (decoded[0, 5:] == 0).all() and (decoded[0, :5] != 0).any()
    assert latent.denoise(z, t, latent.condition(CAPTIONS[:3]), None).shape == (3, 1, 8)
    with pytest.raises(ValueError, match="lengths"):
        lengths_to_mask([3, 0])


def test_mdm_attends_only_to_valid_frames() -> None:
    policy = mdm().eval()
    motions, mask = batch([4, 9])
    t, cond = torch.tensor([10, 10]), policy.condition(CAPTIONS[:2])
    changed = motions.clone()
    changed[0, 4:] = 100.0
    with torch.no_grad():
        a, b = policy.denoise(motions, t, cond, mask), policy.denoise(changed, t, cond, mask)
    torch.testing.assert_close(a[0, :4], b[0, :4])


def test_mdm_skips_the_inference_fast_path_on_the_cpu_with_the_same_outputs() -> None:
    """The fast path's masked softmax is most of a CPU forward: MDM's forward runs the standard path and puts
    the global switch back as it found it."""
    policy = mdm().eval()
    motions, mask = batch([4, 9, 6])
    t, cond = torch.tensor([10, 500, 999]), policy.condition(CAPTIONS[:3])
    seen: list[bool] = []
    hook = policy.model.seqTransEncoder.register_forward_pre_hook(
        lambda *_: seen.append(torch.backends.mha.get_fastpath_enabled())
    )
    with torch.no_grad():
        ours = policy.denoise(motions, t, cond, mask)
        assert seen == [False] and torch.backends.mha.get_fastpath_enabled()
        # the fast path's own result: the encoder called directly, the switch on
        model = policy.model
        emb = model.embed_text(cond) + model.embed_timestep(t)
        seq = model.sequence_pos_encoder(torch.cat([emb[:, None], model.input_process(motions)], dim=1))
        padding = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], dim=1)
        fast = model.output_process(model.seqTransEncoder(seq, src_key_padding_mask=padding)[:, 1:])
    hook.remove()
    assert seen[-1] is True  # the direct call ran with the switch on
    torch.testing.assert_close(ours[mask], fast[mask], atol=1e-5, rtol=1e-5)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            policy.denoise(motions, t, cond, mask)
        assert not torch.backends.mha.get_fastpath_enabled()  # a caller's own choice is kept
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


# ------------------------------------------------------------------------------------------------ schedulers, losses


def _mdm_cosine_betas(steps: int) -> torch.Tensor:
    # MDM's get_named_beta_schedule("cosine") (improved DDPM's), written out
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)])


def test_schedulers_are_diffusers_with_each_models_schedule() -> None:
    policy, latent = mdm(), mld()
    assert isinstance(policy.noise_scheduler, DDPMScheduler) and isinstance(policy.sampling_scheduler(), DDIMScheduler)
    cfg = policy.sampling_scheduler().config
    assert (cfg.prediction_type, cfg.beta_schedule, cfg.num_train_timesteps, cfg.clip_sample) == (
        "sample",
        "squaredcos_cap_v2",
        1000,
        False,
    )
    torch.testing.assert_close(policy.noise_scheduler.betas, _mdm_cosine_betas(1000).float())
    assert policy.noise_scheduler.config.prediction_type == "sample"
    cfg = latent.sampling_scheduler().config
    assert (cfg.prediction_type, cfg.beta_schedule, cfg.beta_start, cfg.beta_end) == (
        "epsilon",
        "scaled_linear",
        0.00085,
        0.012,
    )
    assert (cfg.set_alpha_to_one, cfg.steps_offset, cfg.clip_sample) == (False, 1, False)
    assert latent.noise_scheduler.config.variance_type == "fixed_small"
    scaled = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    torch.testing.assert_close(latent.noise_scheduler.betas, scaled)


def test_denoising_losses_are_x0_error_for_mdm_and_epsilon_error_for_mld() -> None:
    policy = mdm().eval()
    x0, mask = batch([3, 5])
    t, noise = torch.tensor([7, 400]), torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    cond = policy.condition(CAPTIONS[:2])
    a = policy.noise_scheduler.alphas_cumprod[t][:, None, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.no_grad():
        got = denoising_losses(policy, x0, mask, cond, t, noise)
        prediction = policy.model(x_t, t, cond, mask)
    for i, n in enumerate([3, 5]):
        want = ((prediction[i, :n] - x0[i, :n]) ** 2).sum() / (n * F)
        torch.testing.assert_close(got[i], want)

    latent = mld().eval()
    z = torch.randn(2, 1, 8, generator=torch.Generator().manual_seed(4))
    eps = torch.randn(2, 1, 8, generator=torch.Generator().manual_seed(5))
    cond = latent.condition(CAPTIONS[:2])
    a = latent.noise_scheduler.alphas_cumprod[t][:, None, None]
    with torch.no_grad():
        got = denoising_losses(latent, z, None, cond, t, eps)
        want = ((latent.denoiser(a.sqrt() * z + (1 - a).sqrt() * eps, t, cond) - eps) ** 2).mean((1, 2))
    torch.testing.assert_close(got, want)


def test_x0_error_times_snr_is_the_implied_epsilon_error() -> None:
    policy = mdm().eval()
    x0, mask = batch([6, 6])
    t, noise = torch.tensor([3, 900]), torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    cond = policy.condition(CAPTIONS[:2])
    with torch.no_grad():
        x0_error = denoising_losses(policy, x0, mask, cond, t, noise)
        x_t = policy.noise_scheduler.add_noise(x0, noise, t)
        x0_hat = policy.model(x_t, t, cond, mask)
    a = policy.noise_scheduler.alphas_cumprod[t][:, None, None]
    eps_hat = (x_t - a.sqrt() * x0_hat) / (1 - a).sqrt()
    eps_error = ((eps_hat - noise) ** 2).mean((1, 2))
    torch.testing.assert_close(eps_error, snr(policy, t) * x0_error, rtol=1e-4, atol=1e-6)


def test_a_few_training_steps_reduce_the_loss() -> None:
    policy = mdm(MDMConfig(feature_dim=F, latent_dim=32, ff_size=64, num_layers=1, num_heads=2, clip_dim=16))
    texts = [CAPTIONS[i % 2] for i in range(8)]
    lengths = [6, 8, 7, 8, 5, 8, 6, 7]
    mask = lengths_to_mask(lengths)
    frames = torch.arange(8, dtype=torch.float32)[None, :, None]
    phase = torch.tensor([0.0 if i % 2 == 0 else 1.5 for i in range(8)])[:, None, None]
    motions = torch.sin(frames * 0.8 + phase + torch.arange(F)[None, None, :]).masked_fill(~mask[..., None], 0.0)
    probe = torch.Generator().manual_seed(11)
    t = torch.randint(0, 1000, (64,), generator=probe)
    noise = torch.randn(64, 8, F, generator=probe)

    def probe_loss() -> float:
        policy.eval()
        with torch.no_grad():
            rep = [texts[i % 8] for i in range(64)]
            x0, m = motions.repeat(8, 1, 1), mask.repeat(8, 1)
            loss = denoising_losses(policy, x0, m, policy.condition(rep), t, noise).mean().item()
        policy.train()
        return loss

    before = probe_loss()
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss = policy.training_loss(motions, mask, texts, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert probe_loss() < 0.6 * before


# ------------------------------------------------------------------------------------------------ sampling


def _count_forwards(module: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls: list[int] = []
    return calls, module.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))


@pytest.mark.parametrize("family", ["mdm", "mld"])
def test_guidance_is_one_batched_forward_per_step(family: str) -> None:
    policy = mdm() if family == "mdm" else mld()
    denoiser = policy.model if family == "mdm" else policy.denoiser
    calls, handle = _count_forwards(denoiser)
    policy.sample(CAPTIONS[:3], [5, 9, 7], FAST, torch.Generator().manual_seed(0))
    assert calls == [6] * FAST.steps  # unconditional and conditional rows in one forward
    calls.clear()
    policy.sample(CAPTIONS[:3], [5, 9, 7], DiffusionSamplingConfig(steps=4, guidance=1.0))
    handle.remove()
    assert calls == [3] * 4


def test_batched_guidance_equals_mdm_two_pass_guidance() -> None:
    policy = mdm()
    lengths = [5, 9, 7]
    got = policy.sample(CAPTIONS[:3], lengths, FAST, torch.Generator().manual_seed(0))
    # MDM's ClassifierFreeSampleModel: separate conditional and unconditional calls
    mask = lengths_to_mask(lengths)
    scheduler = policy.sampling_scheduler()
    scheduler.set_timesteps(FAST.steps)
    x = torch.randn(3, 9, F, generator=torch.Generator().manual_seed(0))
    policy.eval()
    with torch.no_grad():
        cond, null = policy.condition(CAPTIONS[:3]), policy.null_condition(3)
        for t in scheduler.timesteps:
            out = policy.model(x, t.expand(3), cond, mask)
            out_uncond = policy.model(x, t.expand(3), null, mask)
            x = scheduler.step(out_uncond + 2.5 * (out - out_uncond), t, x).prev_sample
    torch.testing.assert_close(got, x.masked_fill(~mask[..., None], 0.0), rtol=1e-4, atol=1e-5)


def test_ddim_with_eta_one_over_every_step_is_mdm_ancestral_sampler() -> None:
    policy = mdm(
        MDMConfig(feature_dim=F, latent_dim=16, ff_size=32, num_layers=1, num_heads=2, clip_dim=16, diffusion_steps=50)
    )
    scheduler = policy.sampling_scheduler()
    scheduler.set_timesteps(50)
    assert scheduler.timesteps.tolist() == list(range(49, -1, -1))
    x_t, x0_hat = torch.randn(2, 4, F), torch.randn(2, 4, F)
    ab = policy.noise_scheduler.alphas_cumprod.double()
    for t in (30, 1):
        got = scheduler.step(x0_hat, t, x_t, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
        z = torch.randn(2, 4, F, generator=torch.Generator().manual_seed(1))
        # MDM's q_posterior_mean_variance with FIXED_SMALL variance (sigma_small=True)
        beta = 1 - ab[t] / ab[t - 1]
        coef1 = beta * ab[t - 1].sqrt() / (1 - ab[t])
        coef2 = (1 - ab[t - 1]) * (1 - beta).sqrt() / (1 - ab[t])
        variance = beta * (1 - ab[t - 1]) / (1 - ab[t])
        want = coef1 * x0_hat + coef2 * x_t + variance.sqrt() * z
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)
    last = scheduler.step(x0_hat, 0, x_t, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(last, x0_hat)  # MDM's final step returns the posterior mean at t = 0: x0


@pytest.mark.parametrize("family", ["mdm", "mld"])
def test_samples_have_the_asked_lengths(family: str) -> None:
    policy = mdm() if family == "mdm" else mld()
    out = policy.sample(CAPTIONS[:3], [4, 10, 7], FAST, torch.Generator().manual_seed(2))
    assert out.shape == (3, 10, F) and torch.isfinite(out).all()
    for row, n in zip(out, [4, 10, 7], strict=True):
        assert (row[n:] == 0).all() and (row[:n].abs().sum(-1) > 0).all()
    again = policy.sample(CAPTIONS[:3], [4, 10, 7], FAST, torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, again)
    with pytest.raises(ValueError, match="sampling steps"):
        policy.sample(CAPTIONS[:1], [4], DiffusionSamplingConfig(steps=2000))
    # 30 of 1000 would start DDIM's leading spacing at t 957 (1000 // 30 = 33 apart), far from pure noise
    with pytest.raises(ValueError, match="30 sampling steps must divide the 1000 training steps"):
        policy.sample(CAPTIONS[:1], [4], DiffusionSamplingConfig(steps=30))
    with pytest.raises(ValueError, match="texts"):
        policy.sample(CAPTIONS[:2], [4], FAST)


def test_null_conditions() -> None:
    policy, latent = mdm(), mld().eval()
    assert (policy.null_condition(2) == 0).all()  # MDM's mask_cond zeroes the text embedding
    torch.testing.assert_close(latent.null_condition(2), latent.condition(["", ""]))  # MLD trains with ""


@pytest.mark.parametrize("family", ["mdm", "mld"])
def test_training_drops_the_condition_at_the_configured_rate(family: str) -> None:
    if family == "mdm":
        policy = mdm(MDM_TINY.model_copy(update={"cond_mask_prob": 0.3})).eval()
        seen_by = policy.model.embed_text
    else:
        policy = mld(MLD_TINY.model_copy(update={"guidance_uncondp": 0.3})).eval()  # eval: a fixed encoding of ""
        seen_by = policy.denoiser.emb_proj
    conds: list[torch.Tensor] = []
    handle = seen_by.register_forward_pre_hook(lambda _m, args: conds.append(args[0].detach()))
    motions, mask = batch([2] * 400)
    policy.training_loss(motions, mask, [CAPTIONS[0]] * 400, torch.Generator().manual_seed(0))
    handle.remove()
    dropped = torch.isclose(conds[0], policy.null_condition(1)).all(-1).float().mean().item()
    assert 0.22 < dropped < 0.38


# ------------------------------------------------------------------------------------------------ save / load


@pytest.mark.parametrize("family", ["mdm", "mld"])
def test_save_load_round_trip_gives_identical_outputs(family: str, tmp_path: Path) -> None:
    policy = mdm() if family == "mdm" else mld()
    policy.save(tmp_path / "policy")
    again = load_policy(tmp_path / "policy")
    assert type(again) is type(policy) and again.config == policy.config
    for a, b in zip(policy.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    want = policy.sample(CAPTIONS[:2], [6, 3], FAST, torch.Generator().manual_seed(5))
    torch.testing.assert_close(again.sample(CAPTIONS[:2], [6, 3], FAST, torch.Generator().manual_seed(5)), want)


def test_load_refuses_a_broken_folder(tmp_path: Path) -> None:
    mdm().save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    (tmp_path / "p" / "config.json").write_text(json.dumps({**meta, "family": "gpt"}))
    with pytest.raises(CheckpointError, match="family"):
        load_policy(tmp_path / "p")
    (tmp_path / "p" / "config.json").write_text(json.dumps({**meta, "model": {**meta["model"], "latent_dim": 32}}))
    with pytest.raises(CheckpointError, match="(?s)model.safetensors.*expected shape"):
        load_policy(tmp_path / "p")
    (tmp_path / "p" / "config.json").write_text(json.dumps(meta))
    (tmp_path / "p" / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_policy(tmp_path / "p")


# ------------------------------------------------------------------------------------------------ text encoders


def test_word_encoder_pools_words_and_encodes_the_empty_caption() -> None:
    encoder = WordTextEncoder.from_captions(TEXT, CAPTIONS)
    out = encoder.encode(["a man jumps", "", "unseen words only"])
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    out.sum().backward()
    assert encoder.word_embedding.weight.grad is not None and encoder.start.grad is not None
    with pytest.raises(TypeError):
        encoder.encode("a man jumps")
    with pytest.raises(ValueError, match="captions"):
        build_text_encoder(TEXT)


WORDS = ["a", "person", "walks", "forward", "man", "jumps", "waves", "the", "hand"]


def _write_clip_tokenizer(directory: Path) -> int:
    """vocab.json + merges.txt of a tiny CLIP BPE (no merges: characters, word ends marked ``</w>``)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in sorted(set("".join(WORDS))):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def _text_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=12,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random tiny CLIPs: a text tower with projection, and a full CLIPModel as MLD's deps/ folder holds."""
    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    n = _write_clip_tokenizer(root / "text")
    CLIPTextModelWithProjection(_text_config(n)).save_pretrained(root / "text")
    _write_clip_tokenizer(root / "full")
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    full = CLIPConfig(
        text_config=_text_config(n).to_dict(),
        vision_config={**vision, "image_size": 8, "patch_size": 4},
        projection_dim=12,
    )
    CLIPModel(full).save_pretrained(root / "full")
    _write_clip_tokenizer(root / "no_projection")
    CLIPTextModel(_text_config(n)).save_pretrained(root / "no_projection")
    (root / "t5").mkdir()
    T5Config(d_model=8, num_layers=1, num_heads=1, d_kv=8, d_ff=8, vocab_size=10).save_pretrained(root / "t5")
    _write_clip_tokenizer(root / "t5")
    return {p.name: p for p in root.iterdir()}


def test_clip_encoder_returns_the_frozen_projected_pooled_output(clip_dirs: dict[str, Path]) -> None:
    encoder = CLIPTextEncoder(TextEncoderConfig.mdm_clip(clip_dirs["text"]))
    assert encoder.dim == 12 and encoder.max_length == 22
    long = "a person walks forward the man jumps the man waves the hand"
    out = encoder.encode(["a man jumps", long, ""])
    ids = encoder.tokenizer(["a man jumps", long, ""], padding="max_length", truncation=True, max_length=22)
    ids = torch.tensor(ids.input_ids)
    assert ids.shape == (3, 22) and ids[1, -1] == 1  # cut to MDM's 20 tokens + start and end
    reference = CLIPTextModelWithProjection.from_pretrained(clip_dirs["text"]).eval()
    torch.testing.assert_close(out, reference(input_ids=ids).text_embeds)
    assert not list(encoder.parameters()) and not encoder.state_dict()
    # MLD's folder: a full CLIPModel, its get_text_features
    full = CLIPTextEncoder(TextEncoderConfig.mld_clip(clip_dirs["full"]))
    model = CLIPModel.from_pretrained(clip_dirs["full"]).eval()
    ids = torch.tensor(full.tokenizer(["a man jumps"], padding="max_length", max_length=77).input_ids)
    features = model.get_text_features(input_ids=ids)
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    torch.testing.assert_close(full.encode(["a man jumps"]), features)


def test_clip_policy_keeps_clip_out_of_its_weights(clip_dirs: dict[str, Path], tmp_path: Path) -> None:
    config = MDMConfig(feature_dim=F, latent_dim=16, ff_size=32, num_layers=1, num_heads=2, clip_dim=12)
    policy = MDMPolicy(config, build_text_encoder(TextEncoderConfig.mdm_clip(clip_dirs["text"])))
    assert all(k.startswith("model.") for k in policy.state_dict())
    policy.save(tmp_path / "p")
    again = load_policy(tmp_path / "p")
    assert isinstance(again.text_encoder, CLIPTextEncoder)
    want = policy.sample(CAPTIONS[:2], [3, 5], FAST, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.sample(CAPTIONS[:2], [3, 5], FAST, torch.Generator().manual_seed(0)), want)
    with pytest.raises(ValueError, match="12-d"):
        MDMPolicy(MDM_TINY, again.text_encoder)


def test_clip_folder_problems_name_the_folder(clip_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        CLIPTextEncoder(TextEncoderConfig.mld_clip(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'empty'}.*config.json"):
        CLIPTextEncoder(TextEncoderConfig.mld_clip(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=f"{clip_dirs['t5']}.*'t5'"):
        CLIPTextEncoder(TextEncoderConfig.mld_clip(clip_dirs["t5"]))
    with pytest.raises(CheckpointError, match=f"{clip_dirs['no_projection']}.*text_projection"):
        CLIPTextEncoder(TextEncoderConfig.mld_clip(clip_dirs["no_projection"]))
    no_tokenizer = tmp_path / "no_tokenizer"
    CLIPTextModelWithProjection(_text_config(40)).save_pretrained(no_tokenizer)
    with pytest.raises(CheckpointError, match=f"{no_tokenizer}.*tokenizer"):
        CLIPTextEncoder(TextEncoderConfig.mld_clip(no_tokenizer))
