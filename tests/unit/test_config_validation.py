"""The TOML config: defaults, every bad key named at once, and docs/config.md in step with the schema."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.app.wiring import load_config
from gateway.core.config import SCHEMA, parse_config, render_toml
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"device": {"id": "gw-0001"}}


def test_minimal_config_gets_contract_defaults() -> None:
    c = parse_config(MINIMAL)
    assert c.can.interface == "socketcan" and c.can.channel == "can0" and c.can.bitrate == 500000
    assert c.mqtt.port == 1883 and c.mqtt.topic_prefix == "bp/v1" and c.mqtt.tls is False
    assert c.vehicle.profile == "leaf-ze1" and c.vehicle.rated_capacity_ah is None
    assert c.publish.reading_interval_s == 60.0


def test_every_problem_is_reported_at_once_with_its_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"device": {}, "mqtt": {"port": "x", "hostt": "a"}, "can": {"bitrate": True},
                      "publish": {"reading_interval_s": 1e12}, "extra": {}})
    problems = err.value.problems
    assert "device.id: required" in problems
    assert any(p.startswith("mqtt.port: expected an integer") for p in problems)
    assert "mqtt.hostt: unknown key" in problems
    assert any(p.startswith("can.bitrate:") for p in problems)
    assert any(p.startswith("publish.reading_interval_s:") and "out of range" in p for p in problems)
    assert "extra: unknown section" in problems


def test_tls_needs_its_three_files() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, "mqtt": {"tls": True, "ca_file": "/ca.pem"}})
    assert set(err.value.problems) == {"mqtt.cert_file: required when tls = true",
                                       "mqtt.key_file: required when tls = true"}


def test_replay_sections_need_no_device() -> None:
    c = parse_config({"vehicle": {"profile": "leaf-ze0"}}, sections=("vehicle", "publish"))
    assert c.vehicle.profile == "leaf-ze0"


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\nid=1")
    with pytest.raises(ConfigError, match=str(bad)):
        load_config(bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        load_config(bad)


def test_rendered_config_parses_back_to_the_same(tmp_path: Path) -> None:
    c = parse_config({**MINIMAL, "vehicle": {"rated_capacity_ah": 176.0},
                      "mqtt": {"host": 'a"b', "protocol": "3.1.1", "hosts": ["a:1", "[::1]:8883", "b"]}})
    again = parse_config(tomllib.loads(render_toml(c)))
    assert again == c


def test_docs_config_md_lists_every_key() -> None:
    text = (REPO / "docs" / "config.md").read_text()
    missing = [f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys if f"`{s}.{k}`" not in text]
    assert not missing, f"docs/config.md does not document {missing}"


def test_brokers_are_hosts_in_order_else_host_and_port() -> None:
    assert parse_config(MINIMAL).mqtt.endpoints() == [("127.0.0.1", 1883)]
    m = parse_config({**MINIMAL, "mqtt": {"port": 8883, "hosts": ["a.example:1884", "[fd00::1]:8884", "b"]}}).mqtt
    assert m.endpoints() == [("a.example", 1884), ("fd00::1", 8884), ("b", 8883)]


@pytest.mark.parametrize(("mqtt", "says"), [
    ({"hosts": "a:1883"}, 'mqtt.hosts: expected a list of up to 16 "HOST:PORT" strings'),
    ({"hosts": ["a:0"]}, "got 'a:0'"),
    ({"hosts": ["a:65536"]}, "got 'a:65536'"),
    ({"hosts": ["+:1883"]}, "got '+:1883'"),
    ({"hosts": ["a b:1883"]}, "got 'a b:1883'"),
    ({"hosts": [1883]}, "got 1883"),
    ({"protocol": 5}, 'mqtt.protocol: expected "5" or "3.1.1" (a string), got 5'),
    ({"protocol": "3.1"}, "got '3.1'"),
])
def test_a_bad_broker_list_or_protocol_is_named(mqtt: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, "mqtt": mqtt})
    assert says in str(err.value) and str(err.value).count("\n") == 0
