"""The labeling app: people judge motion pairs in a browser; every judgment is appended to their label file.

One server, several labelers at once. Each browser session has its own labeler (the logged-in user when
login is on, else a name typed at the start and remembered in the browser) and its own queue: the pairs
of ``pairs.parquet`` in table order (or a seeded per-labeler shuffle) minus the pairs that labeler already
judged in ``labels/<labeler>.jsonl``, so a labeler resumes where they stopped. A judgment is appended with
flush + fsync (:func:`~motionpref.prefs.labels.append_judgment`) before the next pair is shown or the HTTP
request is answered; a per-labeler lock and the set of judged pair ids make a double submit of a pair (double
click, two tabs, a client retry) a no-op instead of a second line. One app process per labels folder: the
judged sets live in this process, so :func:`launch` holds an exclusive lock on the labels folder while it serves
and a second app on the same folder refuses to start.

Keyboard (shown on the page): ``1``..``4`` = A is much better / better / slightly better / negligibly
better; ``9``..``6`` = the same for B (the number row reads as a scale from "A much better" on the left to
"B much better" on the right); ``s`` = skip (both fail).

HTTP API on the same server, for scripted clients and the load test (HTTP Basic credentials when login is
on; the labeler is then the user and a ``labeler`` field must match it or be left out):

- ``POST /api/judgment`` JSON ``{"labeler": "alice", "pair_id": "...", "choice": "a"|"b"|"skip",
  "degree": "much_better"|"better"|"slightly_better"|"negligible"|null}`` -> 200 ``{"written": true}`` once
  the line is on disk, ``{"written": false}`` if this labeler had already judged the pair (nothing written);
  400 unknown pair or invalid judgment, 401 bad credentials, 403 labeler is not the logged-in user,
  422 malformed body.
- ``GET /api/next?labeler=alice`` -> ``{"labeler", "done", "total", "pair": {"pair_id", "prompt"} | null}``.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, ValidationError

from motionpref.motion.render import render_side_by_side
from motionpref.motion.skeleton import SKELETONS
from motionpref.prefs.labels import (
    Choice,
    Degree,
    Judgment,
    LabelError,
    append_judgment,
    labeled_pair_ids,
    utc_now,
)
from motionpref.prefs.pairs import read_pairs

log = logging.getLogger(__name__)

USERS_ENV = "MOTIONPREF_APP_USERS"
LABELER_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
REQUIRED_COLUMNS = ("pair_id", "prompt", "features_a", "features_b")
# (choice, degree, button text, key) in the on-screen order: a scale from "A much better" to "B much better".
BUTTONS: tuple[tuple[Choice, Degree | None, str, str], ...] = (
    ("a", "much_better", "A much better", "1"),
    ("a", "better", "A better", "2"),
    ("a", "slightly_better", "A slightly better", "3"),
    ("a", "negligible", "A negligibly better / unsure", "4"),
    ("skip", None, "Skip: both fail", "s"),
    ("b", "negligible", "B negligibly better / unsure", "6"),
    ("b", "slightly_better", "B slightly better", "7"),
    ("b", "better", "B better", "8"),
    ("b", "much_better", "B much better", "9"),
)
DEGREE_TEXT = {"much_better": "much better", "better": "better", "slightly_better": "slightly better"}
DEGREE_TEXT["negligible"] = "negligibly better / unsure"


class LabelerError(ValueError):
    """A labeler name that cannot be a label file name."""


class LabelsFolderBusy(RuntimeError):
    """Another process serves the labels folder."""


@contextmanager
def lock_labels_dir(labels_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``labels_dir`` (created if missing) for the block; LabelsFolderBusy if another
    process holds it. Two apps on one folder would each keep their own judged sets and both acknowledge the
    same (labeler, pair).

    The lock is a flock on the folder itself, not on a lock file in it: the folder is a DVC dependency of
    ingest_labels and lives in git, where a new file would change its hash and show as untracked. The kernel
    drops the lock when the process dies, even by kill -9, so a crash never leaves the folder locked.
    """
    labels_dir = Path(labels_dir)
    labels_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(labels_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabelsFolderBusy(
                f"labels folder {labels_dir} is already served by another labeling app; stop that one first "
                "(one app per labels folder, or it would acknowledge the same judgment twice)"
            ) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def check_labeler(name: str) -> str:
    """The name itself if it is 1..64 characters of [A-Za-z0-9_-] (it names `labels/<name>.jsonl`)."""
    if not LABELER_PATTERN.fullmatch(name):
        raise LabelerError(
            f"labeler name {name!r} is not allowed: use 1 to 64 letters, digits, '_' or '-' "
            "(it names the file labels/<name>.jsonl)"
        )
    return name


def parse_users(spec: str, source: str = USERS_ENV) -> list[tuple[str, str]]:
    """Login users from ``"alice:pw1,bob:pw2"``; ``source`` names where the text came from in errors."""
    users: dict[str, str] = {}
    for k, item in enumerate(spec.split(","), start=1):
        name, sep, password = item.strip().partition(":")
        if not sep or not password:
            raise ValueError(f"{source}: entry {k} {item.strip()!r} is not 'user:password'")
        try:
            check_labeler(name)
        except LabelerError as e:
            raise ValueError(f"{source}: entry {k}: {e}") from None
        if name in users:
            raise ValueError(f"{source}: user {name!r} is listed twice")
        users[name] = password
    return list(users.items())


@dataclass(frozen=True)
class Pair:
    pair_id: str
    prompt: str
    features_a: Path
    features_b: Path
    preview: Path | None  # a ready side-by-side GIF from the pairs table, if it exists


def _pairs_from_table(pairs: pd.DataFrame, root: Path, source: str) -> list[Pair]:
    missing = [c for c in REQUIRED_COLUMNS if c not in pairs.columns]
    if missing:
        raise ValueError(f"{source}: lacks column(s) {missing}; expected at least {list(REQUIRED_COLUMNS)}")
    dup = pairs["pair_id"][pairs["pair_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{source}: duplicate pair_id {dup.iloc[0]!r}")
    if pairs.empty:
        raise ValueError(f"{source}: no pairs to label")
    out = []
    for row, rec in enumerate(pairs.to_dict("records")):
        for col in REQUIRED_COLUMNS:
            if not isinstance(rec[col], str) or not rec[col]:
                raise ValueError(f"{source}: row {row}: {col} must be a non-empty string, got {rec[col]!r}")
        preview = rec.get("preview")
        preview_path = root / preview if isinstance(preview, str) and preview else None
        out.append(
            Pair(
                pair_id=rec["pair_id"],
                prompt=rec["prompt"],
                features_a=root / rec["features_a"],
                features_b=root / rec["features_b"],
                preview=preview_path if preview_path is not None and preview_path.is_file() else None,
            )
        )
    return out


def _load_motion(path: Path) -> tuple[np.ndarray, Any]:
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read motion features: {e}") from None
    skeletons = {s.feature_dim: s for s in SKELETONS.values()}
    if features.ndim != 2 or features.shape[1] not in skeletons:
        raise ValueError(f"{path}: expected features (T, 263) or (T, 251), got shape {features.shape}")
    return features, skeletons[features.shape[1]]


class PreviewCache:
    """Side-by-side GIFs of pairs: the table's own preview when there is one, else rendered once into
    ``cache_dir``. The pair a labeler waits for renders in the request's own thread; the next pairs render
    ahead on one background worker, whose queued work never delays the pair asked for now."""

    def __init__(self, cache_dir: Path, size: int = 320) -> None:
        self.cache_dir = Path(cache_dir)
        self.size = size
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview")
        self._jobs: dict[str, Future[Path]] = {}
        self._lock = threading.Lock()

    def path_of(self, pair: Pair) -> Path:
        if pair.preview is not None:
            return pair.preview
        # Pair ids may hold any character, so the name is a hash; the motion files' mtimes in it make a
        # re-sampled pair with the same id render anew instead of showing a stale GIF.
        stamps = [f.stat().st_mtime_ns if f.exists() else 0 for f in (pair.features_a, pair.features_b)]
        key = repr((pair.pair_id, str(pair.features_a), str(pair.features_b), *stamps, self.size))
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.gif"

    def _render(self, pair: Pair) -> Path:
        out = self.path_of(pair)
        if out.is_file():
            return out
        (a, skeleton), (b, skeleton_b) = _load_motion(pair.features_a), _load_motion(pair.features_b)
        if skeleton is not skeleton_b:
            raise ValueError(f"{pair.pair_id}: motions A and B have different feature sizes")
        return render_side_by_side(a, b, out, titles=("A", "B"), skeleton=skeleton, size=self.size)

    def _usable(self, job: Future[Path] | None) -> bool:
        """A job that is done well or under way (a queued one is cancelled: the caller takes it over)."""
        if job is None or job.cancel():
            return False
        return not (job.done() and job.exception() is not None)

    def get(self, pair: Pair) -> Path:
        """The GIF of ``pair``, rendering it now if needed; ValueError names an unreadable motion file."""
        with self._lock:
            job = self._jobs.get(pair.pair_id)
            mine = not self._usable(job)
            if mine:
                job = self._jobs[pair.pair_id] = Future()
                job.set_running_or_notify_cancel()  # running: nobody else may cancel it
        if mine:
            try:
                job.set_result(self._render(pair))
            except Exception as e:
                job.set_exception(e)
        return job.result()

    def prefetch(self, pair: Pair) -> None:
        with self._lock:
            job = self._jobs.get(pair.pair_id)
            if job is None or job.cancelled() or (job.done() and job.exception() is not None):
                self._jobs[pair.pair_id] = self._ahead.submit(self._render, pair)

    def close(self) -> None:
        self._ahead.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Book:
    """One labeler's file, the pair ids it holds, and the lock that serialises their updates."""

    path: Path
    done: set[str]
    lock: threading.Lock


class LabelStore:
    """Pairs, per-labeler queues and durable judgments, shared by every session of one app."""

    def __init__(
        self,
        pairs: pd.DataFrame,
        labels_dir: Path,
        previews_dir: Path,
        *,
        root: Path = Path("."),
        shuffle_seed: int | None = None,
        preview_size: int = 320,
        source: str = "pairs table",
    ) -> None:
        self.pairs = _pairs_from_table(pairs, Path(root), source)
        self.by_id = {p.pair_id: p for p in self.pairs}
        self.labels_dir = Path(labels_dir)
        self.shuffle_seed = shuffle_seed
        self.previews = PreviewCache(Path(previews_dir), preview_size)
        self._books: dict[str, _Book] = {}
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return len(self.pairs)

    def _book(self, labeler: str) -> _Book:
        check_labeler(labeler)
        with self._lock:
            book = self._books.get(labeler)
            if book is None:
                path = self.labels_dir / f"{labeler}.jsonl"
                book = _Book(path, labeled_pair_ids(path), threading.Lock())
                self._books[labeler] = book
            return book

    def order(self, labeler: str) -> list[Pair]:
        """This labeler's queue order: the table's, or a permutation seeded by (shuffle_seed, labeler)."""
        if self.shuffle_seed is None:
            return self.pairs
        rng = np.random.default_rng([self.shuffle_seed, zlib.crc32(labeler.encode())])
        return [self.pairs[i] for i in rng.permutation(len(self.pairs))]

    def upcoming(self, labeler: str, n: int = 1) -> list[Pair]:
        """The next ``n`` pairs this labeler has not judged, in queue order."""
        done = self._book(labeler).done
        out = []
        for pair in self.order(labeler):
            if pair.pair_id not in done:
                out.append(pair)
                if len(out) == n:
                    break
        return out

    def done_count(self, labeler: str) -> int:
        book = self._book(labeler)
        with book.lock:
            return len(book.done.intersection(self.by_id))

    def record(self, labeler: str, pair_id: str, choice: str, degree: str | None) -> bool:
        """Append this judgment (source human) to the labeler's file and return True once it is on disk;
        False, writing nothing, if the labeler has already judged the pair. ValueError if it is invalid."""
        if pair_id not in self.by_id:
            raise ValueError(f"unknown pair_id {pair_id!r} (not in the pairs table)")
        book = self._book(labeler)
        judgment = Judgment(
            pair_id=pair_id,
            prompt=self.by_id[pair_id].prompt,
            choice=choice,
            degree=degree,
            labeler=labeler,
            source="human",
            created_at=utc_now(),
        )
        with book.lock:
            if pair_id in book.done:
                return False
            append_judgment(book.path, judgment)
            book.done.add(pair_id)
        return True


# --- browser UI -------------------------------------------------------------------------------------------

_KEYS_JS = """
() => {
  const keys = %s;
  document.addEventListener("keydown", (e) => {
    if (e.repeat || e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    const id = keys[e.key.toLowerCase()];
    const button = id && document.getElementById(id);
    if (button && button.offsetParent !== null && !button.disabled) { e.preventDefault(); button.click(); }
  });
}
"""

PAGE_CSS = """
#prompt textarea { font-size: 1.3rem !important; line-height: 1.4; }
#progress { text-align: right; }
#choices { gap: 8px; align-items: stretch; flex-wrap: nowrap; }
#choices button { height: 100%; min-height: 4.4em; min-width: 0; white-space: normal; line-height: 1.25; }
#choices .skip-btn { background: #fff4d6; }
#preview img { width: 100%; height: 100%; object-fit: contain; }
"""


def _button_id(choice: str, degree: str | None) -> str:
    return f"choice-{choice}" if degree is None else f"choice-{choice}-{degree}"


def _help_text() -> str:
    return (
        "**Keys:** `1` `2` `3` `4` = **A** much better / better / slightly better / negligibly better or "
        "unsure; `9` `8` `7` `6` = the same for **B**; `s` = skip (both fail the prompt). "
        "Each judgment is saved before the next pair appears."
    )


def _describe(choice: str, degree: str | None) -> str:
    return "skipped (both fail)" if choice == "skip" else f"{choice.upper()} {DEGREE_TEXT[degree]}"


def build_ui(store: LabelStore, require_login: bool = False) -> gr.Blocks:
    """The Gradio page over ``store``; with ``require_login`` the labeler is the logged-in user."""
    # delete_cache: Gradio copies every GIF it serves to its temp folder; drop copies older than an hour.
    with gr.Blocks(title="motionpref labeling", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        remembered = gr.BrowserState(None, storage_key="motionpref-labeler", secret="motionpref-labeler-name")
        labeler_state = gr.State(None)
        with gr.Column(visible=False, elem_id="name-view") as name_view:
            gr.Markdown("## Motion preference labeling\nEnter the name your judgments are saved under.")
            name_box = gr.Textbox(label="Labeler name", placeholder="e.g. alice", elem_id="labeler-name")
            start = gr.Button("Start labeling", variant="primary", elem_id="start")
            name_msg = gr.Markdown(elem_id="name-msg")
        with gr.Column(visible=False, elem_id="label-view") as label_view:
            with gr.Row(equal_height=True):
                who = gr.Markdown(elem_id="labeler")
                progress = gr.Markdown(elem_id="progress")
            # Plain text: a labeler judges the prompt as the policy read it, not Markdown or HTML rendered from it.
            prompt = gr.Textbox(label="Prompt", interactive=False, elem_id="prompt")
            preview = gr.Image(
                type="filepath",
                show_label=False,
                interactive=False,
                buttons=[],
                height=400,
                elem_id="preview",
            )
            pair_box = gr.Textbox(visible=False, elem_id="pair-id")
            with gr.Row(elem_id="choices") as choices:
                buttons = [
                    gr.Button(
                        f"{text} [{key}]",
                        variant="secondary",
                        size="md",
                        elem_id=_button_id(choice, degree),
                        elem_classes=["skip-btn"] if choice == "skip" else None,
                    )
                    for choice, degree, text, key in BUTTONS
                ]
            status = gr.Markdown(elem_id="status")
            with gr.Row():
                gr.Markdown(_help_text(), elem_id="help")
                change = gr.Button(
                    "Change labeler",
                    size="sm",
                    scale=0,
                    min_width=140,
                    visible=not require_login,
                    elem_id="change",
                )

        view = [name_view, label_view, choices, who, progress, prompt, preview, pair_box, status, name_msg]

        def show_name(message: str = "") -> list[Any]:
            return [gr.update(visible=True), gr.update(visible=False), *[gr.update()] * 5, "", "", message]

        def show_pair(labeler: str, message: str = "") -> list[Any]:
            nxt = store.upcoming(labeler, 3)
            done, total = store.done_count(labeler), store.total
            head = [gr.update(visible=False), gr.update(visible=True)]
            if not nxt:
                return [
                    *head,
                    gr.update(visible=False),
                    f"Labeler **{labeler}**",
                    f"**{done} of {total}** judged",
                    gr.update(value=f"All {total} pairs judged. Thank you!", label="Done"),
                    None,
                    "",
                    message,
                    "",
                ]
            pair = nxt[0]
            try:
                gif: str | None = str(store.previews.get(pair))
            except (OSError, ValueError) as e:
                gif, message = None, f"Could not render this pair ({e}); skip it or tell the maintainer."
            for ahead in nxt[1:]:
                store.previews.prefetch(ahead)
            return [
                *head,
                gr.update(visible=True),
                f"Labeler **{labeler}**",
                f"Pair **{done + 1} of {total}** · `{pair.pair_id}`",
                gr.update(value=pair.prompt, label="Prompt"),
                gif,
                pair.pair_id,
                message,
                "",
            ]

        def current_labeler(state: str | None, request: gr.Request) -> str | None:
            return request.username if require_login else state

        def on_load(saved: str | None, request: gr.Request) -> list[Any]:
            labeler = request.username if require_login else saved
            if not isinstance(labeler, str) or not LABELER_PATTERN.fullmatch(labeler):
                return [None, *show_name()]
            try:
                return [labeler, *show_pair(labeler)]
            except LabelError as e:  # a damaged label file: say which line, write nothing
                raise gr.Error(str(e)) from None

        def on_start(name: str) -> list[Any]:
            name = (name or "").strip()
            try:
                check_labeler(name)
                page = show_pair(name)
            except (LabelerError, LabelError) as e:
                return [None, gr.update(), *show_name(f"**{e}**")]
            return [name, name, *page]

        def submit_handler(choice: str, degree: str | None):
            def on_submit(state: str | None, pair_id: str, request: gr.Request) -> list[Any]:
                labeler = current_labeler(state, request)
                if not labeler:
                    return show_name("Enter your name first.")
                if not pair_id:
                    return show_pair(labeler)
                try:
                    written = store.record(labeler, pair_id, choice, degree)
                except ValueError as e:
                    raise gr.Error(str(e)) from None
                if written:
                    message = f"Saved: `{pair_id}` {_describe(choice, degree)}."
                else:
                    message = f"`{pair_id}` was already judged by {labeler} (another tab?); not recorded twice."
                return show_pair(labeler, message)

            return on_submit

        def on_change() -> list[Any]:
            return [None, None, *show_name()]

        keys = {key: _button_id(choice, degree) for choice, degree, _, key in BUTTONS}
        demo.load(None, js=_KEYS_JS % json.dumps(keys))  # runs in the browser only
        demo.load(on_load, inputs=[remembered], outputs=[labeler_state, *view], api_visibility="private")
        for trigger in (start.click, name_box.submit):
            trigger(
                on_start,
                inputs=[name_box],
                outputs=[labeler_state, remembered, *view],
                api_visibility="private",
            )
        for button, (choice, degree, _, _) in zip(buttons, BUTTONS, strict=True):
            button.click(
                submit_handler(choice, degree),
                inputs=[labeler_state, pair_box],
                outputs=view,
                api_visibility="private",
                # the store's per-labeler locks serialise what must be serialised
                concurrency_limit=None,
                show_progress="minimal",
            )
        change.click(on_change, outputs=[labeler_state, remembered, *view], api_visibility="private")
    return demo


def build_app(
    pairs: pd.DataFrame,
    labels_dir: Path,
    previews_dir: Path,
    *,
    root: Path = Path("."),
    shuffle_seed: int | None = None,
    require_login: bool = False,
    preview_size: int = 320,
) -> gr.Blocks:
    """The labeling page for ``pairs`` (paths in it relative to ``root``); see the module docstring.
    :func:`launch` serves it with the JSON API and login; alone, give it ``.launch(css=PAGE_CSS)``."""
    store = LabelStore(pairs, labels_dir, previews_dir, root=root, shuffle_seed=shuffle_seed, preview_size=preview_size)
    return build_ui(store, require_login)


# --- HTTP API and server ----------------------------------------------------------------------------------


class JudgmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pair_id: str
    choice: Choice
    degree: Degree | None = None
    labeler: str | None = None


# What an unknown user's password is checked against: random per process, so no request can match it.
_NO_PASSWORD = secrets.token_bytes(32)


def _digest(secret: bytes) -> bytes:
    # Equal-length inputs for compare_digest, which otherwise returns early on a length mismatch.
    return hashlib.sha256(secret).digest()


def _basic_user(request: Request, users: dict[str, str]) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    try:
        name, sep, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        name, sep, password = "", "", ""
    known = name in users
    # An unknown name still costs one comparison, so the time taken tells neither whether the name exists nor
    # how much of a password was right; `&` evaluates both sides, and `known` keeps an unknown name out even
    # if its password were to match.
    expected = users[name].encode() if known else _NO_PASSWORD
    matches = hmac.compare_digest(_digest(expected), _digest(password.encode()))
    if scheme.lower() != "basic" or not sep or not (known & matches):
        raise HTTPException(401, "login required", headers={"WWW-Authenticate": 'Basic realm="motionpref"'})
    return name


def create_app(store: LabelStore, users: list[tuple[str, str]] | None = None) -> FastAPI:
    """A FastAPI app serving the JSON API under /api and the labeling page at /, login on if ``users``."""
    accounts = dict(users) if users else {}
    app = FastAPI(title="motionpref labeling", docs_url=None, redoc_url=None, openapi_url=None)

    def labeler_of(request: Request, given: str | None) -> str:
        if not accounts:
            if given is None:
                raise HTTPException(400, "labeler is required")
            return given
        user = _basic_user(request, accounts)
        if given is not None and given != user:
            raise HTTPException(403, f"logged in as {user!r}, cannot submit as {given!r}")
        return user

    # Plain `def` routes run in FastAPI's thread pool, so a blocking fsync stalls no other request.
    @app.post("/api/judgment")
    def post_judgment(body: JudgmentRequest, request: Request) -> dict[str, Any]:
        labeler = labeler_of(request, body.labeler)
        try:
            written = store.record(labeler, body.pair_id, body.choice, body.degree)
        except (LabelerError, ValidationError, ValueError) as e:
            raise HTTPException(400, str(e)) from None
        return {"written": written, "labeler": labeler, "pair_id": body.pair_id}

    @app.get("/api/next")
    def get_next(request: Request, labeler: str | None = None) -> dict[str, Any]:
        labeler = labeler_of(request, labeler)
        try:
            nxt = store.upcoming(labeler, 1)
        except (LabelerError, LabelError) as e:
            raise HTTPException(400, str(e)) from None
        pair = {"pair_id": nxt[0].pair_id, "prompt": nxt[0].prompt} if nxt else None
        return {"labeler": labeler, "done": store.done_count(labeler), "total": store.total, "pair": pair}

    allowed = {str(store.previews.cache_dir)} | {str(p.preview.parent) for p in store.pairs if p.preview}
    return gr.mount_gradio_app(
        app,
        build_ui(store, require_login=bool(accounts)),
        path="/",
        auth=list(accounts.items()) or None,
        auth_message="Log in with the labeler account you were given.",
        allowed_paths=sorted(allowed),
        footer_links=[],
        ssr_mode=False,
        css=PAGE_CSS,
        # Gradio's own FastAPI app would serve its schema at /openapi.json, outside any login.
        app_kwargs={"openapi_url": None},
    )


def users_from_env() -> list[tuple[str, str]] | None:
    spec = os.environ.get(USERS_ENV, "").strip()
    return parse_users(spec, USERS_ENV) if spec else None


def launch(
    pairs_path: Path,
    labels_dir: Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: list[tuple[str, str]] | None = None,
    *,
    previews_dir: Path | None = None,
    root: Path | None = None,
    shuffle_seed: int | None = None,
    preview_size: int = 320,
) -> None:
    """Serve the labeling app until interrupted. Paths inside the pairs table are relative to ``root``
    (default the working directory, the repo root); lazily rendered previews go to ``previews_dir``
    (default ``<labels_dir>/../app_previews``). ``auth`` None reads :data:`USERS_ENV`; login stays off if
    that is empty too. LabelsFolderBusy if another app serves ``labels_dir`` (see :func:`lock_labels_dir`)."""
    import uvicorn

    pairs_path, labels_dir = Path(pairs_path), Path(labels_dir)
    auth = auth if auth is not None else users_from_env()
    if host not in ("127.0.0.1", "localhost", "::1") and not auth:
        log.warning("serving on %s without login: anyone who reaches this port can write labels", host)
    with lock_labels_dir(labels_dir):
        store = LabelStore(
            read_pairs(pairs_path),
            labels_dir,
            previews_dir if previews_dir is not None else labels_dir.parent / "app_previews",
            root=root if root is not None else Path.cwd(),
            shuffle_seed=shuffle_seed,
            preview_size=preview_size,
            source=str(pairs_path),
        )
        print(f"labeling {store.total} pairs at http://{host}:{port}/ (login {'on' if auth else 'off'})", flush=True)
        try:
            uvicorn.run(create_app(store, auth), host=host, port=port, log_level="warning")
        finally:
            store.previews.close()


def label_app_main(
    pairs_path: Path,
    labels_dir: Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    users: str | None = None,
    *,
    previews_dir: Path | None = None,
    shuffle_seed: int | None = None,
    preview_size: int = 320,
) -> None:
    """CLI entry (``motionpref label-app``): ``users`` is ``"alice:pw1,bob:pw2"``, else read from
    ``MOTIONPREF_APP_USERS``; neither means no login. Other arguments as in :func:`launch`."""
    auth = parse_users(users, "--users") if users else None
    try:
        launch(
            Path(pairs_path),
            Path(labels_dir),
            host,
            port,
            auth,
            previews_dir=previews_dir,
            shuffle_seed=shuffle_seed,
            preview_size=preview_size,
        )
    except LabelsFolderBusy as e:
        raise SystemExit(f"label-app: {e}") from None
