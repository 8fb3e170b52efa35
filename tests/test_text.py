from __future__ import annotations

import math

import pytest

from motionpref.motion.text import (
    POS_ENUMERATOR,
    VIP_WORDS,
    Caption,
    CaptionFormatError,
    format_caption_line,
    mirror_caption,
    parse_caption_line,
    pos_index,
    read_text_file,
    write_text_file,
)

# A line as the HumanML3D release writes it (texts/000000.txt style).
REAL_LINE = (
    "a man kicks something or someone with his left leg.#a/DET man/NOUN kick/VERB something/PRON "
    "or/CCONJ someone/PRON with/ADP his/DET left/ADJ leg/NOUN#0.0#0.0"
)


def test_parse_real_line():
    c = parse_caption_line(REAL_LINE)
    assert c.text == "a man kicks something or someone with his left leg."
    assert c.tokens[:3] == ["a/DET", "man/NOUN", "kick/VERB"]
    assert c.words[-2:] == ["left", "leg"]
    assert c.pos_tags[-2:] == ["ADJ", "NOUN"]
    assert (c.start, c.end) == (0.0, 0.0)
    assert c.is_whole_clip


def test_spans_and_nan():
    spanned = parse_caption_line("a person jumps.#a/DET person/NOUN jump/VERB#2.5#7.03")
    assert not spanned.is_whole_clip
    # int() truncation as the original loader: 7.03 * 20 = 140.6 -> 140
    assert spanned.frame_span(20.0) == (50, 140)
    whole = parse_caption_line("a person jumps.#a/DET person/NOUN jump/VERB#nan#nan")
    assert math.isnan(whole.start) and whole.is_whole_clip
    half = parse_caption_line("a person jumps.#a/DET person/NOUN jump/VERB#nan#3.0")
    assert half.span == (0.0, 3.0) and half.frame_span(20.0) == (0, 60)


@pytest.mark.parametrize(
    "caption",
    [
        Caption("a person walks.", ["a/DET", "person/NOUN", "walk/VERB"], 0.0, 0.0),
        Caption("someone spins around", ["someone/PRON", "spin/VERB", "around/ADV"], 1.25, 4.5),
        Caption("nothing tagged", [], float("nan"), float("nan")),
    ],
)
def test_format_parse_roundtrip(caption: Caption):
    line = format_caption_line(caption)
    assert line.count("#") == 3
    back = parse_caption_line(line)
    assert back.text == caption.text and back.tokens == caption.tokens
    for a, b in ((back.start, caption.start), (back.end, caption.end)):
        assert a == b or (math.isnan(a) and math.isnan(b))


def test_format_uses_the_release_number_style():
    assert format_caption_line(Caption("x", ["x/NOUN"], 0.0, 0.0)).endswith("#0.0#0.0")
    assert format_caption_line(Caption("x", ["x/NOUN"], float("nan"), 2.0)).endswith("#nan#2.0")


def test_file_roundtrip_skips_blank_lines(tmp_path):
    caps = [parse_caption_line(REAL_LINE), Caption("a person jumps.", ["jump/VERB"], 1.0, 3.0)]
    path = tmp_path / "texts" / "000001.txt"
    write_text_file(path, caps)
    text = path.read_text()
    assert text == format_caption_line(caps[0]) + "\n" + format_caption_line(caps[1]) + "\n"
    path.write_text(text + "\n\n")
    assert read_text_file(path) == caps
    assert [p.name for p in path.parent.iterdir()] == ["000001.txt"]  # no temp file left behind


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("a person walks#a/DET person/NOUN walk/VERB#0.0", "expected 4 '#'-separated fields"),
        ("a person walks#a/DET person/NOUN#zero#0.0", "start/end must be numbers"),
        ("a person walks#a/DET person walk/VERB#0.0#0.0", "'person' is not of the form word/POS"),
        ("#a/DET#0.0#0.0", "empty caption text"),
        ("a person walks#a/DET#-1.0#2.0", "non-negative"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, needle):
    path = tmp_path / "000007.txt"
    path.write_text(REAL_LINE + "\n" + line + "\n")
    with pytest.raises(CaptionFormatError) as err:
        read_text_file(path)
    assert f"{path}:2:" in str(err.value)
    assert needle in str(err.value)


def test_refuses_unwritable_captions(tmp_path):
    with pytest.raises(CaptionFormatError, match="'#'"):
        format_caption_line(Caption("use # sign", ["use/VERB"]))
    with pytest.raises(CaptionFormatError, match="not of the form word/POS"):
        Caption("a person walks", ["a person/NOUN"])
    with pytest.raises(CaptionFormatError, match="no captions"):
        write_text_file(tmp_path / "empty.txt", [])
    assert not (tmp_path / "empty.txt").exists()


def test_pos_enumerator_is_the_15_way_t2m_vocabulary():
    assert sorted(POS_ENUMERATOR.values()) == list(range(15))
    assert POS_ENUMERATOR["Loc_VIP"] == 9 and POS_ENUMERATOR["OTHER"] == 14
    assert len(VIP_WORDS["Act_VIP"]) == 35  # the original lists "dance" twice


def test_pos_index_applies_the_vip_override():
    assert pos_index("man", "NOUN") == 1
    assert pos_index("left", "ADJ") == 9  # VIP beats the tagger's ADJ
    assert pos_index("kick", "VERB") == 12
    assert pos_index("slowly", "ADV") == 13
    assert pos_index("or", "CCONJ") == 14  # a tag outside the vocabulary
    assert pos_index("walk", "VERB", in_vocab=False) == 14  # unknown words are OTHER, VIP or not
    for category, words in VIP_WORDS.items():
        for word in words:
            assert pos_index(word, "NOUN") == POS_ENUMERATOR[category], word


def test_mirror_caption_swaps_sides():
    c = Caption(
        "A person waves his Left hand, then turns clockwise to the right; leftover",
        ["person/NOUN", "wave/VERB", "left/ADJ", "hand/NOUN", "turn/VERB", "clockwise/ADV", "right/NOUN"],
        1.0,
        2.0,
    )
    m = mirror_caption(c)
    assert m.text == "A person waves his Right hand, then turns counterclockwise to the left; leftover"
    assert m.words == ["person", "wave", "right", "hand", "turn", "counterclockwise", "left"]
    assert m.pos_tags == c.pos_tags and (m.start, m.end) == (1.0, 2.0)
    assert mirror_caption(m) == c
