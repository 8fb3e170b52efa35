"""Action programs: the small typed language that describes every clip of the synthetic world.

A program is one to three segments played in sequence ("walks forward, then jumps twice"). A segment is one
primitive with modifiers; which modifiers a primitive takes, and their ranges, live in ``PRIMITIVES``. The
nominal duration of a segment is part of the language (``segment_seconds``) so that a program that cannot fit
in a HumanML3D clip (196 frames at 20 fps) is rejected before anything is animated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Speed = Literal["slow", "normal", "fast"]
Amplitude = Literal["small", "normal", "large"]
Side = Literal["left", "right", "both"]
Direction = Literal["left", "right"]
Category = Literal["locomotion", "legs", "arms", "body"]

SPEEDS: tuple[Speed, ...] = ("slow", "normal", "fast")
AMPLITUDES: tuple[Amplitude, ...] = ("small", "normal", "large")
SPEED_FACTOR = {"slow": 0.7, "normal": 1.0, "fast": 1.4}  # tempo multiplier: durations divide by it

FPS = 20.0
MIN_FRAMES = 40
MAX_FRAMES = 196
MAX_SEGMENTS = 3
IDLE_SECONDS = 0.4  # standing still before the first and after the last segment, in total


class ProgramError(ValueError):
    """A program that is not a valid sentence of the language (the message names the segment and field)."""


@dataclass(frozen=True)
class PrimitiveSpec:
    name: str
    category: Category
    count: Literal["steps", "reps"] | None  # what the segment's count means, if it has one
    count_range: tuple[int, int] = (1, 1)
    default_count: int = 1
    sides: tuple[Side, ...] = ()  # which limb; empty when the primitive has no side
    directions: tuple[Direction, ...] = ()  # which way the body goes or turns; empty when none
    angles: tuple[int, ...] = ()  # degrees of yaw, for turns
    amplitude: bool = False  # whether small/large versions exist
    fixed_seconds: float = 0.0  # duration at normal speed that does not depend on the count
    unit_seconds: float = 0.0  # duration at normal speed of one step or repetition
    terminal: bool = False  # ends in a pose no other primitive starts from (seated), so only last


def _spec(name: str, category: Category, **kw: Any) -> tuple[str, PrimitiveSpec]:
    return name, PrimitiveSpec(name=name, category=category, **kw)


PRIMITIVES: dict[str, PrimitiveSpec] = dict(
    [
        _spec("walk", "locomotion", count="steps", count_range=(2, 10), default_count=6, amplitude=True,
              fixed_seconds=0.4, unit_seconds=0.55),
        _spec("run", "locomotion", count="steps", count_range=(4, 12), default_count=8, amplitude=True,
              fixed_seconds=0.4, unit_seconds=0.34),
        _spec("walk_backward", "locomotion", count="steps", count_range=(2, 8), default_count=4,
              amplitude=True, fixed_seconds=0.4, unit_seconds=0.65),
        _spec("sidestep", "locomotion", count="steps", count_range=(2, 6), default_count=4,
              directions=("left", "right"), amplitude=True, fixed_seconds=0.4, unit_seconds=0.7),
        _spec("turn", "locomotion", count=None, directions=("left", "right"), angles=(45, 90, 135),
              fixed_seconds=1.5),
        _spec("circle", "locomotion", count="steps", count_range=(6, 12), default_count=8,
              directions=("left", "right"), fixed_seconds=0.4, unit_seconds=0.6),
        _spec("jump", "legs", count="reps", count_range=(1, 4), default_count=1, amplitude=True,
              fixed_seconds=0.5, unit_seconds=0.8),
        _spec("jump_forward", "legs", count="reps", count_range=(1, 3), default_count=1, amplitude=True,
              fixed_seconds=0.5, unit_seconds=1.0),
        _spec("kick", "legs", count="reps", count_range=(1, 4), default_count=1, sides=("left", "right"),
              amplitude=True, fixed_seconds=0.4, unit_seconds=1.1),
        _spec("squat", "legs", count="reps", count_range=(1, 4), default_count=1, amplitude=True,
              fixed_seconds=0.3, unit_seconds=1.6),
        _spec("lunge", "legs", count="reps", count_range=(1, 3), default_count=1, sides=("left", "right"),
              amplitude=True, fixed_seconds=0.3, unit_seconds=1.9),
        _spec("sit_down", "legs", count=None, fixed_seconds=3.5, terminal=True),
        _spec("wave", "arms", count="reps", count_range=(1, 4), default_count=2, sides=("left", "right"),
              amplitude=True, fixed_seconds=1.0, unit_seconds=0.6),
        _spec("raise_arms", "arms", count="reps", count_range=(1, 4), default_count=1,
              sides=("left", "right", "both"), amplitude=True, fixed_seconds=0.3, unit_seconds=1.5),
        _spec("clap", "arms", count="reps", count_range=(1, 4), default_count=3, fixed_seconds=1.0,
              unit_seconds=0.5),
        _spec("punch", "arms", count="reps", count_range=(1, 4), default_count=2, sides=("left", "right"),
              amplitude=True, fixed_seconds=0.5, unit_seconds=0.7),
        _spec("throw", "arms", count="reps", count_range=(1, 3), default_count=1, sides=("left", "right"),
              amplitude=True, fixed_seconds=0.4, unit_seconds=1.7),
        _spec("bow", "body", count="reps", count_range=(1, 3), default_count=1, amplitude=True,
              fixed_seconds=0.3, unit_seconds=2.0),
        _spec("turn_around", "body", count=None, directions=("left", "right"), fixed_seconds=1.8),
    ]
)  # fmt: skip


@dataclass(frozen=True)
class Segment:
    """One primitive with its modifiers; fields a primitive does not take stay None."""

    primitive: str
    speed: Speed = "normal"
    count: int | None = None
    side: Side | None = None
    direction: Direction | None = None
    angle: int | None = None
    amplitude: Amplitude = "normal"

    @property
    def spec(self) -> PrimitiveSpec:
        return PRIMITIVES[self.primitive]

    def validate(self, where: str = "segment") -> None:
        if self.primitive not in PRIMITIVES:
            raise ProgramError(
                f"{where}: unknown primitive {self.primitive!r}; expected one of {', '.join(PRIMITIVES)}"
            )
        spec = self.spec
        if self.speed not in SPEEDS:
            raise ProgramError(f"{where}.speed: expected one of {SPEEDS}, got {self.speed!r}")
        if self.amplitude not in AMPLITUDES:
            raise ProgramError(f"{where}.amplitude: expected one of {AMPLITUDES}, got {self.amplitude!r}")
        if self.amplitude != "normal" and not spec.amplitude:
            raise ProgramError(f"{where}.amplitude: {spec.name} has no amplitude modifier")
        if spec.count is None:
            if self.count is not None:
                raise ProgramError(f"{where}.count: {spec.name} takes no count, got {self.count!r}")
        else:
            lo, hi = spec.count_range
            if not isinstance(self.count, int) or isinstance(self.count, bool) or not lo <= self.count <= hi:
                raise ProgramError(f"{where}.count: {spec.name} takes {spec.count} in {lo}..{hi}, got {self.count!r}")
        for name, allowed in (("side", spec.sides), ("direction", spec.directions), ("angle", spec.angles)):
            value = getattr(self, name)
            if allowed and value not in allowed:
                raise ProgramError(f"{where}.{name}: {spec.name} takes one of {allowed}, got {value!r}")
            if not allowed and value is not None:
                raise ProgramError(f"{where}.{name}: {spec.name} takes no {name}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"primitive": self.primitive}
        for name in ("speed", "count", "side", "direction", "angle", "amplitude"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def key(self) -> str:
        """Canonical text of the segment, e.g. ``kick(side=left,count=2,speed=fast)``."""
        parts = [f"{k}={v}" for k, v in self.to_dict().items() if k != "primitive"]
        return f"{self.primitive}({','.join(parts)})"


def make_segment(primitive: str, **modifiers: Any) -> Segment:
    """A segment with the primitive's defaults filled in for modifiers it requires (count, side, ...)."""
    if primitive not in PRIMITIVES:
        raise ProgramError(f"unknown primitive {primitive!r}; expected one of {', '.join(PRIMITIVES)}")
    spec = PRIMITIVES[primitive]
    defaults: dict[str, Any] = {
        "count": spec.default_count if spec.count else None,
        "side": spec.sides[0] if spec.sides else None,
        "direction": spec.directions[0] if spec.directions else None,
        "angle": 90 if 90 in spec.angles else (spec.angles[0] if spec.angles else None),
    }
    seg = Segment(primitive=primitive, **{**defaults, **modifiers})
    seg.validate()
    return seg


def segment_seconds(seg: Segment) -> float:
    """Nominal duration of a segment; the animator varies it per clip by a few percent."""
    spec = seg.spec
    units = seg.count if spec.count else 0
    seconds = spec.fixed_seconds + spec.unit_seconds * units
    if spec.angles:
        seconds *= 0.7 + 0.3 * (seg.angle or 90) / 90
    return seconds / SPEED_FACTOR[seg.speed]


@dataclass(frozen=True)
class Program:
    segments: tuple[Segment, ...] = field(default_factory=tuple)

    def validate(self) -> None:
        if not 1 <= len(self.segments) <= MAX_SEGMENTS:
            raise ProgramError(f"program: expected 1..{MAX_SEGMENTS} segments, got {len(self.segments)}")
        for i, seg in enumerate(self.segments):
            seg.validate(f"segments[{i}]")
            if seg.spec.terminal and i < len(self.segments) - 1:
                raise ProgramError(f"segments[{i}]: {seg.primitive} ends seated on the floor; it can only come last")
        frames = self.nominal_frames()
        if frames > MAX_FRAMES:
            raise ProgramError(
                f"program {self.key()}: lasts {frames} frames at {FPS:g} fps, longer than the "
                f"{MAX_FRAMES}-frame limit of a HumanML3D clip; use fewer segments, counts or a faster speed"
            )

    def nominal_frames(self) -> int:
        """Joint frames of the clip at nominal timing, padded so its features (one frame fewer) reach the
        dataset's 40-frame minimum."""
        seconds = IDLE_SECONDS + sum(segment_seconds(s) for s in self.segments)
        return max(MIN_FRAMES + 1, round(seconds * FPS))

    def key(self) -> str:
        return " > ".join(s.key() for s in self.segments)

    @property
    def primitives(self) -> tuple[str, ...]:
        return tuple(s.primitive for s in self.segments)

    def to_dict(self) -> dict[str, Any]:
        return {"segments": [s.to_dict() for s in self.segments]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> Program:
        if not isinstance(data, dict) or set(data) != {"segments"} or not isinstance(data["segments"], list):
            raise ProgramError(f"program: expected an object {{'segments': [...]}}, got {data!r}")
        segments = []
        allowed = {"primitive", "speed", "count", "side", "direction", "angle", "amplitude"}
        for i, raw in enumerate(data["segments"]):
            if not isinstance(raw, dict) or not isinstance(raw.get("primitive"), str):
                raise ProgramError(f"segments[{i}]: expected an object with a 'primitive' name, got {raw!r}")
            unknown = set(raw) - allowed
            if unknown:
                raise ProgramError(f"segments[{i}]: unknown field(s) {sorted(unknown)}; allowed {sorted(allowed)}")
            segments.append(Segment(**raw))
        program = cls(tuple(segments))
        program.validate()
        return program

    @classmethod
    def from_json(cls, text: str) -> Program:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProgramError(f"program: not valid JSON ({e})") from e
        return cls.from_dict(data)


def program(*segments: Segment) -> Program:
    """A validated program, e.g. ``program(make_segment('walk'), make_segment('jump', count=2))``."""
    p = Program(tuple(segments))
    p.validate()
    return p
