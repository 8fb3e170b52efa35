from __future__ import annotations

import re

import numpy as np
import pytest

from motionpref.motion.text import POS_ENUMERATOR, format_caption_line, mirror_caption, parse_caption_line
from motionpref.synth.captions import caption_text, captions_for, mirror_program, tag_text, vocabulary
from motionpref.synth.programs import make_segment, program
from motionpref.synth.sampling import sample_program

NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()
# Words a reader takes as saying a modifier; written by hand, independent of the grammar's tables.
SPEED_CUES = {
    "slow": {"slowly", "slow", "leisurely", "unhurriedly", "strolls", "strolling", "ambles", "ambling",
             "saunters", "sauntering", "jogs", "jogging"},
    "fast": {"quickly", "fast", "rapidly", "swiftly", "briskly", "quick", "rapid", "swift", "brisk", "hurry",
             "hurries", "hurrying", "rushes", "rushing", "sprints", "sprinting", "dashes", "dashing", "races",
             "racing", "spins", "spinning", "hastily"},
}  # fmt: skip
AMPLITUDE_CUES = {
    "small": {"small", "short", "tiny", "little", "slightly", "lightly", "light", "gently", "gentle",
              "softly", "soft", "shallow", "half", "slight", "partway", "halfway", "distance", "shoulder",
              "underhand", "briefly", "low"},
    "large": {"long", "big", "large", "wide", "high", "powerfully", "tall", "far", "hard", "powerful",
              "strong", "deeply", "deep", "full", "widely", "vigorously", "energetically", "enthusiastically",
              "energetic", "vigorous", "overhead", "forcefully", "way", "above", "low"},
}  # fmt: skip
ANGLE_CUES = {45: {"forty"}, 90: {"ninety", "quarter"}, 135: {"thirty"}}


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text))


def unsaid_modifiers(seg, text: str) -> list[str]:
    """Modifiers of ``seg`` that a caption of it leaves out (a count of one may go unsaid)."""
    w = words_of(text)
    missing = []
    if seg.count is not None and seg.count > 1:
        said = NUMBERS[seg.count] in w or (seg.count == 2 and "twice" in w) or w & {"few", "several", "many"}
        missing += [] if said else ["count"]
    if seg.side is not None and seg.side not in w and not (seg.side == "both" and w & {"arms", "hands"}):
        missing.append("side")
    if seg.direction is not None:
        wise = "counterclockwise" if seg.direction == "left" else "clockwise"
        if not w & {seg.direction, wise, seg.direction + "ward"}:
            missing.append("direction")
    if seg.angle is not None and not w & ANGLE_CUES[seg.angle]:
        missing.append("angle")
    if seg.speed != "normal" and not w & SPEED_CUES[seg.speed]:
        missing.append("speed")
    if seg.amplitude != "normal":
        cues = AMPLITUDE_CUES[seg.amplitude]
        # "low" is a small kick or jump but a deep squat or bow.
        low_is = "large" if seg.primitive in ("squat", "bow") else "small"
        if not w & (cues - ({"low"} if low_is != seg.amplitude else set())):
            missing.append("amplitude")
    return missing


def test_captions_are_distinct_whole_clip_lines_in_the_humanml3d_format():
    p = program(make_segment("walk", count=4, speed="slow"), make_segment("jump", count=2))
    caps = captions_for(p, np.random.default_rng(0), n=5)
    assert len(caps) == 5 and len({c.text for c in caps}) == 5
    for c in caps:
        assert c.span == (0.0, 0.0) and c.text == c.text.lower() and "#" not in c.text
        assert parse_caption_line(format_caption_line(c)) == c
        assert all(w.isalpha() for w in c.words), c.tokens  # punctuation and numbers are not tokens
        assert {t for t in c.pos_tags} <= set(POS_ENUMERATOR) | {"CCONJ", "SCONJ", "PART", "INTJ"}


def test_every_modifier_is_said_in_every_caption_of_a_single_segment():
    rng = np.random.default_rng(1)
    failures = []
    for _ in range(400):
        p = sample_program(rng, max_segments=1)
        for c in captions_for(p, rng, 3):
            missing = unsaid_modifiers(p.segments[0], c.text)
            if missing:
                failures.append((p.key(), c.text, missing))
    assert failures == []


def test_each_segment_of_a_sequence_keeps_its_count_and_side():
    p = program(make_segment("kick", side="left", count=3), make_segment("wave", side="right", count=2))
    for c in captions_for(p, np.random.default_rng(2), 20):
        w = words_of(c.text)
        assert "three" in w and ("twice" in w or "two" in w) and {"left", "right"} <= w, c.text


def test_counts_are_words_and_angles_are_spelled_out():
    for kind, seg in (("count", make_segment("squat", count=4)), ("angle", make_segment("turn", angle=135))):
        for c in captions_for(program(seg), np.random.default_rng(3), 10):
            assert not re.search(r"\d", c.text)
            assert ("four" if kind == "count" else "thirty") in words_of(c.text), c.text


def test_tag_text_follows_humanml3d_tokenisation():
    assert tag_text("A man walks forward, then kicks with his left foot twice.") == [
        "A/DET", "man/NOUN", "walk/VERB", "forward/ADV", "then/ADV", "kick/VERB", "with/ADP", "his/DET",
        "left/ADJ", "foot/NOUN", "twice/ADV",
    ]  # fmt: skip
    assert tag_text("someone takes a few slow steps to the left") == [
        "someone/PRON", "take/VERB", "a/DET", "few/ADJ", "slow/ADJ", "step/NOUN", "to/ADP", "the/DET",
        "left/NOUN",
    ]  # fmt: skip
    assert tag_text("he does a high left kick and turns left 90 degrees") == [
        "he/PRON", "do/VERB", "a/DET", "high/ADJ", "left/ADJ", "kick/NOUN", "and/CCONJ", "turn/VERB",
        "left/ADV", "degree/NOUN",
    ]  # fmt: skip
    # hyphens are removed before tokenising and unknown words are OTHER, as the T2M vectorizer reads them
    assert tag_text("a full-body cartwheel") == ["a/DET", "fullbody/OTHER", "cartwheel/OTHER"]


def test_tag_text_reproduces_the_grammars_own_tokens():
    rng = np.random.default_rng(4)
    for _ in range(400):
        for c in captions_for(sample_program(rng), rng, 3):
            assert tag_text(c.text) == c.tokens, c.text


def test_mirrored_program_captions_are_the_mirrored_captions():
    rng = np.random.default_rng(5)
    for i in range(200):
        p = sample_program(rng)
        m = mirror_program(p)
        assert mirror_program(m) == p
        for a, b in zip(p.segments, m.segments, strict=True):
            assert (a.side, b.side) in {(None, None), ("both", "both"), ("left", "right"), ("right", "left")}
            assert (a.direction, b.direction) in {(None, None), ("left", "right"), ("right", "left")}
        originals = captions_for(p, np.random.default_rng(i), 3)
        assert captions_for(m, np.random.default_rng(i), 3) == [mirror_caption(c) for c in originals]


def test_mirror_swaps_the_side_in_the_text():
    p = program(make_segment("kick", side="left"), make_segment("turn", direction="left"))
    for c in captions_for(mirror_program(p), np.random.default_rng(6), 10):
        assert "left" not in words_of(c.text) and "counterclockwise" not in words_of(c.text), c.text


def test_vocabulary_has_hundreds_of_words_and_covers_the_captions():
    rng = np.random.default_rng(7)
    seen: set[str] = set()
    for _ in range(600):
        for c in captions_for(sample_program(rng), rng, 3):
            seen |= words_of(c.text)
    assert seen <= vocabulary()
    assert len(seen) >= 250 and len(vocabulary()) >= 350


def test_captions_are_deterministic_given_the_rng():
    p = program(make_segment("lunge", side="right", amplitude="large"))
    assert captions_for(p, np.random.default_rng(8)) == captions_for(p, np.random.default_rng(8))
    assert caption_text(p, np.random.default_rng(8)) == captions_for(p, np.random.default_rng(8), 1)[0].text


def test_bad_arguments_are_rejected():
    p = program(make_segment("clap"))
    with pytest.raises(ValueError, match="n must be >= 1"):
        captions_for(p, np.random.default_rng(0), n=0)
