"""Shared pieces of the labeling-app tests: a tiny pairs table of procedural stick figures, a real uvicorn
server in a thread or a subprocess, and headless Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import uvicorn
from scipy.spatial.transform import Rotation

from motionpref.motion.features import extract_features
from motionpref.motion.skeleton import HUMANML3D, forward_kinematics
from motionpref.prefs.app import USERS_ENV
from motionpref.prefs.pairs import write_pairs as write_pairs_table

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's own connections exhaust this closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPTS = [
    "a person walks forward swinging both arms",
    "someone waves with the right hand",
    "a man walks slowly and then stops",
    "a person raises both arms above the head",
    "a person marches in place",
]


def stick_figure(n_frames: int, speed: float, arm: float, wave: float, fps: float = 20.0) -> np.ndarray:
    """HumanML3D features (n_frames - 1, 263) of a figure walking at ``speed`` m/s with sine-wave joints;
    ``arm`` lifts both shoulders (radians), ``wave`` swings the right elbow."""
    sk = HUMANML3D
    phase = 2 * np.pi * np.arange(n_frames) / fps
    rotvec = np.zeros((n_frames, sk.n_joints, 3))
    gait = min(1.0, speed / 1.2)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        swing = sign * np.sin(phase)
        rotvec[:, sk.index(f"{side}_hip"), 0] = 0.45 * gait * swing
        rotvec[:, sk.index(f"{side}_knee"), 0] = 0.7 * gait * np.clip(-swing, 0.0, None)
        rotvec[:, sk.index(f"{side}_shoulder"), 0] = -0.35 * gait * swing
        rotvec[:, sk.index(f"{side}_shoulder"), 2] = sign * arm
    rotvec[:, sk.index("right_elbow"), 2] = -wave * (0.6 + 0.4 * np.sin(2 * phase))
    rot = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix().reshape(n_frames, sk.n_joints, 3, 3)
    root = np.stack([np.zeros(n_frames), np.full(n_frames, 0.93), speed * np.arange(n_frames) / fps], -1)
    return extract_features(forward_kinematics(rot, root))


def pair_row(**fields: object) -> dict:
    """A row of the pairs table (``PAIRS_SCHEMA``): what the app does not read gets a plain value."""
    row = {
        "prompt_id": f"q-{fields['pair_id']}",
        "program": None,
        "group": f"prompt {fields['pair_id']}",
        "split": "train",
        "seed_a": 0,
        "seed_b": 1,
        "temperature": 1.2,
        "tokens_a": [],
        "tokens_b": [],
        "valid_a": True,
        "valid_b": True,
        "policy_hash": "test",
        "preview": None,
    }
    return {**row, **fields}


def write_pairs(root: Path, n_pairs: int = 5, n_frames: int = 41, preview_for: int | None = None) -> Path:
    """`root/pairs.parquet` with ``n_pairs`` pairs p1..pN whose feature files live under ``root``
    (paths relative to it, as in the real table); pair ``preview_for`` (1-based) gets a ready GIF."""
    from motionpref.motion.render import render_side_by_side

    motions = root / "motions"
    motions.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(1, n_pairs + 1):
        prompt = PROMPTS[(k - 1) % len(PROMPTS)]
        a = stick_figure(n_frames, speed=1.2 * (k % 2), arm=0.2 * k, wave=0.0)
        b = stick_figure(n_frames, speed=0.3 * k, arm=1.3, wave=1.0)
        for side, feats in (("a", a), ("b", b)):
            np.save(motions / f"p{k}_{side}.npy", feats.astype(np.float32), allow_pickle=False)
        preview = None
        if k == preview_for:
            preview = f"previews/p{k}.gif"
            render_side_by_side(a, b, root / preview, size=128, every=4)
        rows.append(
            pair_row(
                pair_id=f"p{k}",
                prompt=prompt,
                features_a=f"motions/p{k}_a.npy",
                features_b=f"motions/p{k}_b.npy",
                preview=preview,
            )
        )
    path = root / "pairs.parquet"
    write_pairs_table(pd.DataFrame(rows), path)
    return path


def write_bare_pairs(root: Path, n_pairs: int) -> Path:
    """`root/pairs.parquet` with pairs p0..p{n-1} whose feature files do not exist: enough for the JSON API,
    which never renders."""
    rows = [
        pair_row(pair_id=f"p{k}", prompt=f"prompt {k}", features_a=f"m/{k}a.npy", features_b=f"m/{k}b.npy")
        for k in range(n_pairs)
    ]
    path = root / "pairs.parquet"
    write_pairs_table(pd.DataFrame(rows), path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"no answer from {url} within {timeout} s")


@contextmanager
def serve_in_thread(app, timeout: float = 60.0) -> Iterator[str]:
    """Run ``app`` on a free localhost port with uvicorn in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve_in_subprocess(
    pairs: Path, labels: Path, root: Path, users: str = ""
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`label_app_main` in a child Python process (its own cwd ``root``); yields (base URL, process)."""
    port = free_port()
    code = (
        "import sys; from motionpref.prefs.app import label_app_main; "
        "label_app_main(sys.argv[1], sys.argv[2], '127.0.0.1', int(sys.argv[3]), sys.argv[4] or None)"
    )
    env = {k: v for k, v in os.environ.items() if k != USERS_ENV}  # login only when the test asks
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(pairs), str(labels), str(port), users],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/api/next", proc=proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium browser (Playwright, the Debian binary)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
