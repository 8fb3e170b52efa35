"""The distribution of action programs, and the novelty split that keeps some combinations unseen.

``sample_program`` draws the programs of the dataset: one to three segments (50/35/15 % by default),
no primitive twice in a row, modifiers drawn independently (speed and amplitude ``normal`` half of the
time, counts, sides, directions and angles uniform over what the primitive takes), rejected and drawn
again while the clip would be longer than ``max_frames`` at nominal timing (the animator varies timing
by a few percent, so the default 180 keeps clips under HumanML3D's 196 frames).

``NoveltySplit`` holds out combinations whose parts the dataset does show: primitive x modifier pairs
("run slowly", "kick three times") and ordered primitive bigrams ("jump, then walk backward"). Dataset
programs never contain one; ``sample_novel_program`` draws programs that contain at least one, for the
prompts of the preference stage. Held-out pairs never use a side or a direction: the mirrored copy of
every clip swaps them, so "wave with the left hand" in training is "wave with the right hand" too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from motionpref.synth.programs import (
    AMPLITUDES,
    MAX_SEGMENTS,
    PRIMITIVES,
    SPEEDS,
    Program,
    ProgramError,
    Segment,
    make_segment,
)

SEGMENT_PROBS = (0.5, 0.35, 0.15)  # programs of 1, 2, 3 segments
SPEED_PROBS = (0.25, 0.5, 0.25)  # SPEEDS order: slow, normal, fast
AMPLITUDE_PROBS = (0.25, 0.5, 0.25)  # AMPLITUDES order: small, normal, large
MAX_NOMINAL_FRAMES = 180
_MAX_TRIES = 10_000

Modifier = tuple[str, str, Any]  # (primitive, field, value), e.g. ("run", "speed", "slow")
Bigram = tuple[str, str]  # (first primitive, next primitive)


def _pick(rng: np.random.Generator, options: Sequence[Any], probs: Sequence[float] | None = None) -> Any:
    if probs is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(probs, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def sample_segment(rng: np.random.Generator, primitive: str, **fixed: Any) -> Segment:
    """A segment of ``primitive`` with modifiers drawn at random, except those given in ``fixed``."""
    spec = PRIMITIVES[primitive]
    drawn: dict[str, Any] = {
        "speed": _pick(rng, SPEEDS, SPEED_PROBS),
        "amplitude": _pick(rng, AMPLITUDES, AMPLITUDE_PROBS) if spec.amplitude else "normal",
        "count": int(rng.integers(spec.count_range[0], spec.count_range[1] + 1)) if spec.count else None,
        "side": _pick(rng, spec.sides) if spec.sides else None,
        "direction": _pick(rng, spec.directions) if spec.directions else None,
        "angle": int(_pick(rng, spec.angles)) if spec.angles else None,
    }
    segment = Segment(primitive=primitive, **{**drawn, **fixed})
    segment.validate(f"sample_segment({primitive})")
    return segment


def _segment_count(rng: np.random.Generator, probs: Sequence[float], max_segments: int, least: int = 1) -> int:
    if not 1 <= max_segments <= MAX_SEGMENTS:
        raise ValueError(f"max_segments must be in 1..{MAX_SEGMENTS}, got {max_segments}")
    if len(probs) < max_segments or any(p < 0 for p in probs):
        raise ValueError(f"segment_probs needs {max_segments} non-negative weights, got {tuple(probs)}")
    p = np.array([probs[k - 1] if least <= k <= max_segments else 0.0 for k in range(1, MAX_SEGMENTS + 1)])
    if p.sum() <= 0:
        raise ValueError(f"segment_probs {tuple(probs)} give no weight to {least}..{max_segments} segments")
    return int(rng.choice(MAX_SEGMENTS, p=p / p.sum())) + 1


def _primitive_sequence(rng: np.random.Generator, k: int, weights: Mapping[str, float] | None) -> list[str]:
    names = list(PRIMITIVES)
    w = np.array([1.0 if weights is None else float(weights.get(n, 0.0)) for n in names])
    if (w < 0).any() or (w > 0).sum() < 2:
        raise ValueError("primitive_weights must be non-negative and give weight to at least two primitives")
    out: list[str] = []
    for i in range(k):
        p = w.copy()
        if out:
            p[names.index(out[-1])] = 0.0  # "walks forward, then walks forward" is one longer segment
        if i < k - 1:
            p[[PRIMITIVES[n].terminal for n in names]] = 0.0
        out.append(names[int(rng.choice(len(names), p=p / p.sum()))])
    return out


@dataclass(frozen=True)
class NoveltySplit:
    """Combinations held out of the dataset: primitive x modifier pairs and ordered primitive bigrams."""

    pairs: tuple[Modifier, ...] = ()
    bigrams: tuple[Bigram, ...] = ()
    _pair_set: frozenset = field(init=False, repr=False, compare=False)
    _bigram_set: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for prim, name, value in self.pairs:
            if name in ("side", "direction"):
                raise ValueError(f"NoveltySplit: {name} pairs would be undone by mirroring: {(prim, name, value)}")
            if name not in ("speed", "amplitude", "count", "angle"):
                raise ValueError(f"NoveltySplit: pair {(prim, name, value)!r} names no modifier of a program")
            try:
                make_segment(prim, **{name: value})
            except ProgramError as err:
                raise ValueError(f"NoveltySplit: pair {(prim, name, value)!r} is not a valid segment: {err}") from None
        for a, b in self.bigrams:
            if a not in PRIMITIVES or b not in PRIMITIVES or a == b:
                raise ValueError(f"NoveltySplit: bad bigram {(a, b)!r}")
        object.__setattr__(self, "_pair_set", frozenset(self.pairs))
        object.__setattr__(self, "_bigram_set", frozenset(self.bigrams))

    @classmethod
    def from_seed(cls, seed: int, n_pairs: int = 6, n_bigrams: int = 6) -> NoveltySplit:
        """A seeded choice: pairs on distinct primitives, and bigrams whose reverse stays in the data."""
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6E6F76]))
        candidates = _pair_candidates()
        order = rng.permutation(len(candidates))
        pairs: list[Modifier] = []
        for i in order:
            if len(pairs) == n_pairs:
                break
            if all(p[0] != candidates[i][0] for p in pairs):
                pairs.append(candidates[i])
        names = list(PRIMITIVES)
        all_bigrams = [(a, b) for a in names for b in names if a != b and not PRIMITIVES[a].terminal]
        bigrams: list[Bigram] = []
        for i in rng.permutation(len(all_bigrams)):
            if len(bigrams) == n_bigrams:
                break
            a, b = all_bigrams[i]
            if (b, a) not in bigrams:
                bigrams.append((a, b))
        if len(pairs) < n_pairs or len(bigrams) < n_bigrams:
            raise ValueError(f"NoveltySplit: cannot hold out {n_pairs} pairs and {n_bigrams} bigrams")
        return cls(tuple(pairs), tuple(bigrams))

    def held_out_in(self, program: Program) -> list[str]:
        """The held-out combinations ``program`` contains, as text ("run(speed=slow)", "jump>walk")."""
        found = [
            f"{s.primitive}({name}={value})"
            for s in program.segments
            for name in ("speed", "amplitude", "count", "angle")
            if (value := getattr(s, name)) is not None and (s.primitive, name, value) in self._pair_set
        ]
        prims = program.primitives
        found += [f"{a}>{b}" for a, b in zip(prims[:-1], prims[1:], strict=False) if (a, b) in self._bigram_set]
        return found

    def is_novel(self, program: Program) -> bool:
        return bool(self.held_out_in(program))

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": [list(p) for p in self.pairs], "bigrams": [list(b) for b in self.bigrams]}

    @classmethod
    def from_dict(cls, data: Any) -> NoveltySplit:
        if not isinstance(data, dict) or set(data) != {"pairs", "bigrams"}:
            raise ValueError(f"NoveltySplit: expected {{'pairs': [...], 'bigrams': [...]}}, got {data!r}")
        try:
            return cls(tuple((p, n, v) for p, n, v in data["pairs"]), tuple((a, b) for a, b in data["bigrams"]))
        except (TypeError, ValueError) as err:
            raise ValueError(f"NoveltySplit: malformed pairs/bigrams ({err})") from None


def _pair_candidates() -> list[Modifier]:
    """Pairs whose primitive keeps other values of the field in the data (so each part is seen)."""
    out: list[Modifier] = []
    for name, spec in PRIMITIVES.items():
        out += [(name, "speed", v) for v in ("slow", "fast")]
        if spec.amplitude:
            out += [(name, "amplitude", v) for v in ("small", "large")]
        lo, hi = spec.count_range
        if spec.count and hi - lo >= 2:
            out += [(name, "count", v) for v in range(lo, hi + 1) if v != spec.default_count]
        out += [(name, "angle", a) for a in spec.angles if a != 90]
    return out


def sample_program(
    rng: np.random.Generator,
    max_segments: int = MAX_SEGMENTS,
    segment_probs: Sequence[float] = SEGMENT_PROBS,
    max_frames: int = MAX_NOMINAL_FRAMES,
    split: NoveltySplit | None = None,
    primitive_weights: Mapping[str, float] | None = None,
) -> Program:
    """A random valid program of at most ``max_frames`` nominal frames, free of ``split``'s held-out parts."""
    k = _segment_count(rng, segment_probs, max_segments)
    for _ in range(_MAX_TRIES):
        prims = _primitive_sequence(rng, k, primitive_weights)
        candidate = Program(tuple(sample_segment(rng, p) for p in prims))
        if candidate.nominal_frames() <= max_frames and not (split is not None and split.is_novel(candidate)):
            return candidate
    raise RuntimeError(f"sample_program: no {k}-segment program within {max_frames} frames in {_MAX_TRIES} tries")


def sample_novel_program(
    rng: np.random.Generator,
    split: NoveltySplit,
    max_segments: int = MAX_SEGMENTS,
    segment_probs: Sequence[float] = SEGMENT_PROBS,
    max_frames: int = MAX_NOMINAL_FRAMES,
) -> Program:
    """A program containing at least one of ``split``'s held-out combinations (chosen uniformly)."""
    items: list[tuple[str, Any]] = [("pair", p) for p in split.pairs]
    if max_segments >= 2:
        items += [("bigram", b) for b in split.bigrams]
    if not items:
        raise ValueError("sample_novel_program: the split holds nothing out (for this max_segments)")
    for _ in range(_MAX_TRIES):
        kind, item = _pick(rng, items)
        k = _segment_count(rng, segment_probs, max_segments, least=2 if kind == "bigram" else 1)
        prims = _primitive_sequence(rng, k, None)
        fixed: dict[int, dict[str, Any]] = {}
        if kind == "pair":
            at = k - 1 if PRIMITIVES[item[0]].terminal else int(rng.integers(k))
            prims[at] = item[0]
            fixed[at] = {item[1]: item[2]}
        else:
            at = int(rng.integers(k - 1))
            prims[at : at + 2] = item
        if any(a == b for a, b in zip(prims[:-1], prims[1:], strict=False)) or any(
            PRIMITIVES[p].terminal for p in prims[:-1]
        ):
            continue
        candidate = Program(tuple(sample_segment(rng, p, **fixed.get(i, {})) for i, p in enumerate(prims)))
        if candidate.nominal_frames() <= max_frames:
            return candidate
    raise RuntimeError(f"sample_novel_program: no novel program within {max_frames} frames in {_MAX_TRIES} tries")
