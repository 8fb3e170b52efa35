"""Library progress bars stay off when nobody watches, without importing transformers for it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = """
import sys
{before}
from motionpref.progress import quiet_libraries
quiet_libraries()
imported = "transformers" in sys.modules
from transformers.utils import logging
print(imported, logging.is_progress_bar_enabled())
"""


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        ("", "False False"),  # not imported for it, and its bars off once it is
        ("import huggingface_hub", "False False"),
        ("import transformers", "True False"),
    ],
)
def test_quiet_libraries_turns_transformers_bars_off_whenever_it_is_imported(before: str, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(before=before)],
        capture_output=True,  # stderr is not a TTY: nobody watches
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.split("\n")[-2] == expected
