from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from motionpref.models.generator import Generation
from motionpref.prefs.pairs import (
    PAIRS_SCHEMA,
    directory_hash,
    pair_id,
    pair_seeds,
    read_pairs,
    sample_pairs,
    write_pairs,
)


class FakeGenerator:
    """Motion of length 8 + seed % 5; seeds in ``bad`` stay invalid."""

    def __init__(self, bad: set[int] = frozenset()) -> None:
        self.bad = bad
        self.temperatures: list[float | None] = []

    def generate(self, captions, seeds, temperature=None) -> Generation:
        self.temperatures.append(temperature)
        feats = [None if s in self.bad else np.full((8 + s % 5, 3), s % 1000, np.float32) for s in seeds]
        valid = [f is not None for f in feats]
        return Generation(feats, [[s % 7] for s in seeds], list(seeds), [1] * len(seeds), valid)


def prompts(n: int, splits: list[str] | None = None) -> pd.DataFrame:
    """``n`` prompts without programs (each its own group), all train unless ``splits`` says otherwise."""
    texts = [f"a person does thing {i}" for i in range(n)]
    return pd.DataFrame(
        {
            "prompt_id": [f"p{i:05d}" for i in range(n)],
            "text": texts,
            "program": [None] * n,
            "source": ["recombine"] * n,
            "group": texts,
            "split": splits or ["train"] * n,
        }
    )


def test_pair_seeds_differ_and_do_not_depend_on_other_prompts() -> None:
    seeds = [pair_seeds(0, f"p{i}") for i in range(200)]
    assert all(a != b for a, b in seeds)
    assert pair_seeds(0, "p7") == seeds[7] and pair_seeds(1, "p7") != seeds[7]
    assert pair_id("h", "walk", 1, 2, 1.2) == pair_id("h", "walk", 1, 2, 1.2) != pair_id("h", "walk", 1, 2, 1.0)


def test_sample_pairs_writes_both_motions_and_a_valid_table(tmp_path: Path) -> None:
    stored: dict[str, np.ndarray] = {}

    def store(name: str, features: np.ndarray) -> str:
        stored[name] = features
        return f"motions/{name}"

    generator = FakeGenerator()
    table, stats = sample_pairs(prompts(5), generator, 1.2, seed=3, policy_hash="abc", store=store, chunk=2)
    assert generator.temperatures == [1.2] * 6  # A and B for each of three chunks, at the pair temperature
    assert list(table.columns) == PAIRS_SCHEMA.names and len(table) == 5 and stats["pairs"] == 5
    row = table.iloc[0]
    assert (row.seed_a, row.seed_b) == pair_seeds(3, "p00000")
    assert row.pair_id == pair_id("abc", row.prompt, row.seed_a, row.seed_b, 1.2)
    assert row.features_a == f"motions/{row.pair_id}_a.npy" and row.tokens_a == [row.seed_a % 7]
    np.testing.assert_array_equal(stored[f"{row.pair_id}_b.npy"], np.full((8 + row.seed_b % 5, 3), row.seed_b % 1000))
    assert len(stored) == 10
    write_pairs(table, tmp_path / "pairs.parquet")
    back = read_pairs(tmp_path / "pairs.parquet")
    assert (
        back["pair_id"].tolist() == table["pair_id"].tolist() and list(back.iloc[2].tokens_b) == table.iloc[2].tokens_b
    )


def test_prompts_with_a_hopeless_motion_get_no_pair() -> None:
    bad = {pair_seeds(0, "p00001")[1]}
    table, stats = sample_pairs(prompts(3), FakeGenerator(bad), 1.2, 0, "h", lambda n, f: n)
    assert table["prompt_id"].tolist() == ["p00000", "p00002"]
    assert stats["dropped_invalid"] == 1 and stats["prompts"] == 3


def test_only_train_and_val_prompts_get_pairs_and_carry_their_split_and_group() -> None:
    walk, clap, jump = (f'{{"segments":[{{"primitive":"{name}"}}]}}' for name in ("walk", "clap", "jump"))
    table = prompts(6).assign(
        program=[walk, clap, jump, walk, clap, jump],
        group=[walk, clap, jump, walk, clap, jump],
        split=["train", "val", "test", "train", "val", "test"],  # by program, as generate_prompts splits
    )
    pairs, stats = sample_pairs(table, FakeGenerator(), 1.2, 0, "h", lambda n, f: n)
    assert pairs["prompt_id"].tolist() == ["p00000", "p00001", "p00003", "p00004"]  # no test prompt
    assert pairs["split"].tolist() == ["train", "val", "train", "val"]
    assert pairs["group"].tolist() == pairs["program"].tolist() == [walk, clap, walk, clap]
    assert stats["prompts"] == 4 and stats["test_prompts_reserved"] == 2 and stats["split"] == {"train": 2, "val": 2}
    with pytest.raises(ValueError, match=r"prompts lack column\(s\) \['split'\]"):
        sample_pairs(table.drop(columns="split"), FakeGenerator(), 1.2, 0, "h", lambda n, f: n)


def test_a_pairs_file_without_split_names_the_file_and_the_column(tmp_path: Path) -> None:
    table, _ = sample_pairs(prompts(2), FakeGenerator(), 1.2, 0, "h", lambda n, f: n)
    write_pairs(table, tmp_path / "pairs.parquet")
    old = pq.read_table(tmp_path / "pairs.parquet").drop_columns(["split"])
    pq.write_table(old, tmp_path / "old.parquet")
    with pytest.raises(ValueError, match=r"old\.parquet: pairs table lacks column\(s\) \['split'\]"):
        read_pairs(tmp_path / "old.parquet")


def test_directory_hash_follows_content(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"1")
    first = directory_hash(tmp_path / "m")
    (tmp_path / "m" / "w.bin").write_bytes(b"2")
    assert directory_hash(tmp_path / "m") != first and len(first) == 16
