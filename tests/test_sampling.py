from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from motionpref.synth.programs import PRIMITIVES, make_segment, program
from motionpref.synth.sampling import (
    MAX_NOMINAL_FRAMES,
    NoveltySplit,
    sample_novel_program,
    sample_program,
    sample_segment,
)

SPLIT = NoveltySplit.from_seed(0)


@pytest.fixture(scope="module")
def dataset_programs():
    rng = np.random.default_rng(0)
    return [sample_program(rng, split=SPLIT) for _ in range(3000)]


def test_programs_are_valid_short_and_never_repeat_a_primitive(dataset_programs):
    for p in dataset_programs:
        p.validate()
        assert p.nominal_frames() <= MAX_NOMINAL_FRAMES
        assert all(a != b for a, b in zip(p.primitives[:-1], p.primitives[1:], strict=False)), p.key()


def test_distribution_covers_every_primitive_and_modifier(dataset_programs):
    n_segments = Counter(len(p.segments) for p in dataset_programs)
    for k, expected in ((1, 0.5), (2, 0.35), (3, 0.15)):
        assert abs(n_segments[k] / len(dataset_programs) - expected) < 0.03, n_segments
    segments = [s for p in dataset_programs for s in p.segments]
    assert Counter(s.primitive for s in segments).keys() == PRIMITIVES.keys()
    assert {s.speed for s in segments} == {"slow", "normal", "fast"}
    assert {s.amplitude for s in segments} == {"small", "normal", "large"}
    assert {s.side for s in segments} == {None, "left", "right", "both"}
    assert {s.direction for s in segments} == {None, "left", "right"}
    assert {s.angle for s in segments} == {None, 45, 90, 135}
    kicks = Counter(s.count for s in segments if s.primitive == "kick")
    assert set(kicks) == {1, 2, 3, 4}


def test_no_dataset_program_contains_a_held_out_combination(dataset_programs):
    assert [p.key() for p in dataset_programs if SPLIT.is_novel(p)] == []
    segments = [s for p in dataset_programs for s in p.segments]
    for prim, name, value in SPLIT.pairs:
        # each part of a held-out pair is still seen: the primitive, and the value on other primitives
        assert any(s.primitive == prim for s in segments)
        assert any(s.primitive != prim and getattr(s, name) == value for s in segments)
    bigrams = {(a, b) for p in dataset_programs for a, b in zip(p.primitives[:-1], p.primitives[1:], strict=False)}
    for a, b in SPLIT.bigrams:
        assert (a, b) not in bigrams


def test_novel_programs_each_contain_a_held_out_combination():
    rng = np.random.default_rng(1)
    novel = [sample_novel_program(rng, SPLIT) for _ in range(600)]
    found = Counter(item for p in novel for item in SPLIT.held_out_in(p))
    assert all(SPLIT.is_novel(p) for p in novel)
    assert all(p.nominal_frames() <= MAX_NOMINAL_FRAMES for p in novel)
    expected = {f"{p}({n}={v})" for p, n, v in SPLIT.pairs} | {f"{a}>{b}" for a, b in SPLIT.bigrams}
    assert set(found) == expected


def test_held_out_in_names_pairs_and_bigrams():
    split = NoveltySplit(pairs=(("run", "speed", "slow"), ("kick", "count", 3)), bigrams=(("jump", "walk_backward"),))
    p = program(make_segment("jump"), make_segment("walk_backward"), make_segment("run", speed="slow"))
    assert split.held_out_in(p) == ["run(speed=slow)", "jump>walk_backward"]
    assert not split.is_novel(program(make_segment("walk_backward"), make_segment("jump")))
    assert not split.is_novel(program(make_segment("kick", count=2), make_segment("run", speed="fast")))


def test_novelty_split_is_seeded_and_round_trips():
    assert NoveltySplit.from_seed(3) == NoveltySplit.from_seed(3) != NoveltySplit.from_seed(4)
    split = NoveltySplit.from_seed(3, n_pairs=8, n_bigrams=5)
    assert len(split.pairs) == 8 and len({p[0] for p in split.pairs}) == 8 and len(split.bigrams) == 5
    assert all(name not in ("side", "direction") for _, name, _ in split.pairs)
    assert all((b, a) not in split.bigrams for a, b in split.bigrams)
    assert NoveltySplit.from_dict(split.to_dict()) == split


def test_novelty_split_rejects_what_mirroring_or_the_language_would_break():
    with pytest.raises(ValueError, match="undone by mirroring"):
        NoveltySplit(pairs=(("wave", "side", "right"),))
    with pytest.raises(ValueError, match="not a valid segment"):
        NoveltySplit(pairs=(("run", "count", 2),))  # runs take 4..12 steps
    with pytest.raises(ValueError, match="bad bigram"):
        NoveltySplit(bigrams=(("jump", "jump"),))
    with pytest.raises(ValueError, match="expected"):
        NoveltySplit.from_dict({"pairs": []})


def test_sampling_is_deterministic_and_respects_options():
    a = [sample_program(np.random.default_rng(9)).key() for _ in range(3)]
    assert len(set(a)) == 1
    rng = np.random.default_rng(10)
    assert all(len(sample_program(rng, max_segments=1).segments) == 1 for _ in range(50))
    only = {"clap": 1.0, "bow": 1.0}
    assert {s.primitive for _ in range(50) for s in sample_program(rng, primitive_weights=only).segments} == set(only)
    assert sample_segment(rng, "turn", angle=45, speed="fast").angle == 45
    with pytest.raises(ValueError, match="max_segments"):
        sample_program(rng, max_segments=4)
