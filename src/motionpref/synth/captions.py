"""Captions of action programs, written like HumanML3D's crowd-sourced descriptions.

A small generative grammar turns a ``Program`` into varied English sentences: a subject ("a person",
"the figure", ...), one verb phrase per segment with synonyms for the primitive and words for every
modifier (counts as words, sides, directions, angles, speed and amplitude adverbs or adjectives), and a
sentence shape that orders the segments ("..., then ...", "after walking ..., a man ...", "... before
jumping ..."). Every count, side, direction and angle is said in every caption (a step count is
occasionally approximate, "a few steps", and a single repetition may go unsaid, "kicks with the left
foot"); a ``normal`` speed or amplitude is usually left unsaid.

Tokens follow HumanML3D's ``text_process.py``: hyphens removed, only alphabetic tokens kept, nouns and
verbs as lemmas (except "left"), other words as written, each with its universal POS tag as spaCy 2 gave
it (possessives are ``DET``, particles like "down" are ``ADP``). The grammar knows each word's tag and
lemma, so it writes the tokens itself: words whose tag depends on context carry it in the templates
(``kick/NOUN``) and the lexicon gives the rest. ``tag_text`` tags arbitrary text with the same lexicon and
a few context rules, and reproduces the grammar's own tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from motionpref.motion.text import Caption
from motionpref.synth.programs import Program, Segment

# ------------------------------------------------------------------------------------------------ lexicon

_VERBS = """
walk run jog sprint dash race stroll amble saunter hurry rush step sidestep shuffle move retreat circle
turn rotate pivot spin jump hop leap bounce kick squat crouch bend lunge sit lower go take wave raise lift
put reach clap punch jab throw toss pitch bow do perform make give stand lead use face follow
""".split()
_ING_DOUBLE = {"run", "jog", "step", "sidestep", "sit", "hop", "clap", "squat", "put", "spin", "jab"}
_NOUNS = """
person man woman figure human character individual actor performer dancer
step stride pace speed hurry kick jump hop leap squat lunge wave punch jab throw bow clap turn circle
time degree foot leg hand arm fist knee waist head shoulder side ball object motion position seat
direction way distance spot place line air height reverse
""".split()
_NOUN_PLURAL = {"man": "men", "woman": "women", "foot": "feet", "person": "people"}

_CLOSED: dict[str, str] = {
    # determiners (spaCy 2 tags possessive pronouns DET, as HumanML3D's "to/ADP his/DET left/NOUN")
    **dict.fromkeys("a an the both his her their this each another all".split(), "DET"),
    **dict.fromkeys("with to in on at by for into from over after before of up down out around across "
                    "toward as above".split(), "ADP"),
    **dict.fromkeys("someone somebody he she they himself herself themselves something it them that".split(),
                    "PRON"),
    **dict.fromkeys("one two three four five six seven eight nine ten eleven twelve thirty forty eighty "
                    "ninety hundred".split(), "NUM"),
    "and": "CCONJ", "while": "SCONJ", "is": "AUX", "hello": "INTJ",
    **dict.fromkeys("slow quick rapid swift brisk leisurely steady normal moderate regular average small "
                    "little tiny short big large long light gentle soft powerful strong deep shallow half "
                    "full slight wide tall single few several many quarter opposite imaginary energetic "
                    "vigorous seated possible".split(), "ADJ"),
    **dict.fromkeys("slowly quickly rapidly swiftly briskly hastily unhurriedly steadily gently lightly "
                    "softly slightly widely vigorously energetically enthusiastically powerfully forcefully "
                    "deeply partway halfway far forwards backwards sideways ahead together again then once "
                    "twice first finally afterwards back forth overhead underhand very just only leftward "
                    "rightward briefly next".split(), "ADV"),
}  # fmt: skip
# Adjective before a noun ("a high kick"), adverb otherwise ("kicks high"); left/right are also nouns
# after a determiner ("to the left", "to his left").
_ADJ_ADV = frozenset("left right forward backward fast high low hard straight clockwise counterclockwise".split())
_SIDE_NOUNS = frozenset({"left", "right"})
# Nouns that modify a following noun ("a ninety degree turn", "side steps").
_COMPOUND_MODIFIERS = frozenset({"degree", "side"})


def _add_s(word: str) -> str:
    """The regular -s form of a noun (plural) or a verb (third person singular)."""
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _third_person(lemma: str) -> str:
    return lemma + "es" if lemma in ("do", "go") else _add_s(lemma)


def _gerund(lemma: str) -> str:
    if lemma in _ING_DOUBLE:
        return lemma + lemma[-1] + "ing"
    if lemma.endswith("e") and not lemma.endswith(("ee", "ye", "oe")):
        return lemma[:-1] + "ing"
    return lemma + "ing"


def _plural(noun: str) -> str:
    return _NOUN_PLURAL.get(noun) or _add_s(noun)


@dataclass(frozen=True)
class _Forms:
    s: str
    ing: str


_VERB_FORMS = {v: _Forms(_third_person(v), _gerund(v)) for v in _VERBS}
_VERB_LEMMA = {form: v for v, f in _VERB_FORMS.items() for form in (v, f.s, f.ing)} | {"followed": "follow"}
_NOUN_LEMMA = {form: n for n in _NOUNS for form in (n, _plural(n))}
_NOUN_VERB = frozenset(_VERB_LEMMA) & frozenset(_NOUN_LEMMA)
_NOUN_CAPABLE = frozenset(_NOUN_LEMMA)
# Adjectives that can stand between a word and its noun; quantifiers start a new phrase ("forward several
# steps": "forward" is still an adverb).
_QUANTIFIERS = frozenset({"few", "several", "many", "single"})
_ADJ_CAPABLE = (frozenset(w for w, t in _CLOSED.items() if t == "ADJ") | _ADJ_ADV) - _QUANTIFIERS


def vocabulary() -> set[str]:
    """Every word the grammar (and ``tag_text``'s lexicon) knows, in all its inflected forms."""
    return set(_VERB_LEMMA) | set(_NOUN_LEMMA) | set(_CLOSED) | set(_ADJ_ADV)


def _token(word: str, pos: str) -> str:
    """HumanML3D's token: nouns and verbs as lemmas (but never "left"), other words as written."""
    lower = word.lower()
    if pos == "VERB" and lower != "left":
        return f"{_VERB_LEMMA.get(lower, lower)}/{pos}"
    if pos == "NOUN" and lower != "left":
        return f"{_NOUN_LEMMA.get(lower, lower)}/{pos}"
    return f"{word}/{pos}"


def _default_pos(word: str) -> str:
    """The tag of a word whose tag does not depend on context; a grammar bug if it does or is unknown."""
    if word in _NOUN_VERB or word in _ADJ_ADV:
        raise ValueError(f"captions grammar: {word!r} needs an explicit tag (noun/verb or adj/adv)")
    if word in _CLOSED:
        return _CLOSED[word]
    if word in _VERB_LEMMA:
        return "VERB"
    if word in _NOUN_LEMMA:
        return "NOUN"
    raise ValueError(f"captions grammar: {word!r} is not in the lexicon")


# ------------------------------------------------------------------------------------------------ tagging

_TOKEN_RE = re.compile(r"\d+\w*|[A-Za-z]+(?:'[A-Za-z]+)*|[^\w\s]")


def _split_words(text: str) -> list[str]:
    """Tokens of a caption as spaCy splits them, approximately: words, numbers, punctuation marks."""
    out = []
    for tok in _TOKEN_RE.findall(text.replace("-", "")):
        # A clitic ("person's", "don't") is a token of its own in spaCy, and not alphabetic.
        out.append(tok.split("'")[0] if "'" in tok else tok)
    return out


def _is_noun_ahead(words: list[str], i: int) -> bool:
    """Whether a noun follows position i, possibly after adjectives ("a high left kick", "fast throwing
    motions")."""
    j = i + 1
    while j < len(words):
        w = words[j].lower()
        if w in _NOUN_CAPABLE:
            return True
        if w not in _ADJ_CAPABLE and not (w.endswith("ing") and w in _VERB_LEMMA):
            return False
        j += 1
    return False


def tag_text(text: str) -> list[str]:
    """HumanML3D ``word/POS`` tokens of any caption, from the grammar's lexicon and context rules.

    Hyphens are removed and only alphabetic tokens kept (as the original ``process_text``); a noun/verb
    word is a noun after a determiner, number or adjective and a verb otherwise; a word such as "left" or
    "high" is an adjective before a noun, "left"/"right" a noun after a determiner, else an adverb;
    words the lexicon lacks are ``word/OTHER``.
    """
    words = _split_words(text)
    tokens: list[str] = []
    prev_pos, prev_word = "PUNCT", ""
    for i, word in enumerate(words):
        if not word.isalpha():
            prev_pos, prev_word = "PUNCT", word
            continue
        lower = word.lower()
        if lower in _NOUN_VERB:
            noun = prev_pos in ("DET", "NUM", "ADJ") or prev_word in _COMPOUND_MODIFIERS
            pos = "NOUN" if noun else "VERB"
        elif lower in _ADJ_ADV:
            if _is_noun_ahead(words, i):
                pos = "ADJ"
            elif lower in _SIDE_NOUNS and prev_pos == "DET":
                pos = "NOUN"
            else:
                pos = "ADV"
        elif lower in _CLOSED:
            pos = _CLOSED[lower]
        elif lower in _VERB_LEMMA:
            pos = "VERB"
        elif lower in _NOUN_LEMMA:
            pos = "NOUN"
        else:
            pos = "OTHER"
        tokens.append(_token(word, pos) if pos != "OTHER" else f"{word}/OTHER")
        prev_pos, prev_word = pos, lower
    return tokens


# ------------------------------------------------------------------------------------------------ grammar


def mirror_program(program: Program) -> Program:
    """The program of the left-right mirrored clip: sides and directions swapped, the rest kept."""
    swap = {"left": "right", "right": "left"}
    return Program(
        tuple(replace(s, side=swap.get(s.side, s.side), direction=swap.get(s.direction)) for s in program.segments)
    )


_NUM = dict(enumerate("zero one two three four five six seven eight nine ten eleven twelve".split()))
_ANGLE_WORDS = {
    45: ("forty five",),
    90: ("ninety",),
    135: ("one hundred thirty five", "one hundred and thirty five", "a hundred and thirty five"),
}
_ANGLE_ADJ = {
    45: ("forty five degree/NOUN",),
    90: ("ninety degree/NOUN", "quarter"),
    135: ("one hundred thirty five degree/NOUN",),
}

# Subjects: (words, gender) where gender picks the possessive, reflexive and pronoun.
_SUBJECTS: tuple[tuple[str, str, float], ...] = (
    ("a person", "n", 6.0), ("the person", "n", 2.0), ("a man", "m", 3.0), ("the man", "m", 1.0),
    ("a woman", "f", 1.5), ("the woman", "f", 0.6), ("someone", "n", 2.0), ("somebody", "n", 0.5),
    ("the figure", "n", 1.0), ("a figure", "n", 0.6), ("a human", "n", 0.6), ("the human", "n", 0.3),
    ("the character", "n", 0.8), ("a character", "n", 0.5), ("an individual", "n", 0.5),
    ("the individual", "n", 0.3), ("an actor", "n", 0.3), ("a performer", "n", 0.3), ("a dancer", "n", 0.2),
)  # fmt: skip
_POSSESSIVE = {"m": ("his",), "f": ("her",), "n": ("his", "their")}
_REFLEXIVE = {"his": "himself", "her": "herself", "their": "themselves"}

_SPEED_PRE = {"slow": ("slowly",), "fast": ("quickly", "rapidly", "swiftly", "hastily")}
_SPEED_POST = {
    "slow": ("slowly", "very slowly", "at a slow pace", "at a leisurely pace", "unhurriedly"),
    "fast": ("quickly", "fast/ADV", "rapidly", "swiftly", "briskly", "at a fast/ADJ pace", "at a quick pace",
             "in a hurry/NOUN", "very quickly"),
    "normal": ("at a normal pace", "at a steady pace", "at a moderate pace", "at a regular speed",
               "at an average speed", "steadily"),
}  # fmt: skip
_SPEED_ADJ = {"slow": ("slow", "leisurely"), "fast": ("quick", "fast/ADJ", "rapid", "swift", "brisk")}

# Amplitude per primitive: (adverbial phrases, adjectives for a noun of the action).
_Amp = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
_STEP_AMP: _Amp = {
    "small": (
        ("with small strides/NOUN", "with short strides/NOUN", "with tiny strides/NOUN"),
        ("small", "short", "tiny"),
    ),
    "large": (
        ("with long strides/NOUN", "with big strides/NOUN", "with large strides/NOUN", "with wide strides/NOUN"),
        ("long", "big", "large"),
    ),
}
_AMPLITUDE: dict[str, _Amp] = {
    "walk": _STEP_AMP,
    "walk_backward": _STEP_AMP,
    "run": {
        "small": (("with short strides/NOUN", "with small strides/NOUN"), ("short", "small")),
        "large": (("with long strides/NOUN", "with big strides/NOUN"), ("long", "big")),
    },
    "sidestep": {
        "small": (("with small steps/NOUN", "in short steps/NOUN"), ("small", "short")),
        "large": (
            ("with big steps/NOUN", "with wide steps/NOUN", "in wide steps/NOUN"),
            ("big", "wide", "large"),
        ),
    },
    "jump": {
        "small": (
            ("a little", "slightly", "lightly", "low/ADV", "just a little"),
            ("small", "little", "low/ADJ", "light"),
        ),
        "large": (("high/ADV", "very high/ADV", "powerfully"), ("big", "high/ADJ", "large", "tall")),
    },
    "jump_forward": {
        "small": (("a short distance", "a little way/NOUN", "just a little"), ("short", "small")),
        "large": (("far", "a long way/NOUN", "a long distance", "very far"), ("long", "big", "large")),
    },
    "kick": {
        "small": (("low/ADV", "gently", "lightly", "softly"), ("low/ADJ", "small", "gentle", "light")),
        "large": (
            ("high/ADV", "very high/ADV", "hard/ADV", "powerfully"),
            ("high/ADJ", "big", "powerful", "strong"),
        ),
    },
    "squat": {
        "small": (
            ("slightly", "partway", "a little", "only halfway"),
            ("shallow", "half", "small", "slight"),
        ),
        "large": (
            ("deeply", "all the way/NOUN down", "very low/ADV", "low/ADV"),
            ("deep", "full", "low/ADJ"),
        ),
    },
    "lunge": {
        "small": (("slightly", "a little", "only a little"), ("shallow", "short", "small")),
        "large": (("deeply", "very deeply", "far"), ("deep", "long", "big")),
    },
    "wave": {
        "small": (("gently", "slightly", "a little", "softly"), ("small", "gentle", "little")),
        "large": (
            ("widely", "vigorously", "energetically", "enthusiastically"),
            ("big", "wide", "large", "energetic", "vigorous"),
        ),
    },
    "raise_arms": {
        "small": (("slightly", "a little", "partway", "halfway", "to shoulder/NOUN height/NOUN"), ()),
        "large": (
            ("high/ADV", "all the way/NOUN up", "above {poss} head/NOUN", "overhead", "up high/ADV"),
            (),
        ),
    },
    "punch": {
        "small": (("lightly", "softly", "gently"), ("light", "soft", "small", "gentle")),
        "large": (("hard/ADV", "powerfully", "forcefully"), ("hard/ADJ", "powerful", "strong", "big")),
    },
    "throw": {
        "small": (("gently", "softly", "lightly", "underhand"), ("gentle", "soft", "light", "short")),
        "large": (
            ("hard/ADV", "forcefully", "far", "very far"),
            ("hard/ADJ", "powerful", "strong", "long", "big"),
        ),
    },
    "bow": {
        "small": (("slightly", "a little", "briefly"), ("small", "slight", "shallow", "short")),
        "large": (("deeply", "low/ADV", "very deeply"), ("deep", "low/ADJ", "big", "full")),
    },
}


@dataclass(frozen=True)
class _VP:
    """A verb phrase: coordinated verbs (lemma, words after it), then words, then modifiers."""

    verbs: tuple[tuple[str, str], ...]
    rest: str = ""
    mods: tuple[str, ...] = ()
    pre: str = ""

    def render(self, form: str) -> str:
        def inflect(lemma: str) -> str:
            word = {"s": _VERB_FORMS[lemma].s, "ing": _VERB_FORMS[lemma].ing, "base": lemma}[form]
            return f"{word}/VERB"

        verbs = " and ".join(f"{inflect(v)} {after}".strip() for v, after in self.verbs)
        return " ".join(p for p in (self.pre, verbs, self.rest, *self.mods) if p)


class _Ctx:
    """Random choices of one caption, plus the subject's possessive/reflexive words."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        subjects, _, weights = zip(*_SUBJECTS, strict=True)
        k = self.weighted(range(len(subjects)), weights)
        self.subject, self.gender = _SUBJECTS[k][0], _SUBJECTS[k][1]
        self.possessive = self.pick(_POSSESSIVE[self.gender])

    def pick(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def weighted(self, options: Sequence, weights: Sequence[float]):
        p = np.asarray(weights, dtype=float)
        return options[int(self.rng.choice(len(options), p=p / p.sum()))]

    def p(self, prob: float) -> bool:
        return bool(self.rng.random() < prob)

    def poss(self) -> str:
        """Determiner of a body part: "the" or the subject's possessive."""
        return "the" if self.p(0.5) else self.possessive

    def refl(self) -> str:
        return _REFLEXIVE[self.possessive]

    def mods(self, *phrases: str) -> tuple[str, ...]:
        kept = [p for p in phrases if p]
        return tuple(kept[int(i)] for i in self.rng.permutation(len(kept)))

    # -- modifiers

    def speed(self, seg: Segment) -> tuple[str, str]:
        """(adverb before the verb, phrase after it) saying the segment's speed."""
        if seg.speed == "normal":
            return ("", self.pick(_SPEED_POST["normal"]) if self.p(0.15) else "")
        if self.p(0.3):
            return (self.pick(_SPEED_PRE[seg.speed]), "")
        return ("", self.pick(_SPEED_POST[seg.speed]))

    def speed_adj(self, seg: Segment) -> str:
        return self.pick(_SPEED_ADJ[seg.speed]) if seg.speed != "normal" else ""

    def amp_adv(self, seg: Segment) -> str:
        if seg.amplitude == "normal":
            return ""
        return self.pick(_AMPLITUDE[seg.primitive][seg.amplitude][0]).replace("{poss}", self.possessive)

    def amp_adj(self, seg: Segment) -> str:
        return self.pick(_AMPLITUDE[seg.primitive][seg.amplitude][1]) if seg.amplitude != "normal" else ""

    def times(self, n: int) -> str:
        """How many repetitions, as an adverbial: once (often left unsaid), twice, three times."""
        if n == 1:
            return self.pick(("once", "one time", "a single time", "", ""))
        if n == 2:
            return self.pick(("twice", "twice", "two times"))
        return f"{_NUM[n]} times"

    def steps(self, n: int) -> str:
        """A number of steps as a measure: "six steps", "for six steps", rarely "a few steps"."""
        if self.p(0.06):
            amount = "a few" if n <= 3 else "several" if n <= 7 else "many"
        else:
            amount = _NUM[n]
        return self.pick((f"{amount} steps/NOUN", f"for {amount} steps/NOUN"))

    def count_np(self, n: int, noun: str, adjs: Sequence[str] = ()) -> str:
        """A counted noun phrase: "a high kick", "two quick squats", "a single jump"."""
        words = " ".join(a for a in adjs if a)
        head = _plural(noun) if n > 1 else noun
        if n > 1:
            return " ".join(p for p in (_NUM[n], words, f"{head}/NOUN") if p)
        first = (words or noun).split()[0]
        article = self.weighted(("an" if first[0] in "aeiou" else "a", "one", "a single"), (0.8, 0.08, 0.12))
        return " ".join(p for p in (article, words, f"{head}/NOUN") if p)

    def adj_or_adv(self, seg: Segment) -> tuple[str, str, str, str]:
        """Speed and amplitude said by adjectives of a noun or by adverbs: (sp_adj, amp_adj, pre, post)."""
        sp_adj = self.speed_adj(seg) if self.p(0.5) else ""
        pre, post = ("", "") if sp_adj else self.speed(seg)
        amp_adj = self.amp_adj(seg) if self.p(0.5) else ""
        return sp_adj, amp_adj, pre, post

    # -- places

    def fwd(self) -> str:
        return self.pick(
            ("forward/ADV", "forward/ADV", "ahead", "straight/ADV ahead", "straight/ADV forward/ADV",
             "forward/ADV in a straight/ADJ line/NOUN")
        )  # fmt: skip

    def to_side(self, d: str) -> str:
        """Towards a side: "to the left", "to his left", "leftward"."""
        return self.weighted(
            (f"to the {d}/NOUN", f"to {self.possessive} {d}/NOUN", f"{d}ward", f"toward the {d}/NOUN"),
            (4, 1.5, 0.6, 0.6),
        )

    @staticmethod
    def wise(d: str, pos: str = "ADV") -> str:
        """Turning left is counterclockwise seen from above (y up); the mirror swaps the two."""
        return f"{'counterclockwise' if d == 'left' else 'clockwise'}/{pos}"

    def limb(self, side: str, nouns: Sequence[str]) -> str:
        return f"{self.poss()} {side}/ADJ {self.pick(nouns)}"


# -- one realiser per primitive: (segment, ctx) -> verb phrase


def _walk(seg: Segment, c: _Ctx) -> _VP:
    n = seg.count or 1
    shape = c.weighted(range(4), (4, 2, 1, 1))
    if shape == 1:
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        return _VP((("take", ""),), f"{c.count_np(n, 'step', (sp_adj, amp_adj))} {c.fwd()}", c.mods(post, amp), pre)
    pre, post = c.speed(seg)
    verb = "walk" if shape == 0 else "step" if shape == 2 else "move"
    if shape == 0 and seg.speed != "normal" and c.p(0.4):
        verb = c.pick(("stroll", "amble", "saunter") if seg.speed == "slow" else ("hurry", "rush"))
        pre, post = "", ""
    count = c.times(n) if verb == "step" else c.steps(n)
    return _VP(((verb, ""),), c.fwd(), c.mods(count, post, c.amp_adv(seg)), pre)


def _run(seg: Segment, c: _Ctx) -> _VP:
    n = seg.count or 1
    pre, post = c.speed(seg)
    verb = "run"
    if seg.speed != "normal" and c.p(0.4):
        verb = c.pick(("jog",) if seg.speed == "slow" else ("sprint", "dash", "race"))
        pre, post = "", ""
    if c.p(0.25):
        return _VP(((verb, ""),), f"{_NUM[n]} steps/NOUN {c.fwd()}", c.mods(post, c.amp_adv(seg)), pre)
    return _VP(((verb, ""),), c.fwd(), c.mods(c.steps(n), post, c.amp_adv(seg)), pre)


def _walk_backward(seg: Segment, c: _Ctx) -> _VP:
    n = seg.count or 1
    back = c.pick(("backward/ADV", "backwards", "back"))
    shape = c.weighted(range(4), (4, 2, 1.5, 1))
    if shape == 1:
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        return _VP((("take", ""),), f"{c.count_np(n, 'step', (sp_adj, amp_adj))} {back}", c.mods(post, amp), pre)
    pre, post = c.speed(seg)
    if shape == 2:
        return _VP((("step", ""),), back, c.mods(c.times(n), post, c.amp_adv(seg)), pre)
    if shape == 3:
        return _VP((("retreat", ""),), "", c.mods(c.steps(n), post, c.amp_adv(seg)), pre)
    verb = c.pick(("walk", "walk", "move"))
    back = c.pick(("backward/ADV", "backwards", "in reverse")) if verb == "walk" else back
    return _VP(((verb, ""),), back, c.mods(c.steps(n), post, c.amp_adv(seg)), pre)


def _sidestep(seg: Segment, c: _Ctx) -> _VP:
    n, d = seg.count or 1, seg.direction or "left"
    shape = c.weighted(range(4), (3, 2, 2, 1.5))
    if shape == 2:
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        np_ = c.count_np(n, "step", (sp_adj, amp_adj)) + " sideways"
        if c.p(0.3):
            np_ = c.count_np(n, "step", (sp_adj, amp_adj, "side/NOUN"))
        return _VP((("take", ""),), f"{np_} {c.to_side(d)}", c.mods(post, amp), pre)
    pre, post = c.speed(seg)
    count = c.times(n) if c.p(0.5) else c.steps(n)
    if shape == 0:
        return _VP((("sidestep", ""),), c.to_side(d), c.mods(count, post, c.amp_adv(seg)), pre)
    if shape == 1:
        return _VP((("step", ""),), f"sideways {c.to_side(d)}", c.mods(count, post, c.amp_adv(seg)), pre)
    verb = c.pick(("shuffle", "move"))
    return _VP(((verb, ""),), f"sideways {c.to_side(d)}", c.mods(c.steps(n), post, c.amp_adv(seg)), pre)


def _angle(a: int, c: _Ctx) -> str:
    return f"{c.pick(_ANGLE_WORDS[a])} degrees/NOUN"


def _turn(seg: Segment, c: _Ctx) -> _VP:
    d, a = seg.direction or "left", seg.angle or 90
    pre, post = c.speed(seg)
    shape = c.weighted(range(5), (3, 3, 3, 2, 1.5))
    if shape == 0:
        by = c.pick(("by ", "")) + _angle(a, c)
        return _VP(((c.pick(("turn", "turn", "rotate", "pivot")), ""),), c.to_side(d), c.mods(by, post), pre)
    if shape == 1:
        return _VP(((c.pick(("turn", "rotate")), ""),), f"{_angle(a, c)} {c.to_side(d)}", c.mods(post), pre)
    if shape == 2:
        by = c.pick(("by ", "")) + _angle(a, c)
        return _VP((("turn", ""),), f"{d}/ADV", c.mods(by, post), pre)
    if shape == 3:
        words = c.pick(_ANGLE_ADJ[a])
        np_ = f"a {words} turn/NOUN {c.to_side(d)}" if c.p(0.6) else f"a {words} {d}/ADJ turn/NOUN"
        return _VP(((c.pick(("make", "do")), ""),), np_, c.mods(post), pre)
    return _VP((("rotate", ""),), c.wise(d), c.mods("by " + _angle(a, c), post), pre)


def _turn_around(seg: Segment, c: _Ctx) -> _VP:
    d = seg.direction or "left"
    pre, post = c.speed(seg)
    verb = "turn"
    shape = c.weighted(range(6), (3, 2, 2, 1.5, 1, 1))
    if seg.speed == "fast" and shape != 3 and c.p(0.3):
        verb, pre, post = "spin", "", ""
    if shape == 0:
        return _VP(((verb, "around"),), c.to_side(d), c.mods(post), pre)
    if shape == 1:
        return _VP(((verb, "around"),), c.wise(d), c.mods(post), pre)
    if shape == 2:
        return _VP(((verb, "all the way/NOUN around"),), c.to_side(d), c.mods(post), pre)
    if shape == 3:
        return _VP(((c.pick(("make", "do")), ""),), f"a half turn/NOUN {c.to_side(d)}", c.mods(post), pre)
    if shape == 4:
        words = c.pick(("one hundred eighty", "a hundred and eighty"))
        return _VP(((verb, ""),), f"{words} degrees/NOUN {c.to_side(d)}", c.mods(post), pre)
    return _VP(((verb, "around"),), f"over {c.possessive} {d}/ADJ shoulder/NOUN", c.mods(post), pre)


def _circle(seg: Segment, c: _Ctx) -> _VP:
    n, d = seg.count or 1, seg.direction or "left"
    pre, post = c.speed(seg)
    shape = c.weighted(range(5), (3, 2, 2, 1.5, 1.5))
    if shape == 0:
        return _VP((("walk", ""),), f"in a circle/NOUN {c.to_side(d)}", c.mods(c.steps(n), post), pre)
    if shape == 1:
        return _VP((("walk", ""),), f"in a {c.wise(d, 'ADJ')} circle/NOUN", c.mods(c.steps(n), post), pre)
    if shape == 2:
        where = c.pick((f"in a {c.wise(d, 'ADJ')} circle/NOUN", f"in a circle/NOUN {c.to_side(d)}"))
        return _VP((("take", ""),), f"{c.count_np(n, 'step')} {where}", c.mods(post), pre)
    if shape == 3:
        return _VP((("circle", "around"),), c.to_side(d), c.mods(c.steps(n), post), pre)
    return _VP((("walk", "around"),), f"in a circle/NOUN {c.wise(d)}", c.mods(c.steps(n), post), pre)


def _jump(seg: Segment, c: _Ctx) -> _VP:
    n = seg.count or 1
    shape = c.weighted(range(2), (3, 1.5))
    if shape == 1:
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        where = c.pick(("", "", "in place/NOUN", "on the spot/NOUN"))
        verb = c.pick(("do", "perform", "make"))
        return _VP(
            ((verb, ""),),
            f"{c.count_np(n, 'jump', (sp_adj, amp_adj))} {where}".strip(),
            c.mods(post, amp),
            pre,
        )
    pre, post = c.speed(seg)
    verb = c.weighted(("jump", "hop", "leap", "bounce"), (5, 1.5, 1, 0.5))
    where = c.pick(("", "", "up", "in place/NOUN", "on the spot/NOUN", "up and down", "straight/ADV up"))
    return _VP(((verb, where),), "", c.mods(c.times(n), post, c.amp_adv(seg)), pre)


def _jump_forward(seg: Segment, c: _Ctx) -> _VP:
    n = seg.count or 1
    if c.p(0.3):
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        np_ = c.count_np(n, "jump", (sp_adj, amp_adj, "forward/ADJ"))
        return _VP(((c.pick(("do", "perform", "make")), ""),), np_, c.mods(post, amp), pre)
    pre, post = c.speed(seg)
    verb = c.weighted(("jump", "leap", "hop"), (4, 2, 1))
    where = c.pick(("forward/ADV", "forward/ADV", "ahead", "forward/ADV with both feet/NOUN"))
    return _VP(((verb, ""),), where, c.mods(c.times(n), post, c.amp_adv(seg)), pre)


_LEGS = ("leg/NOUN", "foot/NOUN")
_HANDS = ("hand/NOUN", "arm/NOUN")
_FISTS = ("hand/NOUN", "fist/NOUN", "arm/NOUN")


def _kick(seg: Segment, c: _Ctx) -> _VP:
    n, side = seg.count or 1, seg.side or "left"
    shape = c.weighted(range(5), (3, 1.5, 1.5, 1.5, 1))
    if shape in (3, 4):
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        verb = c.pick(("do", "perform", "throw"))
        if shape == 4:
            return _VP(((verb, ""),), c.count_np(n, "kick", (sp_adj, amp_adj, f"{side}/ADJ")), c.mods(post, amp), pre)
        rest = f"{c.count_np(n, 'kick', (sp_adj, amp_adj))} with {c.limb(side, _LEGS)}"
        return _VP(((verb, ""),), rest, c.mods(post, amp), pre)
    pre, post = c.speed(seg)
    mods = c.mods(c.times(n), post, c.amp_adv(seg))
    if shape == 0:
        return _VP((("kick", c.pick(("", "", "out", "forward/ADV"))),), f"with {c.limb(side, _LEGS)}", mods, pre)
    if shape == 1:
        return _VP((("kick", ""),), f"{c.poss()} {side}/ADJ leg/NOUN {c.pick(('out', 'forward/ADV'))}", mods, pre)
    return _VP((("kick", ""),), f"using/VERB {c.limb(side, _LEGS)}", mods, pre)


def _squat(seg: Segment, c: _Ctx) -> _VP:
    n = seg.count or 1
    shape = c.weighted(range(5), (3, 2, 1.5, 1, 1))
    if shape == 1:
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        return _VP(
            ((c.pick(("do", "perform")), ""),),
            c.count_np(n, "squat", (sp_adj, amp_adj)),
            c.mods(post, amp),
            pre,
        )
    pre, post = c.speed(seg)
    if shape == 2:
        amp = c.amp_adv(seg)
        down = amp if "down" in amp else f"down {amp}".strip()
        return _VP((("squat", down), ("stand", "back up")), "", c.mods(c.times(n), post), pre)
    if shape == 4:
        knees = f"{c.poss()} knees/NOUN into a {c.amp_adj(seg)} squat/NOUN".replace("  ", " ")
        return _VP((("bend", ""),), knees, c.mods(c.times(n), post), pre)
    verb, down = ("squat", c.pick(("", "down"))) if shape == 0 else ("crouch", "down")
    return _VP(((verb, down),), "", c.mods(c.times(n), post, c.amp_adv(seg)), pre)


def _lunge(seg: Segment, c: _Ctx) -> _VP:
    n, side = seg.count or 1, seg.side or "left"
    shape = c.weighted(range(4), (3, 1.5, 1.5, 1))
    if shape == 1:
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        rest = f"{c.count_np(n, 'lunge', (sp_adj, amp_adj))} with {c.limb(side, _LEGS)}"
        return _VP(((c.pick(("do", "perform")), ""),), rest, c.mods(post, amp), pre)
    pre, post = c.speed(seg)
    if shape == 2:
        amp_adj = c.amp_adj(seg)
        rest = f"forward/ADV into a {amp_adj} lunge/NOUN with {c.limb(side, _LEGS)}".replace("  ", " ")
        return _VP((("step", ""),), rest, c.mods(c.times(n), post), pre)
    if shape == 3:
        lead = f"leading/VERB with {c.limb(side, _LEGS)}"
        return _VP((("lunge", "forward/ADV"),), "", c.mods(c.times(n), post, c.amp_adv(seg), lead), pre)
    return _VP(
        (("lunge", "forward/ADV"),),
        f"with {c.limb(side, _LEGS)}",
        c.mods(c.times(n), post, c.amp_adv(seg)),
        pre,
    )


def _sit_down(seg: Segment, c: _Ctx) -> _VP:
    pre, post = c.speed(seg)
    shape = c.weighted(range(4), (4, 1.5, 1, 1))
    if shape == 0:
        return _VP((("sit", "down"),), "", c.mods(post), pre)
    if shape == 1:
        return _VP((("take", ""),), "a seat/NOUN", c.mods(post), pre)
    if shape == 2:
        return _VP(
            (("lower", ""),),
            f"{c.refl()} into a {c.pick(('sitting/VERB', 'seated'))} position/NOUN",
            c.mods(post),
            pre,
        )
    return _VP((("go", "down"),), "into a seated position/NOUN", c.mods(post), pre)


def _wave(seg: Segment, c: _Ctx) -> _VP:
    n, side = seg.count or 1, seg.side or "left"
    shape = c.weighted(range(5), (3, 2, 1, 1.5, 1))
    if shape == 3:
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        rest = f"{c.count_np(n, 'wave', (sp_adj, amp_adj))} with {c.limb(side, _HANDS)}"
        return _VP((("give", ""),), rest, c.mods(post, amp), pre)
    pre, post = c.speed(seg)
    mods = c.mods(c.times(n), post, c.amp_adv(seg))
    if shape == 0:
        return _VP((("wave", ""),), f"with {c.limb(side, _HANDS)}", mods, pre)
    if shape == 1:
        return _VP((("wave", ""),), f"{c.limb(side, _HANDS)} {c.pick(('', 'back and forth'))}".strip(), mods, pre)
    if shape == 2:
        return _VP((("wave", "hello"),), f"with {c.limb(side, _HANDS)}", mods, pre)
    return _VP((("raise", c.limb(side, ("hand/NOUN",))), ("wave", "")), "", mods, pre)


def _raise_arms(seg: Segment, c: _Ctx) -> _VP:
    n, side = seg.count or 1, seg.side or "both"
    if side == "both":
        arms = c.weighted(("both arms/NOUN", "both hands/NOUN", f"{c.possessive} arms/NOUN"), (3, 1.5, 0.5))
        it = "them"
    else:
        arms = c.limb(side, _HANDS)
        it = "it"
    pre, post = c.speed(seg)
    shape = c.weighted(range(4), (3, 1.5, 1, 1))
    mods = c.mods(c.times(n), post, c.amp_adv(seg))
    if shape == 0:
        return _VP(((c.pick(("raise", "raise", "lift")), ""),), f"{arms} {c.pick(('', '', 'up'))}".strip(), mods, pre)
    if shape == 1:
        return _VP((("raise", arms), ("lower", it)), "", mods, pre)
    if shape == 2:
        return _VP((("put", ""),), f"{arms} up {c.pick(('', 'in the air/NOUN'))}".strip(), mods, pre)
    return _VP((("reach", "up"),), f"with {arms}", mods, pre)


def _clap(seg: Segment, c: _Ctx) -> _VP:
    n = seg.count or 1
    if c.p(0.2):
        sp_adj = c.speed_adj(seg)
        pre, post = ("", "") if sp_adj else c.speed(seg)
        return _VP(((c.pick(("give", "do")), ""),), c.count_np(n, "clap", (sp_adj,)), c.mods(post), pre)
    pre, post = c.speed(seg)
    hands = c.pick(("", "", f"{c.poss()} hands/NOUN", f"{c.poss()} hands/NOUN together"))
    return _VP((("clap", hands),), "", c.mods(c.times(n), post), pre)


def _punch(seg: Segment, c: _Ctx) -> _VP:
    n, side = seg.count or 1, seg.side or "left"
    shape = c.weighted(range(5), (3, 1.5, 1, 1, 1))
    if shape in (1, 2):
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        if shape == 2:
            return _VP(
                (("throw", ""),),
                c.count_np(n, "punch", (sp_adj, amp_adj, f"{side}/ADJ")),
                c.mods(post, amp),
                pre,
            )
        rest = f"{c.count_np(n, 'punch', (sp_adj, amp_adj))} with {c.limb(side, _FISTS)}"
        return _VP((("throw", ""),), rest, c.mods(post, amp), pre)
    pre, post = c.speed(seg)
    mods = c.mods(c.times(n), post, c.amp_adv(seg))
    if shape == 0:
        return _VP((("punch", c.pick(("", "", "forward/ADV"))),), f"with {c.limb(side, _FISTS)}", mods, pre)
    if shape == 3:
        return _VP((("jab", ""),), f"with {c.limb(side, _FISTS)}", mods, pre)
    return _VP((("punch", ""),), f"using/VERB {c.limb(side, _FISTS)}", mods, pre)


def _throw(seg: Segment, c: _Ctx) -> _VP:
    n, side = seg.count or 1, seg.side or "left"
    shape = c.weighted(range(4), (3, 1.5, 1, 1))
    if shape == 1:
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        rest = f"{c.count_np(n, 'motion', (sp_adj, amp_adj, 'throwing/VERB'))} with {c.limb(side, _HANDS)}"
        return _VP((("make", ""),), rest, c.mods(post, amp), pre)
    pre, post = c.speed(seg)
    mods = c.mods(c.times(n), post, c.amp_adv(seg))
    thing = c.pick(("something", "a ball/NOUN", "an object/NOUN", "an imaginary ball/NOUN"))
    if shape == 0:
        return _VP((("throw", thing),), f"with {c.limb(side, _HANDS)}", mods, pre)
    if shape == 2:
        return _VP(((c.pick(("toss", "pitch")), thing),), f"with {c.limb(side, _HANDS)}", mods, pre)
    return _VP((("throw", ""),), f"with {c.limb(side, _HANDS)}", mods, pre)


def _bow(seg: Segment, c: _Ctx) -> _VP:
    n = seg.count or 1
    shape = c.weighted(range(3), (3, 1.5, 1))
    if shape == 1:
        sp_adj, amp_adj, pre, post = c.adj_or_adv(seg)
        amp = "" if amp_adj else c.amp_adv(seg)
        verb = c.pick(("take", "do", "make"))
        return _VP(((verb, ""),), c.count_np(n, "bow", (sp_adj, amp_adj)), c.mods(post, amp), pre)
    pre, post = c.speed(seg)
    mods = c.mods(c.times(n), post, c.amp_adv(seg))
    if shape == 2:
        return _VP((("bend", "forward/ADV"),), "at the waist/NOUN", mods, pre)
    return _VP((("bow", c.pick(("", "", "forward/ADV", "down"))),), "", mods, pre)


_REALISERS: dict[str, Callable[[Segment, _Ctx], _VP]] = {
    "walk": _walk, "run": _run, "walk_backward": _walk_backward, "sidestep": _sidestep, "turn": _turn,
    "circle": _circle, "jump": _jump, "jump_forward": _jump_forward, "kick": _kick, "squat": _squat,
    "lunge": _lunge, "sit_down": _sit_down, "wave": _wave, "raise_arms": _raise_arms, "clap": _clap,
    "punch": _punch, "throw": _throw, "bow": _bow, "turn_around": _turn_around,
}  # fmt: skip

# Joining the next segment: (words before it, its verb form); {P} is a pronoun subject.
_CHAIN = (
    (", then", "s", 3.0), ("and then", "s", 3.0), (", and then", "s", 2.0), ("then", "s", 1.5),
    ("and", "s", 1.2),
    (", after that {P}", "p", 0.8), (". then {P}", "p", 0.8), (", and afterwards", "s", 0.5),
    ("before", "ing", 1.0), (", before", "ing", 0.5),
)  # fmt: skip
_CHAIN_LAST = ((", followed by", "ing", 0.6), (", and finally", "s", 0.8), ("and finally", "s", 0.5))
_CHAIN_ING = ((", then", 3.0), ("and then", 3.0), (", and then", 1.5), ("then", 1.0), ("before", 0.7))


def _pronoun(c: _Ctx) -> tuple[str, str]:
    """A pronoun subject for a second clause and its verb form ("he" jumps / "they" jump)."""
    if c.gender == "m":
        return "he", "s"
    if c.gender == "f":
        return "she", "s"
    return ("they", "base") if c.possessive == "their" else c.pick((("he", "s"), ("the person", "s")))


def _join(vps: Sequence[_VP], c: _Ctx, form: str) -> str:
    """VP1 conn VP2 conn VP3, each later VP in the form its connective asks for."""
    parts = [vps[0].render(form)]
    for i, vp in enumerate(vps[1:], start=1):
        if form == "ing":
            words, _ = c.weighted(_CHAIN_ING, [w for _, w in _CHAIN_ING])
            parts.append(f"{words} {vp.render('ing')}")
            continue
        options = _CHAIN + (_CHAIN_LAST if i == len(vps) - 1 else ())
        words, vform, _ = c.weighted(options, [w for *_, w in options])
        if vform == "p":  # a pronoun subject from here on: "they jump", and later verbs agree with it
            pron, form = _pronoun(c)
            words, vform = words.replace("{P}", pron), form
        elif vform == "s":
            vform = form
        parts.append(f"{words} {vp.render(vform)}")
    return " ".join(parts)


def _sentence(vps: Sequence[_VP], c: _Ctx) -> str:
    """One annotated sentence for the segments' verb phrases, in a randomly drawn shape."""
    s = c.subject
    if len(vps) == 1:
        shape = c.weighted(("simple", "progressive", "gerund"), (6, 1.5, 1))
    else:
        weights = (6, 1.2, 1.5, 1, 1, 1, 0.5 if len(vps) == 2 else 0)
        shape = c.weighted(("simple", "first", "after", "progressive", "gerund", "two", "reverse"), weights)
    if shape == "simple":
        return f"{s} {_join(vps, c, 's')}"
    if shape == "progressive":
        return f"{s} is {_join(vps, c, 'ing')}"
    if shape == "gerund":
        return _join(vps, c, "ing")
    if shape == "first":
        rest = _join(vps[1:], c, "s")
        first = vps[0].render("s")
        if c.p(0.5):
            return f"{s} first {first} , then {rest}"
        return f"first , {s} {first} , then {rest}"
    if shape == "after":
        return f"after {vps[0].render('ing')} , {s} {_join(vps[1:], c, 's')}"
    if shape == "two":
        pron, vform = _pronoun(c)
        tail = " and then ".join(vp.render(vform) for vp in vps[1:])
        return f"{s} {vps[0].render('s')} . {c.pick(('then', 'after that ,', 'next ,'))} {pron} {tail}"
    return f"{s} {vps[1].render('s')} after {vps[0].render('ing')}"


def _to_caption(annotated: str, period: bool) -> Caption:
    """Caption text (lowercase, punctuation attached) and its tokens from an annotated sentence."""
    words: list[str] = []
    tokens: list[str] = []
    for item in annotated.replace(",", " , ").replace(".", " . ").split():
        word, _, pos = item.partition("/")
        words.append(word)
        if word in (",", "."):
            continue
        tokens.append(_token(word, pos or _default_pos(word)))
    text = " ".join(words).replace(" ,", ",").replace(" .", ".")
    text = re.sub(r",(?=[,.])", "", text).strip(" ,")
    if period and not text.endswith("."):
        text += "."
    return Caption(text=text, tokens=tokens, start=0.0, end=0.0)


def _one_caption(program: Program, rng: np.random.Generator) -> Caption:
    c = _Ctx(rng)
    vps = [_REALISERS[seg.primitive](seg, c) for seg in program.segments]
    return _to_caption(_sentence(vps, c), period=c.p(0.75))


def captions_for(program: Program, rng: np.random.Generator, n: int = 3) -> list[Caption]:
    """``n`` different paraphrases of ``program`` (whole-clip spans), tokens in HumanML3D's format."""
    if n < 1:
        raise ValueError(f"captions_for: n must be >= 1, got {n}")
    program.validate()
    out: list[Caption] = []
    seen: set[str] = set()
    for _ in range(20 * n):
        caption = _one_caption(program, rng)
        if caption.text not in seen:
            seen.add(caption.text)
            out.append(caption)
            if len(out) == n:
                return out
    raise RuntimeError(f"captions_for: found only {len(out)} distinct captions of {program.key()}")


def caption_text(program: Program, rng: np.random.Generator) -> str:
    """One paraphrase of ``program`` as plain text."""
    return captions_for(program, rng, 1)[0].text
