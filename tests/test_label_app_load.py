"""The labeling server under load and under kill -9: every acknowledged judgment is on disk exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from label_app_fixtures import serve_in_subprocess, write_bare_pairs

from motionpref.prefs.labels import DEGREES, Judgment, LabelError, labeled_pair_ids, read_labels, scan_labels

N_CLIENTS = 8
N_JUDGMENTS = 500
CHOICES = [("skip", None)] + [(side, d) for side in ("a", "b") for d in DEGREES]


def _judgment(labeler: str, k: int) -> dict:
    choice, degree = CHOICES[(k * 7 + len(labeler)) % len(CHOICES)]
    return {"labeler": labeler, "pair_id": f"p{k}", "choice": choice, "degree": degree}


def test_eight_clients_500_judgments_no_duplicates(tmp_path: Path) -> None:
    pairs = write_bare_pairs(tmp_path, 80)
    labels = tmp_path / "labels"
    quota = [N_JUDGMENTS // N_CLIENTS + (i < N_JUDGMENTS % N_CLIENTS) for i in range(N_CLIENTS)]
    names = [f"labeler_{i}" for i in range(N_CLIENTS)]
    duplicates: dict[str, list[bool]] = {name: [] for name in names}

    with serve_in_subprocess(pairs, labels, tmp_path) as (url, _):
        barrier = threading.Barrier(N_CLIENTS)

        def client(i: int) -> None:
            name = names[i]
            with httpx.Client(base_url=url, timeout=30.0) as http, ThreadPoolExecutor(3) as burst:
                barrier.wait()
                for k in range(quota[i]):
                    body = _judgment(name, k)
                    if k % 20 == 0:
                        # the same judgment three times at once (a double click, two tabs): one line only
                        replies = list(burst.map(lambda b: http.post("/api/judgment", json=b), [body] * 3))
                        assert [r.status_code for r in replies] == [200] * 3
                        written = sorted(r.json()["written"] for r in replies)
                        assert written == [False, False, True], body
                    else:
                        r = http.post("/api/judgment", json=body)
                        assert r.status_code == 200 and r.json()["written"] is True, (body, r.text)
                    if k % 7 == 3:  # a client retry after its answer came back
                        duplicates[name].append(http.post("/api/judgment", json=body).json()["written"])

        start = time.perf_counter()
        with ThreadPoolExecutor(N_CLIENTS) as pool:
            list(pool.map(client, range(N_CLIENTS)))
        elapsed = time.perf_counter() - start
        rate = N_JUDGMENTS / elapsed
        print(f"\n{N_JUDGMENTS} judgments from {N_CLIENTS} clients in {elapsed:.2f} s: {rate:.0f}/s")

        progress = httpx.get(f"{url}/api/next", params={"labeler": names[0]}).json()
        assert (progress["done"], progress["pair"]["pair_id"]) == (quota[0], f"p{quota[0]}")

    assert all(dups and not any(dups) for dups in duplicates.values())
    total = 0
    for i, name in enumerate(names):
        lines = [j for _, j in read_labels(labels / f"{name}.jsonl")]
        expected = [
            Judgment(**_judgment(name, k), prompt=f"prompt {k}", source="human", created_at=j.created_at)
            for k, j in enumerate(lines)
        ]
        assert lines == expected and len(lines) == quota[i]
        total += len(lines)
    assert total == N_JUDGMENTS
    assert sorted(p.name for p in labels.iterdir()) == sorted(f"{n}.jsonl" for n in names)


def test_kill_9_keeps_every_acknowledged_judgment(tmp_path: Path) -> None:
    pairs = write_bare_pairs(tmp_path, 400)
    labels = tmp_path / "labels"
    names = [f"c{i}" for i in range(N_CLIENTS)]
    acked: dict[str, list[dict]] = {name: [] for name in names}
    sent: dict[str, list[dict]] = {name: [] for name in names}
    enough = threading.Event()

    with serve_in_subprocess(pairs, labels, tmp_path) as (url, proc):

        def client(name: str) -> None:
            with httpx.Client(base_url=url, timeout=30.0) as http:
                for k in range(400):
                    body = _judgment(name, k)
                    sent[name].append(body)
                    try:
                        r = http.post("/api/judgment", json=body)
                    except httpx.TransportError:
                        return  # the server died with this request in flight: not acknowledged
                    assert r.status_code == 200 and r.json()["written"] is True, r.text
                    acked[name].append(body)
                    if sum(map(len, acked.values())) >= 150:
                        enough.set()

        with ThreadPoolExecutor(N_CLIENTS) as pool:
            futures = [pool.submit(client, name) for name in names]
            assert enough.wait(timeout=60), "clients did not get 150 judgments acknowledged"
            os.kill(proc.pid, signal.SIGKILL)
            for f in futures:
                f.result(timeout=60)  # re-raises a client's failed assertion
        assert proc.wait(timeout=10) == -signal.SIGKILL

    n_acked = sum(map(len, acked.values()))
    assert n_acked >= 150 and all(len(acked[n]) < 400 for n in names)  # killed mid-run
    for name in names:
        path = labels / f"{name}.jsonl"
        items = list(scan_labels(path))
        for lineno, raw, item in items:
            # only a last line without its newline (a judgment nobody was told about) may be torn
            assert isinstance(item, Judgment) or (lineno == len(items) and not raw.endswith(b"\n")), item
        on_disk = [(j.pair_id, j.choice, j.degree) for _, _, j in items if isinstance(j, Judgment)]
        wanted = [(b["pair_id"], b["choice"], b["degree"]) for b in acked[name]]
        # every acknowledged judgment, in order; at most the one in flight besides
        assert on_disk[: len(wanted)] == wanted and len(on_disk) - len(wanted) <= 1
        assert on_disk == [(b["pair_id"], b["choice"], b["degree"]) for b in sent[name][: len(on_disk)]]
        assert labeled_pair_ids(path) == {p for p, _, _ in on_disk}

    # A writer killed inside write() leaves a torn last line: readers ignore it, the restarted app resumes
    # after the acknowledged judgments and appends whole lines after it.
    torn = labels / f"{names[0]}.jsonl"
    done = labeled_pair_ids(torn)
    with open(torn, "ab") as f:
        f.write(b'{"pair_id":"p399","prompt":"prompt 399","choi')
    assert labeled_pair_ids(torn) == done
    assert "truncated last line" in str(list(scan_labels(torn))[-1][2])
    with serve_in_subprocess(pairs, labels, tmp_path) as (url, _):
        progress = httpx.get(f"{url}/api/next", params={"labeler": names[0]}).json()
        assert progress["done"] == len(done) and progress["pair"]["pair_id"] == f"p{len(done)}"
        body = _judgment(names[0], len(done))
        assert httpx.post(f"{url}/api/judgment", json=body).json()["written"] is True
    items = list(scan_labels(torn))
    assert isinstance(items[-2][2], LabelError) and isinstance(items[-1][2], Judgment)
    assert items[-1][2].pair_id == body["pair_id"]
