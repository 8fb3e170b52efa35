"""Progress bars for long work that stay quiet when nobody watches (CI logs, DVC stage output to a file)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def interactive() -> bool:
    return sys.stderr.isatty()


def track(iterable: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on a TTY, silently otherwise."""
    yield from tqdm(iterable, desc=description, total=total, disable=not interactive(), leave=False)


def quiet_libraries() -> None:
    """Silence transformers' own progress bars (weights loading, shard writing) when nobody watches, and a
    deprecation warning peft raises inside ``get_peft_model`` on every LoRA run (nothing we call)."""
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if interactive():
        return
    # read on import by huggingface_hub, and by transformers through it: a stage that never imports transformers
    # does not pay its import (~0.7 s) for this; a library imported already is told directly
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
