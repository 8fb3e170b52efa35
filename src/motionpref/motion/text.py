"""HumanML3D / KIT-ML caption files: ``texts/<id>.txt``, one caption a line.

A line is ``caption#word/POS word/POS ...#start#end``: the raw caption, its spaCy tokens (lemma and
universal POS tag), and the span in seconds the caption describes. ``0.0#0.0`` (or ``nan``) means the
whole clip; the original release writes ``nan`` for some spans and its loaders read ``nan`` as ``0.0``.

The POS vocabulary and the "very important" word lists are those of the T2M evaluator's
``utils/word_vectorizer.py`` (Guo et al. 2022), which one-hot encodes each token's POS for the
text encoder and overrides the tag of a few motion words.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from motionpref.io import write_text

POS_ENUMERATOR: dict[str, int] = {
    "VERB": 0, "NOUN": 1, "DET": 2, "ADP": 3, "NUM": 4, "AUX": 5, "PRON": 6, "ADJ": 7, "ADV": 8,
    "Loc_VIP": 9, "Body_VIP": 10, "Obj_VIP": 11, "Act_VIP": 12, "Desc_VIP": 13, "OTHER": 14,
}  # fmt: skip

# Verbatim from the original, duplicate "dance" included; insertion order is the override order.
VIP_WORDS: dict[str, tuple[str, ...]] = {
    "Loc_VIP": ("left", "right", "clockwise", "counterclockwise", "anticlockwise", "forward", "back",
                "backward", "up", "down", "straight", "curve"),
    "Body_VIP": ("arm", "chin", "foot", "feet", "face", "hand", "mouth", "leg", "waist", "eye", "knee",
                 "shoulder", "thigh"),
    "Obj_VIP": ("stair", "dumbbell", "chair", "window", "floor", "car", "ball", "handrail", "baseball",
                "basketball"),
    "Act_VIP": ("walk", "run", "swing", "pick", "bring", "kick", "put", "squat", "throw", "hop", "dance",
                "jump", "turn", "stumble", "dance", "stop", "sit", "lift", "lower", "raise", "wash", "stand",
                "kneel", "stroll", "rub", "bend", "balance", "flap", "jog", "shuffle", "lean", "rotate",
                "spin", "spread", "climb"),
    "Desc_VIP": ("slowly", "carefully", "fast", "careful", "slow", "quickly", "happy", "angry", "sad",
                 "happily", "angrily", "sadly"),
}  # fmt: skip


def pos_index(word: str, pos: str, in_vocab: bool = True) -> int:
    """Index in ``POS_ENUMERATOR`` the T2M word vectorizer gives a token ``word/pos``.

    A VIP word takes its list's category whatever its tag; an unknown tag is OTHER; a word missing
    from the GloVe vocabulary (``in_vocab=False``, the vectorizer then uses ``unk``) is OTHER too.
    """
    if not in_vocab:
        return POS_ENUMERATOR["OTHER"]
    for category, words in VIP_WORDS.items():
        if word in words:
            return POS_ENUMERATOR[category]
    return POS_ENUMERATOR.get(pos, POS_ENUMERATOR["OTHER"])


class CaptionFormatError(ValueError):
    """A caption line or caption that does not follow ``caption#word/POS ...#start#end``."""


def _check_token(token: str) -> None:
    word, sep, pos = token.rpartition("/")
    if not sep or not word or not pos or "#" in token or any(c.isspace() for c in token):
        raise CaptionFormatError(f"token {token!r} is not of the form word/POS")


@dataclass
class Caption:
    text: str
    tokens: list[str] = field(default_factory=list)  # "word/POS"
    start: float = 0.0  # seconds; nan reads as 0.0
    end: float = 0.0

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise CaptionFormatError("empty caption text")
        if "\n" in self.text:
            raise CaptionFormatError(f"caption text may not contain a newline: {self.text!r}")
        for token in self.tokens:
            _check_token(token)
        for name in ("start", "end"):
            value = getattr(self, name)
            if math.isinf(value) or (not math.isnan(value) and value < 0):
                raise CaptionFormatError(f"{name} must be a non-negative number of seconds or nan, got {value}")

    @property
    def words(self) -> list[str]:
        return [t.rpartition("/")[0] for t in self.tokens]

    @property
    def pos_tags(self) -> list[str]:
        return [t.rpartition("/")[2] for t in self.tokens]

    @property
    def span(self) -> tuple[float, float]:
        """(start, end) in seconds with nan read as 0.0, as the original loaders do."""
        return (0.0 if math.isnan(self.start) else self.start, 0.0 if math.isnan(self.end) else self.end)

    @property
    def is_whole_clip(self) -> bool:
        return self.span == (0.0, 0.0)

    def frame_span(self, fps: float) -> tuple[int, int]:
        """Frames ``[int(start*fps), int(end*fps))`` of a spanned caption (truncating, as the original)."""
        start, end = self.span
        return int(start * fps), int(end * fps)


def parse_caption_line(line: str, path: str | os.PathLike | None = None, lineno: int | None = None) -> Caption:
    """One ``caption#tokens#start#end`` line; errors name ``path:lineno`` when given."""
    where = f"{path if path is not None else '<line>'}" + (f":{lineno}" if lineno is not None else "")
    stripped = line.strip()
    # rsplit: only the caption could hold a '#', the last three fields never do.
    parts = stripped.rsplit("#", 3)
    if len(parts) != 4:
        raise CaptionFormatError(
            f"{where}: expected 4 '#'-separated fields caption#word/POS ...#start#end, got {len(parts)}: {stripped!r}"
        )
    text, tokens, start_s, end_s = parts
    try:
        start, end = float(start_s), float(end_s)
    except ValueError:
        raise CaptionFormatError(
            f"{where}: start/end must be numbers of seconds (or nan), got {start_s!r} and {end_s!r}"
        ) from None
    try:
        return Caption(text=text, tokens=tokens.split(), start=start, end=end)
    except CaptionFormatError as err:
        raise CaptionFormatError(f"{where}: {err}") from None


def _format_seconds(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def format_caption_line(caption: Caption) -> str:
    """The line (without newline) that ``parse_caption_line`` reads back into ``caption``."""
    if "#" in caption.text:
        # The original loaders split on every '#', so such a line would break them.
        raise CaptionFormatError(f"caption text may not contain '#': {caption.text!r}")
    return "#".join(
        (caption.text, " ".join(caption.tokens), _format_seconds(caption.start), _format_seconds(caption.end))
    )


def read_text_file(path: str | os.PathLike) -> list[Caption]:
    """All captions of a ``texts/<id>.txt`` file; blank lines are skipped."""
    with open(path, encoding="utf-8") as f:
        return [parse_caption_line(line, path=path, lineno=i) for i, line in enumerate(f, start=1) if line.strip()]


def write_text_file(path: str | os.PathLike, captions: Iterable[Caption]) -> None:
    lines = [format_caption_line(c) for c in captions]
    if not lines:
        raise CaptionFormatError(f"{path}: refusing to write a caption file with no captions")
    write_text(path, "\n".join(lines) + "\n")


_MIRROR_WORDS = {
    "left": "right", "right": "left", "leftward": "rightward", "rightward": "leftward",
    "leftwards": "rightwards", "rightwards": "leftwards",
    "clockwise": "counterclockwise", "counterclockwise": "clockwise", "anticlockwise": "clockwise",
}  # fmt: skip
_MIRROR_RE = re.compile(r"\b(" + "|".join(sorted(_MIRROR_WORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE)


def _mirror_word(word: str) -> str:
    other = _MIRROR_WORDS.get(word.lower())
    if other is None:
        return word
    return other.capitalize() if word[:1].isupper() else other


def mirror_caption(caption: Caption) -> Caption:
    """The caption of the left-right mirrored clip (HumanML3D's ``M`` clips swap sides in their texts)."""
    text = _MIRROR_RE.sub(lambda m: _mirror_word(m.group(0)), caption.text)
    tokens = []
    for token in caption.tokens:
        word, _, pos = token.rpartition("/")
        tokens.append(f"{_mirror_word(word)}/{pos}")
    return Caption(text=text, tokens=tokens, start=caption.start, end=caption.end)
