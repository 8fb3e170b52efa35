"""Model folders and weight files: every model's save and load goes through here, so a folder is written whole or
not at all, and every file a user can fix (re-run the stage that writes it, replace a download) fails with one
error type, ``CheckpointError``, naming the file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from motionpref.config import ConfigError, S, section_from_file
from motionpref.io import atomic_dir

WEIGHTS_FILE = "model.safetensors"
# What transformers' save_pretrained writes for a model and its fast tokenizer; a large model has only the index
# of its weight shards.
PRETRAINED_FILES = ("config.json", "tokenizer.json")
PRETRAINED_WEIGHTS = (WEIGHTS_FILE, "model.safetensors.index.json")


class CheckpointError(ValueError):
    """A model file that does not hold what its loader needs (wrong layout, truncated or corrupt, a missing field,
    keys that do not fit the model); the message names the file. A missing file stays a FileNotFoundError."""


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise a CheckpointError naming every missing, unexpected or wrongly shaped key of ``state``."""
    expected = module.state_dict()
    problems = [f"missing key {k!r} (expected shape {tuple(v.shape)})" for k, v in expected.items() if k not in state]
    problems += [f"unexpected key {k!r} (shape {tuple(v.shape)})" for k, v in state.items() if k not in expected]
    problems += [
        f"key {k!r}: expected shape {tuple(expected[k].shape)}, got {tuple(v.shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if problems:
        raise CheckpointError(f"{where}: state dict does not match the model:\n  " + "\n  ".join(problems))


# ------------------------------------------------------------------------------------------------ JSON files


def write_metadata(path: Path, data: Any, indent: int | None = 2, ensure_ascii: bool = True) -> None:
    # The exact bytes matter: a policy folder's hash is part of every preference pair id.
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=ensure_ascii) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both are
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def read_section(cls: type[S], data: Mapping[str, Any], path: Path) -> S:
    """A config section stored in a model folder; a value the section refuses is a CheckpointError."""
    try:
        return section_from_file(cls, dict(data), str(path))
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def _require(path: Path, kind: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {path.parent} is not a saved {kind}")


@dataclass(frozen=True)
class FolderLayout:
    """The files of one kind of model folder. ``metadata`` is the JSON file describing the model: it must hold
    every one of ``fields``, and ``"format": format`` when ``format`` is set. Of ``weights`` any one will do."""

    kind: str  # named in errors: "<folder> is not a saved <kind>"
    metadata: str
    fields: Sequence[str]
    files: Sequence[str] = ()
    weights: Sequence[str] = (WEIGHTS_FILE,)
    format: str | None = None

    @classmethod
    def pretrained(cls, kind: str, metadata: str, format: str, fields: Sequence[str]) -> FolderLayout:
        """A transformers model and tokenizer as ``pretrained_writer`` saves them, with our metadata beside."""
        return cls(kind, metadata, fields, PRETRAINED_FILES, PRETRAINED_WEIGHTS, format)

    def save(self, directory: str | os.PathLike, metadata: Mapping[str, Any], write: Callable[[Path], None]) -> None:
        """``write`` fills a temporary folder, the metadata goes in last, and the folder then replaces
        ``directory`` as a whole: a failed save leaves the previous model untouched."""
        with atomic_dir(directory) as tmp:
            write(tmp)
            write_metadata(tmp / self.metadata, dict(metadata))

    def read(self, directory: str | os.PathLike) -> dict[str, Any]:
        """The metadata of a saved folder, once its files are all there and it holds every field."""
        directory = Path(directory)
        for name in (self.metadata, *self.files):
            _require(directory / name, self.kind)
        if not any((directory / name).is_file() for name in self.weights):
            _require(directory / self.weights[0], self.kind)
        path = directory / self.metadata
        meta = read_json(path)
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: expected a JSON object, got {type(meta).__name__}")
        required = ["format", *self.fields] if self.format is not None else list(self.fields)
        missing = [name for name in required if name not in meta]
        if missing:
            raise CheckpointError(
                f"{directory}: {self.metadata} lacks field{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(m) for m in missing)} (an old folder? re-run the stage that writes it)"
            )
        if self.format is not None and meta["format"] != self.format:
            raise CheckpointError(f"{path}: format {meta['format']!r}, expected {self.format!r}")
        return meta


# --------------------------------------------------------------------------------------------------- weights


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt ({err})")


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise _unreadable(path, err) from None


def pretrained_writer(model: Any, tokenizer: Any) -> Callable[[Path], None]:
    """What ``FolderLayout.save`` writes for a transformers model and its tokenizer."""

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    return write


def load_pretrained(directory: Path, model_cls: Any, tokenizer_cls: Any) -> tuple[Any, Any]:
    """``from_pretrained`` of a transformers model and its tokenizer, their file problems as CheckpointErrors.

    Every weights file's header is read first: transformers passes on safetensors' error for a truncated or
    corrupt file without its name, which matters most for a sharded model.
    """
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except SafetensorError as err:
            raise _unreadable(path, err) from None
    try:
        model = model_cls.from_pretrained(directory)
    except (OSError, ValueError) as err:  # transformers' errors for an unreadable or unknown config.json
        raise CheckpointError(f"{directory}: the model does not load ({err})") from None
    try:
        tokenizer = tokenizer_cls.from_pretrained(directory)
    except (OSError, ValueError) as err:  # a tokenizer file that is not JSON fails with a bare JSONDecodeError
        raise CheckpointError(f"{directory}: the tokenizer does not load ({err})") from None
    return model, tokenizer


def load_npy(path: Path) -> np.ndarray:
    """A plain ``.npy`` array, never unpickled; an empty, truncated or pickled file is a CheckpointError."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # EOFError: an empty file
        raise CheckpointError(f"{path}: not a readable .npy array ({err})") from None
