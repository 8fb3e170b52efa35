from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from motionpref.motion.dataset import load_split, load_stats, read_captions, read_split, validate_dataset
from motionpref.motion.text import mirror_caption
from motionpref.synth import world
from motionpref.synth.captions import mirror_program
from motionpref.synth.programs import Program
from motionpref.synth.sampling import NoveltySplit
from motionpref.synth.world import build_dataset, read_programs, split_sizes

N = 12


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, world.WorldSummary]:
    root = tmp_path_factory.mktemp("world") / "dataset"
    return root, build_dataset(root, N, seed=7, n_novel=5)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_reads_back_like_a_humanml3d_folder(built):
    root, summary = built
    n_train, n_val, n_test = split_sizes(N, (0.8, 0.05, 0.15))
    counts = validate_dataset(root)
    train_val = 2 * (n_train + n_val)
    assert counts == {
        "train": 2 * n_train,
        "val": 2 * n_val,
        "test": 2 * n_test,
        "train_val": train_val,
        "all": 2 * N,
    }
    assert summary.splits == counts and summary.n_mirrored == N
    entries = [e for split in ("train", "val", "test") for e in load_split(root, split)]
    assert len(entries) == 2 * N  # every clip is 40..196 frames, so the loader keeps all of them
    assert all(e.features.shape[1] == 263 and len(e.captions) == 3 for e in entries)
    assert summary.frames == sum(e.length for e in entries)
    mean, std = load_stats(root)
    assert mean.shape == std.shape == (263,)
    feats = np.concatenate([e.features for e in entries]).astype(np.float64)
    np.testing.assert_allclose(mean, feats.mean(0), rtol=1e-4, atol=1e-5)  # over all clips, as the release


def test_mirrored_clips_share_the_split_and_swap_sides(built):
    root, _ = built
    for split in ("train", "val", "test"):
        ids = read_split(root, split)
        sources = [i for i in ids if not i.startswith("M")]
        assert ids == sources + ["M" + i for i in sources] and sources == sorted(sources)
    programs = read_programs(root)
    for clip_id in read_split(root, "all"):
        if clip_id.startswith("M"):
            source = clip_id[1:]
            assert programs[clip_id] == (mirror_program(programs[source][0]), programs[source][1])
            assert read_captions(root, clip_id) == [mirror_caption(c) for c in read_captions(root, source)]


def test_programs_jsonl_matches_the_ids(built):
    root, _ = built
    lines = [json.loads(line) for line in (root / world.PROGRAMS_FILE).read_text().splitlines()]
    assert [row["id"] for row in lines] == read_split(root, "all")
    for split in ("train", "val", "test"):
        assert {r["id"] for r in lines if r["split"] == split} == set(read_split(root, split))
    novelty = NoveltySplit.from_dict(json.loads((root / world.NOVELTY_FILE).read_text()))
    assert novelty == NoveltySplit.from_seed(7)
    assert not any(novelty.is_novel(Program.from_dict(r["program"])) for r in lines)
    novel = [json.loads(line) for line in (root / world.NOVEL_FILE).read_text().splitlines()]
    assert len(novel) == 5
    for row in novel:
        p = Program.from_dict(row["program"])
        assert row["held_out"] == novelty.held_out_in(p) != [] and len(set(row["captions"])) == 3


def test_build_is_byte_identical_whatever_the_workers(built, tmp_path):
    root, _ = built
    again = tmp_path / "again"
    build_dataset(again, N, seed=7, n_novel=5, workers=2)
    assert files_of(again) == files_of(root)
    other = tmp_path / "other"
    build_dataset(other, N, seed=8, n_novel=5)
    assert files_of(other)["programs.jsonl"] != files_of(root)["programs.jsonl"]


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    real, calls = world.animate, []

    def broken(program, rng, style=None):
        calls.append(program)
        if len(calls) == 5:
            raise RuntimeError("animator failed")
        return real(program, rng, style)

    monkeypatch.setattr(world, "animate", broken)
    with pytest.raises(RuntimeError, match="animator failed"):
        build_dataset(tmp_path / "ds", N, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_rebuild_replaces_a_dataset_but_never_an_unrelated_folder(tmp_path):
    root = tmp_path / "ds"
    build_dataset(root, 6, seed=0, mirror=False)
    build_dataset(root, 4, seed=0, mirror=False)
    assert validate_dataset(root)["all"] == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="not a dataset folder"):
        build_dataset(precious, 4, seed=0)
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]


def test_bad_arguments_are_clear_errors(tmp_path):
    assert split_sizes(100, (0.8, 0.05, 0.15)) == (80, 5, 15)
    assert split_sizes(3, (0.8, 0.05, 0.15)) == (1, 1, 1)
    with pytest.raises(ValueError, match="summing to 1"):
        split_sizes(10, (0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="at least 3"):
        build_dataset(tmp_path / "ds", 2, seed=0)
    (tmp_path / world.PROGRAMS_FILE).write_text('{"id": "000000", "program": {"segments": []}, "split": "train"}\n')
    with pytest.raises(ValueError, match=r"programs.jsonl:1"):
        read_programs(tmp_path)
