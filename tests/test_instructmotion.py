from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from motionpref.prefs.ingest import ingest
from motionpref.prefs.instructmotion import PAIRS_SCHEMA, read_instructmotion, token_path, write_import
from motionpref.prefs.labels import LabelError, read_labels

MARGINS = {"much_better": 3.0, "better": 2.0, "slightly_better": 1.0, "negligible": 0.0}


def sample(name: str, seed: int | None = 1) -> dict:
    s = {"gif": f"gifs/{name}.gif", "features": f"features/{name}.npy", "from": "motionGPT"}
    if seed is not None:
        s["seed"] = seed
    return s


def entry(choice: str, degree: str | None, user: str | None = None) -> dict:
    e = {"choice": choice, "degree of preference": degree}
    if user is not None:
        e["user"] = user
    return e


RECORDS = [
    {
        "id": 1,
        "prompt": "someone leaps off a concrete block",
        "sample_1": sample("1_1", 11),
        "sample_2": sample("1_2", 12),
        "chosen": [entry("sample_1", "Better", "Matt"), entry("sample_2", "Much better", "Jenny")],
    },
    {
        "id": 2,
        "prompt": "a person waves",
        "sample_1": sample("2_1"),
        "sample_2": sample("2_2"),
        "chosen": [entry("skipped", "skipped")],
    },
    {
        "id": 3,
        "prompt": "a person jumps",
        "sample_1": sample("3_1"),
        "sample_2": sample("3_2"),
        "chosen": [entry("sample_1", "Negligibly better/unsure", "Matt")],
    },
    {
        "ID": 4,
        "prompt": "a person sits down",
        "sample_1": sample("4_1", None),
        "sample_2": sample("4_2", None),
        "chosen": [entry("sample_2", "Slightly better"), entry("skipped", "null")],
    },
    {
        "id": 5,
        "prompt": "a person kicks",
        "sample_1": sample("5_1"),
        "sample_2": sample("5_2"),
        "chosen": [entry("skipped", None, "Matt"), entry("sample_2", "Better", "Matt")],
    },
]


def write_release(root: Path, records: list[dict], tokens: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "preference_labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    if tokens:
        for r in records:
            for key in ("sample_1", "sample_2"):
                file = root / token_path(r[key]["features"])
                file.parent.mkdir(parents=True, exist_ok=True)
                np.save(file, np.array([[int(r.get("id", r.get("ID"))), len(key)]], dtype=np.int64))
    return path


def test_token_path_follows_the_release_layout() -> None:
    assert token_path("features/12_1.npy") == "tokens/12_1_token.npy"


def test_records_become_judgments_and_pairs(tmp_path: Path) -> None:
    root = tmp_path / "preference_data"
    imported = read_instructmotion(write_release(root, RECORDS), root)
    got = [(j.pair_id, j.choice, j.degree, j.labeler, j.source) for j in imported.judgments]
    assert got == [
        ("im-1", "a", "better", "Matt", "import"),
        ("im-1", "b", "much_better", "Jenny", "import"),
        ("im-2", "skip", None, "import-0", "import"),
        ("im-3", "a", "negligible", "Matt", "import"),
        ("im-4", "b", "slightly_better", "import-0", "import"),
        ("im-4", "skip", None, "import-1", "import"),
        ("im-5", "skip", None, "Matt", "import"),
        ("im-5", "b", "better", "Matt", "import"),
    ]
    assert imported.judgments[0].timestamp < imported.judgments[1].timestamp  # chosen[] order is time order
    pairs = imported.pairs
    assert list(pairs.columns) == PAIRS_SCHEMA.names
    first = pairs.iloc[0]
    assert (first.pair_id, first.prompt, first.seed_a, first.seed_b) == ("im-1", RECORDS[0]["prompt"], 11, 12)
    assert first.features_a == str(root / "features/1_1.npy")
    assert (first.tokens_a, first.tokens_b) == ([1, 8], [1, 8])
    assert pairs.iloc[3].seed_a == -1  # no seed in the record


def test_without_root_paths_stay_and_tokens_are_empty(tmp_path: Path) -> None:
    imported = read_instructmotion(write_release(tmp_path, RECORDS[:1], tokens=False))
    assert imported.pairs.iloc[0].features_b == "features/1_2.npy"
    assert imported.pairs.iloc[0].tokens_a == []


def test_ingest_last_wins_matches_the_authors_rule(tmp_path: Path) -> None:
    root = tmp_path / "preference_data"
    imported = read_instructmotion(write_release(root, RECORDS), root)
    labels, pairs_path = tmp_path / "labels" / "instructmotion.jsonl", tmp_path / "pairs.parquet"
    write_import(imported, labels, pairs_path)
    write_import(imported, labels, pairs_path)  # same judgments again: nothing to do
    assert [j for _, j in read_labels(labels)] == imported.judgments
    pairs = pq.read_table(pairs_path).to_pandas()
    result = ingest([labels], pairs, "last_wins", seed=0, margins=MARGINS)
    got = {r["pair_id"]: (r["chosen"], r["degree"]) for r in result.preferences.to_dict("records")}
    # the authors train on chosen[-1] and drop pairs whose last choice is "skipped"
    names = {"sample_1": "a", "sample_2": "b"}
    degrees = {"Much better": "much_better", "Better": "better", "Negligibly better/unsure": "negligible"}
    expected = {
        f"im-{r.get('id', r.get('ID'))}": (
            names[r["chosen"][-1]["choice"]],
            degrees[r["chosen"][-1]["degree of preference"]],
        )
        for r in RECORDS
        if r["chosen"][-1]["choice"] != "skipped"
    }
    assert got == expected
    assert result.stats["skipped"]["pairs"] == 2
    assert result.preferences.set_index("pair_id").loc["im-1", "chosen_features"] == str(root / "features/1_2.npy")


def test_import_never_overwrites_other_labels(tmp_path: Path) -> None:
    imported = read_instructmotion(write_release(tmp_path / "rel", RECORDS, tokens=False))
    labels = tmp_path / "instructmotion.jsonl"
    labels.write_text("someone else's labels\n")
    with pytest.raises(FileExistsError, match="never rewritten"):
        write_import(imported, labels, tmp_path / "pairs.parquet")
    assert labels.read_text() == "someone else's labels\n"
    assert not (tmp_path / "pairs.parquet").exists()


def _broken(**changes: object) -> dict:
    record = {**json.loads(json.dumps(RECORDS[0])), "id": 99}
    for key, value in changes.items():
        if value is None:
            del record[key]
        else:
            record[key] = value
    return record


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (_broken(chosen=[entry("sample_1", "Way better")]), "unknown degree of preference 'Way better'"),
        (_broken(chosen=[entry("sample_3", "Better")]), "chosen[0]: unknown choice 'sample_3'"),
        (_broken(chosen=[entry("skipped", "Better")]), "skipped pair with degree 'Better'"),
        (_broken(chosen=[{"choice": "sample_1"}]), "missing key 'degree of preference'"),
        (_broken(chosen=[entry("sample_1", "Better", 7)]), "'user' has type int"),
        (_broken(chosen=[]), "'chosen' is empty"),
        (_broken(chosen=None), "missing key 'chosen'"),
        (_broken(prompt=3), "'prompt' has type int, expected str"),
        (_broken(sample_2={"gif": "x.gif"}), "sample_2: missing key 'features'"),
        (_broken(id=None), "missing key 'ID'"),
        (_broken(id=1), "duplicate id 1 (first on line 1)"),
        (_broken(chosen=[entry("sample_1", "Better", "  ")]), "chosen[0]: 'user' is blank ('  ')"),
        (_broken(chosen=[entry("sample_1", "Better", "\ud800")]), "chosen[0]: 'user' holds the lone surrogate"),
        (_broken(prompt="a person \udc00 waves"), "'prompt' holds the lone surrogate '\\udc00' at index 9"),
        (_broken(id="x\ud800"), "'id' holds the lone surrogate"),
        (_broken(sample_1={"features": "f/\ud800.npy"}), "sample_1: 'features' holds the lone surrogate"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path: Path, record: dict, reason: str) -> None:
    path = write_release(tmp_path, [RECORDS[0]], tokens=False)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    with pytest.raises(LabelError) as info:
        read_instructmotion(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert reason in str(info.value)


@pytest.mark.parametrize("line", [b"[" * 100_000, b'{"id": 2, "chosen": ' + b"[" * 100_000, b'{"a": ' * 50_000])
def test_deeply_nested_line_names_file_and_line(tmp_path: Path, line: bytes) -> None:
    path = write_release(tmp_path, [RECORDS[0]], tokens=False)
    path.write_bytes(path.read_bytes() + line + b"\n")
    with pytest.raises(LabelError, match=r"preference_labels\.jsonl:2: JSON nested too deeply"):
        read_instructmotion(path)


@pytest.mark.parametrize(
    ("tokens", "codebook", "reason"),
    [
        ([[5, 512]], 512, "token 512 at position 1 is outside the codebook [0, 512)"),
        ([[-1, 3]], 512, "token -1 at position 0 is outside the codebook [0, 512)"),
        ([[513]], 512, "token 513 at position 0"),  # MotionGPT's end id is not a motion token either
        ([[0, 15, 16]], 16, "token 16 at position 2 is outside the codebook [0, 16)"),
    ],
)
def test_tokens_outside_the_codebook_name_file_and_line(
    tmp_path: Path, tokens: list[list[int]], codebook: int, reason: str
) -> None:
    root = tmp_path / "preference_data"
    path = write_release(root, RECORDS[:2])
    np.save(root / token_path(RECORDS[1]["sample_2"]["features"]), np.array(tokens, dtype=np.int64))
    with pytest.raises(LabelError) as info:
        read_instructmotion(path, root, codebook_size=codebook)
    assert str(info.value).startswith(f"{path}:2: ")
    assert "2_2_token.npy" in str(info.value) and reason in str(info.value)


def test_tokens_at_the_codebook_edges_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "preference_data"
    path = write_release(root, RECORDS[:1])
    np.save(root / token_path(RECORDS[0]["sample_1"]["features"]), np.array([[0, 511]], dtype=np.int64))
    assert read_instructmotion(path, root).pairs.iloc[0].tokens_a == [0, 511]


def test_malformed_lines_and_missing_tokens(tmp_path: Path) -> None:
    path = write_release(tmp_path, RECORDS[:1], tokens=False)
    with pytest.raises(LabelError, match=r"preference_labels\.jsonl:1: token file .*1_1_token\.npy not found"):
        read_instructmotion(path, tmp_path)
    path.write_bytes(path.read_bytes() + b'{"id": 2, "prompt": \n')
    with pytest.raises(LabelError, match=r"preference_labels\.jsonl:2: malformed JSON"):
        read_instructmotion(path)
    path.write_bytes(b"\xff\n")
    with pytest.raises(LabelError, match=r"preference_labels\.jsonl:1: not valid UTF-8"):
        read_instructmotion(path)
