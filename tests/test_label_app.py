"""The labeling app in a real headless Chromium against a real server: label, skip, reload, resume, log in."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from label_app_fixtures import PROMPTS, chromium, serve_in_thread, write_pairs
from PIL import Image
from playwright.sync_api import expect

from motionpref.prefs.app import (
    USERS_ENV,
    LabelStore,
    PreviewCache,
    check_labeler,
    create_app,
    parse_users,
    users_from_env,
)
from motionpref.prefs.labels import parse_judgment
from motionpref.prefs.pairs import read_pairs

# Gradio's queue (in the server thread) still sets pandas options that pandas 3 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")
REPO = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 30_000


def _store(root: Path, **kw) -> LabelStore:
    pairs = write_pairs(root, preview_for=2)
    return LabelStore(pd.read_parquet(pairs), root / "labels", root / "cache", root=root, **kw)


def _lines(path: Path) -> list[tuple[str, str, str | None, str]]:
    rows = []
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        j = parse_judgment(line, path, lineno)
        assert j.source == "human"
        rows.append((j.pair_id, j.choice, j.degree, j.labeler))
    return rows


def _wait_progress(page, text: str) -> None:
    page.locator("#progress").filter(has_text=text).wait_for(timeout=TIMEOUT_MS)


def _prompt(page) -> str:
    return page.input_value("#prompt textarea")


def _wait_prompt(page, text: str) -> None:
    expect(page.locator("#prompt textarea")).to_have_value(text, timeout=TIMEOUT_MS)


def _preview_loaded(page) -> str:
    """The src of the pair's GIF once the browser has decoded it."""
    img = page.locator("#preview img")
    img.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => { const i = document.querySelector('#preview img'); return i && i.complete && i.naturalWidth > 0; }",
        timeout=TIMEOUT_MS,
    )
    return img.get_attribute("src")


def test_label_skip_reload_resume_in_browser(tmp_path: Path) -> None:
    store = _store(tmp_path)
    labels = tmp_path / "labels" / "alice.jsonl"
    with serve_in_thread(create_app(store)) as url, chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 720})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)

        page.get_by_label("Labeler name").fill("../alice")
        page.get_by_role("button", name="Start labeling").click()
        page.locator("#name-msg").filter(has_text="not allowed").wait_for()
        assert not (tmp_path / "labels").exists()

        page.get_by_label("Labeler name").fill("alice")
        page.get_by_label("Labeler name").press("Enter")
        _wait_progress(page, "Pair 1 of 5")
        assert _prompt(page) == PROMPTS[0]
        src = _preview_loaded(page)
        assert src.endswith(".gif")
        shot = tmp_path / "label_app.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("MOTIONPREF_SCREENSHOT") == "1":
            (REPO / "reports").mkdir(exist_ok=True)
            page.screenshot(path=str(REPO / "reports" / "label_app.png"), full_page=True)

        page.click("#choice-a-much_better")  # click
        _wait_progress(page, "Pair 2 of 5")
        assert "Saved: p1 A much better" in page.inner_text("#status")
        # p2's ready preview from the pairs table is shown, not a rendering of its own
        assert _preview_loaded(page).endswith("/p2.gif")
        page.keyboard.press("8")  # B better
        _wait_progress(page, "Pair 3 of 5")
        _preview_loaded(page)
        page.keyboard.press("s")  # skip
        _wait_progress(page, "Pair 4 of 5")
        page.get_by_role("button", name="B slightly better [7]").click()
        _wait_progress(page, "Pair 5 of 5")

        assert _lines(labels) == [
            ("p1", "a", "much_better", "alice"),
            ("p2", "b", "better", "alice"),
            ("p3", "skip", None, "alice"),
            ("p4", "b", "slightly_better", "alice"),
        ]

        page.reload()  # the browser remembers the labeler; the server remembers what they judged
        _wait_progress(page, "Pair 5 of 5")
        assert "p5" in page.inner_text("#progress") and _prompt(page) == PROMPTS[4]

        # A second tab shows the same pair; judging it there after the first tab did writes nothing.
        other = context.new_page()
        other.goto(url)
        _wait_progress(other, "Pair 5 of 5")
        page.keyboard.press("2")  # A better
        _wait_prompt(page, "All 5 pairs judged. Thank you!")
        other.keyboard.press("9")
        other.locator("#status").filter(has_text="already judged").wait_for(timeout=TIMEOUT_MS)
        assert _prompt(other) == "All 5 pairs judged. Thank you!"
        context.close()

    assert _lines(labels)[4:] == [("p5", "a", "better", "alice")]
    # every pair without a ready preview was rendered once into the cache; p2's was not
    rendered = {p.name for p in (tmp_path / "cache").glob("[!.]*.gif")}
    assert rendered == {store.previews.path_of(p).name for p in store.pairs if p.pair_id != "p2"}
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.width >= 1000 and im.height >= 500
        colours = im.convert("RGB").resize((320, 200)).getcolors(maxcolors=1 << 16)
        assert colours is not None and len(colours) > 50  # the two figures, not a blank page


def test_login_refuses_wrong_password_and_labels_as_the_user(tmp_path: Path) -> None:
    store = _store(tmp_path)
    users = parse_users("alice:pw1,bob:pw2")
    with serve_in_thread(create_app(store, users)) as url, chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("pw2")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for()
        assert page.locator("#progress").count() == 0

        # the JSON API wants the same credentials and the user as labeler
        body = {"pair_id": "p1", "choice": "a", "degree": "better"}
        assert httpx.post(f"{url}/api/judgment", json=body, auth=("alice", "pw2")).status_code == 401
        assert httpx.post(f"{url}/api/judgment", json=body).status_code == 401
        assert httpx.post(f"{url}/api/judgment", json=body, auth=("bob", "pw2é")).status_code == 401
        r = httpx.post(f"{url}/api/judgment", json={**body, "labeler": "alice"}, auth=("bob", "pw2"))
        assert r.status_code == 403
        assert not (tmp_path / "labels").exists()

        page.get_by_label("username").fill("bob")
        page.get_by_label("password").fill("pw2")
        page.get_by_role("button", name="Login").click()
        _wait_progress(page, "Pair 1 of 5")
        assert "bob" in page.inner_text("#labeler")
        assert not page.locator("#change").is_visible()  # the login decides the labeler
        page.keyboard.press("1")
        _wait_progress(page, "Pair 2 of 5")
    assert _lines(tmp_path / "labels" / "bob.jsonl") == [("p1", "a", "much_better", "bob")]
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["bob.jsonl"]


def test_json_api_validates_and_is_idempotent(tmp_path: Path) -> None:
    store = _store(tmp_path, shuffle_seed=3)
    with serve_in_thread(create_app(store)) as url:
        nxt = httpx.get(f"{url}/api/next", params={"labeler": "carol"}).json()
        assert nxt["done"] == 0 and nxt["total"] == 5
        first = nxt["pair"]["pair_id"]
        assert first == store.order("carol")[0].pair_id
        body = {"labeler": "carol", "pair_id": first, "choice": "b", "degree": "negligible"}
        assert httpx.post(f"{url}/api/judgment", json=body).json()["written"] is True
        assert httpx.post(f"{url}/api/judgment", json=body).json()["written"] is False
        nxt = httpx.get(f"{url}/api/next", params={"labeler": "carol"}).json()
        assert nxt["done"] == 1 and nxt["pair"]["pair_id"] == store.order("carol")[1].pair_id

        bad = [
            ({**body, "pair_id": "nope"}, 400, "unknown pair_id 'nope'"),
            ({**body, "choice": "skip"}, 400, "degree must be null"),
            ({**body, "degree": None}, 400, "degree is null"),
            ({**body, "labeler": "a b"}, 400, "not allowed"),
            ({**body, "choice": "c"}, 422, "choice"),
            ({k: v for k, v in body.items() if k != "labeler"}, 400, "labeler is required"),
        ]
        for payload, status, message in bad:
            r = httpx.post(f"{url}/api/judgment", json=payload)
            assert (r.status_code, message in r.text) == (status, True), (payload, r.text)
    assert [row[:3] for row in _lines(tmp_path / "labels" / "carol.jsonl")] == [(first, "b", "negligible")]


def test_queue_order_is_seeded_per_labeler(tmp_path: Path) -> None:
    store = _store(tmp_path, shuffle_seed=7)
    again = LabelStore(pd.read_parquet(tmp_path / "pairs.parquet"), tmp_path / "l2", tmp_path / "c2", shuffle_seed=7)
    ids = {name: [p.pair_id for p in store.order(name)] for name in ("ann", "ben", "cat")}
    assert all(sorted(v) == [f"p{k}" for k in range(1, 6)] for v in ids.values())
    assert ids["ann"] == [p.pair_id for p in again.order("ann")]
    assert len({tuple(v) for v in ids.values()}) > 1  # labelers do not all see the same order
    plain = LabelStore(pd.read_parquet(tmp_path / "pairs.parquet"), tmp_path / "l3", tmp_path / "c3")
    assert [p.pair_id for p in plain.order("ann")] == [f"p{k}" for k in range(1, 6)]


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MOTIONPREF_APP_USERS: entry 2 'bob' is not 'user:password'"):
        parse_users("alice:pw,bob")
    with pytest.raises(ValueError, match="user 'alice' is listed twice"):
        parse_users("alice:a,alice:b")
    with pytest.raises(ValueError, match="entry 1: labeler name 'al ice' is not allowed"):
        parse_users("al ice:pw")
    for name in ("", "a/b", "..", "x" * 65, "é"):
        with pytest.raises(ValueError, match="is not allowed"):
            check_labeler(name)
    assert check_labeler("Ann_2-b") == "Ann_2-b"

    table = tmp_path / "pairs.parquet"
    pd.DataFrame({"pair_id": ["p1"], "prompt": ["x"], "features_a": ["a.npy"]}).to_parquet(table)
    with pytest.raises(ValueError, match=r"pairs\.parquet: lacks column\(s\) \['features_b'\]"):
        LabelStore(pd.read_parquet(table), tmp_path, tmp_path, source=str(table))
    twice = pd.DataFrame({c: ["p1", "p1"] for c in ("pair_id", "prompt", "features_a", "features_b")})
    with pytest.raises(ValueError, match="duplicate pair_id 'p1'"):
        LabelStore(twice, tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nothing\.parquet: no pairs table"):
        read_pairs(tmp_path / "nothing.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"broken\.parquet: cannot read the pairs table"):
        read_pairs(tmp_path / "broken.parquet")


def test_users_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(USERS_ENV, raising=False)
    assert users_from_env() is None
    monkeypatch.setenv(USERS_ENV, " alice:pw1, bob:p:w2 ")
    assert users_from_env() == [("alice", "pw1"), ("bob", "p:w2")]


def test_preview_cache_renders_once_and_names_bad_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    cache = PreviewCache(tmp_path / "gifs", size=96)
    p1, p2, p3 = store.pairs[:3]
    cache.prefetch(p1)
    gif = cache.get(p1)
    assert gif.parent == tmp_path / "gifs" and Image.open(gif).n_frames == 40
    stamp = gif.stat().st_mtime_ns
    assert cache.get(p1) == gif and gif.stat().st_mtime_ns == stamp  # rendered once
    assert cache.get(p2) == tmp_path / "previews" / "p2.gif"  # the table's own preview
    assert not (tmp_path / "gifs" / cache.path_of(p2).name).exists()

    np.save(p3.features_a, np.zeros((10, 5), np.float32))
    with pytest.raises(ValueError, match=r"p3_a\.npy: expected features \(T, 263\) or \(T, 251\)"):
        cache.get(p3)
    p3.features_a.write_bytes(b"not an array")
    with pytest.raises(ValueError, match=r"p3_a\.npy: cannot read motion features"):
        cache.get(p3)  # a failed render is retried, not remembered
    cache.close()
