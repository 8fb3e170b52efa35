from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pydantic
import pytest

from motionpref.prefs.labels import (
    Judgment,
    LabelError,
    LabelWriter,
    append_judgment,
    labeled_pair_ids,
    parse_judgment,
    read_labels,
    scan_labels,
    utc_now,
)


def record(**overrides: object) -> dict:
    base = {
        "pair_id": "p0",
        "prompt": "a person waves",
        "choice": "a",
        "degree": "better",
        "labeler": "ann",
        "source": "human",
        "created_at": "2024-05-01T12:00:00Z",
    }
    base.update(overrides)
    return base


def line(**overrides: object) -> bytes:
    return json.dumps(record(**overrides)).encode()


def test_parse_valid_line_and_roundtrip_through_file(tmp_path: Path) -> None:
    j = parse_judgment(line(), "f.jsonl", 1)
    assert j.choice == "a" and j.degree == "better" and j.timestamp.year == 2024
    skip = parse_judgment(line(choice="skip", degree=None, created_at="2024-05-01T12:00:00.250+00:00"), "f", 1)
    assert skip.degree is None
    path = tmp_path / "labels" / "ann.jsonl"
    append_judgment(path, j)
    append_judgment(path, skip)
    assert list(read_labels(path)) == [(1, j), (2, skip)]
    assert path.read_bytes().count(b"\n") == 2


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"pair_id": "p\xff"}', "not valid UTF-8"),
        (b'{"pair_id": ', "malformed JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (
            json.dumps({k: v for k, v in record().items() if k != "labeler"}).encode(),
            "missing field 'labeler'",
        ),
        (json.dumps(record(note="x")).encode(), "unexpected field 'note'"),
        (line(labeler=3), "field 'labeler'"),
        (line(choice="c"), "field 'choice'"),
        (line(degree="huge"), "field 'degree'"),
        (line(source="crowd"), "field 'source'"),
        (line(degree=None), "degree is null but choice is 'a'"),
        (line(choice="skip", degree="better"), "degree must be null when choice is 'skip'"),
        (line(created_at="yesterday"), "not an ISO 8601 timestamp"),
        (line(created_at="2024-05-01T12:00:00"), "has no time zone"),
        (line(created_at="2024-05-01T12:00:00+02:00"), "is not in UTC"),
        (line(pair_id="  "), "must not be empty"),
        (b'{"pair_id": "a", "pair_id": "b"}', "duplicate field 'pair_id'"),
        (b"[" * 100_000, "JSON nested too deeply"),
        (b'{"pair_id": ' + b"[" * 100_000, "JSON nested too deeply"),
        # json.dumps writes the lone surrogate as the ASCII escape \ud800, which json.loads turns back into one
        (line(labeler="\ud800"), "field 'labeler': holds the lone surrogate '\\ud800' at index 0"),
        (line(pair_id="p\udfff"), "field 'pair_id': holds the lone surrogate '\\udfff' at index 1"),
        (line(prompt="a person \ud83d waves"), "field 'prompt': holds the lone surrogate"),
    ],
)
def test_parse_rejects_with_file_line_and_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(LabelError) as info:
        parse_judgment(raw, "data/labels/ann.jsonl", 7)
    assert str(info.value).startswith("data/labels/ann.jsonl:7: ")
    assert reason in str(info.value)
    assert info.value.lineno == 7


def test_judgment_itself_refuses_inconsistent_values() -> None:
    with pytest.raises(pydantic.ValidationError):
        Judgment(**record(choice="skip", degree="better"))
    assert parse_judgment(Judgment(**record(created_at=utc_now())).to_line(), "f", 1).source == "human"


def test_truncated_last_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ann.jsonl"
    path.write_bytes(line() + b"\n\n" + line(pair_id="p1")[:30])
    items = list(scan_labels(path))
    assert [n for n, _, _ in items] == [1, 3]  # the blank line 2 is skipped
    with pytest.raises(LabelError, match=r"ann\.jsonl:3: truncated last line"):
        list(read_labels(path))
    assert labeled_pair_ids(path) == {"p0"}  # a crash mid-append does not block resuming


def test_last_line_without_newline_that_parses_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "ann.jsonl"
    path.write_bytes(line() + b"\n" + line(pair_id="p1"))
    assert [j.pair_id for _, j in read_labels(path)] == ["p0", "p1"]


def test_surrogate_pair_escape_is_a_valid_character() -> None:
    # \ud83d\ude00 together are one emoji: only a lone half is refused
    assert parse_judgment(line(prompt="a person \U0001f600 waves"), "f", 1).prompt == "a person \U0001f600 waves"


def test_deeply_nested_line_blocks_resuming_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "ann.jsonl"
    path.write_bytes(line() + b"\n" + b'{"pair_id": ' + b"[" * 100_000 + b"\n")
    with pytest.raises(LabelError, match=r"ann\.jsonl:2: JSON nested too deeply"):
        labeled_pair_ids(path)


def test_labeled_pair_ids(tmp_path: Path) -> None:
    path = tmp_path / "ann.jsonl"
    assert labeled_pair_ids(path) == set()
    for pid in ("p0", "p1", "p0"):
        append_judgment(path, Judgment(**record(pair_id=pid)))
    assert labeled_pair_ids(path) == {"p0", "p1"}
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    with pytest.raises(LabelError, match=r"ann\.jsonl:4: malformed JSON"):
        labeled_pair_ids(path)


def test_writer_appends_after_a_crashed_line_without_touching_it(tmp_path: Path) -> None:
    path = tmp_path / "ann.jsonl"
    old = line() + b"\n" + line(pair_id="p1")[:25]
    path.write_bytes(old)
    with LabelWriter(path) as writer:
        writer.write(Judgment(**record(pair_id="p2")))
        writer.write(Judgment(**record(pair_id="p3")))
    data = path.read_bytes()
    assert data.startswith(old)  # appended, never rewritten
    assert labeled_pair_ids(path) == {"p0", "p2", "p3"}  # the torn line, now ended, still does not block resuming
    items = list(scan_labels(path))
    assert isinstance(items[1][2], LabelError) and items[1][0] == 2
    assert [(n, j.pair_id) for n, _, j in items if isinstance(j, Judgment)] == [
        (1, "p0"),
        (3, "p2"),
        (4, "p3"),
    ]
    with pytest.raises(ValueError, match="closed"):
        writer.write(Judgment(**record()))


def _append_many(path: str, worker: int, count: int) -> None:
    # A long prompt makes each line span several pages, so a non-atomic append would show as torn lines.
    prompt = f"worker {worker} " + "x" * 9000
    with LabelWriter(path) as writer:
        for i in range(count):
            writer.write(Judgment(**record(pair_id=f"w{worker}-{i}", prompt=prompt, labeler=f"w{worker}")))


def test_concurrent_appenders_never_interleave(tmp_path: Path) -> None:
    shared = tmp_path / "shared.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(shared), w, 40)) for w in range(4)]
    procs += [ctx.Process(target=_append_many, args=(str(tmp_path / f"own{w}.jsonl"), w, 20)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    judged = [j for _, j in read_labels(shared)]
    assert len(judged) == 160
    for w in range(4):  # each writer's lines are whole and in its own order
        assert [j.pair_id for j in judged if j.labeler == f"w{w}"] == [f"w{w}-{i}" for i in range(40)]
    for w in range(2):
        assert len(list(read_labels(tmp_path / f"own{w}.jsonl"))) == 20


def test_writer_creates_file_with_owner_write_permission(tmp_path: Path) -> None:
    path = tmp_path / "new" / "bob.jsonl"
    append_judgment(path, Judgment(**record(labeler="bob")))
    assert os.stat(path).st_mode & 0o600 == 0o600
    assert labeled_pair_ids(path) == {"p0"}
