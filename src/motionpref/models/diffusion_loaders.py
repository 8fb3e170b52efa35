"""Published diffusion checkpoints onto ``MDMPolicy`` / ``MLDPolicy``.

- MDM (GuyTevet/motion-diffusion-model): ``model*.pt``, a plain state dict of the ``trans_enc`` denoiser, or
  ``{"model": ..., "model_avg": ...}`` when trained with ``--use_ema`` (its sampler then uses ``model_avg``).
  As MDM's ``load_model_wo_clip``: ``clip_model.*`` and the two fixed position tables are dropped.
- MLD (ChenFengYe/motion-latent-diffusion): a Lightning checkpoint ``{"state_dict": {...}}`` with ``vae.*`` and
  ``denoiser.*``; the frozen ``text_encoder.*`` and the T2M evaluator it carries for validation are dropped.

Both are read with ``torch.load(weights_only=True)``: nothing is unpickled but tensors and plain containers. The
text encoder (CLIP) comes separately, from its own folder; every problem is a ``CheckpointError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from motionpref.config import MDMConfig, MLDConfig
from motionpref.models.checkpoint import CheckpointError, check_state_dict
from motionpref.models.diffusion import MDMPolicy, MLDPolicy, TextEncoder

# MDM's fixed sinusoidal tables: not loaded by MDM either (older checkpoints hold other lengths)
MDM_FIXED_KEYS = ("sequence_pos_encoder.pe", "embed_timestep.sequence_pos_encoder.pe")
MDM_DROPPED_PREFIXES = ("clip_model.",)
MLD_PARTS = ("vae.", "denoiser.")
# the frozen CLIP and the T2M evaluator MLD builds for validation metrics
MLD_DROPPED_PREFIXES = ("text_encoder.", "t2m_textencoder.", "t2m_moveencoder.", "t2m_motionencoder.")
# MLD builds a memory position table its trans_enc denoiser never reads
MLD_UNUSED_KEYS = ("denoiser.mem_pos.pe",)


def _torch_load(path: Path, kind: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {kind} checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError or UnpicklingError depending on the damage
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True), truncated, corrupt or holding pickled "
            f"objects ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None


def _tensor_dict(value: Any, path: Path, what: str) -> dict[str, Tensor]:
    if not isinstance(value, Mapping) or not value:
        raise CheckpointError(f"{path}: expected {what} as a non-empty dict of tensors, got {type(value).__name__}")
    bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {what} entry {bad[0]!r} is not a named tensor")
    return dict(value)


def read_mdm_state(path: str | Path, use_avg: bool = True) -> dict[str, Tensor]:
    """The denoiser weights of an MDM ``model*.pt`` under MDM's key names, CLIP and the fixed tables dropped.
    ``use_avg`` picks the EMA weights of a ``--use_ema`` checkpoint, as MDM's sampler does."""
    path = Path(path)
    payload = _torch_load(path, "MDM")
    if isinstance(payload, Mapping) and "model" in payload and not isinstance(payload["model"], Tensor):
        key = "model_avg" if use_avg and "model_avg" in payload else "model"
        state = _tensor_dict(payload[key], path, f"{key!r}")
    else:
        state = _tensor_dict(payload, path, "the state dict")
    if any(k.startswith("seqTransDecoder.") for k in state):
        raise CheckpointError(
            f"{path}: an MDM of arch trans_dec (seqTransDecoder.*); only trans_enc (seqTransEncoder.*) is supported"
        )
    return {k: v for k, v in state.items() if k not in MDM_FIXED_KEYS and not k.startswith(MDM_DROPPED_PREFIXES)}


def load_mdm_checkpoint(
    path: str | Path, config: MDMConfig, text_encoder: TextEncoder, use_avg: bool = True
) -> MDMPolicy:
    """An ``MDMPolicy`` holding a published MDM's denoiser (``MDMConfig.real()`` for theirs), with
    ``text_encoder`` (CLIP ViT-B/32, ``TextEncoderConfig.mdm_clip``) as its condition."""
    state = read_mdm_state(path, use_avg)
    policy = MDMPolicy(config, text_encoder)
    check_state_dict(policy.model, state, where=str(path))
    policy.model.load_state_dict(state)
    return policy.eval()


def read_mld_state(path: str | Path) -> dict[str, dict[str, Tensor]]:
    """``{"vae": ..., "denoiser": ...}``: the two parts of an MLD Lightning checkpoint, prefixes stripped."""
    path = Path(path)
    payload = _torch_load(path, "MLD")
    if not isinstance(payload, Mapping) or "state_dict" not in payload:
        raise CheckpointError(f"{path}: expected a Lightning checkpoint, a dict with a 'state_dict'")
    state = _tensor_dict(payload["state_dict"], path, "'state_dict'")
    kept = {k: v for k, v in state.items() if not k.startswith(MLD_DROPPED_PREFIXES) and k not in MLD_UNUSED_KEYS}
    unknown = sorted({k.split(".")[0] + "." for k in kept if not k.startswith(MLD_PARTS)})
    if unknown:
        raise CheckpointError(f"{path}: state_dict has keys under {unknown}; an MLD checkpoint holds vae.*, denoiser.*")
    parts = {
        prefix[:-1]: {k[len(prefix) :]: v for k, v in kept.items() if k.startswith(prefix)} for prefix in MLD_PARTS
    }
    missing = [f"{name}.*" for name, part in parts.items() if not part]
    if missing:
        raise CheckpointError(f"{path}: state_dict has no {' or '.join(missing)} keys (a VAE-stage checkpoint?)")
    return parts


def load_mld_checkpoint(path: str | Path, config: MLDConfig, text_encoder: TextEncoder) -> MLDPolicy:
    """An ``MLDPolicy`` holding a published MLD's VAE and denoiser (``MLDConfig.real()`` for theirs), with
    ``text_encoder`` (CLIP ViT-L/14, ``TextEncoderConfig.mld_clip``) as its condition."""
    parts = read_mld_state(path)
    policy = MLDPolicy(config, text_encoder)
    for name, state in parts.items():
        module = getattr(policy, name)
        check_state_dict(module, state, where=f"{path} (keys under '{name}.')")
        module.load_state_dict(state)
    return policy.eval()
