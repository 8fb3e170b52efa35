"""Prompts for the preference data: new motion descriptions unlike the training captions.

The paper wrote its prompts with an LLM because a model finetuned on its own training captions only
learns to repeat them. Four backends propose candidates, one stream each:

- ``synthetic`` (embedded mode): the synthetic world's held-out novel programs (``novel_programs.jsonl``),
  each paraphrased by the caption grammar; every prompt carries its program as JSON, so the synthetic
  judge can score the motions sampled for it. Programs are used round-robin, so ``n`` >= the number of
  programs uses every one at least once (a later round gives a program a new paraphrase).
- ``familiar`` (embedded mode): new programs drawn from the world's own distribution, free of its held-out
  combinations and unlike any dataset clip's program, paraphrased the same way: the control for asking whether
  the novelty of the prompts matters (on the CPU demo it does not: the supervised policy fails these as often).
- ``recombine`` (real data, no programs): the training captions' ``word/POS`` tokens are cut into slots
  (verbs, the body parts a verb takes as object or after "with", its directions, manner adverbs) and
  recombined into new sentences, see :class:`Recombiner`.
- ``llm`` (optional): any OpenAI-compatible ``/chat/completions`` endpoint asked for new descriptions in
  the style of a few training captions, see :func:`request_prompts`.

Every candidate goes through :class:`Deduper`, in stream order: one that equals a reference caption after
:func:`normalise` is an exact duplicate, one whose TF-IDF cosine to a reference caption is at least the
threshold a near duplicate, and the same two tests against the prompts kept so far drop duplicates among
the prompts. The reference is every caption of the train, val and test splits by default: a prompt equal
to a test caption would let preference finetuning see the test set.

Every prompt then gets a ``split`` (train, val or test) by its ``group``, before any motion is sampled: the
group is the prompt's program JSON, or for a prompt without one (recombine, llm) its normalised text, so the
paraphrases of one program always share a split (:func:`split_groups`). Pairs and preferences come from the
train and val groups; the win rates use the test groups alone, tasks no preference pair was made for (the
synthetic judge scores the program, not the words, so a reworded training task would not be held out).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import urllib.error
import urllib.request
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

from motionpref.config import LLMEndpoint, PromptsConfig, SplitFractions
from motionpref.io import write_parquet
from motionpref.motion.dataset import read_captions, read_split
from motionpref.motion.text import VIP_WORDS, Caption
from motionpref.synth.captions import caption_text
from motionpref.synth.programs import Program, ProgramError
from motionpref.synth.sampling import NoveltySplit, sample_program
from motionpref.synth.world import NOVEL_FILE, NOVELTY_FILE, read_programs

Backend = Literal["synthetic", "recombine", "llm", "familiar"]
BACKENDS: tuple[Backend, ...] = ("synthetic", "recombine", "llm", "familiar")  # also the order prompts are listed in
_FAMILIAR_TRIES = 10_000  # consecutive draws that were all dataset programs before the backend gives up
DROP_REASONS = ("exact_reference", "near_reference", "exact_self", "near_self")
SIMILARITY = "tf-idf cosine of word 1-2 grams, idf from the reference captions"
SPLITS = ("train", "val", "test")
COLUMNS = ("prompt_id", "text", "program", "source", "group", "split")
PROMPTS_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("text", pa.string()),
        ("program", pa.string()),
        ("source", pa.string()),
        ("group", pa.string()),  # group_key: the program, or the normalised text of a prompt without one
        ("split", pa.string()),  # one of SPLITS, the same for every prompt of a group
    ]
)
_CHUNK = 256  # candidates compared at once: bounds the dense similarity blocks
_BLOCK_CELLS = 1 << 22  # cells of one dense candidate x reference block (32 MB of float64)
_SPLIT_STREAM = 1_000  # the split's SeedSequence spawn key: far from the backends' (their index in BACKENDS)
_DEFAULT_SPLIT = PromptsConfig().split  # prompts.split's default, from its one definition


class PromptError(RuntimeError):
    """A backend could not produce prompts (the message names the file, URL or parameter at fault)."""


@dataclass(frozen=True)
class Candidate:
    text: str
    program: str | None  # Program JSON (synthetic) or None
    source: Backend


class GeneratedPrompts(NamedTuple):
    table: pd.DataFrame  # columns COLUMNS, in the order the prompts were kept
    stats: dict[str, Any]


# ------------------------------------------------------------------------------------------------ dedupe

_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalise(text: str) -> str:
    """The form texts are compared in: lowercase, punctuation replaced by spaces, whitespace collapsed."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


class Deduper:
    """Keeps candidates that are neither exact nor near duplicates of a reference caption or a kept prompt.

    Similarity is the cosine of TF-IDF vectors over word unigrams and bigrams of the normalised texts
    (scikit-learn's default tokens: words of two or more characters). The idf is that of the reference
    captions alone, an n-gram they never use weighing the most, so a candidate's verdict depends only on
    the reference and the prompts kept before it. N-grams are hashed (2**20 buckets), so candidates are
    vectorised as they arrive, without a vocabulary fitted on all of them.
    """

    def __init__(self, reference_texts: Iterable[str], threshold: float) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.reference_keys = {normalise(t) for t in reference_texts} - {""}
        if not self.reference_keys:
            raise ValueError("dedupe needs at least one non-empty reference caption")
        self._hashing = HashingVectorizer(ngram_range=(1, 2), alternate_sign=False, norm=None)
        unique = sorted(self.reference_keys)
        counts = self._hashing.transform(unique)
        self._tfidf = TfidfTransformer().fit(counts)
        self._reference = self._tfidf.transform(counts).tocsr()
        self._kept = sparse.csr_matrix((0, self._reference.shape[1]))
        self.kept_keys: set[str] = set()

    def vectors(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """L2-normalised TF-IDF rows of ``texts`` (normalised first)."""
        return self._tfidf.transform(self._hashing.transform([normalise(t) for t in texts])).tocsr()

    def max_reference_similarity(self, texts: Sequence[str]) -> np.ndarray:
        """Highest cosine of each text to any reference caption."""
        return _max_cosine(self.vectors(texts), self._reference)

    def filter(self, candidates: Sequence[Candidate], limit: int) -> tuple[list[Candidate], Counter[str]]:
        """Candidates kept, in order, until ``limit`` are; and how many were dropped for each reason."""
        kept: list[Candidate] = []
        dropped: Counter[str] = Counter()
        for start in range(0, len(candidates), _CHUNK):
            chunk = candidates[start : start + _CHUNK]
            x = self.vectors([c.text for c in chunk])
            to_reference = _max_cosine(x, self._reference)
            to_kept = _max_cosine(x, self._kept)
            within = (x @ x.T).toarray()
            kept_here: list[int] = []
            for i, cand in enumerate(chunk):
                if len(kept) == limit:
                    return kept, dropped
                key = normalise(cand.text)
                if key in self.reference_keys:
                    dropped["exact_reference"] += 1
                elif to_reference[i] >= self.threshold:
                    dropped["near_reference"] += 1
                elif key in self.kept_keys:
                    dropped["exact_self"] += 1
                elif max(to_kept[i], within[i, kept_here].max(initial=0.0)) >= self.threshold:
                    dropped["near_self"] += 1
                else:
                    kept.append(cand)
                    kept_here.append(i)
                    self.kept_keys.add(key)
            self._kept = sparse.vstack([self._kept, x[kept_here]]).tocsr()
        return kept, dropped


def _max_cosine(x: sparse.csr_matrix, y: sparse.csr_matrix) -> np.ndarray:
    """Row-wise max of ``x @ y.T`` (0 where ``y`` is empty), in dense blocks of bounded size."""
    best = np.zeros(x.shape[0])
    rows = max(1, _BLOCK_CELLS // max(1, x.shape[0]))
    for start in range(0, y.shape[0], rows):
        block = (x @ y[start : start + rows].T).toarray()
        np.maximum(best, block.max(axis=1), out=best)
    return best


# ------------------------------------------------------------------------------------------------ synthetic


def read_novelty(root: str | os.PathLike) -> NoveltySplit:
    """The held-out combinations of a synthetic dataset folder (``novelty.json``)."""
    path = Path(root) / NOVELTY_FILE
    try:
        return NoveltySplit.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise PromptError(f"{path}: missing; the familiar backend needs a synthetic dataset") from None
    except (json.JSONDecodeError, ValueError) as err:
        raise PromptError(f"{path}: {err}") from None


def familiar_candidates(root: str | os.PathLike, seed: int) -> Iterator[Candidate]:
    """Endless new programs from the synthetic world's training distribution, each paraphrased once: none
    holds a held-out combination (``novelty.json``) or equals a dataset clip's program (``programs.jsonl``)
    or an earlier candidate."""
    novelty = read_novelty(root)
    seen = {program.key() for program, _ in read_programs(root).values()}
    rng = np.random.default_rng(seed)
    while True:
        for _ in range(_FAMILIAR_TRIES):
            program = sample_program(rng, split=novelty)
            if program.key() not in seen:
                break
        else:
            raise PromptError(f"familiar backend: {_FAMILIAR_TRIES} draws in a row were all known programs")
        seen.add(program.key())
        yield Candidate(caption_text(program, rng), program.to_json(), "familiar")


def read_novel_programs(root: str | os.PathLike) -> list[Program]:
    """Programs of ``novel_programs.jsonl`` in a synthetic dataset folder; errors name the line."""
    path = Path(root) / NOVEL_FILE
    if not path.is_file():
        raise PromptError(
            f"{path}: missing; the synthetic backend needs a synthetic dataset built with n_novel > 0 "
            "(for a real dataset use the recombine or llm backend)"
        )
    programs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            programs.append(Program.from_dict(json.loads(line)["program"]))
        except (json.JSONDecodeError, KeyError, TypeError, ProgramError) as err:
            raise PromptError(
                f"{path}:{lineno}: expected {{'id', 'program', ...}} with a valid program ({err})"
            ) from None
    if not programs:
        raise PromptError(f"{path}: no novel programs; build the dataset with n_novel > 0")
    return programs


def synthetic_candidates(programs: Sequence[Program], seed: int) -> Iterator[Candidate]:
    """Endless paraphrases of the distinct ``programs``, round-robin in first-seen order, from one seeded
    generator (the world samples its novel programs independently, so the file may repeat one)."""
    distinct = list({p.to_json(): p for p in programs}.values())
    if not distinct:
        raise PromptError("synthetic backend: no programs to write prompts for")
    rng = np.random.default_rng(seed)
    for program in itertools.cycle(distinct):
        yield Candidate(caption_text(program, rng), program.to_json(), "synthetic")


# ------------------------------------------------------------------------------------------------ recombine

_BODY = frozenset(VIP_WORDS["Body_VIP"])
_LOCATIONS = frozenset(VIP_WORDS["Loc_VIP"])
_SIDES = ("left", "right")
_PLURAL_BODY = {"foot": "feet"}  # the other Body_VIP nouns take -s
# Verbs that say nothing about a motion by themselves (aspect, light and auxiliary verbs) or need a
# complement the slots cannot supply ("returns to", "stops").
_NON_MOTION_VERBS = frozenset(
    "be have do get seem appear begin start continue try keep make use perform repeat stop let want need "
    "take give finish return resume complete".split()
)
# Nouns of extent, not objects: "walks a few steps", "turns ninety degrees".
_MEASURE_NOUNS = frozenset("step stride pace time degree way distance circle lap meter metre".split())
# -ly adverbs that sequence or hedge rather than describe a manner.
_NON_MANNER_ADVERBS = frozenset(
    "only finally really actually probably likely early firstly lastly mostly nearly fully immediately "
    "eventually initially subsequently simultaneously apparently basically possibly".split()
)
# Manner adverbs that suit any verb (the T2M vectorizer's Desc_VIP adverbs); others stay with their verbs.
_ANY_VERB_ADVERBS = frozenset({"slowly", "carefully", "fast", "quickly", "happily", "angrily", "sadly"})
# How a Loc_VIP word is said after a verb; {poss} is the subject's possessive.
_DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to the left", "to {poss} left"),
    "right": ("to the right", "to {poss} right"),
    "forward": ("forward",),
    "backward": ("backward", "backwards"),
    "back": ("back",),
    "up": ("up",),
    "down": ("down",),
    "clockwise": ("clockwise", "in a clockwise circle"),
    "counterclockwise": ("counterclockwise", "in a counterclockwise circle"),
    "anticlockwise": ("anticlockwise",),
    "straight": ("straight ahead",),
    "curve": ("in a curve",),
}
_SUBJECTS = (
    ("a person", "their"),
    ("someone", "their"),
    ("a man", "his"),
    ("a woman", "her"),
    ("the person", "their"),
)
_SKIPPABLE = frozenset({"DET", "ADJ"})  # between a verb (or "with") and its noun: "his", "big"


def _attested(candidates: Iterable[str], words: set[str]) -> str | None:
    return next((c for c in candidates if c in words), None)


def _third_person_forms(lemma: str) -> tuple[str, ...]:
    return (lemma + "s", lemma + "es") + ((lemma[:-1] + "ies",) if lemma.endswith("y") else ())


def _gerund_forms(lemma: str) -> tuple[str, ...]:
    return (lemma + "ing", lemma[:-1] + "ing", lemma + lemma[-1] + "ing")


def _is_manner_adverb(word: str) -> bool:
    return word.isalpha() and word not in _NON_MANNER_ADVERBS and (word.endswith("ly") or word in _ANY_VERB_ADVERBS)


def _noun_phrase(words: list[str], tags: list[str], i: int, end: int, surface: set[str]) -> tuple[str, str] | None:
    """The noun phrase at ``i``: ("side"|"both"|"", body noun as said) for a body part ("his left arm",
    "both hands", "his arms"), ("object", noun) for another noun or pronoun, None if no noun follows."""
    side = ""
    while i < end and (tags[i] in _SKIPPABLE or words[i] in _SIDES):
        side = "side" if words[i] in _SIDES else "both" if words[i] == "both" else side
        i += 1
    if i >= end:
        return None
    word = words[i]
    if word in _BODY:
        singular = "foot" if word == "feet" else word
        plural = _PLURAL_BODY.get(singular, singular + "s")
        # Tokens are lemmas: the caption's own text tells "his arms" from "his arm".
        many = side == "both" or (not side and plural in surface and singular not in surface)
        return side, plural if many else singular
    if tags[i] in ("NOUN", "PRON") and word not in _MEASURE_NOUNS:
        return "object", word
    return None


@dataclass
class Recombiner:
    """Slots harvested from tokenised captions, and new sentences made of them.

    Each ``VERB`` token (a lemma) opens a clause that runs to the next verb (an adverb right before the
    verb belongs to it too). In its clause a verb collects the body part right after it, past
    determiners, adjectives and a side ("raise his left arm": object), the body part after "with" ("kick
    with the right foot": instrument), the other Loc_VIP words (directions) and manner adverbs. A verb
    that is followed by some other noun or pronoun in most of its clauses ("throw something") is
    transitive: it is said only with a body part as object or instrument, never bare. A verb is used only
    if its third-person form occurs in the caption texts (so an irregular verb is never inflected wrongly)
    and it is not a light verb; a verb, and each of its slot values, must occur ``min_count`` times.

    Templates, filled at random (optional parts in brackets; a body part said with a side gets a random
    side, so sides recombine too):

    - clause: ``<verb>s <poss> [<side>] <body> [<direction>] [<adverb>]`` (object),
      ``<verb>s [<direction>] with <poss> [<side>] <body> [<adverb>]`` (instrument),
      ``<verb>s <direction> [<adverb>]`` (direction), else ``<verb>s [<adverb>]``; the adverb may stand
      before the verb instead ("slowly walks forward"). Adverbs: the verb's own, and slowly, quickly,
      carefully, fast, happily, angrily, sadly where the captions use them.
    - sentence: ``<subject> <clause>.``, ``<subject> <clause>, then <clause>.``,
      ``<subject> <clause> and then <clause>.``, and where the captions attest the -ing forms
      ``<subject> is <clause-ing>.`` and ``<subject> <clause> before <clause-ing>.``; the two clauses of a
      sentence have different verbs. Subjects: a person, someone, a man, a woman, the person.
    """

    verbs: dict[str, int]  # lemma -> count, usable verbs only
    third: dict[str, str]  # lemma -> attested third person singular
    gerund: dict[str, str]  # lemma -> attested -ing form (only the verbs that have one)
    objects: dict[str, list[tuple[str, str]]]  # lemma -> body phrases (side kind, noun)
    instruments: dict[str, list[tuple[str, str]]]
    directions: dict[str, list[str]]  # lemma -> Loc_VIP words
    adverbs: dict[str, list[str]]  # lemma -> manner adverbs
    transitive: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_captions(cls, captions: Sequence[Caption], min_count: int = 2) -> Recombiner:
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        corpus = {w for c in captions for w in re.findall(r"[a-z]+", c.text.lower())}
        verbs: Counter[str] = Counter()
        with_object: Counter[str] = Counter()
        any_adverbs: Counter[str] = Counter()
        slots: dict[str, defaultdict[str, Counter[Any]]] = {
            k: defaultdict(Counter) for k in ("objects", "instruments", "directions", "adverbs")
        }
        for caption in captions:
            words = [w.lower() for w in caption.words]
            tags = caption.pos_tags
            surface = set(re.findall(r"[a-z]+", caption.text.lower()))
            any_adverbs.update(w for w, t in zip(words, tags, strict=True) if t == "ADV" and w in _ANY_VERB_ADVERBS)
            # spaCy sometimes tags the "left" of "his left arm" VERB; HumanML3D keeps it unlemmatised.
            starts = [i for i, t in enumerate(tags) if t == "VERB" and words[i] not in _SIDES]
            for k, at in enumerate(starts):
                verb = words[at]
                if not verb.isalpha() or verb in _NON_MOTION_VERBS:
                    continue
                end = starts[k + 1] if k + 1 < len(starts) else len(words)
                verbs[verb] += 1
                phrase = _noun_phrase(words, tags, at + 1, end, surface)
                if phrase is not None:
                    with_object[verb] += 1
                    if phrase[0] != "object":
                        slots["objects"][verb][phrase] += 1
                for i in range(at - 1 if at and tags[at - 1] == "ADV" else at + 1, end):
                    word = words[i]
                    if tags[i] == "ADV" and _is_manner_adverb(word):
                        slots["adverbs"][verb][word] += 1
                    if word == "with" and (phrase := _noun_phrase(words, tags, i + 1, end, surface)):
                        if phrase[0] != "object":
                            slots["instruments"][verb][phrase] += 1
                    elif word in _LOCATIONS and i > at and not _is_side_of_body(words, tags, i, end, surface):
                        slots["directions"][verb][word] += 1

        def frequent(counter: Counter[Any]) -> list[Any]:
            return sorted(w for w, n in counter.items() if n >= min_count)

        found = {name: {v: frequent(c[v]) for v in sorted(verbs) if frequent(c[v])} for name, c in slots.items()}
        general = frequent(any_adverbs)
        for v in verbs:
            found["adverbs"][v] = sorted(set(found["adverbs"].get(v, [])) | set(general))
        transitive = {v for v, n in verbs.items() if with_object[v] > n / 2}
        third = {
            v: form
            for v, n in sorted(verbs.items())
            if n >= min_count
            and (form := _attested(_third_person_forms(v), corpus))
            and (v not in transitive or v in found["objects"] or v in found["instruments"])
        }
        if not third:
            raise PromptError(
                f"recombine: no motion verb occurs {min_count}+ times with its third-person form in the text "
                f"of {len(captions)} captions (are the captions tokenised as word/POS?)"
            )
        return cls(
            verbs={v: verbs[v] for v in third},
            third=third,
            gerund={v: g for v in third if (g := _attested(_gerund_forms(v), corpus))},
            objects={v: p for v, p in found["objects"].items() if v in third},
            instruments={v: p for v, p in found["instruments"].items() if v in third},
            directions={v: d for v, d in found["directions"].items() if v in third},
            adverbs={v: a for v, a in found["adverbs"].items() if v in third and a},
            transitive=frozenset(transitive & set(third)),
        )

    def _verb(self, rng: np.random.Generator, exclude: str | None = None, ing: bool = False) -> str:
        pool = [v for v in self.verbs if v != exclude and (not ing or v in self.gerund)]
        weights = np.array([self.verbs[v] for v in pool], dtype=float)
        return pool[int(rng.choice(len(pool), p=weights / weights.sum()))]

    def _clause(self, verb: str, form: str, poss: str, rng: np.random.Generator) -> str:
        def pick(options: Sequence[Any]) -> Any:
            return options[int(rng.integers(len(options)))]

        def maybe(options: Sequence[str]) -> str:
            return pick(options) if options and rng.random() < 0.5 else ""

        def body(phrases: Sequence[tuple[str, str]]) -> str:
            side, noun = pick(phrases)
            return {"side": f"{poss} {pick(_SIDES)} {noun}", "both": f"both {noun}"}.get(side, f"{poss} {noun}")

        def direction(required: bool) -> str:
            options = self.directions.get(verb, [])
            word = pick(options) if required else maybe(options)
            return pick(_DIRECTION_PHRASES[word]).format(poss=poss) if word else ""

        shapes = [s for s, slots in (("object", self.objects), ("instrument", self.instruments)) if verb in slots]
        if verb not in self.transitive:
            shapes += ["direction"] if verb in self.directions else []
        shape = pick(shapes) if shapes else "bare"
        if shape == "object":
            rest = [body(self.objects[verb]), direction(False)]
        elif shape == "instrument":
            rest = [direction(False), f"with {body(self.instruments[verb])}"]
        elif shape == "direction":
            rest = [direction(True)]
        else:
            rest = []
        adverbs = self.adverbs.get(verb, [])
        adverb = pick(adverbs) if shape == "bare" and adverbs else maybe(adverbs)
        before = adverb if adverb and rng.random() < 0.3 else ""
        after = "" if before else adverb
        inflected = self.third[verb] if form == "s" else self.gerund[verb]
        return " ".join(w for w in (before, inflected, *rest, after) if w)

    def sentence(self, rng: np.random.Generator) -> str:
        subject, poss = _SUBJECTS[int(rng.integers(len(_SUBJECTS)))]
        shapes = ["one"] + (["then", "and_then"] if len(self.verbs) > 1 else []) + (["is"] if self.gerund else [])
        shapes += ["before"] if len(self.gerund) > 1 else []  # a second -ing verb besides the first clause's
        shape = shapes[int(rng.integers(len(shapes)))]
        if shape == "is":
            return f"{subject} is {self._clause(self._verb(rng, ing=True), 'ing', poss, rng)}."
        first_verb = self._verb(rng)
        first = self._clause(first_verb, "s", poss, rng)
        if shape == "one":
            return f"{subject} {first}."
        if shape == "before":
            second = self._clause(self._verb(rng, exclude=first_verb, ing=True), "ing", poss, rng)
            return f"{subject} {first} before {second}."
        second = self._clause(self._verb(rng, exclude=first_verb), "s", poss, rng)
        joint = ", then" if shape == "then" else " and then"
        return f"{subject} {first}{joint} {second}."


def _is_side_of_body(words: list[str], tags: list[str], i: int, end: int, surface: set[str]) -> bool:
    """Whether the left/right at ``i`` names a limb's side ("left arm") rather than a direction."""
    phrase = _noun_phrase(words, tags, i, end, surface) if words[i] in _SIDES else None
    return phrase is not None and phrase[0] == "side"


def recombine_candidates(captions: Sequence[Caption], seed: int, min_count: int = 2) -> Iterator[Candidate]:
    """Endless recombined sentences of ``captions``' slots (see :class:`Recombiner`), seeded."""
    recombiner = Recombiner.from_captions(captions, min_count)
    rng = np.random.default_rng(seed)
    while True:
        yield Candidate(recombiner.sentence(rng), None, "recombine")


# ------------------------------------------------------------------------------------------------ llm

_SYSTEM_PROMPT = (
    "You write short descriptions of human body motions for a text-to-motion dataset: one sentence each, "
    "third person, saying only what the body does (limbs, directions, speed, order of actions)."
)
_BULLET = re.compile(r"^(?:[-*\u2022]+|\(?\d+[.):]?\)?)\s+")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def api_key(endpoint: LLMEndpoint) -> str | None:
    if endpoint.api_key_env is None:
        return None
    key = os.environ.get(endpoint.api_key_env)
    if not key:
        raise PromptError(f"llm backend: environment variable {endpoint.api_key_env} (llm.api_key_env) is not set")
    return key


def chat_messages(examples: Sequence[str], k: int) -> list[dict[str, str]]:
    shown = "\n".join(f"- {e}" for e in examples)
    ask = (
        f"Examples of motion descriptions:\n{shown}\n\nWrite {k} new descriptions of different motions, in the "
        "same style but not copying or paraphrasing the examples. Answer with a JSON list of strings only."
    )
    return [{"role": "system", "content": _SYSTEM_PROMPT}, {"role": "user", "content": ask}]


def parse_reply(content: str) -> list[str]:
    """Descriptions in a model's reply: a JSON list of strings (possibly fenced, or the one list of a JSON
    object), else one per line with bullets, numbers and quotes removed; in free text, lead-in lines
    ("Here are ...:") and chatter shorter than three words ("Sure!") are not descriptions."""
    text = content.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else None
    is_list = isinstance(data, list) and all(isinstance(x, str) for x in data)
    min_words = 1 if is_list else 3
    out = []
    for line in data if is_list else text.splitlines():
        line = " ".join(_BULLET.sub("", line.strip()).strip(" \t\"'[],").split())
        if len(re.findall(r"[A-Za-z]+", line)) >= min_words and not line.endswith(":"):
            out.append(line)
    return out


def request_prompts(endpoint: LLMEndpoint, examples: Sequence[str], k: int, seed: int | None = None) -> list[str]:
    """Ask the endpoint for ``k`` new descriptions in the style of ``examples``; at most ``k`` come back.

    Raises ``PromptError`` naming the URL for a connection failure, a timeout, an HTTP error status
    (with the start of the body) or an answer that is not a chat completion holding any description.
    """
    url = endpoint.url
    body: dict[str, Any] = {
        "model": endpoint.model,
        "messages": chat_messages(examples, k),
        "temperature": endpoint.temperature,
    }
    if seed is not None:
        body["seed"] = seed
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = api_key(endpoint)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=endpoint.timeout_s) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        detail = err.read(300).decode("utf-8", "replace").strip()
        raise PromptError(f"llm backend: POST {url} answered HTTP {err.code} {err.reason}: {detail!r}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):  # a connect timeout comes wrapped, a read timeout bare
            raise PromptError(f"llm backend: POST {url}: no answer within {endpoint.timeout_s:g} s") from None
        raise PromptError(f"llm backend: POST {url} failed: {err.reason}") from None
    except TimeoutError:
        raise PromptError(f"llm backend: POST {url}: no answer within {endpoint.timeout_s:g} s") from None
    except OSError as err:
        raise PromptError(f"llm backend: POST {url} failed: {err}") from None
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(content)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        raise PromptError(
            f"llm backend: POST {url}: expected a chat completion with choices[0].message.content, got {raw[:200]!r}"
        ) from None
    prompts = parse_reply(content)
    if not prompts:
        raise PromptError(f"llm backend: POST {url}: the reply holds no descriptions: {content[:200]!r}")
    return prompts[:k]


def llm_candidates(endpoint: LLMEndpoint, examples: Sequence[str], seed: int) -> Iterator[Candidate]:
    """Endless descriptions from ``endpoint``, one request of ``batch_size`` at a time, each showing
    ``n_examples`` captions drawn (seeded) from ``examples``; the request carries a seed too, which
    servers that support it use for reproducible sampling."""
    if not examples:
        raise PromptError("llm backend: no example captions to show the model")
    rng = np.random.default_rng(seed)
    for request in itertools.count():
        shown = sorted(rng.choice(len(examples), size=min(endpoint.n_examples, len(examples)), replace=False))
        for text in request_prompts(
            endpoint, [examples[i] for i in shown], endpoint.batch_size, (seed + request) % 2**31
        ):
            yield Candidate(text, None, "llm")


# ------------------------------------------------------------------------------------------------ pipeline


def reference_captions(root: str | os.PathLike, splits: Sequence[str]) -> list[Caption]:
    """Every caption of the clips listed in ``splits`` (a clip listed twice is read once)."""
    clip_ids = dict.fromkeys(clip_id for split in splits for clip_id in read_split(root, split))
    return [caption for clip_id in clip_ids for caption in read_captions(root, clip_id)]


def _backend_seed(seed: int, backend: Backend) -> int:
    """A seed per backend, so adding one backend leaves the others' prompts unchanged."""
    ss = np.random.SeedSequence(seed, spawn_key=(BACKENDS.index(backend),))
    return int(ss.generate_state(1)[0] >> 1)  # below 2**31: also a valid seed for an LLM server


def _split_seed(seed: int) -> int:
    """The seed of the split's permutation: a stream of its own, so the split draws nothing from a backend's."""
    return int(np.random.SeedSequence(seed, spawn_key=(_SPLIT_STREAM,)).generate_state(1)[0])


def group_key(text: str, program: str | float | None) -> str:
    """What a prompt is split by: its program JSON, else (None, or pandas' NaN) its normalised text, each distinct
    text its own group. A normalised text holds no braces or quotes, so it never equals a program's JSON."""
    return program if isinstance(program, str) else normalise(text)


def split_sizes(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """How many of ``n`` groups each split gets: the floor of ``n * fraction``, the groups left over going to the
    largest remainders (ties to the split listed first); when there are at least as many groups as splits, a
    split left empty takes one group from the largest, so the test split is never empty by rounding."""
    if not fractions or any(f <= 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"split fractions must be positive and sum to 1, got {dict(fractions)}")
    quotas = {name: n * f for name, f in fractions.items()}
    sizes = {name: math.floor(q) for name, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda name: quotas[name] - sizes[name], reverse=True)  # stable on ties
    for name in by_remainder[: max(0, n - sum(sizes.values()))]:
        sizes[name] += 1
    if n >= len(sizes):
        for name in sizes:
            if sizes[name] == 0:
                largest = max(sizes, key=lambda k: sizes[k])
                sizes[largest] -= 1
                sizes[name] += 1
    return sizes


def split_groups(keys: Iterable[str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """The split of every distinct key: a seeded permutation of the sorted distinct keys, cut into
    :func:`split_sizes` in the order of ``fractions``. Sorted first, so the split depends on the set of groups,
    not on the order the prompts came in."""
    distinct = sorted(set(keys))
    names = [name for name, size in split_sizes(len(distinct), fractions).items() for _ in range(size)]
    order = np.random.default_rng(seed).permutation(len(distinct))
    return {distinct[i]: name for i, name in zip(order, names, strict=True)}


def _collect(
    stream: Iterator[Candidate], deduper: Deduper, n: int, max_candidates: int
) -> tuple[list[Candidate], Counter[str], int]:
    """Pull candidates until ``n`` survive dedupe or ``max_candidates`` were pulled (only as many as still
    needed each time, so a request-based backend is not asked for more than it must)."""
    kept: list[Candidate] = []
    dropped: Counter[str] = Counter()
    pulled = 0
    while len(kept) < n and pulled < max_candidates:
        chunk = list(itertools.islice(stream, min(n - len(kept), max_candidates - pulled)))
        if not chunk:
            break
        pulled += len(chunk)
        more, why = deduper.filter(chunk, n - len(kept))
        kept += more
        dropped += why
    return kept, dropped, pulled


def generate_prompts(
    dataset_root: str | os.PathLike,
    counts: Mapping[str, int],
    seed: int,
    near_threshold: float = 0.9,
    max_candidates_factor: float = 4.0,
    reference_splits: Sequence[str] = ("train", "val", "test"),
    example_split: str = "train",
    min_count: int = 2,
    llm: LLMEndpoint | None = None,
    split: SplitFractions = _DEFAULT_SPLIT,
) -> GeneratedPrompts:
    """Prompts from the backends in ``counts`` (backend -> how many), deduped, split, and statistics.

    Backends run in the order of ``BACKENDS``, each on its own seed, and are deduped against the captions
    of ``reference_splits`` and every prompt kept before; a backend that cannot reach its count after
    ``max_candidates_factor * count`` candidates keeps what it has, with a warning. The recombine slots
    and the LLM's examples come from ``example_split``. Prompt ids are ``p00000``, ``p00001``, ... in
    that order; with one backend, the first k prompts do not depend on the count asked for (their split
    may: it is drawn over all the groups kept, :func:`split_groups` with the fractions ``split``).
    """
    unknown = sorted(set(counts) - set(BACKENDS))
    if unknown:
        raise ValueError(f"prompt counts: unknown backend(s) {unknown}; expected some of {list(BACKENDS)}")
    if any(not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"prompt counts must be integers >= 0, got {dict(counts)}")
    if max_candidates_factor < 1:
        raise ValueError(f"max_candidates_factor must be >= 1, got {max_candidates_factor}")
    if counts.get("llm", 0) and llm is None:
        raise ValueError("prompt counts ask for llm prompts but no LLM endpoint (base_url, model) is configured")
    root = Path(dataset_root)
    reference = reference_captions(root, reference_splits)
    deduper = Deduper((c.text for c in reference), near_threshold)
    examples: list[Caption] = []
    if counts.get("recombine", 0) or counts.get("llm", 0):
        examples = reference_captions(root, (example_split,))
    kept: list[Candidate] = []
    sources: dict[str, dict[str, int]] = {}
    programs_available = 0
    for backend in BACKENDS:
        n = counts.get(backend, 0)
        if not n:
            continue
        backend_seed = _backend_seed(seed, backend)
        if backend == "synthetic":
            programs = read_novel_programs(root)
            programs_available = len({p.to_json() for p in programs})
            stream = synthetic_candidates(programs, backend_seed)
        elif backend == "familiar":
            stream = familiar_candidates(root, backend_seed)
        elif backend == "recombine":
            stream = recombine_candidates(examples, backend_seed, min_count)
        else:
            assert llm is not None
            texts = list(dict.fromkeys(c.text for c in examples))
            stream = llm_candidates(llm, texts, backend_seed)
        cap = math.ceil(n * max_candidates_factor)
        got, dropped, pulled = _collect(stream, deduper, n, cap)
        if len(got) < n:
            warnings.warn(
                f"{backend} prompts: kept {len(got)} of {n} after {pulled} candidates "
                f"(dropped {dict(dropped)}); raise max_candidates_factor or lower the count",
                stacklevel=2,
            )
        kept += got
        sources[backend] = {"requested": n, "candidates": pulled, "kept": len(got)}
        sources[backend] |= {reason: dropped[reason] for reason in DROP_REASONS}
    groups = [group_key(c.text, c.program) for c in kept]
    split_of = split_groups(groups, split.model_dump(), _split_seed(seed))
    columns = {
        "prompt_id": [f"p{i:05d}" for i in range(len(kept))],
        "text": [c.text for c in kept],
        "program": [c.program for c in kept],
        "source": [c.source for c in kept],
        "group": groups,
        "split": [split_of[g] for g in groups],
    }
    # Through arrow, so the dtypes (and how a missing program reads) are those read_prompts gives back.
    table = pa.Table.from_pydict(columns, schema=PROMPTS_SCHEMA).to_pandas()
    stats: dict[str, Any] = {
        "requested": sum(s["requested"] for s in sources.values()),
        "candidates": sum(s["candidates"] for s in sources.values()),
        "kept": len(kept),
        "dropped": {reason: sum(s[reason] for s in sources.values()) for reason in DROP_REASONS},
        "sources": sources,
        "reference_captions": len(deduper.reference_keys),
        "reference_splits": list(reference_splits),
        "near_threshold": near_threshold,
        "similarity": SIMILARITY,
        "split": {
            name: {
                "prompts": sum(split_of[g] == name for g in groups),
                "programs": sum(s == name for s in split_of.values()),
            }
            for name in SPLITS
        },
    }
    if "synthetic" in sources:
        used = len({c.program for c in kept if c.source == "synthetic"})
        stats["programs"] = {"distinct": programs_available, "used": used}
    return GeneratedPrompts(table, stats)


def _check_table(table: pd.DataFrame, where: str) -> None:
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{where}: lacks column(s) {missing}; expected columns {list(COLUMNS)} (a table written before the "
            "program-level split has no group or split: rerun the generate_prompts stage)"
        )
    if list(table.columns) != list(COLUMNS):
        raise ValueError(f"{where}: expected columns {list(COLUMNS)}, got {list(table.columns)}")
    duplicated = table["prompt_id"][table["prompt_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{where}: duplicate prompt_id(s) {duplicated[:5]}")
    bad = sorted(set(table["source"]) - set(BACKENDS))
    if bad:
        raise ValueError(f"{where}: unknown source(s) {bad}; expected some of {list(BACKENDS)}")
    bad = sorted(set(table["split"]) - set(SPLITS), key=str)
    if bad:
        raise ValueError(f"{where}: unknown split(s) {bad}; expected some of {list(SPLITS)}")
    if table["group"].isna().any():
        raise ValueError(f"{where}: prompt {table.loc[table['group'].isna(), 'prompt_id'].iloc[0]!r} has no group")
    splits_per_group = table.groupby("group")["split"].nunique()
    crossing = splits_per_group[splits_per_group > 1].index.tolist()
    if crossing:
        raise ValueError(
            f"{where}: {len(crossing)} group(s) span several splits, e.g. {crossing[0][:80]!r}; every prompt of a "
            "program must share its split, or a held-out prompt rewords a training one"
        )


def write_prompts(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the prompt table as parquet (``PROMPTS_SCHEMA``), atomically."""
    _check_table(table, f"prompts for {path}")
    write_parquet(path, table, PROMPTS_SCHEMA)


def read_prompts(path: str | os.PathLike) -> pd.DataFrame:
    """The prompt table written by :func:`write_prompts`, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run the generate_prompts stage)")
    try:
        table = pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable parquet file ({err})") from None
    _check_table(table, str(path))
    return table
