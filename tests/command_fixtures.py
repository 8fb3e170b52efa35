"""Running the project's command-line tools (git, dvc, mlflow, python) in a test, as a user's shell would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the project's venv: its mlflow, dvc and the `python` dvc.yaml's commands run
COMMAND_TIMEOUT = 300


def run(cmd: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on a non-zero exit fail the test with the command's output."""
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {done.returncode} in {cwd}:\n{done.stdout}\n{done.stderr}")
    return done


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a stage sees outside DVC and tests: none of a surrounding DVC run's or git's variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DVC_", "GIT_")) and k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """``clean_env`` without the user's or machine's git and DVC configuration (their config files live under
    ``home``), with a git identity of its own, for the commits DVC's experiments make, and no analytics."""
    return clean_env(
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Test",
        GIT_AUTHOR_EMAIL="test@localhost",
        GIT_COMMITTER_NAME="Test",
        GIT_COMMITTER_EMAIL="test@localhost",
        DVC_GLOBAL_CONFIG_DIR=str(home / "dvc-global"),
        DVC_SYSTEM_CONFIG_DIR=str(home / "dvc-system"),
        DVC_SITE_CACHE_DIR=str(home / "dvc-site"),
        DVC_NO_ANALYTICS="1",
        **extra,
    )
