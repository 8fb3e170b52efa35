"""Atomic writes: an output appears whole or not at all, so a failed stage leaves nothing half-written."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# temp files and folders are created private (0600 / 0700); outputs are ordinary files once in place
FILE_MODE = 0o644
DIR_MODE = 0o755


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it over, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def npy_bytes(array: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory in a sibling temp folder and swap it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, DIR_MODE)
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists() or path.is_symlink():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists() or old.is_symlink():
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old)


def write_all(writers: dict[Path, Callable[[Path], None]]) -> None:
    """Write several files all or nothing: each writer fills a temp file beside its target, and only when
    every one succeeded are they renamed into place."""
    staged: list[tuple[Path, Path]] = []
    try:
        for target, write in writers.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            staged.append((Path(tmp), target))
            write(Path(tmp))
            os.chmod(tmp, FILE_MODE)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, target in staged:
        os.replace(tmp, target)


def parquet_writer(table: pd.DataFrame, schema: pa.Schema) -> Callable[[Path], None]:
    return lambda path: pq.write_table(pa.Table.from_pandas(table, schema=schema, preserve_index=False), path)


def text_writer(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")


def write_parquet(path: str | os.PathLike, table: pd.DataFrame, schema: pa.Schema) -> None:
    write_all({Path(path): parquet_writer(table, schema)})
