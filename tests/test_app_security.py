"""The labeling app's login, what it serves without one, one app per labels folder, and the prompt shown as
plain text."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
from label_app_fixtures import USERS_ENV, chromium, serve_in_subprocess, serve_in_thread, write_bare_pairs, write_pairs

from motionpref.prefs.app import LabelsFolderBusy, LabelStore, create_app, lock_labels_dir, parse_users

# Gradio's queue (in the server thread) still sets pandas options that pandas 3 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")
TIMEOUT_MS = 30_000
BODY = {"pair_id": "p1", "choice": "a", "degree": "better"}


def _bare_store(root: Path) -> LabelStore:
    return LabelStore(pd.read_parquet(write_bare_pairs(root, 3)), root / "labels", root / "cache", root=root)


def _basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def test_basic_auth_admits_only_known_users_with_their_password(tmp_path: Path) -> None:
    with serve_in_thread(create_app(_bare_store(tmp_path), parse_users("alice:pw1,bob:pw2"))) as url:
        refused = {
            "unknown user, NUL password": _basic(b"mallory:\0"),
            "unknown user, empty password": _basic(b"mallory:"),
            "empty user and password": _basic(b":"),
            "empty user, NUL password": _basic(b":\0"),
            "known user, wrong password": _basic(b"alice:pw2"),
            "known user, NUL password": _basic(b"alice:\0"),
            "known user, empty password": _basic(b"alice:"),
            "known user, password prefix": _basic(b"alice:pw"),
            "no colon": _basic(b"alice"),
            "not base64": {"Authorization": "Basic !!!"},
            "not UTF-8": _basic(b"alice:\xff"),
            "other scheme": {"Authorization": "Bearer " + base64.b64encode(b"alice:pw1").decode()},
            "no header": {},
        }
        for case, headers in refused.items():
            for r in (
                httpx.post(f"{url}/api/judgment", json=BODY, headers=headers),
                httpx.get(f"{url}/api/next", headers=headers),
            ):
                assert r.status_code == 401, (case, r.status_code, r.text)
                assert r.headers["www-authenticate"] == 'Basic realm="motionpref"'
        # Gradio's own login form must refuse the same
        for user, password in (("mallory", "\0"), ("mallory", ""), ("alice", "pw2")):
            r = httpx.post(f"{url}/login", data={"username": user, "password": password})
            assert r.status_code >= 400 and not r.cookies, (user, r.status_code)
        assert not (tmp_path / "labels").exists()

        r = httpx.post(f"{url}/api/judgment", json=BODY, headers=_basic(b"alice:pw1"))
        assert (r.status_code, r.json()["written"], r.json()["labeler"]) == (200, True, "alice")
        assert httpx.get(f"{url}/api/next", auth=("bob", "pw2")).json()["labeler"] == "bob"
    assert (tmp_path / "labels" / "alice.jsonl").is_file()


@pytest.mark.parametrize("login", [True, False])
def test_no_api_schema_or_docs_are_served_outside_the_login(tmp_path: Path, login: bool) -> None:
    users = parse_users("alice:pw1") if login else None
    with serve_in_thread(create_app(_bare_store(tmp_path), users)) as url:
        for route in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect", "/gradio_api/openapi.json"):
            for auth in (None, ("mallory", "\0"), ("alice", "pw1")):
                r = httpx.get(f"{url}{route}", auth=auth)
                if login or route != "/gradio_api/openapi.json":
                    assert r.status_code in (401, 404), (route, auth, r.status_code)
                    assert '"openapi"' not in r.text and '"paths"' not in r.text, (route, auth)


def test_one_app_per_labels_folder(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    with lock_labels_dir(labels):
        with pytest.raises(LabelsFolderBusy, match=f"labels folder {labels} is already served"):
            with lock_labels_dir(labels):
                pass
    with lock_labels_dir(labels):  # released with the block
        pass
    assert list(labels.iterdir()) == []  # the lock adds no file to the (DVC- and git-tracked) folder


def _second_app(pairs: Path, labels: Path, root: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys; from motionpref.prefs.app import label_app_main; "
        "label_app_main(sys.argv[1], sys.argv[2], '127.0.0.1', 1)"  # never reached: the lock comes first
    )
    env = {k: v for k, v in os.environ.items() if k != USERS_ENV}
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    return subprocess.run(
        [sys.executable, "-c", code, str(pairs), str(labels)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_second_app_process_on_the_same_labels_refuses_to_start(tmp_path: Path) -> None:
    pairs = write_bare_pairs(tmp_path, 3)
    labels = tmp_path / "labels"
    with serve_in_subprocess(pairs, labels, tmp_path) as (url, first):
        second = _second_app(pairs, labels, tmp_path)
        assert second.returncode == 1, second.stderr
        assert f"label-app: labels folder {labels} is already served by another labeling app" in second.stderr
        assert "Traceback" not in second.stderr
        # the first app keeps serving
        body = {**BODY, "labeler": "ann"}
        assert httpx.post(f"{url}/api/judgment", json=body).json()["written"] is True
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    with lock_labels_dir(labels):  # a killed app leaves no lock behind
        pass


PROMPT = "a **bold** <b>x</b> _walk_ `code` $x^2$ [link](http://example.com) &amp; <script>alert(1)</script>"


def test_prompt_is_shown_as_plain_text(tmp_path: Path) -> None:
    table = pd.read_parquet(write_pairs(tmp_path, n_pairs=2))
    table.loc[0, "prompt"] = PROMPT
    store = LabelStore(table, tmp_path / "labels", tmp_path / "cache", root=tmp_path)
    with serve_in_thread(create_app(store)) as url, chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.get_by_label("Labeler name").fill("alice")
        page.get_by_role("button", name="Start labeling").click()
        page.locator("#progress").filter(has_text="Pair 1 of 2").wait_for()
        assert page.input_value("#prompt textarea") == PROMPT
        assert (
            page.locator("#prompt b, #prompt strong, #prompt em, #prompt code, #prompt a, #prompt script").count() == 0
        )
