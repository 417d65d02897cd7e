"""Broken and hostile configuration: never a traceback, always ConfigError naming the key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.adapters.keystore import generate_key, load_private_key
from gateway.core.config import SCHEMA, parse_config
from gateway.errors import ConfigError

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                   st.text(max_size=20), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
SECTIONS = st.dictionaries(st.sampled_from([*SCHEMA, "bogus"]),
                           st.one_of(VALUES, st.dictionaries(st.sampled_from(
                               [k for keys in SCHEMA.values() for k in keys] + ["x"]), VALUES, max_size=6)),
                           max_size=7)


@settings(max_examples=1000, deadline=None)
@given(SECTIONS)
@example({"vehicle": {"rated_capacity_ah": [1]}})  # found by this test: once a TypeError
@example({"vehicle": {"rated_capacity_ah": ":"}})  # and a ValueError
def test_any_document_is_either_valid_or_a_config_error_naming_keys(doc: dict[str, object]) -> None:
    try:
        parse_config(doc)
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert ":" in problem and problem.split(":")[0].split(".")[0] in (*SCHEMA, "bogus")


def test_huge_and_non_finite_values_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"device": {"id": "gw"}, "publish": {"reading_interval_s": float("inf")},
                      "mqtt": {"port": 10**12, "max_inflight": -1}, "outbox": {"max_mb": 10**9}})
    keys = {p.split(":")[0] for p in err.value.problems}
    assert keys == {"publish.reading_interval_s", "mqtt.port", "mqtt.max_inflight", "outbox.max_mb"}


def test_a_section_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError, match="mqtt: expected a table"):
        parse_config({"device": {"id": "gw"}, "mqtt": "localhost"})


def test_key_file_problems_each_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keygen --key"):
        load_private_key(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"device\.key_file"):
        load_private_key(tmp_path)  # a directory
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    garbage.chmod(0o600)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private_key(garbage)
    key = tmp_path / "k.pem"
    generate_key(key)
    key.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)
    with pytest.raises(ConfigError, match="readable by others"):
        load_private_key(key)


PROFILE_KEYS = ["name", "title", "dbc", "signal", "pack", "complete", "crc8", "wh_per_gid", "cells_series",
                "cell_v_min", "poll", "include", "x"]


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.sampled_from(PROFILE_KEYS), st.one_of(VALUES, st.lists(VALUES, max_size=3),
                                                                 st.lists(st.dictionaries(
                                                                     st.sampled_from(["frame", "signal", "field",
                                                                                      "request", "layout", "at"]),
                                                                     VALUES, max_size=4), max_size=2)),
                       max_size=8))
def test_any_profile_document_is_either_valid_or_a_config_error(doc: dict[str, object]) -> None:
    from gateway.adapters.files import builtin_dbc_dir, load_dbc
    from gateway.core.profile import parse_profile

    try:
        profile = parse_profile(doc)
        load_dbc(profile.name, profile.dbc, (builtin_dbc_dir(),))
    except ConfigError as exc:
        assert exc.problems


FIELD_TABLES = st.dictionaries(st.sampled_from(["name", "at", "size", "kind", "signed", "scale", "count", "stride",
                                                "guard_at", "mask", "invalid_raw"]), VALUES, max_size=6)
POLLS = st.lists(st.dictionaries(
    st.sampled_from(["name", "request_id", "response_id", "request", "every_s", "layout", "timeout_s", "x"]),
    st.one_of(VALUES, st.lists(st.integers(-5, 300), max_size=4),
              st.lists(st.dictionaries(st.sampled_from(["length", "generation", "fields"]),
                                       st.one_of(VALUES, st.lists(FIELD_TABLES, max_size=2)), max_size=3),
                       max_size=2)), max_size=6), max_size=3)


@settings(max_examples=600, deadline=None)
@given(POLLS)
def test_any_poll_list_is_parsed_or_reported(polls: list[object]) -> None:
    from gateway.core.polls import parse_polls

    problems: list[str] = []
    parse_polls(polls, problems)  # never raises; problems name the key
    assert all(p.startswith("poll") for p in problems)
