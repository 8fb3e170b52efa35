"""The text-motion matching model of Guo et al. 2022 ("Generating diverse and natural 3D human motions
from text", CVPR), whose embeddings every text-to-motion paper scores with (R-precision, FID, ...).

Three networks as in EricGuo5513/text-to-motion ``networks/modules.py``, with the same parameter
names so the published ``finest.tar`` loads into them: ``TextEncoderBiGRUCo`` (word vectors + POS
one-hot -> BiGRU -> co-embedding), ``MovementConvEncoder`` (features without the 4 foot contacts ->
one "movement" latent per 4 frames) and ``MotionEncoderBiGRUCo`` (BiGRU over movements ->
co-embedding). The evaluator normalises motions with its own mean/std, not the dataset's.

Word vectors come from an embedding table: GloVe (``our_vab``, frozen) for the published model, or a
learnable table over the training captions' lemmas for a model trained here.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from motionpref.config import EvaluatorConfig
from motionpref.models.checkpoint import (
    CheckpointError,
    FolderLayout,
    check_state_dict,
    load_npy,
    load_weights,
    read_json,
    read_section,
    save_weights,
    write_metadata,
)
from motionpref.motion.text import Caption, pos_index

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "model.safetensors"
FOLDER = FolderLayout(
    kind="evaluator", metadata=CONFIG_FILE, fields=tuple(EvaluatorConfig.model_fields), files=(VOCAB_FILE,)
)
SOS, EOS, UNK = "sos", "eos", "unk"
N_CONTACTS = 4  # the feature vector ends with 4 foot-contact labels, which the movement encoder ignores
# Where the published evaluator lives under its checkpoints folder (text-to-motion, T2M-GPT, MotionGPT).
T2M_LAYOUT = {
    "t2m": {"feature_dim": 263, "meta": "Comp_v6_KLD01"},
    "kit": {"feature_dim": 251, "meta": "Comp_v6_KLD005"},
}


class CaptionedClip(Protocol):
    """What the evaluator needs of a dataset entry (``motion.dataset.Entry`` is one)."""

    features: np.ndarray  # (T, D) un-normalised
    captions: list[Caption]


def init_weight(m: nn.Module) -> None:
    """Xavier-normal weights and zero biases, the original's ``init_weight``."""
    if isinstance(m, nn.Conv1d | nn.Linear | nn.ConvTranspose1d):
        nn.init.xavier_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _coemb_head(hidden: int, output: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden * 2, hidden),
        nn.LayerNorm(hidden),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Linear(hidden, output),
    )


def _bigru_last(gru: nn.GRU, inputs: torch.Tensor, lengths: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Concatenated last forward and backward states of a BiGRU over padded sequences.

    ``enforce_sorted=False`` sorts by length for the packed GRU and restores the input order, which
    the original does by hand (batches sorted by length before every call).
    """
    packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
    _, last = gru(packed, hidden.repeat(1, inputs.shape[0], 1))
    return torch.cat([last[0], last[1]], dim=-1)


class TextEncoderBiGRUCo(nn.Module):
    def __init__(self, word_size: int, pos_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.pos_emb = nn.Linear(pos_size, word_size)
        self.input_emb = nn.Linear(word_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = _coemb_head(hidden_size, output_size)
        for m in (self.input_emb, self.pos_emb, self.output_net):
            m.apply(init_weight)
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))

    def forward(self, word_embs: torch.Tensor, pos_onehot: torch.Tensor, cap_lens: torch.Tensor) -> torch.Tensor:
        inputs = self.input_emb(word_embs + self.pos_emb(pos_onehot))
        return self.output_net(_bigru_last(self.gru, inputs, cap_lens, self.hidden))


class MovementConvEncoder(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        # Indices 0 and 3 carry the weights, as in the published state dict (main.0.*, main.3.*).
        self.main = nn.Sequential(
            nn.Conv1d(input_size, hidden_size, 4, 2, 1),
            nn.Dropout(0.2),
            nn.LeakyReLU(0.2),
            nn.Conv1d(hidden_size, output_size, 4, 2, 1),
            nn.Dropout(0.2),
            nn.LeakyReLU(0.2),
        )
        self.out_net = nn.Linear(output_size, output_size)
        self.main.apply(init_weight)
        self.out_net.apply(init_weight)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, T, D - 4) -> (B, T // 4, latent)."""
        return self.out_net(self.main(inputs.permute(0, 2, 1)).permute(0, 2, 1))


class MovementConvDecoder(nn.Module):
    """The movement autoencoder's decoder (Guo et al. 2022, Sec. 3.1), used only to pre-train the encoder."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose1d(input_size, hidden_size, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose1d(hidden_size, output_size, 4, 2, 1),
            nn.LeakyReLU(0.2),
        )
        self.out_net = nn.Linear(output_size, output_size)
        self.main.apply(init_weight)
        self.out_net.apply(init_weight)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, N, latent) -> (B, 4N, D)."""
        return self.out_net(self.main(inputs.permute(0, 2, 1)).permute(0, 2, 1))


class MotionEncoderBiGRUCo(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.input_emb = nn.Linear(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = _coemb_head(hidden_size, output_size)
        self.input_emb.apply(init_weight)
        self.output_net.apply(init_weight)
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))

    def forward(self, inputs: torch.Tensor, m_lens: torch.Tensor) -> torch.Tensor:
        return self.output_net(_bigru_last(self.gru, self.input_emb(inputs), m_lens, self.hidden))


def build_vocab(captions: Sequence[Caption], min_count: int = 1) -> dict[str, int]:
    """Word -> row for a learned word table: ``sos``, ``eos``, ``unk`` then the captions' lemmas
    (the word part of ``word/POS`` tokens) seen at least ``min_count`` times, in sorted order."""
    counts: dict[str, int] = {}
    for caption in captions:
        for word in caption.words:
            counts[word] = counts.get(word, 0) + 1
    words = sorted(w for w, c in counts.items() if c >= min_count and w not in (SOS, EOS, UNK))
    return {w: i for i, w in enumerate([SOS, EOS, UNK, *words])}


def random_crop(features: np.ndarray, unit_length: int, rng: np.random.Generator) -> np.ndarray:
    """A crop of a clip as the T2M ``Text2MotionDatasetV2`` takes one: the length rounded down to a
    multiple of ``unit_length``, one unit shorter with probability 1/3 (the "double" coin), at a
    uniform offset."""
    units = len(features) // unit_length
    if units < 1:
        raise ValueError(f"clip has {len(features)} frames, fewer than one unit of {unit_length}")
    if rng.choice(["single", "single", "double"]) == "double" and units > 1:
        units -= 1
    length = units * unit_length
    start = int(rng.integers(0, len(features) - length + 1))
    return features[start : start + length]


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler for the GloVe vocabulary files, which hold only lists and dicts of str and int.

    Plain containers and scalars are built by pickle opcodes without looking up any global; every
    way a pickle runs code (``__reduce__`` of os.system, eval, ...) first needs ``find_class`` to
    fetch that callable. Refusing every global therefore makes a tampered file fail, not run.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refusing global {module}.{name}: only plain lists/dicts of str and int are accepted"
        )


def load_plain_pickle(path: str | os.PathLike) -> Any:
    with open(path, "rb") as f:
        try:
            return _PlainDataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise CheckpointError(f"{path}: not a plain-data pickle ({err})") from None


def _is_row(value: Any) -> bool:
    # bool is an int subclass, and a vocabulary entry True would silently read row 1
    return isinstance(value, int) and not isinstance(value, bool)


def load_glove(
    glove_dir: str | os.PathLike, prefix: str = "our_vab", dim: int = 300
) -> tuple[dict[str, int], np.ndarray]:
    """(word -> row, vectors (V, dim)) of the T2M word vectorizer files ``<prefix>_data.npy``,
    ``<prefix>_words.pkl`` (list of words) and ``<prefix>_idx.pkl`` (word -> row of the data)."""
    glove_dir = Path(glove_dir)
    paths = {k: glove_dir / f"{prefix}_{k}" for k in ("data.npy", "words.pkl", "idx.pkl")}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing GloVe file (the T2M evaluator's glove/ folder)")
    vectors = load_npy(paths["data.npy"])
    words = load_plain_pickle(paths["words.pkl"])
    word2idx = load_plain_pickle(paths["idx.pkl"])
    # np.issubdtype(bool, np.floating) is False, so booleans, integers, strings and objects all fail here.
    if not np.issubdtype(vectors.dtype, np.floating) or vectors.ndim != 2 or vectors.shape[1] != dim:
        raise CheckpointError(
            f"{paths['data.npy']}: expected float word vectors of shape (V, {dim}), got {vectors.dtype} "
            f"of shape {vectors.shape}"
        )
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise CheckpointError(f"{paths['words.pkl']}: expected a list of str")
    if not isinstance(word2idx, dict):
        raise CheckpointError(f"{paths['idx.pkl']}: expected a dict word -> row")
    vocab: dict[str, int] = {}
    for w in words:
        row = word2idx.get(w)
        if not _is_row(row) or not 0 <= row < len(vectors):
            raise CheckpointError(f"{paths['idx.pkl']}: word {w!r} maps to {row!r}, not a row of {paths['data.npy']}")
        vocab[w] = row
    missing = [w for w in (SOS, EOS, UNK) if w not in vocab]
    if missing:
        raise CheckpointError(f"{paths['words.pkl']}: the vocabulary lacks the special word(s) {missing}")
    return vocab, vectors.astype(np.float32)


class Evaluator(nn.Module):
    """Text and motion encoders of the T2M evaluator with their word table, vocabulary and statistics."""

    def __init__(self, config: EvaluatorConfig, vocab: dict[str, int], n_word_rows: int | None = None):
        super().__init__()
        missing = [w for w in (SOS, EOS, UNK) if w not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the special word(s) {missing}")
        self.config = config
        self.vocab = dict(vocab)
        rows = n_word_rows if n_word_rows is not None else max(vocab.values()) + 1
        self.word_emb = nn.Embedding(rows, config.dim_word)
        self.word_emb.weight.requires_grad_(config.word_vectors == "learned")
        self.text_encoder = TextEncoderBiGRUCo(
            config.dim_word, config.dim_pos_ohot, config.dim_text_hidden, config.dim_coemb_hidden
        )
        self.movement_encoder = MovementConvEncoder(
            config.feature_dim - N_CONTACTS, config.dim_movement_enc_hidden, config.dim_movement_latent
        )
        self.motion_encoder = MotionEncoderBiGRUCo(
            config.dim_movement_latent, config.dim_motion_hidden, config.dim_coemb_hidden
        )
        self.register_buffer("mean", torch.zeros(config.feature_dim))
        self.register_buffer("std", torch.ones(config.feature_dim))

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        shape = (self.config.feature_dim,)
        if mean.shape != shape or std.shape != shape:
            raise ValueError(f"evaluator stats must have shape {shape}, got {mean.shape} and {std.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("evaluator mean must be finite and std finite and positive")
        self.mean.copy_(torch.from_numpy(mean))
        self.std.copy_(torch.from_numpy(std))

    # ------------------------------------------------------------------------------------------ encoders

    def embed_text(self, words: torch.Tensor, pos_onehot: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Word ids (B, L) (rows of the word table) or word vectors (B, L, dim_word), POS one-hots
        (B, L, 15) and token counts (B,) including sos/eos -> text embeddings (B, dim_coemb_hidden)."""
        word_vecs = self.word_emb(words) if not words.is_floating_point() else words
        return self.text_encoder(word_vecs, pos_onehot.float(), lengths)

    def embed_motion(self, motions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Motions normalised with the evaluator's stats (B, T, D), zero-padded, and their frame
        counts (B,) (multiples of 4) -> motion embeddings (B, dim_coemb_hidden)."""
        movements = self.movement_encoder(motions[..., :-N_CONTACTS].float())
        return self.motion_encoder(movements, lengths // self.config.unit_length)

    # ------------------------------------------------------------------------------------ numpy helpers

    def tokenize(self, caption: Caption) -> tuple[list[int], list[int], int]:
        """(word rows, POS indices, length) of one caption as the T2M ``Text2MotionDatasetV2`` builds them:
        ``sos`` + at most ``max_text_len`` tokens + ``eos``, padded with ``unk/OTHER`` to max_text_len + 2.
        A word outside the vocabulary reads as ``unk`` with POS OTHER, as the T2M ``WordVectorizer``."""
        tokens = [(w, p) for w, p in zip(caption.words, caption.pos_tags, strict=True)][: self.config.max_text_len]
        tokens = [(SOS, "OTHER"), *tokens, (EOS, "OTHER")]
        length = len(tokens)
        tokens += [(UNK, "OTHER")] * (self.config.max_text_len + 2 - length)
        rows, pos = [], []
        for word, tag in tokens:
            in_vocab = word in self.vocab
            rows.append(self.vocab[word] if in_vocab else self.vocab[UNK])
            pos.append(pos_index(word, tag, in_vocab=in_vocab))
        return rows, pos, length

    def text_batch(self, captions: Sequence[Caption]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Captions -> (word rows (B, L), POS one-hots (B, L, 15), lengths (B,)) for ``embed_text``."""
        tokenised = [self.tokenize(c) for c in captions]
        rows = torch.tensor([t[0] for t in tokenised], dtype=torch.long)
        pos = torch.nn.functional.one_hot(
            torch.tensor([t[1] for t in tokenised], dtype=torch.long), self.config.dim_pos_ohot
        ).float()
        return rows, pos, torch.tensor([t[2] for t in tokenised], dtype=torch.long)

    def motion_batch(self, features_list: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised clips (T, D) -> (normalised, zero-padded (B, max_motion_length, D), lengths (B,)).

        Each clip is cut to at most ``max_motion_length`` frames and to a multiple of ``unit_length``
        (its tail dropped), as the T2M loaders crop. Padding to a fixed length as the original does
        matters: the movement encoder's last unit sees up to 2 frames past the clip's end (padding
        zeros, or the convolution's own zero padding for a clip that fills the batch), so a
        batch-dependent padding would make a clip's embedding depend on its batch.
        """
        unit, dim, max_len = self.config.unit_length, self.config.feature_dim, self.config.max_motion_length
        mean, std = self.mean.cpu().numpy(), self.std.cpu().numpy()
        clips = []
        for i, f in enumerate(features_list):
            f = np.asarray(f, dtype=np.float32)
            if f.ndim != 2 or f.shape[1] != dim:
                raise ValueError(f"motion {i}: expected features (T, {dim}), got shape {f.shape}")
            if len(f) < unit:
                raise ValueError(f"motion {i}: has {len(f)} frames, the evaluator needs at least {unit}")
            if not np.isfinite(f).all():
                raise ValueError(f"motion {i}: features contain nan or inf")
            f = f[:max_len]
            clips.append((f[: len(f) // unit * unit] - mean) / std)
        lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
        batch = np.zeros((len(clips), max_len, dim), dtype=np.float32)
        for i, c in enumerate(clips):
            batch[i, : len(c)] = c
        return torch.from_numpy(batch), lengths

    @torch.no_grad()
    def embed_captions(self, captions: Sequence[Caption], batch_size: int = 32) -> np.ndarray:
        """Text embeddings (N, dim_coemb_hidden) of captions, in input order."""
        self.eval()
        device = self.mean.device
        out = [
            self.embed_text(*(t.to(device) for t in self.text_batch(captions[i : i + batch_size])))
            for i in range(0, len(captions), batch_size)
        ]
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, self.config.dim_coemb_hidden), np.float32)

    @torch.no_grad()
    def embed_motions(self, features_list: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Motion embeddings (N, dim_coemb_hidden) of un-normalised clips (T, D), in input order.

        Clips are re-normalised with the evaluator's own mean/std.
        """
        self.eval()
        out = []
        for i in range(0, len(features_list), batch_size):
            motions, lengths = self.motion_batch(features_list[i : i + batch_size])
            out.append(self.embed_motion(motions.to(self.mean.device), lengths.to(self.mean.device)))
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, self.config.dim_coemb_hidden), np.float32)

    def embed(
        self, captions: Sequence[Caption], features_list: Sequence[np.ndarray], batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """(text embeddings, motion embeddings), each (N, dim_coemb_hidden), of N caption/motion pairs.

        ``features_list`` holds un-normalised clips (dataset statistics undone).
        """
        if len(captions) != len(features_list):
            raise ValueError(f"{len(captions)} captions but {len(features_list)} motions")
        return self.embed_captions(captions, batch_size), self.embed_motions(features_list, batch_size)

    # ------------------------------------------------------------------------------------------ storage

    def save(self, directory: str | os.PathLike) -> None:
        """``config.json``, ``vocab.json`` and ``model.safetensors`` (encoders, word table, mean/std)."""

        def write(tmp: Path) -> None:
            write_metadata(tmp / VOCAB_FILE, self.vocab, indent=None, ensure_ascii=False)
            save_weights(self, tmp / WEIGHTS_FILE)

        FOLDER.save(directory, self.config.model_dump(), write)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Evaluator:
        directory = Path(directory)
        config = read_section(EvaluatorConfig, FOLDER.read(directory), directory / CONFIG_FILE)
        vocab = read_json(directory / VOCAB_FILE)
        if not isinstance(vocab, dict) or not all(_is_row(v) and v >= 0 for v in vocab.values()):
            raise CheckpointError(f"{directory / VOCAB_FILE}: expected a JSON object word -> row")
        weights = directory / WEIGHTS_FILE
        state = load_weights(weights)
        rows = state["word_emb.weight"].shape[0] if "word_emb.weight" in state else None
        if rows is not None and vocab and max(vocab.values()) >= rows:
            raise CheckpointError(
                f"{directory / VOCAB_FILE}: a word maps to row {max(vocab.values())}, {weights} has {rows} word rows"
            )
        try:
            model = cls(config, vocab, rows)
        except ValueError as err:  # a vocabulary without sos/eos/unk
            raise CheckpointError(f"{directory / VOCAB_FILE}: {err}") from None
        check_state_dict(model, state, where=str(weights))
        model.load_state_dict(state)
        return model.eval()

    @classmethod
    def from_t2m(
        cls, checkpoints_dir: str | os.PathLike, glove_dir: str | os.PathLike, dataset: str = "t2m"
    ) -> Evaluator:
        """The published evaluator from the T2M checkpoints folder (as T2M-GPT / MotionGPT ship it):

        ``<checkpoints_dir>/<dataset>/text_mot_match/model/finest.tar`` (torch dict of the three
        encoders' state dicts), ``<checkpoints_dir>/<dataset>/Comp_v6_KLD01/meta/{mean,std}.npy`` for
        t2m (``Comp_v6_KLD005`` for kit) and ``<glove_dir>/our_vab_{data.npy,words.pkl,idx.pkl}``.
        """
        if dataset not in T2M_LAYOUT:
            raise ValueError(f"dataset must be one of {sorted(T2M_LAYOUT)}, got {dataset!r}")
        root = Path(checkpoints_dir) / dataset
        ckpt_path = root / "text_mot_match" / "model" / "finest.tar"
        meta = root / T2M_LAYOUT[dataset]["meta"] / "meta"
        for path in (ckpt_path, meta / "mean.npy", meta / "std.npy"):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing (published T2M evaluator layout)")
        config = EvaluatorConfig.t2m(T2M_LAYOUT[dataset]["feature_dim"])
        vocab, vectors = load_glove(glove_dir, dim=config.dim_word)
        model = cls(config, vocab, n_word_rows=len(vectors))
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for corrupt or non-weights files
            raise CheckpointError(f"{ckpt_path}: cannot be read as a weights-only torch checkpoint ({err})") from None
        if not isinstance(ckpt, dict):
            raise CheckpointError(f"{ckpt_path}: expected a dict checkpoint, got {type(ckpt).__name__}")
        for key in ("text_encoder", "movement_encoder", "motion_encoder"):
            if key not in ckpt:
                raise CheckpointError(f"{ckpt_path}: missing key {key!r} (found {sorted(ckpt)})")
            state = ckpt[key]
            if not isinstance(state, dict):
                raise CheckpointError(f"{ckpt_path}: {key!r} is a {type(state).__name__}, expected a state dict")
            module = getattr(model, key)
            check_state_dict(module, state, where=f"{ckpt_path} [{key}]")
            module.load_state_dict(state)
        with torch.no_grad():
            model.word_emb.weight.copy_(torch.from_numpy(vectors))
        stats = [load_npy(meta / name) for name in ("mean.npy", "std.npy")]
        try:
            model.set_stats(*stats)
        except ValueError as err:
            raise CheckpointError(f"{meta}: {err}") from None
        return model.eval()
