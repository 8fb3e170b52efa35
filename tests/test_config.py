from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from motionpref.config import ConfigError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repo_params_are_valid_in_every_profile():
    raw = repo_params()
    assert raw["profile"] == "cpu"
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


def test_profile_override_errors_say_the_profile():
    raw = repo_params()
    raw["profiles"]["smoke"]["data"]["n_clips"] = 0
    with pytest.raises(ConfigError, match=r"profile 'smoke'.*\n.*data\.n_clips"):
        parse_params({**raw, "profile": "smoke"})


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
