"""Published-checkpoint loaders, on files written in the originals' exact key layouts from tiny models."""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from motionpref.config import MDMConfig, MLDConfig, TextEncoderConfig
from motionpref.models.checkpoint import CheckpointError
from motionpref.models.diffusion import MDMPolicy, MLDPolicy, WordTextEncoder, lengths_to_mask
from motionpref.models.diffusion_loaders import load_mdm_checkpoint, load_mld_checkpoint

CAPTIONS = ["a person walks forward", "a man jumps up"]
F = 6
TEXT = TextEncoderConfig(width=16, num_heads=2, ff_size=32)
MDM_TINY = MDMConfig(feature_dim=F, latent_dim=16, ff_size=32, num_layers=2, num_heads=2, clip_dim=16)
MLD_TINY = MLDConfig(feature_dim=F, latent_dim=8, vae_ff_size=16, denoiser_ff_size=16, num_heads=2, text_encoded_dim=16)


def encoder() -> WordTextEncoder:
    return WordTextEncoder.from_captions(TEXT, CAPTIONS)


def mdm_state(seed: int) -> tuple[MDMPolicy, OrderedDict[str, torch.Tensor]]:
    """What MDM's training loop saves: the trans_enc state dict with both (5000, 1, d) position tables, here
    with the clip_model.* weights an early checkpoint still carries."""
    torch.manual_seed(seed)
    policy = MDMPolicy(MDM_TINY, encoder()).eval()
    state = OrderedDict(policy.model.state_dict())
    table = torch.randn(5000, 1, MDM_TINY.latent_dim)
    state["sequence_pos_encoder.pe"] = table
    state["embed_timestep.sequence_pos_encoder.pe"] = table.clone()
    state["clip_model.token_embedding.weight"] = torch.randn(10, 4)
    state["clip_model.positional_embedding"] = torch.randn(77, 4)
    return policy, state


def mdm_output(policy: MDMPolicy) -> torch.Tensor:
    x = torch.randn(2, 7, F, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, MDM_TINY.clip_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return policy.model(x, torch.tensor([3, 40]), cond, lengths_to_mask([4, 7]))


def test_mdm_plain_state_dict_loads_key_for_key(tmp_path: Path) -> None:
    source, state = mdm_state(0)
    torch.save(state, tmp_path / "model000600000.pt")
    policy = load_mdm_checkpoint(tmp_path / "model000600000.pt", MDM_TINY, encoder())
    torch.testing.assert_close(mdm_output(policy), mdm_output(source), rtol=0, atol=0)


def test_mdm_ema_checkpoint_uses_the_average_model(tmp_path: Path) -> None:
    raw, raw_state = mdm_state(0)
    avg, avg_state = mdm_state(1)
    torch.save({"model": raw_state, "model_avg": avg_state}, tmp_path / "model.pt")
    loaded = load_mdm_checkpoint(tmp_path / "model.pt", MDM_TINY, encoder())
    torch.testing.assert_close(mdm_output(loaded), mdm_output(avg), rtol=0, atol=0)
    loaded = load_mdm_checkpoint(tmp_path / "model.pt", MDM_TINY, encoder(), use_avg=False)
    torch.testing.assert_close(mdm_output(loaded), mdm_output(raw), rtol=0, atol=0)


def test_mdm_checkpoint_problems_name_the_file(tmp_path: Path) -> None:
    _, state = mdm_state(0)
    path = tmp_path / "model.pt"
    torch.save({k: v for k, v in state.items() if k != "embed_text.weight"}, path)
    with pytest.raises(CheckpointError, match=f"(?s){path}.*missing key 'embed_text.weight'"):
        load_mdm_checkpoint(path, MDM_TINY, encoder())
    torch.save({**state, "seqTransEncoder.layers.2.norm1.weight": torch.ones(16)}, path)
    with pytest.raises(CheckpointError, match=f"(?s){path}.*unexpected key 'seqTransEncoder.layers.2.norm1.weight'"):
        load_mdm_checkpoint(path, MDM_TINY, encoder())
    torch.save(state, path)
    wider = MDM_TINY.model_copy(update={"latent_dim": 32})
    with pytest.raises(CheckpointError, match=f"(?s){path}.*expected shape"):
        load_mdm_checkpoint(path, wider, encoder())
    torch.save({"seqTransDecoder.layers.0.norm1.weight": torch.ones(16)}, path)
    with pytest.raises(CheckpointError, match=f"{path}.*trans_dec"):
        load_mdm_checkpoint(path, MDM_TINY, encoder())
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{path}.*truncated"):
        load_mdm_checkpoint(path, MDM_TINY, encoder())
    torch.save({"model": state, "args": argparse.Namespace(latent_dim=16)}, path)  # pickles a Python object
    with pytest.raises(CheckpointError, match=f"{path}.*weights_only"):
        load_mdm_checkpoint(path, MDM_TINY, encoder())
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_mdm_checkpoint(tmp_path / "missing.pt", MDM_TINY, encoder())


def mld_checkpoint(path: Path, seed: int = 0, drop: str | None = None, extra: dict | None = None) -> MLDPolicy:
    """An MLD Lightning checkpoint: vae.*, denoiser.* (with its unused mem_pos table), the frozen text encoder's
    and the T2M evaluator's weights, Lightning's bookkeeping."""
    torch.manual_seed(seed)
    policy = MLDPolicy(MLD_TINY, encoder()).eval()
    state = {f"vae.{k}": v for k, v in policy.vae.state_dict().items()}
    state |= {f"denoiser.{k}": v for k, v in policy.denoiser.state_dict().items()}
    state["denoiser.mem_pos.pe"] = torch.rand(500, 1, MLD_TINY.latent_dim)
    state["text_encoder.text_model.text_model.embeddings.token_embedding.weight"] = torch.randn(10, 4)
    state["t2m_textencoder.input_emb.weight"] = torch.randn(4, 3)
    state["t2m_motionencoder.gru.weight_ih_l0"] = torch.randn(6, 4)
    state = {k: v for k, v in state.items() if drop is None or not k.startswith(drop)} | (extra or {})
    torch.save({"epoch": 3, "global_step": 120, "state_dict": state, "optimizer_states": []}, path)
    return policy


def mld_outputs(policy: MLDPolicy) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(2, 1, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return policy.denoiser(z, torch.tensor([5, 700]), cond), policy.vae.decode(z, lengths_to_mask([3, 6]))


def test_mld_lightning_checkpoint_loads_vae_and_denoiser(tmp_path: Path) -> None:
    source = mld_checkpoint(tmp_path / "mld.ckpt")
    policy = load_mld_checkpoint(tmp_path / "mld.ckpt", MLD_TINY, encoder())
    for got, want in zip(mld_outputs(policy), mld_outputs(source), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_mld_checkpoint_problems_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mld.ckpt"
    mld_checkpoint(path, drop="vae.")
    with pytest.raises(CheckpointError, match=f"{path}.*no vae"):
        load_mld_checkpoint(path, MLD_TINY, encoder())
    mld_checkpoint(path, extra={"lm.weight": torch.ones(2)})
    with pytest.raises(CheckpointError, match=f"{path}.*'lm.'"):
        load_mld_checkpoint(path, MLD_TINY, encoder())
    mld_checkpoint(path, drop="denoiser.encoder.norm.bias")
    with pytest.raises(
        CheckpointError, match=f"(?s){path} \\(keys under 'denoiser.'\\).*missing key 'encoder.norm.bias'"
    ):
        load_mld_checkpoint(path, MLD_TINY, encoder())
    mld_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"(?s){path} \\(keys under 'vae.'\\).*expected shape"):
        load_mld_checkpoint(path, MLD_TINY.model_copy(update={"latent_size": 2}), encoder())
    torch.save(mld_checkpoint(tmp_path / "x.ckpt").state_dict(), path)  # a bare state dict, not Lightning's
    with pytest.raises(CheckpointError, match=f"{path}.*Lightning"):
        load_mld_checkpoint(path, MLD_TINY, encoder())
    mld_checkpoint(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{path}.*truncated"):
        load_mld_checkpoint(path, MLD_TINY, encoder())
