"""Preference judgments: the record, strict line parsing, and durable append-only label files.

One label file (`data/prefs/labels/<labeler>.jsonl`) holds one JSON object a line, exactly the fields of
:class:`Judgment`. Files are only ever appended to (:class:`LabelWriter`); nothing here rewrites them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

Choice = Literal["a", "b", "skip"]
Degree = Literal["much_better", "better", "slightly_better", "negligible"]
Source = Literal["human", "simulated", "ai", "import"]

# Weakest first: resolution rules break degree ties towards the weaker degree.
DEGREES: tuple[Degree, ...] = ("negligible", "slightly_better", "better", "much_better")


class LabelError(ValueError):
    """A label line that is not a valid judgment; the message names `file:line` and the reason."""

    def __init__(self, path: str | Path, lineno: int, reason: str) -> None:
        self.path = str(path)
        self.lineno = lineno
        self.reason = reason
        super().__init__(f"{self.path}:{lineno}: {reason}")


def parse_timestamp(value: str) -> datetime:
    """An ISO 8601 timestamp in UTC (`...Z` or `...+00:00`) as an aware datetime; ValueError otherwise."""
    # Python 3.10's fromisoformat does not read the "Z" suffix.
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
    if stamp.utcoffset() is None:
        raise ValueError(f"timestamp {value!r} has no time zone (expected UTC, e.g. 2024-05-01T12:00:00Z)")
    if stamp.utcoffset().total_seconds() != 0:
        raise ValueError(f"timestamp {value!r} is not in UTC")
    return stamp


def encodable(text: str) -> str:
    """`text` itself if UTF-8 can encode it; ValueError naming its first lone surrogate otherwise.

    JSON's `\\ud800` escape decodes to such a surrogate, which no UTF-8 file (a label line, a parquet string)
    can hold: accepting one only moves the failure to whatever writes it next.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"holds the lone surrogate {text[e.start]!r} at index {e.start}, which UTF-8 cannot encode"
        ) from None
    return text


def utc_now() -> str:
    """The current time as the `created_at` string labelers write."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Judgment(BaseModel):
    """One labeler's judgment of one pair (fields and values as in PREFS.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    pair_id: str
    prompt: str
    choice: Choice
    degree: Degree | None
    labeler: str
    source: Source
    created_at: str

    @field_validator("pair_id", "labeler")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("pair_id", "prompt", "labeler")
    @classmethod
    def _utf8(cls, value: str) -> str:
        return encodable(value)

    @field_validator("created_at")
    @classmethod
    def _utc_timestamp(cls, value: str) -> str:
        parse_timestamp(value)
        return value

    @model_validator(mode="after")
    def _degree_matches_choice(self) -> Judgment:
        if self.choice == "skip" and self.degree is not None:
            raise ValueError(f"degree must be null when choice is 'skip', got {self.degree!r}")
        if self.choice != "skip" and self.degree is None:
            raise ValueError(f"degree is null but choice is {self.choice!r} (null only with 'skip')")
        return self

    @property
    def timestamp(self) -> datetime:
        return parse_timestamp(self.created_at)

    def to_line(self) -> bytes:
        return (self.model_dump_json() + "\n").encode("utf-8")


def _describe(error: ValidationError) -> str:
    parts = []
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            parts.append(f"missing field {field!r}")
        elif err["type"] == "extra_forbidden":
            parts.append(f"unexpected field {field!r}")
        elif not field:
            parts.append(msg)
        elif err["type"] == "value_error":
            parts.append(f"field {field!r}: {msg}")
        else:
            parts.append(f"field {field!r}: {msg} (got {err['input']!r})")
    return "; ".join(parts)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate field {key!r}")
        seen[key] = value
    return seen


def parse_judgment(line: bytes | str, path: str | Path, lineno: int) -> Judgment:
    """Parse one label line; any problem is a :class:`LabelError` naming `path:lineno` and the reason."""
    if isinstance(line, bytes):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LabelError(path, lineno, f"not valid UTF-8 (byte {line[e.start]:#04x} at {e.start})") from None
    else:
        text = line
    try:
        return _judgment_of(text, path, lineno)
    except RecursionError:
        # json's decoder recurses per nesting level (and so do repr and pydantic on what it returns)
        raise LabelError(path, lineno, "JSON nested too deeply to parse") from None


def _judgment_of(text: str, path: str | Path, lineno: int) -> Judgment:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise LabelError(path, lineno, f"malformed JSON: {e.msg} at column {e.colno}") from None
    except ValueError as e:
        raise LabelError(path, lineno, str(e)) from None
    if not isinstance(data, dict):
        raise LabelError(path, lineno, f"expected a JSON object, got {type(data).__name__}")
    try:
        return Judgment.model_validate(data)
    except ValidationError as e:
        raise LabelError(path, lineno, _describe(e)) from None


def scan_labels(path: str | Path) -> Iterator[tuple[int, bytes, Judgment | LabelError]]:
    """Every non-blank line of a label file as (line number, raw bytes, judgment or the error it raised).

    Blank lines are skipped: :class:`LabelWriter` may leave one when it closes a crashed writer's last line.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield lineno, raw, parse_judgment(raw.rstrip(b"\r\n"), path, lineno)
            except LabelError as e:
                if not raw.endswith(b"\n"):
                    e = LabelError(path, lineno, f"truncated last line (no newline at end of file): {e.reason}")
                yield lineno, raw, e


def read_labels(path: str | Path) -> Iterator[tuple[int, Judgment]]:
    """(line number, judgment) for each line; raises :class:`LabelError` at the first bad line."""
    for lineno, _, item in scan_labels(path):
        if isinstance(item, LabelError):
            raise item
        yield lineno, item


def is_torn(raw: bytes) -> bool:
    """Whether a line is the start of a JSON object cut off mid-write (a writer killed during its append)."""
    text = raw.strip()
    if not text.startswith(b"{"):
        return False
    try:
        json.loads(text)
    except RecursionError:
        return False  # too deep to be any writer's line
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        # JSON cut short fails at its very end or inside its last string; other damage fails mid-line
        return isinstance(e, json.JSONDecodeError) and (
            e.msg.startswith("Unterminated string") or e.pos >= len(e.doc.rstrip()) - 1
        )
    return False


def labeled_pair_ids(path: str | Path) -> set[str]:
    """Pair ids already judged in a label file (empty if it does not exist yet), for resuming a labeler.

    A torn line (a writer killed mid-append, whether or not a later append ended it with a newline) is
    ignored: that judgment was never acknowledged. Any other bad line raises :class:`LabelError`.
    """
    if not Path(path).exists():
        return set()
    ids = set()
    for _, raw, item in scan_labels(path):
        if isinstance(item, LabelError):
            if raw.endswith(b"\n") and not is_torn(raw):
                raise item
            continue
        ids.add(item.pair_id)
    return ids


class LabelWriter:
    """Appends judgments to a label file, durably, one line each; never rewrites or truncates it.

    Safe with several processes appending to the same or different files: the file is opened with O_APPEND
    and each line (newline included) goes out in a single write(), so the kernel moves the offset to the end
    and writes the whole line atomically with respect to other appenders: lines never interleave.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, judgment: Judgment) -> None:
        """Append one judgment; returns only after the line is on disk (fsync)."""
        if self._fd is None:
            raise ValueError(f"{self.path}: writer is closed")
        data = judgment.to_line()
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            # A writer killed mid-line left no newline: end that line so ours stays whole (readers skip the
            # blank line this leaves if another process appended in between).
            data = b"\n" + data
        # os.write is unbuffered, so there is nothing to flush before the fsync.
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes); is the disk full?")
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LabelWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def append_judgment(path: str | Path, judgment: Judgment) -> None:
    """Append one judgment durably (open, write, fsync, close)."""
    with LabelWriter(path) as writer:
        writer.write(judgment)
