"""Motion VQ-VAE of T2M-GPT (Zhang et al. 2023) as MotionGPT (Jiang et al. 2023) uses it.

A 1-D convolutional encoder maps normalised motion features (B, T, D) to one latent every
``stride_t ** down_t`` frames, an EMA codebook with dead-code reset quantises each latent to the
nearest of ``nb_code`` codes, and a mirrored decoder maps codes back to features. Module and buffer
names follow MotionGPT's ``mGPT/archs/mgpt_vq.py`` (``encoder.model.*``, ``decoder.model.*``,
``quantizer.codebook``) so its weights have the same layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from motionpref.config import VQVAEConfig
from motionpref.models.checkpoint import FolderLayout, check_state_dict, load_weights, read_section, save_weights

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FOLDER = FolderLayout(kind="VQ-VAE", metadata=CONFIG_FILE, fields=tuple(VQVAEConfig.model_fields))
ACTIVATIONS = ("relu", "silu", "gelu")


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}[name]()


class ResConv1DBlock(nn.Module):
    """Pre-activation residual block: act -> dilated conv k3 -> act -> conv k1, plus the input."""

    def __init__(self, width: int, dilation: int, activation: str):
        super().__init__()
        self.activation1 = _activation(activation)
        self.conv1 = nn.Conv1d(width, width, 3, 1, padding=dilation, dilation=dilation)
        self.activation2 = _activation(activation)
        self.conv2 = nn.Conv1d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.activation2(self.conv1(self.activation1(x))))


class Resnet1D(nn.Module):
    """``depth`` residual blocks with dilations 1, g, g^2, ...; the decoder runs them largest first."""

    def __init__(self, width: int, depth: int, growth: int, activation: str, reverse_dilation: bool):
        super().__init__()
        blocks = [ResConv1DBlock(width, growth**d, activation) for d in range(depth)]
        if reverse_dilation:
            blocks = blocks[::-1]
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        kernel, pad = cfg.stride_t * 2, cfg.stride_t // 2
        blocks: list[nn.Module] = [nn.Conv1d(cfg.feature_dim, cfg.width, 3, 1, 1), nn.ReLU()]
        for _ in range(cfg.down_t):
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(cfg.width, cfg.width, kernel, cfg.stride_t, pad),
                    Resnet1D(cfg.width, cfg.depth, cfg.dilation_growth_rate, cfg.activation, False),
                )
            )
        blocks.append(nn.Conv1d(cfg.width, cfg.code_dim, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv1d(cfg.code_dim, cfg.width, 3, 1, 1), nn.ReLU()]
        for _ in range(cfg.down_t):
            blocks.append(
                nn.Sequential(
                    Resnet1D(cfg.width, cfg.depth, cfg.dilation_growth_rate, cfg.activation, True),
                    nn.Upsample(scale_factor=cfg.stride_t, mode="nearest"),
                    nn.Conv1d(cfg.width, cfg.width, 3, 1, 1),
                )
            )
        blocks += [
            nn.Conv1d(cfg.width, cfg.width, 3, 1, 1),
            nn.ReLU(),
            nn.Conv1d(cfg.width, cfg.feature_dim, 3, 1, 1),
        ]
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def perplexity_of_counts(counts: torch.Tensor) -> torch.Tensor:
    """Codebook perplexity exp(H(p)), p = code usage frequencies (T2M-GPT ``compute_perplexity``).

    It equals the number of codes when all are used equally and 1 when one code takes everything.
    """
    prob = counts / counts.sum().clamp_min(1e-12)
    return torch.exp(-(prob * torch.log(prob + 1e-7)).sum())


class SharedBatch(Protocol):
    """The global batch that a training quantiser sees a share of, when several processes train on one batch
    (``train.vqvae``): what it needs of the other shares to update its codebook from the whole batch."""

    def sum(self, stats: torch.Tensor) -> torch.Tensor:
        """``stats`` of this share summed over every share of the batch."""
        ...

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of every share of the batch, this one's ``x`` among them, in the batch's order."""
        ...


class QuantizeEMAReset(nn.Module):
    """Nearest-code quantiser whose codebook follows the EMA of its assigned latents (van den Oord et
    al. 2017, appendix; Razavi et al. 2019) and whose unused codes are reset to random batch latents
    (T2M-GPT's ``QuantizeEMAReset``): a code with EMA count < 1 is replaced every training step.

    ``shared_batch`` is set while processes each train on a share of one global batch: the code counts and
    sums are then the whole batch's and the resets draw from the whole batch's latents, with the same random
    draws in every process, so every process keeps the codebook one process training on the batch would."""

    def __init__(self, nb_code: int, code_dim: int, mu: float):
        super().__init__()
        self.nb_code, self.code_dim, self.mu = nb_code, code_dim, mu
        self.register_buffer("codebook", torch.zeros(nb_code, code_dim))
        self.register_buffer("code_sum", torch.zeros(nb_code, code_dim))
        self.register_buffer("code_count", torch.zeros(nb_code))
        # A buffer (not a Python flag) so that a saved model knows its codebook was initialised.
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.shared_batch: SharedBatch | None = None

    def _whole_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.shared_batch is None else self.shared_batch.rows(x)

    def _random_latents(self, x: torch.Tensor) -> torch.Tensor:
        """``nb_code`` latents of the batch in random order, tiled with small noise if the batch is short."""
        if x.shape[0] < self.nb_code:
            repeats = -(-self.nb_code // x.shape[0])
            x = x.repeat(repeats, 1)
            x = x + torch.randn_like(x) * (0.01 / np.sqrt(self.code_dim))
        # T2M-GPT takes the first rows of the batch; a permutation spreads resets over all clips.
        return x[torch.randperm(x.shape[0], device=x.device)[: self.nb_code]]

    @torch.no_grad()
    def _init_codebook(self, x: torch.Tensor) -> None:
        self.codebook.copy_(self._random_latents(self._whole_batch(x)))
        self.code_sum.copy_(self.codebook)
        self.code_count.fill_(1.0)
        self.initialised.fill_(True)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (Euclidean) for each row of ``x`` (N, code_dim)."""
        distance = x.pow(2).sum(-1, keepdim=True) - 2 * x @ self.codebook.t() + self.codebook.pow(2).sum(-1)[None, :]
        return distance.argmin(dim=-1)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.codebook)

    @torch.no_grad()
    def _update(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(codes, self.nb_code).to(x.dtype)  # (N, K)
        count, code_sum = onehot.sum(0), onehot.t() @ x
        if self.shared_batch is not None:  # one collective for both statistics
            stats = self.shared_batch.sum(torch.cat([count[:, None], code_sum], dim=1))
            count, code_sum = stats[:, 0], stats[:, 1:]
        self.code_sum.mul_(self.mu).add_(code_sum, alpha=1 - self.mu)
        self.code_count.mul_(self.mu).add_(count, alpha=1 - self.mu)
        used = (self.code_count >= 1.0).to(x.dtype)[:, None]
        updated = self.code_sum / self.code_count.clamp_min(1e-12)[:, None]
        self.codebook.copy_(used * updated + (1 - used) * self._random_latents(self._whole_batch(x)))
        return perplexity_of_counts(count)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, C, N) -> (quantised z, straight-through; commitment loss; perplexity; codes (B, N))."""
        # fp32 under a mixed-precision autocast too: bf16 rounds code counts above 256 and the nearest code
        with torch.autocast(z.device.type, enabled=False):
            b, c, n = z.shape
            x = z.permute(0, 2, 1).reshape(-1, c).float()
            if self.training and not bool(self.initialised):
                self._init_codebook(x)
            codes = self.quantize(x)
            x_q = self.dequantize(codes)
            if self.training:
                perplexity = self._update(x, codes)
            else:
                perplexity = perplexity_of_counts(torch.bincount(codes, minlength=self.nb_code).to(x.dtype))
            commit = F.mse_loss(x, x_q.detach())
            x_q = x + (x_q - x).detach()
            return x_q.view(b, n, c).permute(0, 2, 1), commit, perplexity, codes.view(b, n)


class MotionVQVAE(nn.Module):
    """Encoder -> EMA-reset codebook -> decoder over normalised features (B, T, D)."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = QuantizeEMAReset(config.nb_code, config.code_dim, config.mu)

    @property
    def codebook_size(self) -> int:
        return self.config.nb_code

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != self.config.feature_dim:
            raise ValueError(f"expected features (B, T, {self.config.feature_dim}), got shape {tuple(x.shape)}")
        if x.shape[1] < self.downsample:
            raise ValueError(f"need at least {self.downsample} frames to make one code, got {x.shape[1]}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D), T a multiple of 4 -> (reconstruction (B, T, D), commitment loss, perplexity)."""
        self._check_input(x)
        if x.shape[1] % self.downsample:
            raise ValueError(f"T={x.shape[1]} must be a multiple of {self.downsample} to reconstruct it")
        z_q, commit, perplexity, _ = self.quantizer(self.encoder(x.permute(0, 2, 1)))
        return self.decoder(z_q).permute(0, 2, 1), commit, perplexity

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised features (B, T, D) -> codes LongTensor (B, T // 4); a partial last code is dropped."""
        self._check_input(x)
        z = self.encoder(x.permute(0, 2, 1))
        b, c, n = z.shape
        return self.quantizer.quantize(z.permute(0, 2, 1).reshape(-1, c)).view(b, n)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, N) in [0, nb_code) -> normalised features (B, 4N, D)."""
        if codes.ndim != 2 or codes.shape[1] < 1:
            raise ValueError(f"expected codes (B, N) with N >= 1, got shape {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32) or codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"codes must be integers in [0, {self.codebook_size}), got {codes.dtype} "
                             f"in [{int(codes.min())}, {int(codes.max())}]")  # fmt: skip
        z = self.quantizer.dequantize(codes.long()).permute(0, 2, 1)
        return self.decoder(z).permute(0, 2, 1)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (replaced as a whole)."""
        FOLDER.save(directory, self.config.model_dump(), lambda tmp: save_weights(self, tmp / WEIGHTS_FILE))

    @classmethod
    def load(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> MotionVQVAE:
        directory = Path(directory)
        model = cls(read_section(VQVAEConfig, FOLDER.read(directory), directory / CONFIG_FILE))
        state = load_weights(directory / WEIGHTS_FILE, map_location)
        check_state_dict(model, state, where=str(directory / WEIGHTS_FILE))
        model.load_state_dict(state)
        return model.eval()


def tokenize(model: MotionVQVAE, features_normalised: np.ndarray) -> np.ndarray:
    """Codes (N,) int64 of one whole clip (T, D), normalised with the dataset statistics.

    The tail past the last multiple of 4 frames is cropped, as MotionGPT's tokeniser does with
    ``m_length // unit_length * unit_length``.
    """
    x = np.asarray(features_normalised, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != model.config.feature_dim:
        raise ValueError(f"expected one clip (T, {model.config.feature_dim}), got shape {x.shape}")
    usable = x.shape[0] // model.downsample * model.downsample
    if usable == 0:
        raise ValueError(f"clip has {x.shape[0]} frames, fewer than the {model.downsample} one code needs")
    was_training = model.training
    model.eval()
    try:
        codes = model.encode(torch.from_numpy(x[:usable])[None])
    finally:
        model.train(was_training)
    return codes[0].cpu().numpy().astype(np.int64)
