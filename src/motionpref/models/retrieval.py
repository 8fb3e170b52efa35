"""A TMR-style text-motion retrieval model: the scorer SoPo uses as its reward and the AI labeler ranks with.

TMR (Petrovich et al., "TMR: Text-to-Motion Retrieval Using Contrastive 3D Human Motion Synthesis",
ICCV 2023) embeds a caption and a motion into one normalised latent space with two ACTOR-style
transformer encoders (a learned token prepended to the sequence, sinusoidal positions, key-padding
masks; its pooled output is the embedding) trained with a symmetric InfoNCE loss whose false negatives
(near-duplicate captions) are filtered out. SoPo scores a text-motion pair as ``cos / 2 + 0.5`` in
[0, 1] (TMR's ``get_score_matrix``); ``RetrievalModel.score`` is exactly that.

Only the contrastive part of TMR is kept: its VAE (KL terms) and its motion decoder with the
reconstruction loss make it a generator as well, which a scorer does not need.

This model is deliberately unlike the T2M evaluator (a BiGRU over word vectors and a conv/GRU motion
encoder trained with a margin loss): the pipeline rewards with this one and reports metrics with the
other, so finetuning never optimises the metric it is judged by.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import Tensor, nn

from motionpref.config import RetrievalConfig
from motionpref.models.checkpoint import (
    CheckpointError,
    FolderLayout,
    check_state_dict,
    load_weights,
    read_section,
    save_weights,
)
from motionpref.models.modes import evaluating

PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
FORMAT_NAME = "motionpref-retrieval"
FOLDER = FolderLayout(
    kind="retrieval model",
    metadata=CONFIG_FILE,
    fields=("motion_dim", *RetrievalConfig.model_fields),
    files=(TOKENIZER_FILE,),
    format=FORMAT_NAME,
)
# Lower-case words (with an optional 's / 't suffix) and numbers; punctuation is dropped.
WORD_PATTERN = r"[a-z0-9]+(?:'[a-z]+)?"


def info_nce_with_filtering(sim: Tensor, temperature: float, false_negatives: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE of TMR (Petrovich et al. 2023; ``InfoNCE_with_filtering`` in its code).

    ``sim[i, j]`` is the cosine similarity of text i and motion j; pair (i, i) is the positive.
    L = -1/(2N) sum_i [ log softmax_j(sim[i, :] / tau)[i] + log softmax_j(sim[:, i] / tau)[i] ],
    where every off-diagonal ``(i, j)`` with ``false_negatives[i, j]`` True is left out of both
    softmaxes (TMR sets those logits to -inf): two captions that say the same thing are not negatives.
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square (N, N) matrix, got shape {tuple(sim.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = sim.shape[0]
    logits = sim / temperature
    if false_negatives is not None:
        if false_negatives.shape != sim.shape:
            raise ValueError(f"false_negatives has shape {tuple(false_negatives.shape)}, expected {tuple(sim.shape)}")
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=sim.device)
        logits = logits.masked_fill(false_negatives.to(torch.bool) & off_diagonal, float("-inf"))
    labels = torch.arange(n, device=sim.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def cosine_to_score(cos: Tensor) -> Tensor:
    """SoPo's TMR score ``cos / 2 + 0.5``; clamped so rounding never leaves [0, 1]."""
    return (cos / 2 + 0.5).clamp(0.0, 1.0)


def build_tokenizer(captions: Sequence[str], min_count: int = 1) -> Tokenizer:
    """Word-level vocabulary of the training captions (lower-cased, accents stripped, punctuation dropped).

    TMR encodes text with a frozen DistilBERT; without a model hub we train a small word-level
    transformer instead, and a plain regex split (not the ``word/POS`` lemmas) keeps training and
    scoring of free-form prompts on the same tokens.
    """
    if not captions:
        raise ValueError("cannot build a vocabulary from no captions")
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True)
    trainer = trainers.WordLevelTrainer(
        special_tokens=[PAD_TOKEN, UNK_TOKEN], min_frequency=min_count, show_progress=False
    )
    tokenizer.train_from_iterator(list(captions), trainer)
    return tokenizer


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """(length, dim) sine/cosine position codes of Vaswani et al. 2017 (as ACTOR/TMR use)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    codes = torch.zeros(length, dim)
    codes[:, 0::2] = torch.sin(position * freq)
    codes[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return codes


class PooledTransformer(nn.Module):
    """ACTOR-style encoder: a learned token is prepended and its output is the sequence embedding."""

    def __init__(self, config: RetrievalConfig) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(config.latent_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.latent_dim,
            config.n_heads,
            config.ff_dim,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,  # pre-LN trains stably from scratch at these small sizes without warm-up
        )
        self.encoder = nn.TransformerEncoder(
            layer, config.n_layers, norm=nn.LayerNorm(config.latent_dim), enable_nested_tensor=False
        )

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        """x (B, L, d) embedded sequence, padding (B, L) True at padded steps -> (B, d)."""
        batch, length, dim = x.shape
        seq = torch.cat([self.token.expand(batch, 1, dim), x], dim=1)
        seq = seq + sinusoidal_positions(length + 1, dim).to(seq)
        mask = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=x.device), padding], dim=1)
        return self.encoder(seq, src_key_padding_mask=mask)[:, 0]


MotionBatch = Sequence[np.ndarray] | Tensor


class RetrievalModel(nn.Module):
    """Text and motion encoders into one normalised latent space.

    Motions are un-normalised dataset features (T, D); the model normalises them with the dataset
    Mean/Std it was trained with (stored in its weights file).
    """

    def __init__(self, config: RetrievalConfig, tokenizer: Tokenizer, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        mean = np.asarray(mean, dtype=np.float32)
        std = np.asarray(std, dtype=np.float32)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must be (D,) vectors of one size, got {mean.shape} and {std.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std < 0).any():
            raise ValueError("mean and std must be finite and std non-negative")
        for token, token_id in ((PAD_TOKEN, PAD_ID), (UNK_TOKEN, UNK_ID)):
            if tokenizer.token_to_id(token) != token_id:
                raise ValueError(f"tokenizer must map {token} to id {token_id} (use build_tokenizer)")
        self.config = config
        self.tokenizer = tokenizer
        self.motion_dim = int(mean.shape[0])
        # A constant feature (std 0) carries no information; dividing by 1 keeps it finite.
        std = np.where(std < 1e-6, 1.0, std).astype(np.float32)
        self.register_buffer("motion_mean", torch.from_numpy(mean.copy()))
        self.register_buffer("motion_std", torch.from_numpy(std))
        self.word_embedding = nn.Embedding(tokenizer.get_vocab_size(), config.latent_dim, padding_idx=PAD_ID)
        self.motion_projection = nn.Linear(self.motion_dim * config.frames_per_token, config.latent_dim)
        self.text_encoder = PooledTransformer(config)
        self.motion_encoder = PooledTransformer(config)

    @property
    def device(self) -> torch.device:
        return self.motion_mean.device

    # -- batches -------------------------------------------------------------------------------------

    def tokenize(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Captions -> word ids (B, L) (0 = padding) and the padding mask (B, L)."""
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, not one string")
        ids = []
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise TypeError(f"caption {i} is a {type(caption).__name__}, expected str")
            ids.append(self.tokenizer.encode(caption).ids[: self.config.max_words])
        length = max((len(x) for x in ids), default=0)
        out = torch.full((len(ids), length), PAD_ID, dtype=torch.long)
        for i, x in enumerate(ids):
            out[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        return out, out == PAD_ID

    def pad_motions(self, motions: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
        """Un-normalised (T_i, D) arrays -> a zero-padded (B, T, D) float tensor and lengths (B,)."""
        lengths = []
        for i, m in enumerate(motions):
            if not isinstance(m, np.ndarray) or m.ndim != 2 or m.shape[1] != self.motion_dim:
                shape = getattr(m, "shape", type(m).__name__)
                raise ValueError(f"motion {i} has shape {shape}, expected (T, {self.motion_dim})")
            if m.shape[0] < 1:
                raise ValueError(f"motion {i} has no frames")
            lengths.append(m.shape[0])
        out = torch.zeros(len(motions), max(lengths, default=0), self.motion_dim)
        for i, m in enumerate(motions):
            out[i, : m.shape[0]] = torch.from_numpy(np.asarray(m, dtype=np.float32))
        return out, torch.tensor(lengths, dtype=torch.long)

    # -- differentiable embeddings (not normalised), used by training ------------------------------

    def embed_text(self, ids: Tensor, padding: Tensor) -> Tensor:
        return self.text_encoder(self.word_embedding(ids.to(self.device)), padding.to(self.device))

    def embed_motion(self, features: Tensor, lengths: Tensor) -> Tensor:
        """features (B, T, D) un-normalised, lengths (B,) -> (B, d)."""
        features, lengths = features.to(self.device, torch.float32), lengths.to(self.device)
        k = self.config.frames_per_token
        batch, frames, _ = features.shape
        frames_padded = -(-frames // k) * k
        padding = torch.arange(frames_padded, device=self.device)[None, :] >= lengths[:, None]
        x = F.pad((features - self.motion_mean) / self.motion_std, (0, 0, 0, frames_padded - frames))
        x = x.masked_fill(padding[..., None], 0.0)
        tokens = x.reshape(batch, frames_padded // k, k * self.motion_dim)
        # A token is padding only when all its frames are; a clip's last token may be part zeros.
        return self.motion_encoder(self.motion_projection(tokens), padding[:, ::k])

    # -- inference ---------------------------------------------------------------------------------

    def encode_text(self, captions: Sequence[str], batch_size: int = 256) -> Tensor:
        """(B, d) unit-norm text embeddings (no gradient, dropout off)."""
        with evaluating(self):
            chunks = [
                F.normalize(self.embed_text(*self.tokenize(captions[i : i + batch_size])), dim=-1)
                for i in range(0, len(captions), batch_size)
            ]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.config.latent_dim, device=self.device)

    def encode_motion(
        self, motions: MotionBatch, lengths: Tensor | Sequence[int] | None = None, batch_size: int = 64
    ) -> Tensor:
        """(B, d) unit-norm motion embeddings of un-normalised features.

        ``motions`` is a list of (T_i, D) arrays, or a padded (B, T, D) tensor with ``lengths`` (B,)
        (all T frames when ``lengths`` is None).
        """
        if isinstance(motions, Tensor):
            if motions.ndim != 3 or motions.shape[2] != self.motion_dim:
                raise ValueError(f"motions has shape {tuple(motions.shape)}, expected (B, T, {self.motion_dim})")
            full = torch.full((motions.shape[0],), motions.shape[1], dtype=torch.long)
            lengths = full if lengths is None else torch.as_tensor(lengths, dtype=torch.long)
            if lengths.shape != full.shape or (lengths < 1).any() or (lengths > motions.shape[1]).any():
                raise ValueError(f"lengths must be {motions.shape[0]} values in 1..{motions.shape[1]}")
            batches = [
                (motions[i : i + batch_size], lengths[i : i + batch_size])
                for i in range(0, motions.shape[0], batch_size)
            ]
        else:
            if lengths is not None:
                raise ValueError("lengths is only for a padded tensor; a list of arrays carries its own")
            batches = [self.pad_motions(motions[i : i + batch_size]) for i in range(0, len(motions), batch_size)]
        with evaluating(self):
            chunks = [F.normalize(self.embed_motion(x, n), dim=-1) for x, n in batches]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.config.latent_dim, device=self.device)

    def score_matrix(
        self, texts: Sequence[str], motions: MotionBatch, lengths: Tensor | Sequence[int] | None = None
    ) -> np.ndarray:
        """(Bt, Bm) TMR scores ``cos / 2 + 0.5`` in [0, 1] of every text against every motion."""
        cos = self.encode_text(texts) @ self.encode_motion(motions, lengths).T
        return cosine_to_score(cos).cpu().numpy()

    def score(
        self, texts: Sequence[str], motions: MotionBatch, lengths: Tensor | Sequence[int] | None = None
    ) -> np.ndarray:
        """(B,) TMR scores ``cos / 2 + 0.5`` in [0, 1] of the pairs (texts[i], motions[i]): SoPo's score."""
        n_motions = motions.shape[0] if isinstance(motions, Tensor) else len(motions)
        if len(texts) != n_motions:
            raise ValueError(f"score pairs texts with motions row by row: got {len(texts)} texts, {n_motions} motions")
        cos = (self.encode_text(texts) * self.encode_motion(motions, lengths)).sum(-1)
        return cosine_to_score(cos).cpu().numpy()

    # -- disk ----------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Write config.json, tokenizer.json (the vocabulary) and model.safetensors (weights + mean/std).

        Files go to a temporary sibling directory that replaces ``directory`` only once complete.
        """

        def write(tmp: Path) -> None:
            self.tokenizer.save(str(tmp / TOKENIZER_FILE))
            save_weights(self, tmp / WEIGHTS_FILE, metadata={"format": FORMAT_NAME})

        meta = {"format": FORMAT_NAME, "motion_dim": self.motion_dim, **self.config.model_dump()}
        FOLDER.save(directory, meta, write)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> RetrievalModel:
        """Read a directory written by ``save`` (safetensors only; nothing is unpickled)."""
        directory = Path(directory)
        meta = FOLDER.read(directory)
        sizes = {k: v for k, v in meta.items() if k not in ("format", "motion_dim")}
        config = read_section(RetrievalConfig, sizes, directory / CONFIG_FILE)
        weights = directory / WEIGHTS_FILE
        state = load_weights(weights)
        for name in ("motion_mean", "motion_std"):
            if name not in state or state[name].shape != (meta["motion_dim"],):
                raise CheckpointError(f"{weights}: no {name} of shape ({meta['motion_dim']},)")
        try:
            tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        except Exception as err:  # the tokenizers library raises a bare Exception for a file it cannot parse
            raise CheckpointError(f"{directory / TOKENIZER_FILE}: not a readable tokenizer ({err})") from None
        model = cls(config, tokenizer, state["motion_mean"].numpy(), state["motion_std"].numpy())
        check_state_dict(model, state, where=str(weights))
        model.load_state_dict(state)
        return model.to(device).eval()
