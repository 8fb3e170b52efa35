from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motionpref.models.generator import Generation
from motionpref.prefs.ingest import (
    PREFERENCES_SCHEMA,
    assign_splits,
    group_hash,
    ingest,
    stats_markdown,
    write_outputs,
)
from motionpref.prefs.labels import LabelError
from motionpref.prefs.pairs import sample_pairs
from motionpref.prefs.prompts import group_key, split_groups

MARGINS = {"much_better": 3.0, "better": 2.0, "slightly_better": 1.0, "negligible": 0.0}


def make_pairs(n: int, groups: list[str] | None = None, splits: list[str] | None = None) -> pd.DataFrame:
    """``n`` pairs, each its own group (its prompt's text) unless ``groups`` says otherwise; every tenth in val
    unless ``splits`` says otherwise."""
    return pd.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(n)],
            "prompt_id": [f"q{i}" for i in range(n)],
            "prompt": [f"prompt {i}" for i in range(n)],
            "program": [None] * n,
            "tokens_a": [[i, 1, 2] for i in range(n)],
            "tokens_b": [[i, 7] for i in range(n)],
            "features_a": [f"m/{i}_a.npy" for i in range(n)],
            "features_b": [f"m/{i}_b.npy" for i in range(n)],
            "group": groups or [f"prompt {i}" for i in range(n)],
            "split": splits or ["val" if i % 10 == 9 else "train" for i in range(n)],
        }
    )


def judgment(pair: int, choice: str = "a", degree: str | None = "better", labeler: str = "ann", t: int = 0, **kw):
    if choice == "skip":
        degree = None
    data = {
        "pair_id": f"p{pair}",
        "prompt": f"prompt {pair}",
        "choice": choice,
        "degree": degree,
        "labeler": labeler,
        "source": "human",
        "created_at": f"2024-05-01T12:{t // 60:02d}:{t % 60:02d}Z",
    }
    data.update(kw)
    return json.dumps(data).encode()


def write_labels(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    return path


def run(paths: list[Path], pairs: pd.DataFrame, rule: str = "last_wins", **kw):
    return ingest(paths, pairs, rule, seed=kw.pop("seed", 0), margins=MARGINS, **kw)


def by_pair(result) -> dict[str, dict]:
    return {row["pair_id"]: row for row in result.preferences.to_dict("records")}


@pytest.fixture
def conflict_files(tmp_path: Path) -> list[Path]:
    ann = [
        judgment(1, "a", "better", "ann", 1),
        judgment(2, "a", "better", "ann", 1),
        judgment(3, "skip", labeler="ann", t=1),
        judgment(4, "a", "much_better", "ann", 1),
        judgment(4, "b", "better", "ann", 5),  # ann changes her mind on p4
        judgment(5, "b", "slightly_better", "ann", 1),
    ]
    bob = [
        judgment(1, "b", "much_better", "bob", 2),
        judgment(2, "a", "slightly_better", "bob", 2),
        judgment(3, "skip", labeler="bob", t=2),
        judgment(5, "b", "negligible", "bob", 1),  # same time as ann's: file order decides last_wins
    ]
    cyd = [judgment(2, "b", "much_better", "cyd", 3)]
    return [write_labels(tmp_path / f"{n}.jsonl", x) for n, x in (("ann", ann), ("bob", bob), ("cyd", cyd))]


def test_last_wins(conflict_files: list[Path]) -> None:
    result = run(conflict_files, make_pairs(6), "last_wins")
    rows = by_pair(result)
    assert sorted(rows) == ["p1", "p2", "p4", "p5"]
    assert (rows["p1"]["chosen"], rows["p1"]["degree"], rows["p1"]["margin"]) == ("b", "much_better", 3.0)
    assert (rows["p2"]["chosen"], rows["p2"]["degree"]) == ("b", "much_better")
    assert (rows["p4"]["chosen"], rows["p4"]["degree"], rows["p4"]["n_judgments"]) == ("b", "better", 2)
    assert rows["p5"]["degree"] == "negligible"
    # chosen b: tokens and features come from side b
    assert rows["p1"]["chosen_tokens"] == [1, 7] and rows["p1"]["rejected_tokens"] == [1, 1, 2]
    assert (rows["p1"]["chosen_features"], rows["p1"]["rejected_features"]) == ("m/1_b.npy", "m/1_a.npy")
    assert rows["p2"]["labelers"] == ["ann", "bob", "cyd"]
    stats = result.stats
    assert stats["skipped"]["pairs"] == 1 and stats["pairs_judged"] == 5 and stats["pairs_in_table"] == 6
    assert stats["judgments"] == 11 and stats["labelers"] == 3
    assert stats["conflicts"] == {"disagreeing_pairs": 2, "dropped": 0, "share_dropped": 0.0}


def test_majority(conflict_files: list[Path]) -> None:
    result = run(conflict_files, make_pairs(6), "majority")
    rows = by_pair(result)
    assert "p1" not in rows  # a vs b, one vote each: a tie is a conflict
    # p2: a (better, slightly_better) beats b; the degree tie goes to the weaker degree
    assert (rows["p2"]["chosen"], rows["p2"]["degree"], rows["p2"]["margin"]) == ("a", "slightly_better", 1.0)
    assert (rows["p4"]["chosen"], rows["p4"]["degree"]) == ("b", "better")  # ann's latest vote counts
    assert rows["p5"]["degree"] == "negligible"  # tie slightly_better vs negligible -> weaker
    assert result.stats["conflicts"]["dropped"] == 1
    assert result.stats["degrees"]["slightly_better"]["pairs"] == 1


def test_drop_conflicts(conflict_files: list[Path]) -> None:
    result = run(conflict_files, make_pairs(6), "drop_conflicts")
    assert sorted(by_pair(result)) == ["p4", "p5"]
    assert result.stats["conflicts"]["dropped"] == 2
    assert result.stats["skipped"]["pairs"] == 1


def test_agreement_of_first_two_labelers(conflict_files: list[Path]) -> None:
    agreement = run(conflict_files, make_pairs(6)).stats["agreement"]
    # pairs with two labelers: p1 (a/b: no), p2 (ann a, bob a: yes; cyd is third), p3 (skip/skip: yes),
    # p5 (b/b: yes); neither skipped: p1, p2, p5
    assert agreement == {
        "pairs": 4,
        "agree": 3,
        "rate": 0.75,
        "pairs_both_chose": 3,
        "agree_both_chose": 2,
        "rate_both_chose": pytest.approx(2 / 3),
    }


def test_a_preference_takes_its_pairs_split(tmp_path: Path) -> None:
    small = write_labels(tmp_path / "a.jsonl", [judgment(i, t=i) for i in range(40)])
    big = write_labels(tmp_path / "b.jsonl", [judgment(i, t=i) for i in range(200)])
    pairs = make_pairs(200)
    split_small = run([small], pairs, seed=3).preferences.set_index("pair_id")["split"].to_dict()
    split_big = run([big], pairs, seed=4).preferences.set_index("pair_id")["split"].to_dict()
    assert split_big == dict(zip(pairs["pair_id"], pairs["split"], strict=True))  # whatever the seed
    assert all(split_big[k] == v for k, v in split_small.items())  # adding pairs moves no old pair


@pytest.mark.parametrize("n", [3, 4, 7])
def test_few_preferences_still_fill_both_splits_by_whole_programs(tmp_path: Path, n: int) -> None:
    ids = [f"p{i}" for i in range(n)]
    groups = [f"program {i // 2}" for i in range(n)]  # two pairs a program (paraphrases), the last maybe alone
    path = write_labels(tmp_path / "a.jsonl", [judgment(i, t=i) for i in range(n)])

    result = run([path], make_pairs(n, groups, ["train"] * n), seed=5)  # every preference from train programs
    split = result.preferences.set_index("pair_id")["split"].to_dict()
    lowest = min(set(groups), key=lambda g: group_hash(g, 5))
    assert split == {i: "val" if g == lowest else "train" for i, g in zip(ids, groups, strict=True)}
    moved = groups.count(lowest)
    assert result.stats["split"] == {"train": n - moved, "val": moved}
    assert result.stats["split_programs"] == {"train": len(set(groups)) - 1, "val": 1}
    assert result.stats["moved_to_fill_split"] == {"to": "val", "preferences": moved}
    assert f"{moved} preference(s) of one program moved to val" in stats_markdown(result.stats)

    result = run([path], make_pairs(n, groups, ["val"] * n), seed=5)  # every preference from val programs
    split = result.preferences.set_index("pair_id")["split"].to_dict()
    highest = max(set(groups), key=lambda g: group_hash(g, 5))
    assert split == {i: "train" if g == highest else "val" for i, g in zip(ids, groups, strict=True)}
    assert result.stats["moved_to_fill_split"] == {"to": "train", "preferences": groups.count(highest)}


def test_one_program_cannot_fill_both_splits(tmp_path: Path) -> None:
    path = write_labels(tmp_path / "a.jsonl", [judgment(i, t=i) for i in range(3)])
    result = run([path], make_pairs(3, ["walk"] * 3, ["train"] * 3))
    assert result.preferences["split"].tolist() == ["train"] * 3  # moving a pair would split the program
    assert result.stats["moved_to_fill_split"] is None
    one = write_labels(tmp_path / "b.jsonl", [judgment(0)])
    assert run([one], make_pairs(1, splits=["val"])).preferences["split"].tolist() == ["val"]


def test_large_runs_keep_exactly_the_pairs_split(tmp_path: Path) -> None:
    path = write_labels(tmp_path / "a.jsonl", [judgment(i, t=i % 3600) for i in range(300)])
    pairs = make_pairs(300)
    for seed in (0, 3, 11):
        result = run([path], pairs, seed=seed)
        assert result.preferences["split"].tolist() == pairs["split"].tolist()
        assert result.stats["moved_to_fill_split"] is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from("abcdef"), max_size=12),
    st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(["train", "val"]), min_size=6),
    st.integers(0, 99),
)
def test_split_moves_at_most_one_whole_group(groups: list[str], side: dict[str, str], seed: int) -> None:
    plain = [side[g] for g in groups]
    splits = assign_splits(plain, groups, seed)
    assert all(len({s for s, g in zip(splits, groups, strict=True) if g == group}) == 1 for group in set(groups))
    if len(set(groups)) >= 2:
        assert {"train", "val"} == set(splits)
    if len(set(groups)) < 2 or {"train", "val"} == set(plain):
        assert splits == plain
    else:
        changed = {g for s, p, g in zip(splits, plain, groups, strict=True) if s != p}
        assert len(changed) == 1


def test_test_pairs_and_programs_on_both_sides_are_refused(tmp_path: Path) -> None:
    path = write_labels(tmp_path / "a.jsonl", [judgment(0)])
    where = "data/prefs/pairs.parquet"
    with pytest.raises(ValueError, match=r"^data/prefs/pairs\.parquet: pair 'p1' \(prompt 'q1'\) is in the test"):
        run([path], make_pairs(3, splits=["train", "test", "val"]), pairs_source=where)
    with pytest.raises(ValueError, match=r"pair 'p2' has no split; expected one of \['train', 'val'\]"):
        run([path], make_pairs(3).assign(split=["train", "val", None]), pairs_source=where)
    crossing = make_pairs(3, ["walk", "walk", "clap"], ["train", "val", "train"])
    with pytest.raises(ValueError, match=r"1 group\(s\) have pairs in both train and val, e.g. 'walk'"):
        run([path], crossing)
    with pytest.raises(ValueError, match=r"^data/prefs/pairs\.parquet: lacks column\(s\) \['split'\]"):
        run([path], make_pairs(3).drop(columns="split"), pairs_source=where)


class ProgramSampler:
    """A motion per caption and seed; the seeds in ``bad`` stay invalid, so their prompts get no pair."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad

    def generate(self, captions, seeds, temperature=None) -> Generation:
        feats = [None if s % 7 in self.bad else [[float(s % 5)]] for s in seeds]
        return Generation(
            feats, [[s % 3] for s in seeds], list(seeds), [1] * len(seeds), [f is not None for f in feats]
        )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 7), st.booleans()), min_size=1, max_size=30),
    st.lists(st.sampled_from(["a", "b", "skip"]), min_size=30, max_size=30),
    st.sets(st.integers(0, 6), max_size=2),
    st.integers(0, 2**16),
)
def test_no_program_crosses_splits_from_prompts_to_preferences(
    prompt_spec: list[tuple[int, bool]], choices: list[str], bad: set[int], seed: int
) -> None:
    """Prompts (paraphrases of a few programs and some programless texts) split as generate_prompts splits them,
    pairs sampled, labels drawn, preferences ingested: every program sits in one split all the way through, and
    test prompts never reach a pair."""
    programs = [f'{{"segments":[{{"primitive":"p{k}"}}]}}' if has else None for k, has in prompt_spec]
    texts = [f"A person does move {k}, version {i}." for i, (k, _) in enumerate(prompt_spec)]
    groups = [group_key(t, p) for t, p in zip(texts, programs, strict=True)]
    split_of = split_groups(groups, {"train": 0.5, "val": 0.25, "test": 0.25}, seed)
    prompts = pd.DataFrame(
        {
            "prompt_id": [f"q{i}" for i in range(len(texts))],
            "text": texts,
            "program": programs,
            "source": ["synthetic" if p else "recombine" for p in programs],
            "group": groups,
            "split": [split_of[g] for g in groups],
        }
    )
    pairs, _ = sample_pairs(prompts, ProgramSampler(bad), 1.2, seed, "h", lambda name, f: name)
    assert "test" not in set(pairs["split"])
    with tempfile.TemporaryDirectory() as tmp:
        lines = [
            json.dumps(
                {
                    "pair_id": row.pair_id,
                    "prompt": row.prompt,
                    "choice": choice,
                    "degree": None if choice == "skip" else "better",
                    "labeler": "ann",
                    "source": "human",
                    "created_at": "2024-05-01T12:00:00Z",
                }
            ).encode()
            for row, choice in zip(pairs.itertuples(), choices, strict=False)
        ]
        result = run([write_labels(Path(tmp) / "ann.jsonl", lines)], pairs, seed=seed)
    prefs = result.preferences
    for table, text in ((prompts, "text"), (pairs, "prompt"), (prefs, "prompt")):
        keys = [group_key(t, p) for t, p in zip(table[text], table["program"], strict=True)]
        assert (pd.Series(list(table["split"])).groupby(keys).nunique() == 1).all()
    # across the tables too: a preference's program is never in another split in the prompts table
    moved = result.stats["moved_to_fill_split"]
    keys = [group_key(t, p) for t, p in zip(prefs["prompt"], prefs["program"], strict=True)]
    for key, split in zip(keys, prefs["split"], strict=True):
        assert split_of[key] == split or (moved is not None and split == moved["to"] and split_of[key] != "test")
    assert not set(prefs["prompt_id"]) & set(prompts.loc[prompts["split"] == "test", "prompt_id"])


def test_paper_counts_reproduce_the_paper_table(tmp_path: Path) -> None:
    counts = {"much_better": 996, "better": 607, "slightly_better": 497, "negligible": 116, "skip": 1312}
    lines, i = [], 0
    for degree, n in counts.items():
        for _ in range(n):
            lines.append(judgment(i, "skip" if degree == "skip" else "a", degree, t=0))
            i += 1
    result = run([write_labels(tmp_path / "paper.jsonl", lines)], make_pairs(i))
    md = stats_markdown(result.stats)
    for row in (
        "| much_better | 996 | 28.2% |",
        "| better | 607 | 17.2% |",
        "| slightly_better | 497 | 14.1% |",
        "| negligible | 116 | 3.3% |",
        "| skipped | 1,312 | 37.2% |",
        "| **total** | 3,528 | 100.0% |",
    ):
        assert row in md
    assert result.stats["split"]["train"] + result.stats["split"]["val"] == 2216
    assert 0.08 < result.stats["split"]["val"] / 2216 < 0.12  # every tenth pair is in val


def test_unknown_pair_and_prompt_mismatch_name_the_line(tmp_path: Path) -> None:
    path = write_labels(tmp_path / "ann.jsonl", [judgment(0), judgment(9)])
    with pytest.raises(LabelError, match=r"ann\.jsonl:2: unknown pair_id 'p9'"):
        run([path], make_pairs(3))
    path = write_labels(tmp_path / "bob.jsonl", [judgment(0, prompt="another prompt")])
    with pytest.raises(LabelError, match=r"bob\.jsonl:1: prompt 'another prompt' differs"):
        run([path], make_pairs(3))


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    path = write_labels(tmp_path / "a.jsonl", [judgment(0)])
    with pytest.raises(ValueError, match="lacks column"):
        run([path], make_pairs(2).drop(columns="tokens_b"))
    with pytest.raises(ValueError, match="needs a quarantine_path"):
        run([path], make_pairs(2), on_error="quarantine")
    with pytest.raises(ValueError, match="margins lack"):
        ingest([path], make_pairs(2), "last_wins", seed=0, margins={"better": 1.0})
    with pytest.raises(ValueError, match="rule must be"):
        run([path], make_pairs(2), "vote")
    with pytest.raises(ValueError, match="duplicate pair_id"):
        run([path], pd.concat([make_pairs(2), make_pairs(1)]))


def test_outputs_are_written_whole_and_raw_files_untouched(tmp_path: Path) -> None:
    good = write_labels(tmp_path / "ann.jsonl", [judgment(0), judgment(1, "b", "much_better")])
    bad = write_labels(tmp_path / "bob.jsonl", [judgment(2, "skip"), b"\xff\xfe not json"])
    before = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in (good, bad)}
    for p in before:
        p.chmod(0o444)  # ingestion must not even need write access
    with pytest.raises(LabelError, match=r"bob\.jsonl:2: not valid UTF-8"):
        run([good, bad], make_pairs(3))
    quarantine = tmp_path / "out" / "quarantine.jsonl"
    result = run([good, bad], make_pairs(3), on_error="quarantine", quarantine_path=quarantine)
    assert {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in before} == before
    out = tmp_path / "out"
    write_outputs(result, out / "preferences.parquet", out / "stats.json", out / "stats.md")
    table = pq.read_table(out / "preferences.parquet")
    assert table.schema.equals(PREFERENCES_SCHEMA)
    assert table.column("chosen").to_pylist() == ["a", "b"]
    assert json.loads((out / "stats.json").read_text())["quarantined_lines"] == 1
    (entry,) = [json.loads(x) for x in quarantine.read_text().splitlines()]
    assert (entry["file"], entry["line"]) == (str(bad), 2)
    assert base64.b64decode(entry["raw"]) == b"\xff\xfe not json\n"
    assert "| skipped | 1 | 33.3% |" in (out / "stats.md").read_text()
    assert {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in before} == before


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"[" * 100_000, "JSON nested too deeply"),
        (b'{"pair_id": "p1", "prompt": ' + b"[" * 100_000, "JSON nested too deeply"),
        (judgment(1, labeler="\ud800"), "field 'labeler': holds the lone surrogate '\\ud800'"),
    ],
)
def test_lines_that_used_to_crash_are_errors_or_quarantined(tmp_path: Path, bad: bytes, reason: str) -> None:
    assert b"\\ud800" in judgment(1, labeler="\ud800")  # written as the JSON escape, as a client would
    path = write_labels(tmp_path / "ann.jsonl", [judgment(0), bad, judgment(2, "b")])
    with pytest.raises(LabelError) as info:
        run([path], make_pairs(3))
    assert str(info.value).startswith(f"{path}:2: ") and reason in str(info.value)

    out = tmp_path / "out"
    result = run([path], make_pairs(3), on_error="quarantine", quarantine_path=out / "quarantine.jsonl")
    assert [(p.line, p.raw) for p in result.problems] == [(2, bad + b"\n")]
    assert reason in result.problems[0].reason
    write_outputs(result, out / "preferences.parquet", out / "stats.json", out / "stats.md")
    table = pq.read_table(out / "preferences.parquet")
    assert table.column("pair_id").to_pylist() == ["p0", "p2"]
    assert table.column("labelers").to_pylist() == [["ann"], ["ann"]]
    (entry,) = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert base64.b64decode(entry["raw"]) == bad + b"\n"


def test_quarantine_file_among_the_labels_is_refused(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    good = write_labels(labels / "ann.jsonl", [judgment(0), b"not json"])
    quarantine = labels / "quarantine.jsonl"
    with pytest.raises(ValueError, match="lies inside the labels folder") as info:
        run([good], make_pairs(1), on_error="quarantine", quarantine_path=quarantine, labels_dir=labels)
    assert str(quarantine) in str(info.value) and str(labels) in str(info.value)
    assert not quarantine.exists()

    # a previous run's quarantine file picked up with the labels (say by a glob over the folder)
    quarantine.write_text(json.dumps({"file": str(good), "line": 2, "reason": "x", "raw": "bm90IGpzb24K"}) + "\n")
    before = quarantine.read_bytes()
    with pytest.raises(ValueError, match="also given as the label file") as info:
        run([good, quarantine], make_pairs(1), on_error="quarantine", quarantine_path=quarantine)
    assert str(quarantine) in str(info.value)
    assert quarantine.read_bytes() == before
    with pytest.raises(ValueError, match="also given as the label file"):
        run([good, labels / ".." / "labels" / "quarantine.jsonl"], make_pairs(1), quarantine_path=quarantine)

    # outside the labels folder (the pipeline's layout) it is fine
    elsewhere = tmp_path / "quarantine.jsonl"
    result = run([good], make_pairs(1), on_error="quarantine", quarantine_path=elsewhere, labels_dir=labels)
    assert len(result.problems) == 1


def test_failed_write_leaves_previous_outputs(tmp_path: Path) -> None:
    result = run([write_labels(tmp_path / "a.jsonl", [judgment(0)])], make_pairs(1))
    parquet, stats = tmp_path / "prefs.parquet", tmp_path / "stats.json"
    parquet.write_bytes(b"old")
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(OSError):
        write_outputs(result, parquet, stats, tmp_path / "blocker" / "stats.md")
    assert parquet.read_bytes() == b"old" and not stats.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "blocker", "prefs.parquet"]


def test_no_judgments_gives_empty_typed_table(tmp_path: Path) -> None:
    result = run([write_labels(tmp_path / "a.jsonl", [])], make_pairs(2))
    write_outputs(result, tmp_path / "p.parquet", tmp_path / "s.json", tmp_path / "s.md")
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 0
    assert "| **total** | 0 | 0.0% |" in stats_markdown(result.stats)
    assert result.stats["agreement"]["rate"] is None


# --- fuzzing: label files mixing valid and broken lines ---------------------------------------------------

N_PAIRS = 5


@st.composite
def valid_line(draw: st.DrawFn) -> bytes:
    choice = draw(st.sampled_from(["a", "b", "skip"]))
    degree = draw(st.sampled_from(list(MARGINS)))
    return judgment(
        draw(st.integers(0, N_PAIRS - 1)),
        choice,
        degree,
        draw(st.sampled_from("xyz")),
        draw(st.integers(0, 99)),
    )


@st.composite
def bad_line(draw: st.DrawFn) -> bytes:
    base = json.loads(draw(valid_line()))
    kinds = ["bytes", "utf8", "cut", "missing", "extra", "degree", "pair", "type", "time", "deep", "surrogate"]
    kind = draw(st.sampled_from(kinds))
    if kind == "deep":
        return draw(st.sampled_from([b"[", b'{"a": ', b'{"pair_id": ['])) * 50_000
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n", b"")).filter(bytes.strip))
    if kind == "utf8":
        return json.dumps(base).encode().replace(b'"prompt": "', b'"prompt": "\xc3\x28', 1)
    if kind == "cut":
        raw = json.dumps(base).encode()
        return raw[: draw(st.integers(1, len(raw) - 1))]
    if kind == "missing":
        del base[draw(st.sampled_from(sorted(base)))]
    elif kind == "extra":
        base["comment"] = "extra"
    elif kind == "degree":
        base["degree"] = "enormous"
    elif kind == "pair":
        base["pair_id"] = "no-such-pair"
    elif kind == "type":
        base[draw(st.sampled_from(["pair_id", "labeler", "choice", "created_at"]))] = 42
    elif kind == "surrogate":
        base[draw(st.sampled_from(["pair_id", "labeler", "prompt"]))] += "\udc80"
    else:
        base["created_at"] = "2024-13-45"
    return json.dumps(base).encode()


@st.composite
def label_files(draw: st.DrawFn) -> tuple[list[list[tuple[bytes, bool]]], bool]:
    files = draw(
        st.lists(
            st.lists(st.one_of(valid_line().map(lambda b: (b, True)), bad_line().map(lambda b: (b, False)))),
            min_size=1,
            max_size=3,
        )
    )
    return files, draw(st.booleans())  # whether the last file's last line lacks its newline


@settings(max_examples=60, deadline=None)
@given(label_files())
def test_fuzz_fail_and_quarantine(spec: tuple[list[list[tuple[bytes, bool]]], bool]) -> None:
    files, truncate_last = spec
    with tempfile.TemporaryDirectory() as tmp:
        paths, expected_bad, n_valid = [], [], 0
        for f, lines in enumerate(files):
            path = Path(tmp) / f"labeler{f}.jsonl"
            data = b"".join(raw + b"\n" for raw, _ in lines)
            if truncate_last and f == len(files) - 1 and lines:
                data = data[:-1]
            path.write_bytes(data)
            paths.append(path)
            for n, (raw, ok) in enumerate(lines, start=1):
                n_valid += ok
                if not ok:
                    expected_bad.append((str(path), n, raw))
        pairs = make_pairs(N_PAIRS)
        if expected_bad:
            file, n, _ = expected_bad[0]
            with pytest.raises(LabelError) as info:
                run(paths, pairs)
            assert str(info.value).startswith(f"{file}:{n}: ")
        else:
            run(paths, pairs)
        result = run(paths, pairs, on_error="quarantine", quarantine_path=Path(tmp) / "q.jsonl")
        assert [(p.file, p.line) for p in result.problems] == [(f, n) for f, n, _ in expected_bad]
        assert [p.raw.rstrip(b"\n") for p in result.problems] == [raw for _, _, raw in expected_bad]
        if truncate_last and files[-1] and not files[-1][-1][1] and b"no-such-pair" not in files[-1][-1][0]:
            # a last line without newline that fails to parse (an unknown pair id parses fine)
            assert result.problems[-1].reason.startswith("truncated last line")
        assert result.stats["judgments"] == n_valid
        assert result.stats["quarantined_lines"] == len(expected_bad)
