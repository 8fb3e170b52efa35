from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motionpref.config import LLMEndpoint, SplitFractions
from motionpref.motion.text import parse_caption_line
from motionpref.prefs.prompts import (
    COLUMNS,
    Candidate,
    Deduper,
    PromptError,
    Recombiner,
    generate_prompts,
    group_key,
    normalise,
    parse_reply,
    read_novel_programs,
    read_novelty,
    read_prompts,
    reference_captions,
    request_prompts,
    split_groups,
    split_sizes,
    write_prompts,
)
from motionpref.synth.programs import Program
from motionpref.synth.world import build_dataset

# Captions in the HumanML3D release's format (spaCy lemmas and tags, as its text_process.py writes them).
REAL_LINES = {
    "000001": [
        "a man kicks something or someone with his left leg.#a/DET man/NOUN kick/VERB something/PRON or/CCONJ "
        "someone/PRON with/ADP his/DET left/ADJ leg/NOUN#0.0#0.0",
        "a person kicks forward with the right foot.#a/DET person/NOUN kick/VERB forward/ADV with/ADP the/DET "
        "right/ADJ foot/NOUN#0.0#0.0",
    ],
    "000002": [
        "a person walks forward slowly and then turns around.#a/DET person/NOUN walk/VERB forward/ADV "
        "slowly/ADV and/CCONJ then/ADV turn/VERB around/ADP#0.0#0.0",
        "a person walks to the left carefully.#a/DET person/NOUN walk/VERB to/ADP the/DET left/NOUN "
        "carefully/ADV#0.0#0.0",
    ],
    "000003": [
        # spaCy 2 tagged some "left"s VERB; the release keeps them so
        "the person raises their left arm up and waves.#the/DET person/NOUN raise/VERB their/DET left/VERB "
        "arm/NOUN up/ADP and/CCONJ wave/VERB#0.0#0.0",
        "a man waves his right hand slowly.#a/DET man/NOUN wave/VERB his/DET right/ADJ hand/NOUN slowly/ADV#0.0#0.0",
    ],
    "000004": [
        "someone is jumping up and down quickly.#someone/PRON is/AUX jump/VERB up/ADV and/CCONJ down/ADV "
        "quickly/ADV#0.0#0.0",
        "the man jumps forward with both feet.#the/DET man/NOUN jump/VERB forward/ADV with/ADP both/DET "
        "foot/NOUN#0.0#0.0",
    ],
    "000005": [
        "a person has a drink and then sits down.#a/DET person/NOUN have/VERB a/DET drink/NOUN and/CCONJ "
        "then/ADV sit/VERB down/ADV#0.0#0.0",
        "a person sitting down on a chair.#a/DET person/NOUN sit/VERB down/ADP on/ADP a/DET chair/NOUN#0.0#0.0",
    ],
    "000006": [
        "a figure throws a ball with the right hand.#a/DET figure/NOUN throw/VERB a/DET ball/NOUN with/ADP "
        "the/DET right/ADJ hand/NOUN#0.0#0.0",
        "a person is running forward then stops.#a/DET person/NOUN is/AUX run/VERB forward/ADV then/ADV "
        "stop/VERB#0.0#0.0",
    ],
    "000007": [
        "a person runs forward and turns to the right.#a/DET person/NOUN run/VERB forward/ADV and/CCONJ "
        "turn/VERB to/ADP the/DET right/NOUN#0.0#0.0",
    ],
}
REAL_CAPTIONS = [parse_caption_line(line) for lines in REAL_LINES.values() for line in lines]
SUBJECTS = ("a person", "someone", "a man", "a woman", "the person")


def write_real_folder(root: Path) -> Path:
    """Just the caption side of a HumanML3D folder: texts/ and the split files."""
    (root / "texts").mkdir(parents=True)
    for clip_id, lines in REAL_LINES.items():
        (root / "texts" / f"{clip_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = list(REAL_LINES)
    (root / "train.txt").write_text("\n".join(ids[:-2]) + "\n", encoding="utf-8")
    (root / "val.txt").write_text(ids[-2] + "\n", encoding="utf-8")
    (root / "test.txt").write_text(ids[-1] + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prompts") / "dataset"
    build_dataset(root, 12, seed=3, n_novel=8)
    return root


@pytest.fixture
def real_root(tmp_path) -> Path:
    return write_real_folder(tmp_path / "real")


# ------------------------------------------------------------------------------------------------ dedupe


def test_normalise_lowercases_strips_punctuation_and_collapses_spaces():
    assert normalise("  A person,  walks FORWARD!\tslowly. ") == "a person walks forward slowly"
    assert normalise("someone's arm-swing") == "someone s arm swing"


def test_similarity_is_tfidf_cosine_with_reference_idf_by_hand():
    deduper = Deduper(["a person walks", "a person runs"], threshold=0.9)
    # Words of 2+ letters and their bigrams; idf = ln((1 + N) / (1 + df)) + 1 over the N = 2 references:
    # person 1, walks 1 + ln 1.5, "person walks" 1 + ln 1.5; fast and "walks fast" are unseen: 1 + ln 3.
    a, b = 1 + math.log(1.5), 1 + math.log(3)
    expected = (1 + 2 * a * a) / (math.sqrt(1 + 2 * a * a + 2 * b * b) * math.sqrt(1 + 2 * a * a))
    assert deduper.max_reference_similarity(["a person walks fast"])[0] == pytest.approx(expected)
    assert deduper.max_reference_similarity(["A person... walks!"])[0] == pytest.approx(1.0)
    assert deduper.max_reference_similarity(["jumping jacks"])[0] == 0.0


def test_dedupe_drops_exact_and_near_duplicates_and_keeps_distinct_ones():
    reference = ["A person walks forward slowly.", "someone jumps up twice", "a man waves his left hand"]
    deduper = Deduper(reference, threshold=0.75)

    def cand(text: str) -> Candidate:
        return Candidate(text, None, "llm")

    first = [
        cand("A person walks forward, slowly!"),  # the reference, punctuated differently
        cand("a person walks forward slowly now"),  # cosine 0.80 to the first reference
        cand("a person walks forward quickly"),  # 0.63: kept
        cand("a man throws a ball with his left hand"),
        cand("A man throws a ball with his LEFT hand."),  # the prompt kept just before
        cand("a man throws a ball with his left hand quickly"),  # 0.91 to it, in the same batch
    ]
    kept, dropped = deduper.filter(first, limit=10)
    assert [c.text for c in kept] == ["a person walks forward quickly", "a man throws a ball with his left hand"]
    assert dropped == {"exact_reference": 1, "near_reference": 1, "exact_self": 1, "near_self": 1}
    # A later batch is compared with the prompts kept by earlier ones.
    later = [
        cand("a man throws a ball with his left hand slowly"),
        cand("someone jumps up twice and claps"),
    ]  # 0.93, 0.68
    kept, dropped = deduper.filter(later, limit=10)
    assert [c.text for c in kept] == ["someone jumps up twice and claps"]
    assert dropped == {"near_self": 1}


def test_dedupe_stops_at_the_limit_and_checks_its_threshold():
    deduper = Deduper(["a person walks"], threshold=0.9)
    cands = [Candidate(f"a dancer spins {w}", None, "llm") for w in ("left", "right", "twice", "fast")]
    kept, dropped = deduper.filter(cands, limit=2)
    assert len(kept) == 2 and not dropped
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            Deduper(["a person walks"], threshold=bad)
    with pytest.raises(ValueError, match="reference caption"):
        Deduper(["", "  ...  "], threshold=0.9)


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_prompts_carry_novel_programs_unlike_the_captions(synthetic_root):
    novel = read_novel_programs(synthetic_root)
    distinct = {p.to_json() for p in novel}
    n = 2 * len(distinct)
    table, stats = generate_prompts(synthetic_root, {"synthetic": n}, seed=0)
    assert list(table.columns) == list(COLUMNS)
    assert stats["kept"] == len(table) == n and set(table["source"]) == {"synthetic"}
    assert table["prompt_id"].tolist() == [f"p{i:05d}" for i in range(n)]
    programs = [Program.from_json(p) for p in table["program"]]
    assert {p.to_json() for p in programs} == distinct  # each novel program at least once
    assert stats["programs"] == {"distinct": len(distinct), "used": len(distinct)}
    training = {normalise(c.text) for c in reference_captions(synthetic_root, ("train", "val", "test"))}
    assert not {normalise(t) for t in table["text"]} & training
    assert len({normalise(t) for t in table["text"]}) == n
    deduper = Deduper(sorted(training), threshold=0.9)
    assert deduper.max_reference_similarity(table["text"].tolist()).max() < 0.9
    dropped = sum(stats["dropped"].values())
    assert stats["candidates"] == n + dropped == stats["sources"]["synthetic"]["candidates"]


def test_prompts_are_deterministic_and_prefix_stable(synthetic_root):
    a, stats_a = generate_prompts(synthetic_root, {"synthetic": 10}, seed=5)
    b, stats_b = generate_prompts(synthetic_root, {"synthetic": 10}, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert stats_a == stats_b
    other, _ = generate_prompts(synthetic_root, {"synthetic": 10}, seed=6)
    assert other["text"].tolist() != a["text"].tolist()
    fewer, _ = generate_prompts(synthetic_root, {"synthetic": 6}, seed=5)
    # the split is drawn over every program kept, so only the prompts themselves are prefix-stable
    pd.testing.assert_frame_equal(fewer.drop(columns="split"), a.head(6).drop(columns="split"))


def test_familiar_prompts_are_new_programs_of_the_training_distribution(synthetic_root):
    from motionpref.synth.world import read_programs

    table, stats = generate_prompts(synthetic_root, {"synthetic": 4, "familiar": 6}, seed=0)
    assert table["source"].tolist() == ["synthetic"] * 4 + ["familiar"] * 6  # in the order of BACKENDS
    assert stats["sources"]["familiar"]["kept"] == 6
    novelty = read_novelty(synthetic_root)
    familiar = [Program.from_json(p) for p in table.loc[table["source"] == "familiar", "program"]]
    dataset = {program.key() for program, _ in read_programs(synthetic_root).values()}
    assert all(not novelty.held_out_in(p) for p in familiar)  # no held-out combination
    assert all(p.key() not in dataset for p in familiar)  # no clip's program
    assert len({p.key() for p in familiar}) == 6
    novel = [Program.from_json(p) for p in table.loc[table["source"] == "synthetic", "program"]]
    assert all(novelty.held_out_in(p) for p in novel)
    # adding a backend leaves the prompts of the others as they were
    alone, _ = generate_prompts(synthetic_root, {"synthetic": 4}, seed=0)
    pd.testing.assert_frame_equal(alone.drop(columns="split"), table.head(4).drop(columns="split"))


@pytest.mark.parametrize(
    ("backend", "name", "content", "missing", "malformed"),
    [
        (
            "synthetic",
            "novel_programs.jsonl",
            '{"id": "n0", "program": {"segments": []}}\n',
            r"novel_programs\.jsonl: missing.*recombine or llm",
            r"novel_programs\.jsonl:1: .*program",
        ),
        (
            "familiar",
            "novelty.json",
            '{"pairs": []}',
            r"novelty\.json: missing",
            r"novelty\.json: NoveltySplit: expected",
        ),
    ],
)
def test_world_backends_need_a_synthetic_world(backend, name, content, missing, malformed, real_root, tmp_path):
    with pytest.raises(PromptError, match=missing):
        generate_prompts(real_root, {backend: 3}, seed=0)
    bad = write_real_folder(tmp_path / "bad")
    (bad / name).write_text(content, encoding="utf-8")
    with pytest.raises(PromptError, match=malformed):
        (read_novel_programs if backend == "synthetic" else read_novelty)(bad)


def test_generate_prompts_checks_its_arguments(real_root):
    with pytest.raises(ValueError, match="unknown backend"):
        generate_prompts(real_root, {"gpt": 3}, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        generate_prompts(real_root, {"recombine": -1}, seed=0)
    with pytest.raises(ValueError, match="no LLM endpoint"):
        generate_prompts(real_root, {"llm": 3}, seed=0)


# ------------------------------------------------------------------------------------------------ recombine


def test_recombiner_cuts_captions_into_slots():
    r = Recombiner.from_captions(REAL_CAPTIONS, min_count=1)
    assert "have" not in r.verbs and "stop" not in r.verbs  # light verbs say nothing about the motion
    assert r.third["kick"] == "kicks" and r.gerund["run"] == "running" and r.gerund["sit"] == "sitting"
    assert r.objects["raise"] == [("side", "arm")] and r.objects["wave"] == [("side", "hand")]
    assert r.instruments["kick"] == [("side", "foot"), ("side", "leg")]
    assert r.instruments["jump"] == [("both", "feet")]
    assert {"forward", "left"} <= set(r.directions["walk"]) and "right" in r.directions["turn"]
    assert {"slowly", "carefully"} <= set(r.adverbs["walk"])
    # "throw a ball" in its only clause: never said bare; "kick something" in one of two: can be.
    assert "throw" in r.transitive and "kick" not in r.transitive


def test_recombined_sentences_are_new_grammatical_and_seeded():
    r = Recombiner.from_captions(REAL_CAPTIONS, min_count=1)
    rng = np.random.default_rng(7)
    sentences = [r.sentence(rng) for _ in range(60)]
    again = np.random.default_rng(7)
    assert [r.sentence(again) for _ in range(60)] == sentences
    other = np.random.default_rng(8)
    assert [r.sentence(other) for _ in range(60)] != sentences
    adverbs = {a for values in r.adverbs.values() for a in values}
    inflected = set(r.third.values())
    for s in sentences:
        assert s.endswith(".") and s.startswith(SUBJECTS), s
        rest = s[len(next(x for x in SUBJECTS if s.startswith(x))) + 1 :].split()
        head = rest[1] if rest[0] in adverbs else rest[0]
        assert head == "is" or head in inflected, s
        assert not re.search(r"\b(has|haves|stops)\b", s), s
    training = {normalise(c.text) for c in REAL_CAPTIONS}
    novel = [s for s in sentences if normalise(s) not in training]
    assert len(novel) >= 0.9 * len(sentences)
    assert len(set(sentences)) >= 30


def test_recombiner_needs_tokenised_captions():
    untagged = [parse_caption_line("a person walks forward.##0.0#0.0")]
    with pytest.raises(PromptError, match="word/POS"):
        Recombiner.from_captions(untagged, min_count=1)


def test_recombine_backend_on_a_real_folder(real_root):
    table, stats = generate_prompts(real_root, {"recombine": 12}, seed=1, min_count=1)
    assert len(table) == 12 and set(table["source"]) == {"recombine"} and table["program"].isna().all()
    reference = {normalise(c.text) for c in reference_captions(real_root, ("train", "val", "test"))}
    assert not {normalise(t) for t in table["text"]} & reference
    assert stats["reference_captions"] == len(reference)
    assert "programs" not in stats


# ------------------------------------------------------------------------------------------------ llm


class FakeLLM:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1, answering as ``mode`` says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.reply: Any = ["a dancer spins twice on one leg", "someone crawls forward on the floor"]
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, dict(self.headers), body))
                if self.path != "/v1/chat/completions":
                    return self._send(404, b'{"error": "not found"}')
                if fake.mode == "error":
                    return self._send(500, b'{"error": {"message": "model overloaded"}}')
                if fake.mode == "slow":
                    time.sleep(0.6)
                if fake.mode == "malformed":
                    return self._send(200, b'{"id": "x", "object": "chat.completion", "choices": []}')
                content = fake.reply if isinstance(fake.reply, str) else "```json\n" + json.dumps(fake.reply) + "\n```"
                answer = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                    ],
                }
                self._send(200, json.dumps(answer).encode())

            def _send(self, status: int, payload: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_llm_request_happy_path(fake_llm, monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", "sk-test")
    endpoint = LLMEndpoint(
        base_url=fake_llm.base_url + "/", model="tiny-model", api_key_env="FAKE_LLM_KEY", batch_size=2
    )
    examples = ["a person walks forward slowly.", "a man waves his right hand."]
    assert request_prompts(endpoint, examples, 2, seed=11) == fake_llm.reply
    path, headers, body = fake_llm.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "tiny-model" and body["seed"] == 11
    asked = body["messages"][-1]["content"]
    assert all(e in asked for e in examples) and "Write 2 new descriptions" in asked


def test_llm_errors_name_the_url_and_the_problem(fake_llm, monkeypatch):
    endpoint = LLMEndpoint(base_url=fake_llm.base_url, model="tiny-model", timeout_s=0.2)
    url = re.escape(fake_llm.base_url + "/chat/completions")
    fake_llm.mode = "error"
    with pytest.raises(PromptError, match=rf"{url} answered HTTP 500 .*model overloaded"):
        request_prompts(endpoint, ["a person walks."], 3)
    fake_llm.mode = "malformed"
    with pytest.raises(PromptError, match=rf"{url}: expected a chat completion with choices\[0\]"):
        request_prompts(endpoint, ["a person walks."], 3)
    fake_llm.mode, fake_llm.reply = "ok", "Sure!\n\nHere are the new descriptions:\n"
    with pytest.raises(PromptError, match=rf"{url}: the reply holds no descriptions"):
        request_prompts(endpoint, ["a person walks."], 3)
    fake_llm.mode = "slow"
    with pytest.raises(PromptError, match=rf"{url}: no answer within 0.2 s"):
        request_prompts(endpoint, ["a person walks."], 3)
    wrong = LLMEndpoint(base_url=fake_llm.base_url.replace("/v1", "/v2"), model="tiny-model")
    with pytest.raises(PromptError, match="HTTP 404"):
        request_prompts(wrong, ["a person walks."], 3)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(PromptError, match="NO_SUCH_KEY_VAR"):
        request_prompts(LLMEndpoint(base_url=fake_llm.base_url, model="m", api_key_env="NO_SUCH_KEY_VAR"), ["x"], 1)
    with pytest.raises(ValueError, match="http"):
        LLMEndpoint(base_url="127.0.0.1:8000", model="m")


def test_parse_reply_reads_lists_objects_and_lines():
    assert parse_reply('["a person hops.", "someone bows"]') == ["a person hops.", "someone bows"]
    assert parse_reply('{"prompts": ["a person hops."]}') == ["a person hops."]
    lines = 'Sure!\nHere are 3 new descriptions:\n1. "a person hops."\n- someone bows down\n\n* a man spins twice\n'
    assert parse_reply(lines) == ["a person hops.", "someone bows down", "a man spins twice"]
    broken = '[\n  "a person hops.",\n  "someone bows down"\n'  # a JSON list cut short: read by lines
    assert parse_reply(broken) == ["a person hops.", "someone bows down"]


def test_llm_backend_in_generate_prompts(fake_llm, real_root):
    fake_llm.reply = [
        "A man waves his right hand slowly!",  # a training caption
        "a dancer spins twice on one leg",
        "A dancer spins twice on one leg.",
        "someone crawls forward on the floor",
        "a person does a cartwheel to the left",
    ]
    endpoint = LLMEndpoint(base_url=fake_llm.base_url, model="tiny-model", batch_size=5, n_examples=3)
    table, stats = generate_prompts(real_root, {"llm": 3}, seed=0, llm=endpoint)
    assert table["text"].tolist() == fake_llm.reply[1:2] + fake_llm.reply[3:]
    assert set(table["source"]) == {"llm"} and table["program"].isna().all()
    assert stats["sources"]["llm"] == {
        "requested": 3,
        "candidates": 5,
        "kept": 3,
        "exact_reference": 1,
        "near_reference": 0,
        "exact_self": 1,
        "near_self": 0,
    }
    assert len(fake_llm.requests) == 1  # asked only as often as needed
    shown = fake_llm.requests[0][2]["messages"][-1]["content"]
    assert sum(line.startswith("- ") for line in shown.splitlines()) == 3
    # Every answer a duplicate: stops after max_candidates_factor * count candidates, with a warning.
    fake_llm.reply = ["a man waves his right hand slowly."]
    with pytest.warns(UserWarning, match=r"llm prompts: kept 0 of 2 after 4 candidates"):
        table, stats = generate_prompts(real_root, {"llm": 2}, seed=0, llm=endpoint, max_candidates_factor=2)
    assert table.empty and stats["dropped"]["exact_reference"] == 4


# ------------------------------------------------------------------------------------------------ split

SMOKE_SPLIT = SplitFractions(train=0.5, val=0.25, test=0.25)


def test_group_key_is_the_program_else_the_normalised_text():
    walk = '{"segments":[{"primitive":"walk","speed":"normal","count":4,"amplitude":"normal"}]}'
    assert group_key("A man walks, slowly!", walk) == walk
    assert group_key("A man walks, slowly!", None) == group_key("a man walks slowly", None) == "a man walks slowly"


def test_split_sizes_by_hand():
    assert split_sizes(600, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 480, "val": 60, "test": 60}
    assert split_sizes(16, SMOKE_SPLIT.model_dump()) == {"train": 8, "val": 4, "test": 4}
    # 12 groups: 9.6 / 1.2 / 1.2 floor to 9 / 1 / 1, and the one left goes to the largest remainder (train)
    assert split_sizes(12, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 10, "val": 1, "test": 1}
    # 3 groups round to 3 / 0 / 0: each empty split takes one from the largest
    assert split_sizes(3, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 1, "val": 1, "test": 1}
    assert split_sizes(2, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 2, "val": 0, "test": 0}
    with pytest.raises(ValueError, match="positive and sum to 1"):
        split_sizes(3, {"train": 0.5, "val": 0.1, "test": 0.1})


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 60),
    st.lists(st.integers(1, 20), min_size=1, max_size=4).map(lambda w: {f"s{i}": x / sum(w) for i, x in enumerate(w)}),
)
def test_split_sizes_round_by_largest_remainder_and_leave_no_split_empty(n, fractions):
    sizes = split_sizes(n, fractions)
    assert list(sizes) == list(fractions) and sum(sizes.values()) == n
    lifted = 0
    if n >= len(fractions):
        assert min(sizes.values()) >= 1
        lifted = sum(n * f < 1 for f in fractions.values())
    # rounding puts a split less than one group off its share, the lift of empty splits moves at most `lifted`
    assert all(abs(sizes[k] - n * f) < 1 + lifted for k, f in fractions.items())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from("abcdefghijkl"), max_size=40), st.integers(0, 2**32 - 1))
def test_split_groups_depends_on_the_set_of_groups_alone(keys, seed):
    fractions = SMOKE_SPLIT.model_dump()
    split = split_groups(keys, fractions, seed)
    assert set(split) == set(keys)
    assert split == split_groups([*reversed(keys), *keys], fractions, seed)  # order and repeats do not matter
    sizes = split_sizes(len(set(keys)), fractions)
    assert {name: list(split.values()).count(name) for name in fractions} == sizes


def test_split_groups_is_seeded():
    keys = [f"g{i}" for i in range(40)]
    fractions = SMOKE_SPLIT.model_dump()
    assert split_groups(keys, fractions, 1) == split_groups(keys, fractions, 1)
    assert split_groups(keys, fractions, 1) != split_groups(keys, fractions, 2)


def test_every_program_is_in_one_split(synthetic_root):
    novel = {p.to_json() for p in read_novel_programs(synthetic_root)}
    n = 3 * len(novel)  # each program paraphrased three times
    table, stats = generate_prompts(synthetic_root, {"synthetic": n}, seed=2, split=SMOKE_SPLIT)
    assert len(table) == n and (table["group"] == table["program"]).all()
    assert (table.groupby("program")["split"].nunique() == 1).all()  # no program crosses splits
    assert (table.groupby("program").size() >= 2).all()  # which the paraphrases would have, split by prompt
    sizes = split_sizes(len(novel), SMOKE_SPLIT.model_dump())
    assert {name: stats["split"][name]["programs"] for name in sizes} == sizes
    assert {name: stats["split"][name]["prompts"] for name in sizes} == {
        name: int((table["split"] == name).sum()) for name in sizes
    }
    again, _ = generate_prompts(synthetic_root, {"synthetic": n}, seed=2, split=SMOKE_SPLIT)
    pd.testing.assert_frame_equal(again, table)


def test_prompts_without_a_program_are_each_their_own_group(real_root):
    table, stats = generate_prompts(real_root, {"recombine": 12}, seed=1, min_count=1)
    assert table["group"].tolist() == [normalise(t) for t in table["text"]] and table["group"].is_unique
    assert table["split"].value_counts().to_dict() == {"train": 10, "val": 1, "test": 1}  # the 0.8/0.1/0.1 default
    assert stats["split"]["test"] == {"prompts": 1, "programs": 1}


def test_prompt_tables_without_a_split_or_with_a_program_in_two_splits_are_refused(synthetic_root, tmp_path):
    table, _ = generate_prompts(synthetic_root, {"synthetic": 20}, seed=0, split=SMOKE_SPLIT)
    old = tmp_path / "old.parquet"
    table.drop(columns=["group", "split"]).to_parquet(old)
    with pytest.raises(ValueError, match=r"old\.parquet: lacks column\(s\) \['group', 'split'\]"):
        read_prompts(old)
    rows = table.index[table["program"] == table["program"].iloc[0]]
    crossing = table.copy()
    crossing.loc[rows[0], "split"] = "test" if table.loc[rows[0], "split"] != "test" else "train"
    with pytest.raises(ValueError, match=r"1 group\(s\) span several splits"):
        write_prompts(crossing, tmp_path / "crossing.parquet")
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['holdout'\]"):
        write_prompts(table.assign(split="holdout"), tmp_path / "holdout.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.parquet"]


# ------------------------------------------------------------------------------------------------ files


def test_write_and_read_prompts_round_trip(synthetic_root, real_root, tmp_path):
    synthetic, _ = generate_prompts(synthetic_root, {"synthetic": 4}, seed=0)
    recombined, _ = generate_prompts(real_root, {"recombine": 3}, seed=0, min_count=1)
    table = pd.concat([synthetic, recombined.assign(prompt_id=["q0", "q1", "q2"])], ignore_index=True)
    path = tmp_path / "prefs" / "prompts.parquet"
    write_prompts(table, path)
    back = read_prompts(path)
    pd.testing.assert_frame_equal(back, table)
    assert back["program"].isna().tolist() == [False] * 4 + [True] * 3
    with pytest.raises(ValueError, match="duplicate prompt_id"):
        write_prompts(pd.concat([table, table.head(1)]), tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match="expected columns"):
        write_prompts(table.drop(columns="program"), tmp_path / "cols.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefs", "real"]  # nothing half-written
