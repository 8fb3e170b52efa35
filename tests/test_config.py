from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from motionpref.config import ConfigError, Params, Section, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(raw: dict, path: str, value: Any) -> dict:
    *parents, key = path.split(".")
    table = raw
    for part in parents:
        table = table[part]
    table[key] = value
    return raw


def section_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key a params file can hold, down into nested sections (not into tables such as prompts.counts)."""
    for name, field in model.model_fields.items():
        yield (*prefix, name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            yield from section_keys(field.annotation, (*prefix, name))


def test_repo_params_are_valid_in_every_profile():
    raw = repo_params()
    assert raw["profile"] == "cpu"
    assert load_params(ROOT / "params.yaml") == parse_params(raw)  # no key given twice, either
    base = parse_params(raw)
    assert base.data.n_clips == raw["data"]["n_clips"]
    for profile in raw["profiles"]:
        resolved = parse_params({**raw, "profile": profile})
        assert resolved.profile == profile


def test_smoke_profile_shrinks_the_data():
    raw = repo_params()
    smoke = parse_params({**raw, "profile": "smoke"})
    assert smoke.data.n_clips < parse_params(raw).data.n_clips
    # values the profile does not override keep their base value
    assert smoke.data.n_captions == raw["data"]["n_captions"]


def test_unknown_key_names_its_path():
    raw = repo_params()
    raw["data"]["n_clip"] = 10
    with pytest.raises(ConfigError, match=r"data\.n_clip: unknown key"):
        parse_params(raw)


def test_wrong_type_names_path_and_expectation():
    raw = repo_params()
    raw["data"]["n_clips"] = "many"
    with pytest.raises(ConfigError, match=r"data\.n_clips: .*integer.*'many'"):
        parse_params(raw)


def test_out_of_range_value_names_path_and_bound():
    raw = repo_params()
    raw["data"]["split"] = {"train": 0.8, "val": 0.1, "test": 0.3}
    with pytest.raises(ConfigError, match=r"data\.split: .*must be 1"):
        parse_params(raw)
    raw = repo_params()
    raw["seed"] = -3
    with pytest.raises(ConfigError, match=r"seed: .*greater than or equal to 0"):
        parse_params(raw)


def test_a_key_left_out_takes_the_committed_value():
    # one source of defaults: a file without a key, or without any, means what the committed params.yaml says
    raw = repo_params()
    del raw["profiles"]
    committed = parse_params(raw).model_dump()
    assert parse_params({}).model_dump() == committed
    for path in section_keys(Params):
        partial = copy.deepcopy(raw)
        *parents, key = path
        table = partial
        for part in parents:
            table = table.get(part, {})
        if key in table:
            del table[key]
            assert parse_params(partial).model_dump() == committed, ".".join(path)


def test_a_partial_section_keeps_its_defaults():
    # pairs.sampling's default temperature is 1.2, not SamplingConfig's 1.0
    pairs = parse_params({"pairs": {"sampling": {"top_k": 5}}}).pairs
    assert pairs.sampling.temperature == 1.2 and pairs.sampling.top_k == 5
    assert parse_params({"algo": {"ppo": {"sampling": {"max_new_tokens": 24}}}}).algo.ppo.sampling.retries == 0


@pytest.mark.parametrize("selected", ["cpu", "smoke", "paper"])
def test_every_profile_is_validated_selected_or_not(selected):
    raw = repo_params()
    raw["profiles"]["smoke"]["data"]["n_clips"] = 0
    raw["profiles"]["paper"]["algo"]["dpo"]["epochs"] = 0
    raw["profiles"]["paper"]["data"] = {"min_len": 300}
    with pytest.raises(ConfigError) as err:
        parse_params({**raw, "profile": selected})
    lines = str(err.value).splitlines()
    assert lines[0] == "params.yaml: invalid parameters"
    assert lines[1].startswith("  profiles.smoke.data.n_clips: Input should be greater than or equal to 4")
    # an override is checked against the base it is merged into
    assert any(
        line.startswith("  profiles.paper.data: Value error, min_len (300) must be below max_len (196)")
        for line in lines
    )
    assert any(line.startswith("  profiles.paper.algo.dpo.epochs: Input should be greater than") for line in lines)


def test_a_profile_cannot_select_profiles():
    raw = repo_params()
    raw["profiles"]["smoke"]["profile"] = "paper"
    with pytest.raises(ConfigError, match=r"profiles\.smoke: a profile cannot set 'profile' or 'profiles'"):
        parse_params(raw)
    raw = repo_params()
    raw["profiles"]["smoke"]["data"]["n_clip"] = 10
    with pytest.raises(ConfigError, match=r"profiles\.smoke\.data\.n_clip: unknown key"):
        parse_params(raw)


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'tiny'.*cpu, smoke"):
        parse_params({**repo_params(), "profile": "tiny"})


def test_real_source_needs_a_root():
    raw = repo_params()
    raw["data"]["source"] = "humanml3d"
    with pytest.raises(ConfigError, match=r"data\.root"):
        parse_params(raw)


def test_unreadable_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


@pytest.mark.parametrize("path", ["vqvae.train.lr", "algo.ppo.lr", "labels.simulated.noise", "ingest.margins.better"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_no_float_is_infinite_or_nan(tmp_path, path, value):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(with_value(repo_params(), path, value)))  # written as .inf, -.inf, .nan
    with pytest.raises(ConfigError, match=rf"\n  {re.escape(path)}: Input should be a finite number"):
        load_params(params)


@pytest.mark.parametrize(
    ("temperatures", "error"),
    [
        ([0, -1], r"winrate\.temperatures\.0: Input should be greater than 0 .*\n  winrate\.temperatures\.1: "),
        ([], r"winrate\.temperatures: List should have at least 1 item"),
        ([1.2, 1.5, 1.2], r"winrate\.temperatures: .*\[1\.2\] listed more than once"),
    ],
)
def test_winrate_temperatures_are_positive_distinct_and_given(temperatures, error):
    with pytest.raises(ConfigError, match=error):
        parse_params(with_value(repo_params(), "winrate.temperatures", temperatures))


def test_win_rates_are_on_first_samples_only():
    with pytest.raises(ConfigError, match=r"winrate: .*sampling\.retries: win rates judge first samples"):
        parse_params(with_value(repo_params(), "winrate.sampling.retries", 2))
    assert parse_params(repo_params()).winrate.sampling.retries == 0


@pytest.mark.parametrize(
    ("counts", "error"),
    [
        ({"synthetic": -5}, r"prompts\.counts\.synthetic: Input should be greater than or equal to 0"),
        ({}, r"prompts\.counts: .*asks for no prompts"),
        ({"synthetic": 0, "familiar": 0}, r"prompts\.counts: .*asks for no prompts"),
        ({"llm": 5}, r"prompts: .*counts\.llm asks for 5 prompts; set llm's base_url and model"),
    ],
)
def test_prompt_counts_ask_for_some_prompts(counts, error):
    with pytest.raises(ConfigError, match=error):
        parse_params(with_value(repo_params(), "prompts.counts", counts))


def test_a_prompt_count_of_zero_leaves_the_backend_out():
    counts = {"synthetic": 0, "recombine": 10}
    assert parse_params(with_value(repo_params(), "prompts.counts", counts)).prompts.counts == counts


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        ("ingest.margins.negligible", -1, r"ingest\.margins\.negligible: Input should be greater than or equal to 0"),
        ("ingest.margins.better", 0.5, r"ingest\.margins: .*better \(0\.5\) must be at least slightly_better \(1\)"),
        ("ingest.margins", {"much_better": 3}, r"ingest\.margins: .*needs a value for \['better', 'slightly"),
        ("labels.simulated.gaps.better", -0.1, r"labels\.simulated\.gaps\.better: Input should be greater than or"),
        ("labels.ai.gaps.much_better", 0.01, r"labels\.ai\.gaps: .*much_better \(0\.01\) must be at least better"),
        ("labels.ai.gaps.negligible", 0.0, r"labels\.ai\.gaps\.negligible\.\[key\]: Input should be 'much_better'"),
        ("labels.simulated.gaps", {"better": 0.2}, r"labels\.simulated\.gaps: .*needs a value for \['much_better', 's"),
    ],
)
def test_degree_tables_are_complete_non_negative_and_ordered(path, value, error):
    with pytest.raises(ConfigError, match=error):
        parse_params(with_value(repo_params(), path, value))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("seed: 0\nseed: 1\n", r"seed: key given twice, on lines 1 and 2"),
        ("algo:\n  dpo:\n    epochs: 3\n    lr: 0.1\n    epochs: 20\n", r"algo\.dpo\.epochs: .*lines 3 and 5"),
        ("data: {n_clips: 10, n_clips: 20}\n", r"data\.n_clips: key given twice, on lines 1 and 1"),
    ],
)
def test_a_key_given_twice_is_refused(tmp_path, text, error):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    with pytest.raises(ConfigError, match=rf"params\.yaml: not valid YAML: {error}"):
        load_params(params)


def test_labels_for_a_policy_take_its_labeler_and_an_unknown_policy_is_an_error() -> None:
    labels = parse_params({"labels": {"labeler": "simulated", "labeler_for": {"mdm": "ai"}}}).labels
    assert labels.for_policy("mdm").labeler == "ai" and labels.for_policy("sft").labeler == "simulated"
    assert labels.for_policy("mdm").simulated == labels.simulated  # only the labeler changes
    assert parse_params({"labels": {"labeler": "ai", "labeler_for": {}}}).labels.for_policy("mdm").labeler == "ai"
    with pytest.raises(ConfigError, match=r"labels\.labeler_for\.mld"):
        parse_params({"labels": {"labeler_for": {"mld": "ai"}}})


def test_diffusion_sampling_steps_must_divide_the_training_steps():
    # DDIM's evenly spaced steps start from the last training step only then (MDM's ddimN respacing refuses too)
    with pytest.raises(ConfigError, match=r"diffusion\.mdm.*30 sampling steps must divide the 50 training steps"):
        parse_params({"diffusion": {"mdm": {"sampling": {"steps": 30}}}})
    assert parse_params({"diffusion": {"mdm": {"sampling": {"steps": 25}}}}).diffusion.mdm.sampling.steps == 25
