"""Diffusion text-to-motion policies, the diffusion half of SoPo: MDM-style (Tevet et al., "Human Motion
Diffusion Model", ICLR 2023) and MLD-style (Chen et al., "Executing your Commands via Motion Diffusion in Latent
Space", CVPR 2023).

``MDMPolicy.model`` is MDM's ``trans_enc`` denoiser over frames of normalised HumanML3D / KIT features: one token
holding the timestep embedding plus the projected text embedding in front of the frames, x0 prediction, a cosine
schedule. ``MLDPolicy`` holds MLD's ``vae`` (learned distribution tokens -> a latent of ``latent_size`` tokens) and
``denoiser`` (epsilon prediction on that latent, a scaled-linear schedule). Submodules carry the originals' names
so that their checkpoints load key for key (``diffusion_loaders``). Tensors are batch first; the originals'
sequence-first layout changes no parameter.

Both use diffusers' schedulers: ``DDPMScheduler`` to noise training samples and ``DDIMScheduler`` to sample, with
classifier-free guidance computed from ONE batched forward per step (unconditional rows first, as MLD's).
The unconditional input is the text embedding of the null condition: zeros for MDM (its ``mask_cond``), the
encoding of the empty caption for MLD (it trains with captions replaced by ``""``).

``denoising_losses`` is the per-sample loss at given timesteps and noise that Diffusion-DPO and SoPo compare
between policy and reference.
"""

from __future__ import annotations

import copy
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from tokenizers import Tokenizer
from torch import Tensor, nn
from transformers import AutoConfig, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from motionpref.config import DiffusionSamplingConfig, MDMConfig, MLDConfig, TextEncoderConfig, check_sampling_steps
from motionpref.models.checkpoint import (
    WEIGHTS_FILE,
    CheckpointError,
    FolderLayout,
    check_state_dict,
    load_weights,
    read_section,
    save_weights,
)
from motionpref.models.modes import evaluating
from motionpref.models.retrieval import PAD_ID, PAD_TOKEN, build_tokenizer, sinusoidal_positions

PredictionType = Literal["sample", "epsilon"]
CONFIG_FILE, TOKENIZER_FILE = "config.json", "tokenizer.json"
FORMAT_NAME = "motionpref-diffusion"
FOLDER = FolderLayout(
    kind="diffusion policy", metadata=CONFIG_FILE, fields=("family", "model", "text_encoder"), format=FORMAT_NAME
)
# Either file set makes a CLIPTokenizer; without one transformers silently builds a 3-token tokenizer.
CLIP_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def lengths_to_mask(lengths: Sequence[int] | Tensor, frames: int | None = None) -> Tensor:
    """(B, frames) bool, True at the valid frames of each sample (frames defaults to the longest)."""
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
    if lengths.numel() == 0 or (lengths < 1).any():
        raise ValueError(f"lengths must be one or more positive frame counts, got {lengths.tolist()}")
    frames = int(lengths.max()) if frames is None else frames
    if int(lengths.max()) > frames:
        raise ValueError(f"a length of {int(lengths.max())} frames does not fit {frames}")
    return torch.arange(frames)[None, :] < lengths[:, None]


def masked_mse(prediction: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """(B,) mean squared error over the valid rows of (B, L, C) tensors (MDM's ``masked_l2``: the sum over valid
    frames and channels divided by their count); ``mask`` (B, L), None for all rows."""
    error = (prediction - target).pow(2)
    if mask is None:
        return error.flatten(1).mean(1)
    keep = mask.to(error.dtype)[..., None]
    return (error * keep).flatten(1).sum(1) / (keep.flatten(1).sum(1) * error.shape[-1])


# ----------------------------------------------------------------------------------------------- text


class TextEncoder(nn.Module, ABC):
    """Captions -> (B, dim) embeddings, the condition of a diffusion policy."""

    config: TextEncoderConfig
    dim: int

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> Tensor: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"text {bad[0]} is a {type(texts[bad[0]]).__name__}, expected str")
    return list(texts)


class WordTextEncoder(TextEncoder):
    """Words -> embeddings -> a small pre-LN transformer, mean-pooled: the text encoder the pipeline trains with
    its policy when no CLIP weights are at hand. A learned start vector leads every caption, so the empty caption
    (MLD's null condition) has an embedding of its own."""

    def __init__(self, config: TextEncoderConfig, tokenizer: Tokenizer) -> None:
        super().__init__()
        if config.kind != "words":
            raise ValueError(f"WordTextEncoder needs a config of kind 'words', got {config.kind!r}")
        if tokenizer.token_to_id(PAD_TOKEN) != PAD_ID:
            raise ValueError(f"tokenizer must map {PAD_TOKEN} to id {PAD_ID} (use retrieval.build_tokenizer)")
        self.config = config
        self.tokenizer = tokenizer
        self.dim = config.width
        self.word_embedding = nn.Embedding(tokenizer.get_vocab_size(), config.width, padding_idx=PAD_ID)
        self.start = nn.Parameter(torch.randn(config.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.width,
            config.num_heads,
            config.ff_size,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,  # pre-LN trains from scratch at these sizes without warm-up
        )
        self.encoder = nn.TransformerEncoder(
            layer, config.num_layers, norm=nn.LayerNorm(config.width), enable_nested_tensor=False
        )

    @classmethod
    def from_captions(cls, config: TextEncoderConfig, captions: Sequence[str]) -> WordTextEncoder:
        """A fresh encoder over the word vocabulary of the training captions."""
        return cls(config, build_tokenizer(captions, config.min_count))

    @property
    def device(self) -> torch.device:
        return self.start.device

    def encode(self, texts: Sequence[str]) -> Tensor:
        texts = _check_texts(texts)
        ids = [self.tokenizer.encode(t).ids[: self.config.max_words] for t in texts]
        words = torch.full((len(ids), max(map(len, ids), default=0)), PAD_ID, dtype=torch.long)
        for i, row in enumerate(ids):
            words[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        words = words.to(self.device)
        x = torch.cat([self.start.expand(len(ids), 1, -1), self.word_embedding(words)], dim=1)
        x = x + sinusoidal_positions(x.shape[1], self.dim).to(x)
        keep = torch.cat([torch.ones(len(ids), 1, dtype=torch.bool, device=self.device), words != PAD_ID], dim=1)
        h = self.encoder(x, src_key_padding_mask=~keep)
        return (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)


class CLIPTextEncoder(TextEncoder):
    """A frozen CLIP text tower from a local transformers folder: the projected pooled output, what MDM's
    ``clip_model.encode_text`` (ViT-B/32) and MLD's ``get_text_features`` (ViT-L/14) return. A full ``CLIPModel``
    folder (MLD's ``deps/clip-vit-large-patch14``) loads too; its vision tower is skipped.

    The CLIP model is held outside the module tree, so its weights never enter the policy's parameters or state
    dict (the loaders drop MDM's ``clip_model.*`` and MLD's ``text_encoder.*``; a saved policy names the folder).
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if config.kind != "clip" or config.clip_dir is None:
            raise ValueError("CLIPTextEncoder needs a config of kind 'clip' with clip_dir")
        self.config = config
        model, self.tokenizer = _load_clip(Path(config.clip_dir))
        self._clip = (model,)  # a tuple keeps nn.Module from registering it
        self.dim = model.config.projection_dim
        # CLIP has no position past max_position_embeddings (77); MDM's 22 stays as asked
        self.max_length = min(config.max_length, model.config.max_position_embeddings)

    def _apply(self, fn: Any, recurse: bool = True) -> CLIPTextEncoder:
        # .to() / .half() reach the unregistered CLIP model here (as MDM moves its SMPL model)
        super()._apply(fn, recurse)
        self._clip[0]._apply(fn)
        return self

    @property
    def device(self) -> torch.device:
        return self._clip[0].device

    def encode(self, texts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(
            _check_texts(texts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        # No attention mask, as both originals: CLIP's causal attention keeps padding out of the pooled token.
        with torch.no_grad():
            return self._clip[0](input_ids=tokens.input_ids.to(self.device)).text_embeds.float()


def _load_clip(directory: Path) -> tuple[CLIPTextModelWithProjection, CLIPTokenizer]:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: CLIP folder not found (expected a transformers CLIP model folder)")
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: not a transformers model folder (no config.json)")
    if not any(all((directory / name).is_file() for name in names) for names in CLIP_TOKENIZER_FILES):
        raise CheckpointError(f"{directory}: no CLIP tokenizer files (tokenizer.json, or vocab.json and merges.txt)")
    try:
        model_type = AutoConfig.from_pretrained(directory).model_type
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{directory}: config.json does not load ({err})") from None
    if model_type not in ("clip", "clip_text_model"):
        raise CheckpointError(f"{directory}: holds a {model_type!r} model, expected CLIP ('clip' or 'clip_text_model')")
    verbosity = transformers_logging.get_verbosity()
    # A full CLIPModel folder lists every vision weight as unexpected; missing weights are checked below instead.
    transformers_logging.set_verbosity_error()
    try:
        model, info = CLIPTextModelWithProjection.from_pretrained(directory, output_loading_info=True)
        tokenizer = CLIPTokenizer.from_pretrained(directory)
    except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: weights of the wrong shape
        raise CheckpointError(f"{directory}: the CLIP text model does not load ({err})") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise CheckpointError(
            f"{directory}: the CLIP weights lack {len(missing)} tensors the text tower needs (e.g. {missing[0]!r}); "
            "MDM and MLD use the projected text features, so text_projection is required"
        )
    if len(tokenizer) > model.config.vocab_size:
        raise CheckpointError(
            f"{directory}: the tokenizer has {len(tokenizer)} tokens, the model embeds {model.config.vocab_size}"
        )
    model.eval().requires_grad_(False)
    return model, tokenizer


def build_text_encoder(config: TextEncoderConfig, captions: Sequence[str] | None = None) -> TextEncoder:
    """A frozen CLIP encoder, or a fresh word encoder over ``captions`` (the training captions)."""
    if config.kind == "clip":
        return CLIPTextEncoder(config)
    if not captions:
        raise ValueError("a words text encoder needs the training captions to build its vocabulary")
    return WordTextEncoder.from_captions(config, captions)


# ------------------------------------------------------------------------------------------------- MDM


class PositionalEncoding(nn.Module):
    """MDM's fixed sinusoidal table with dropout, added to a (B, L, d) sequence; its rows also embed timesteps.
    Not saved: it is fixed, and MDM's own loader drops it too (older checkpoints hold other lengths)."""

    def __init__(self, d_model: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_positions(max_len, d_model), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x + self.pe[: x.shape[1]])


class TimestepEmbedder(nn.Module):
    """MDM's timestep embedding: the timestep's row of the frame position table through an MLP. Written here
    because diffusers' ``Timesteps`` lays sin and cos out in halves, not interleaved as MDM's table."""

    def __init__(self, latent_dim: int, sequence_pos_encoder: PositionalEncoding) -> None:
        super().__init__()
        self.sequence_pos_encoder = sequence_pos_encoder
        self.time_embed = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.SiLU(), nn.Linear(latent_dim, latent_dim))

    def forward(self, timesteps: Tensor) -> Tensor:
        return self.time_embed(self.sequence_pos_encoder.pe[timesteps])


class InputProcess(nn.Module):
    def __init__(self, input_feats: int, latent_dim: int) -> None:
        super().__init__()
        self.poseEmbedding = nn.Linear(input_feats, latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.poseEmbedding(x)


class OutputProcess(nn.Module):
    def __init__(self, input_feats: int, latent_dim: int) -> None:
        super().__init__()
        self.poseFinal = nn.Linear(latent_dim, input_feats)

    def forward(self, x: Tensor) -> Tensor:
        return self.poseFinal(x)


class MDM(nn.Module):
    """MDM's ``trans_enc`` denoiser for text (``cond_mode='text'``, ``data_rep='hml_vec'``): predicts x0."""

    def __init__(self, config: MDMConfig) -> None:
        super().__init__()
        self.config = config
        d = config.latent_dim
        self.input_process = InputProcess(config.feature_dim, d)
        self.sequence_pos_encoder = PositionalEncoding(d, config.dropout, config.pos_embed_max_len)
        layer = nn.TransformerEncoderLayer(
            d, config.num_heads, config.ff_size, config.dropout, activation=config.activation, batch_first=True
        )
        self.seqTransEncoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.embed_timestep = TimestepEmbedder(d, self.sequence_pos_encoder)
        self.embed_text = nn.Linear(config.clip_dim, d)
        self.output_process = OutputProcess(config.feature_dim, d)

    def forward(self, x: Tensor, timesteps: Tensor, cond: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, F) noisy motions, timesteps (B,), cond (B, clip_dim) text embeddings (zeros: unconditional),
        mask (B, T) True at valid frames -> x0 predictions (B, T, F), unspecified at padded frames."""
        emb = self.embed_text(cond) + self.embed_timestep(timesteps)
        seq = self.sequence_pos_encoder(torch.cat([emb[:, None], self.input_process(x)], dim=1))
        padding = None
        if self.config.mask_frames:
            padding = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], dim=1)
        # torch's inference fast path spends most of a CPU forward in its masked softmax over the padding mask
        # (72% here); its standard path gives the same outputs to float rounding 2.5x sooner (bench/)
        fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(fast and x.device.type != "cpu")
        try:
            return self.output_process(self.seqTransEncoder(seq, src_key_padding_mask=padding)[:, 1:])
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)


# ------------------------------------------------------------------------------------------------- MLD


class PositionEmbeddingLearned1D(nn.Module):
    """MLD's learned position table, (max_len, 1, d) as MLD stores it."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.pe = nn.Parameter(torch.empty(max_len, 1, d_model))
        nn.init.uniform_(self.pe)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"a sequence of {x.shape[1]} tokens exceeds the {self.pe.shape[0]} learned positions")
        return x + self.pe[: x.shape[1], 0]


class SkipTransformer(nn.Module):
    """MLD's U-Net-like stack (its SkipTransformerEncoder and SkipTransformerDecoder): each of the last (n - 1) / 2
    layers also sees, through a linear layer, the output of its mirror among the first (n - 1) / 2. Post-LN layers
    as MLD's DETR ones (torch's have the same weights). ``layer`` is an encoder layer, or a decoder layer whose
    frame queries cross-attend to ``memory`` (the latent)."""

    def __init__(
        self, layer: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer, num_layers: int, norm: nn.LayerNorm
    ) -> None:
        super().__init__()
        if num_layers % 2 == 0:
            raise ValueError(f"num_layers must be odd, got {num_layers}")
        blocks = (num_layers - 1) // 2
        d = norm.normalized_shape[0]
        self.input_blocks = nn.ModuleList(copy.deepcopy(layer) for _ in range(blocks))
        self.middle_block = copy.deepcopy(layer)
        self.output_blocks = nn.ModuleList(copy.deepcopy(layer) for _ in range(blocks))
        self.linear_blocks = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(blocks))
        self.norm = norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: Tensor, *memory: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        padding = {"tgt_key_padding_mask" if memory else "src_key_padding_mask": key_padding_mask}
        skips = []
        for block in self.input_blocks:
            x = block(x, *memory, **padding)
            skips.append(x)
        x = self.middle_block(x, *memory, **padding)
        for block, linear in zip(self.output_blocks, self.linear_blocks, strict=True):
            x = block(linear(torch.cat([x, skips.pop()], dim=-1)), *memory, **padding)
        return self.norm(x)


class MldVae(nn.Module):
    """MLD's motion VAE (``arch: encoder_decoder``, learned positions): 2 x latent_size distribution tokens read
    the frames (their outputs are mu and log-variance); frame queries decode the sampled latent."""

    def __init__(self, config: MLDConfig) -> None:
        super().__init__()
        self.latent_size, d = config.latent_size, config.latent_dim
        self.query_pos_encoder = PositionEmbeddingLearned1D(d, config.max_positions)
        self.query_pos_decoder = PositionEmbeddingLearned1D(d, config.max_positions)
        encoder_layer = nn.TransformerEncoderLayer(
            d, config.num_heads, config.vae_ff_size, config.vae_dropout, activation=config.activation, batch_first=True
        )
        self.encoder = SkipTransformer(encoder_layer, config.vae_num_layers, nn.LayerNorm(d))
        decoder_layer = nn.TransformerDecoderLayer(
            d, config.num_heads, config.vae_ff_size, config.vae_dropout, activation=config.activation, batch_first=True
        )
        self.decoder = SkipTransformer(decoder_layer, config.vae_num_layers, nn.LayerNorm(d))
        self.global_motion_token = nn.Parameter(torch.randn(2 * config.latent_size, d))
        self.skel_embedding = nn.Linear(config.feature_dim, d)
        self.final_layer = nn.Linear(d, config.feature_dim)

    def encode(
        self, features: Tensor, mask: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """features (B, T, F), mask (B, T) -> a sampled latent, mu and log-variance, each (B, latent_size, d).
        ``noise`` is the sample's standard normal draw (drawn from ``generator`` when None)."""
        batch = features.shape[0]
        tokens = self.global_motion_token.expand(batch, -1, -1)
        seq = self.query_pos_encoder(torch.cat([tokens, self.skel_embedding(features)], dim=1))
        padding = torch.cat([torch.zeros(batch, tokens.shape[1], dtype=torch.bool, device=mask.device), ~mask], 1)
        dist = self.encoder(seq, key_padding_mask=padding)[:, : tokens.shape[1]]
        mu, logvar = dist[:, : self.latent_size], dist[:, self.latent_size :]
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, device=_generator_device(generator))
        return mu + logvar.exp().sqrt() * noise.to(mu), mu, logvar

    def decode(self, z: Tensor, mask: Tensor) -> Tensor:
        """z (B, latent_size, d), mask (B, T) -> features (B, T, F), zero at padded frames (as MLD)."""
        queries = self.query_pos_decoder(z.new_zeros(mask.shape[0], mask.shape[1], z.shape[-1]))
        out = self.final_layer(self.decoder(queries, z, key_padding_mask=~mask))
        return out.masked_fill(~mask[..., None], 0.0)


class MldDenoiser(nn.Module):
    """MLD's latent denoiser (``trans_enc`` with skip connections): the latent tokens, a timestep token and a text
    token pass one encoder; the latent tokens' outputs predict the noise. Timesteps are embedded by diffusers'
    ``Timesteps`` / ``TimestepEmbedding``, the modules MLD copied."""

    def __init__(self, config: MLDConfig) -> None:
        super().__init__()
        d = config.latent_dim
        self.time_proj = Timesteps(config.text_encoded_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(config.text_encoded_dim, d)
        # MLD projects (through a ReLU) only when the text width differs from the latent's
        self.emb_proj = (
            nn.Sequential(nn.ReLU(), nn.Linear(config.text_encoded_dim, d))
            if config.text_encoded_dim != d
            else nn.Identity()
        )
        self.query_pos = PositionEmbeddingLearned1D(d, config.max_positions)
        layer = nn.TransformerEncoderLayer(
            d,
            config.num_heads,
            config.denoiser_ff_size,
            config.denoiser_dropout,
            activation=config.activation,
            batch_first=True,
        )
        self.encoder = SkipTransformer(layer, config.denoiser_num_layers, nn.LayerNorm(d))

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        """sample (B, latent_size, d) noisy latents, timestep (B,), encoder_hidden_states (B, text_encoded_dim)
        -> predicted noise (B, latent_size, d)."""
        time_emb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        text_emb = self.emb_proj(encoder_hidden_states)
        seq = self.query_pos(torch.cat([sample, time_emb[:, None], text_emb[:, None]], dim=1))
        return self.encoder(seq)[:, : sample.shape[1]]


# -------------------------------------------------------------------------------------------- policies


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    # drawn on the generator's device, so a seed gives the same noise whatever device the model is on
    return torch.randn(shape, generator=generator, device=_generator_device(generator)).to(like)


def _noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    rows: Sequence[torch.Generator] | None,
    like: Tensor,
    lengths: Sequence[int] | None = None,
) -> Tensor:
    """Gaussian noise of ``shape``: from ``generator``, or row by row from one CPU generator per row. With
    ``lengths`` (a family masked by frame), row i draws ``lengths[i]`` frames and is zero past them: torch's CPU
    sampler gives no prefix guarantee (randn(30)[:18] != randn(18)), so drawing at the batch's longest length
    would make a row's noise depend on the rest of the batch."""
    if rows is None:
        return _randn(shape, generator, like)
    out = torch.zeros(shape)
    for i, g in enumerate(rows):
        n = shape[1] if lengths is None else int(lengths[i])
        out[i, :n] = torch.randn((n, *shape[2:]), generator=g)
    return out.to(like)


class DiffusionPolicy(nn.Module, ABC):
    """A text-conditioned diffusion model over a "diffusion space" (MDM: the motion frames; MLD: the VAE latent),
    with diffusers' DDPM noising for training and DDIM sampling with batched classifier-free guidance."""

    family: ClassVar[str]
    config_class: ClassVar[type[MDMConfig] | type[MLDConfig]]
    prediction_type: ClassVar[PredictionType]
    # constructor arguments shared by the training (DDPM) and sampling (DDIM) schedulers of the family
    scheduler_kwargs: ClassVar[dict[str, Any]]
    ddim_kwargs: ClassVar[dict[str, Any]]

    def __init__(self, config: MDMConfig | MLDConfig, text_encoder: TextEncoder, cond_dim: int) -> None:
        super().__init__()
        if text_encoder.dim != cond_dim:
            raise ValueError(f"the text encoder returns {text_encoder.dim}-d embeddings, the model expects {cond_dim}")
        self.config = config
        self.text_encoder = text_encoder
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=config.diffusion_steps,
            prediction_type=self.prediction_type,
            clip_sample=False,
            variance_type="fixed_small",
            **self.scheduler_kwargs,
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def sampling_scheduler(self) -> DDIMScheduler:
        """A fresh DDIM scheduler on the training schedule (``set_timesteps`` makes one stateful per call)."""
        return DDIMScheduler(
            num_train_timesteps=self.config.diffusion_steps,
            prediction_type=self.prediction_type,
            clip_sample=False,  # neither original clips x0 (MDM samples with clip_denoised=False)
            **self.scheduler_kwargs,
            **self.ddim_kwargs,
        )

    # -- what each family defines ----------------------------------------------------------------

    @property
    @abstractmethod
    def cond_drop_prob(self) -> float:
        """The chance a training caption is replaced by the null condition."""

    @abstractmethod
    def null_condition(self, n: int) -> Tensor:
        """(n, dim) text embeddings of the unconditional model."""

    @abstractmethod
    def denoise(self, x_t: Tensor, timesteps: Tensor, cond: Tensor, mask: Tensor | None) -> Tensor:
        """The denoiser's prediction (x0 or epsilon, ``prediction_type``) in the diffusion space."""

    @abstractmethod
    def to_diffusion(
        self, motions: Tensor, mask: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Motions (B, T, F) with their frame mask -> x0 in the diffusion space and its mask (None: all valid)."""

    @abstractmethod
    def from_diffusion(self, x0: Tensor, mask: Tensor) -> Tensor:
        """x0 in the diffusion space -> motions (B, T, F), zero at padded frames."""

    @abstractmethod
    def diffusion_shape(self, batch: int, frames: int) -> tuple[tuple[int, ...], bool]:
        """The shape of x for ``batch`` motions of up to ``frames`` frames, and whether it is masked by frame."""

    # -- shared ----------------------------------------------------------------------------------

    def condition(self, texts: Sequence[str]) -> Tensor:
        return self.text_encoder.encode(texts)

    def training_loss(
        self, motions: Tensor, mask: Tensor, texts: Sequence[str], generator: torch.Generator | None = None
    ) -> Tensor:
        """The diffusion training loss of a batch of motions (``diffusion_loss`` of their ``to_diffusion``)."""
        x0, dmask = self.to_diffusion(motions, mask, generator)
        return self.diffusion_loss(x0, dmask, texts, generator)

    def diffusion_loss(
        self, x0: Tensor, dmask: Tensor | None, texts: Sequence[str], generator: torch.Generator | None = None
    ) -> Tensor:
        """The diffusion training loss of a batch already in the diffusion space: the mean of its
        ``conditioned_losses`` at ``training_draws`` from ``generator``."""
        return self.conditioned_losses(x0, dmask, texts, *self.training_draws(tuple(x0.shape), generator)).mean()

    def training_draws(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The random choices of a training batch whose x0 has ``shape``, in this order from ``generator``: uniform
        timesteps (B,), whether each caption gives way to the null condition (B,: the family's probability, MDM's
        cond_mask_prob, MLD's guidance_uncondp) and Gaussian noise. A sharded trainer draws them for its whole
        global batch in every process, then takes its rows."""
        batch, gen_device = shape[0], _generator_device(generator)
        t = torch.randint(0, self.config.diffusion_steps, (batch,), generator=generator, device=gen_device)
        drop = torch.rand(batch, generator=generator, device=gen_device) < self.cond_drop_prob
        return t, drop, torch.randn(shape, generator=generator, device=gen_device)

    def conditioned_losses(
        self, x0: Tensor, dmask: Tensor | None, texts: Sequence[str], t: Tensor, drop: Tensor, noise: Tensor
    ) -> Tensor:
        """(B,) denoising losses of a training batch in the diffusion space at its ``training_draws``, each
        caption where ``drop`` is set replaced by the null condition."""
        if len(texts) != x0.shape[0]:
            raise ValueError(f"got {len(texts)} texts for {x0.shape[0]} motions")
        cond = self.condition(texts)
        cond = torch.where(drop.to(cond.device)[:, None], self.null_condition(len(texts)), cond)
        return denoising_losses(self, x0, dmask, cond, t.to(x0.device), noise.to(x0))

    def sample(
        self,
        texts: Sequence[str],
        lengths: Sequence[int] | Tensor,
        config: DiffusionSamplingConfig | None = None,
        generator: torch.Generator | None = None,
        seeds: Sequence[int] | None = None,
    ) -> Tensor:
        """(B, max(lengths), F) normalised motions, zero past each length: DDIM from Gaussian noise, every step
        one denoiser forward on [unconditional rows; conditional rows] when guidance is not 1.

        ``seeds`` (one per row, instead of ``generator``) draws each row's noise from its own generator, so a
        row's sample depends on its caption, length and seed alone, never on the rest of the batch."""
        config = config or DiffusionSamplingConfig()
        texts = _check_texts(texts)
        if seeds is not None and (generator is not None or len(seeds) != len(texts)):
            raise ValueError(f"pass one seed per text ({len(texts)}) and no generator, got {len(seeds)} seeds")
        rows = [torch.Generator().manual_seed(int(s)) for s in seeds] if seeds is not None else None
        check_sampling_steps(config.steps, self.config.diffusion_steps)
        mask = lengths_to_mask(lengths).to(self.device)
        if len(texts) != mask.shape[0]:
            raise ValueError(f"got {len(texts)} texts for {mask.shape[0]} lengths")
        scheduler = self.sampling_scheduler()
        scheduler.set_timesteps(config.steps)
        guided = config.guidance != 1.0
        with evaluating(self):
            shape, masked = self.diffusion_shape(len(texts), mask.shape[1])
            cond = self.condition(texts)
            dmask = mask if masked else None
            if guided:
                cond = torch.cat([self.null_condition(len(texts)), cond])
                dmask = torch.cat([mask, mask]) if masked else None
            row_lengths = mask.sum(1).tolist() if masked else None
            x = _noise(shape, generator, rows, cond, row_lengths) * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                x_in = torch.cat([x, x]) if guided else x
                out = self.denoise(x_in, t.to(self.device).expand(x_in.shape[0]), cond, dmask)
                if guided:
                    uncond, conditional = out.chunk(2)
                    out = uncond + config.guidance * (conditional - uncond)
                variance = _noise(shape, None, rows, x, row_lengths) if rows is not None and config.eta > 0 else None
                x = scheduler.step(out, t, x, eta=config.eta, generator=generator, variance_noise=variance).prev_sample
            return self.from_diffusion(x, mask)

    # -- disk ------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """config.json (family, model and text encoder configs), model.safetensors (every trained weight; a
        frozen CLIP is not one, its folder is named in the config) and, for a words encoder, tokenizer.json."""

        def write(tmp: Path) -> None:
            save_weights(self, tmp / WEIGHTS_FILE, metadata={"format": FORMAT_NAME})
            if isinstance(self.text_encoder, WordTextEncoder):
                self.text_encoder.tokenizer.save(str(tmp / TOKENIZER_FILE))

        meta = {
            "format": FORMAT_NAME,
            "family": self.family,
            "model": self.config.model_dump(mode="json"),
            "text_encoder": self.text_encoder.config.model_dump(mode="json"),
        }
        FOLDER.save(directory, meta, write)


class MDMPolicy(DiffusionPolicy):
    """MDM: x0 prediction on frames, cosine schedule (MDM's ``get_named_beta_schedule('cosine')`` is diffusers'
    ``squaredcos_cap_v2``), the null condition a zero text embedding (MDM's ``mask_cond``)."""

    family = "mdm"
    config_class = MDMConfig
    prediction_type = "sample"
    scheduler_kwargs = {"beta_schedule": "squaredcos_cap_v2"}
    # the last step returns the x0 prediction, as MDM's final posterior mean at t = 0 does
    ddim_kwargs = {"set_alpha_to_one": True, "steps_offset": 0}
    config: MDMConfig

    def __init__(self, config: MDMConfig, text_encoder: TextEncoder) -> None:
        super().__init__(config, text_encoder, config.clip_dim)
        self.model = MDM(config)

    @property
    def cond_drop_prob(self) -> float:
        return self.config.cond_mask_prob

    def null_condition(self, n: int) -> Tensor:
        return torch.zeros(n, self.config.clip_dim, device=self.device)

    def denoise(self, x_t: Tensor, timesteps: Tensor, cond: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            raise ValueError("MDM denoises frames: pass their (B, T) mask")
        return self.model(x_t, timesteps, cond, mask)

    def to_diffusion(
        self, motions: Tensor, mask: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        return motions.masked_fill(~mask[..., None], 0.0), mask

    def from_diffusion(self, x0: Tensor, mask: Tensor) -> Tensor:
        return x0.masked_fill(~mask[..., None], 0.0)

    def diffusion_shape(self, batch: int, frames: int) -> tuple[tuple[int, ...], bool]:
        return (batch, frames, self.config.feature_dim), True


class MLDPolicy(DiffusionPolicy):
    """MLD: epsilon prediction on the VAE latent with MLD's ``scheduler.yaml`` (scaled-linear betas 0.00085 to
    0.012); the null condition is the text encoding of the empty caption, as MLD trains and samples."""

    family = "mld"
    config_class = MLDConfig
    prediction_type = "epsilon"
    scheduler_kwargs = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    ddim_kwargs = {"set_alpha_to_one": False, "steps_offset": 1}
    config: MLDConfig

    def __init__(self, config: MLDConfig, text_encoder: TextEncoder) -> None:
        super().__init__(config, text_encoder, config.text_encoded_dim)
        self.vae = MldVae(config)
        self.denoiser = MldDenoiser(config)

    @property
    def cond_drop_prob(self) -> float:
        return self.config.guidance_uncondp

    def null_condition(self, n: int) -> Tensor:
        return self.condition([""]).expand(n, -1)

    def denoise(self, x_t: Tensor, timesteps: Tensor, cond: Tensor, mask: Tensor | None) -> Tensor:
        return self.denoiser(x_t, timesteps, cond)

    def to_diffusion(
        self, motions: Tensor, mask: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        # The frozen VAE's posterior MEAN, never a gradient into the VAE. MLD samples the posterior, which after
        # its long VAE stage is sharp; a VAE trained for a few thousand CPU steps keeps a posterior std near 1
        # (measured 0.99 against |mu| 0.86), so its samples would be mostly noise. For a trained MLD the two agree.
        with torch.no_grad():
            return self.vae.encode(motions, mask, generator)[1], None

    def from_diffusion(self, x0: Tensor, mask: Tensor) -> Tensor:
        return self.vae.decode(x0, mask)

    def diffusion_shape(self, batch: int, frames: int) -> tuple[tuple[int, ...], bool]:
        return (batch, self.config.latent_size, self.config.latent_dim), False

    def vae_loss(
        self,
        motions: Tensor,
        mask: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        frame_weight: float = 1.0,
        row_weight: float = 1.0,
    ) -> Tensor:
        """MLD's VAE stage: smooth-L1 feature reconstruction over the valid frames + lambda_kl x KL(q || N(0, I))
        (MLD's recons_feature and kl_motion; its joint-position term needs the skeleton and is left out).
        ``noise``: the posterior sample's draw (``MldVae.encode``). The reconstruction is a mean over the batch's
        valid frames and the KL one over its rows, so a launched process passes the share weights
        (``distributed.share_weight``) of its frames and of its rows."""
        z, mu, logvar = self.vae.encode(motions, mask, generator, noise)
        recon = F.smooth_l1_loss(self.vae.decode(z, mask), motions, reduction="none")
        keep = mask[..., None].to(recon.dtype)
        recon = (recon * keep).sum() / (keep.sum() * recon.shape[-1]) * frame_weight
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
        return recon + self.config.lambda_kl * kl.mean() * row_weight


FAMILIES: dict[str, type[DiffusionPolicy]] = {"mdm": MDMPolicy, "mld": MLDPolicy}


def is_diffusion_policy(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a saved diffusion policy (its config.json names this format), not a token one."""
    path = Path(directory) / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def load_policy(directory: str | os.PathLike, device: str | torch.device = "cpu") -> DiffusionPolicy:
    """A policy folder written by ``DiffusionPolicy.save`` (safetensors only; nothing is unpickled)."""
    directory = Path(directory)
    meta = FOLDER.read(directory)
    path = directory / CONFIG_FILE
    if meta["family"] not in FAMILIES:
        raise CheckpointError(f"{path}: family must be one of {sorted(FAMILIES)}, got {meta['family']!r}")
    cls = FAMILIES[meta["family"]]
    for key in ("model", "text_encoder"):
        if not isinstance(meta[key], dict):
            raise CheckpointError(f"{path}: {key} must be a JSON object, got {json.dumps(meta[key])[:40]}")
    config = read_section(cls.config_class, meta["model"], path)
    text_config = read_section(TextEncoderConfig, meta["text_encoder"], path)
    if text_config.kind == "words":
        tokenizer_path = directory / TOKENIZER_FILE
        if not tokenizer_path.is_file():
            raise FileNotFoundError(f"{tokenizer_path}: not found; {directory} is not a saved diffusion policy")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as err:  # the tokenizers library raises a bare Exception for a file it cannot parse
            raise CheckpointError(f"{tokenizer_path}: not a readable tokenizer ({err})") from None
        text_encoder: TextEncoder = WordTextEncoder(text_config, tokenizer)
    else:
        text_encoder = CLIPTextEncoder(text_config)
    policy = cls(config, text_encoder)
    weights = directory / WEIGHTS_FILE
    state = load_weights(weights)
    check_state_dict(policy, state, where=str(weights))
    policy.load_state_dict(state)
    return policy.to(device).eval()


def denoising_losses(
    model: DiffusionPolicy, x0: Tensor, mask: Tensor | None, cond: Tensor, t: Tensor, noise: Tensor
) -> Tensor:
    """(B,) masked mean squared error of the model's prediction against its own target, x0 for MDM and epsilon
    for MLD, at the given timesteps ``t`` (B,) and ``noise`` (shaped as x0): x_t = sqrt(a_t) x0 + sqrt(1 - a_t)
    noise with a_t the scheduler's ``alphas_cumprod[t]``. Diffusion-DPO and SoPo pass the same t and noise to the
    policy and the reference. ``mask`` (B, L) marks valid rows of x0 (None: all).

    For x0 prediction the epsilon the model implies is eps_hat = (x_t - sqrt(a_t) x0_hat) / sqrt(1 - a_t), so
    ||eps - eps_hat||^2 = (a_t / (1 - a_t)) ||x0 - x0_hat||^2: the epsilon-form loss of Diffusion-DPO is this one
    times the signal-to-noise ratio ``snr(model, t)``, which weighs low-noise steps far more.
    """
    x_t = model.noise_scheduler.add_noise(x0, noise, t)
    prediction = model.denoise(x_t, t, cond, mask)
    target = x0 if model.prediction_type == "sample" else noise
    return masked_mse(prediction, target, mask)


def snr(model: DiffusionPolicy, t: Tensor) -> Tensor:
    """a_t / (1 - a_t) at timesteps t: epsilon-space squared error over x0-space squared error."""
    alphas = model.noise_scheduler.alphas_cumprod.to(t.device)[t]
    return alphas / (1 - alphas)
