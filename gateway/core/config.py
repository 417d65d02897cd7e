"""The one TOML configuration document -> frozen dataclasses, with every problem reported at once.

Owns: key names, types, units, defaults and ranges (``SCHEMA``; docs/config.md documents the same
table and a test keeps the two in step). Pure: the composition reads the file (``adapters/files.py``)
and hands the parsed mapping to ``parse_config``. No environment variables, no implicit files.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError
from ..model import DEVICE_ID

__all__ = ["SCHEMA", "CanConfig", "Config", "DeviceConfig", "MqttConfig", "OtaConfig", "PublishConfig",
           "VehicleConfig", "WarrantyConfig", "parse_config", "render_toml"]


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    id: str
    key_file: str
    state_dir: str


@dataclass(frozen=True, slots=True)
class CanConfig:
    interface: str
    channel: str
    bitrate: int
    receive_timeout_s: float
    udp_multicast_port: int


@dataclass(frozen=True, slots=True)
class VehicleConfig:
    profile: str
    rated_capacity_ah: float | None


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int
    tls: bool
    ca_file: str
    cert_file: str
    key_file: str
    topic_prefix: str
    keepalive_s: int
    max_inflight: int
    session_expiry_s: int
    max_backoff_s: float
    protocol: str
    hosts: list[str]

    def endpoints(self) -> list[tuple[str, int]]:
        """The brokers in order of preference: ``hosts`` when set, else ``host``:``port``."""
        return [_host_port(h, self.port) for h in self.hosts] or [(self.host, self.port)]


@dataclass(frozen=True, slots=True)
class PublishConfig:
    reading_interval_s: float
    passport_interval_s: float
    soh_change_pct: float
    silence_s: float
    stale_after_s: float
    batch: int


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    max_mb: int
    thin_bucket_s: float


@dataclass(frozen=True, slots=True)
class OtaConfig:
    metadata_url: str
    targets_url: str
    trusted_root: str
    target: str
    hardware_id: str
    dir: str
    releases_dir: str
    probation_s: float
    max_crashes: int
    max_bundle_mb: int
    restart_command: str
    command_key: str


@dataclass(frozen=True, slots=True)
class WarrantyConfig:
    """The warranty rule: accept when P(SoH >= ``threshold_pct`` at +``horizon_years``) >= ``min_probability``."""

    threshold_pct: float
    horizon_years: float
    min_probability: float


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str


@dataclass(frozen=True, slots=True)
class Config:
    device: DeviceConfig
    can: CanConfig
    vehicle: VehicleConfig
    mqtt: MqttConfig
    publish: PublishConfig
    outbox: OutboxConfig
    ota: OtaConfig
    warranty: WarrantyConfig
    logging: LoggingConfig


_Check = Callable[[Any], str | None]  # returns a problem, or None


def _str(nonempty: bool = True) -> _Check:
    return lambda v: None if isinstance(v, str) and (v or not nonempty) else "expected a non-empty string"


def _num(lo: float, hi: float, *, integer: bool = False) -> _Check:
    def check(v: Any) -> str | None:
        kind = int if integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, kind) or (isinstance(v, float) and not math.isfinite(v)):
            return f"expected {'an integer' if integer else 'a number'}, got {v!r}"
        return None if lo <= v <= hi else f"{v} is out of range {lo:g}..{hi:g}"
    return check


_TOPIC_LEVEL = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _device_id(v: Any) -> str | None:
    """The MQTT client id, username, topic level and certificate CN at once: nothing a broker reads as
    syntax (``+ # /``, NUL), nothing too long for any of them."""
    if not isinstance(v, str) or not DEVICE_ID.fullmatch(v):
        return (f"expected 1-64 letters, digits, '.', '_' or '-' (it is the MQTT client id and a topic level), "
                f"got {v!r}" if isinstance(v, str) and len(v) <= 80 else "expected a short device id")
    return None


def _topic_prefix(v: Any) -> str | None:
    if not isinstance(v, str) or len(v) > 128 or not all(_TOPIC_LEVEL.fullmatch(level) for level in v.split("/")):
        return ("expected topic levels of letters, digits, '.', '_' or '-' separated by '/' (no wildcards + #, "
                f"no empty level, at most 128 characters), got {v[:80]!r}" if isinstance(v, str)
                else "expected a string")
    return None


_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253})(?::([0-9]{1,5}))?")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT`` (already checked by ``_hosts``) -> (host, port)."""
    m = _HOST_PORT.fullmatch(text)
    assert m is not None
    return m[1].strip("[]"), int(m[2]) if m[2] else default_port


def _hosts(v: Any) -> str | None:
    if not isinstance(v, list) or len(v) > 16:
        return 'expected a list of up to 16 "HOST:PORT" strings'
    for item in v:
        m = _HOST_PORT.fullmatch(item) if isinstance(item, str) else None
        host = m[1] if m else ""
        if host.startswith("["):
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                host = ""
        elif not all(_LABEL.fullmatch(label) for label in host.split(".")):
            host = ""
        if m is None or not host or not 1 <= int(m[2] or 1) <= 65535:
            return f'expected "HOST:PORT" (or "[IPv6]:PORT"; without a port, mqtt.port), got {item!r}'[:160]
    return None


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {v!r}"


def _choice_num(*options: float) -> _Check:
    return lambda v: None if not isinstance(v, bool) and v in options else \
        f"expected one of {', '.join(f'{o:g}' for o in options)}, got {v!r}"


def _choice(*options: str) -> _Check:
    return lambda v: None if v in options else f"expected one of {', '.join(options)}, got {v!r}"


# section -> key -> (default, check, unit, description). A default of None means "required".
SCHEMA: dict[str, dict[str, tuple[Any, _Check, str, str]]] = {
    "device": {
        "id": (None, _device_id, "", "device id; also the MQTT client id, username and topic level (1-64 of "
                                     "A-Z a-z 0-9 . _ -)"),
        "key_file": ("/var/lib/battery-gateway/device-key.pem", _str(), "path",
                     "P-256 private key (PKCS#8 PEM, mode 0600; create with keygen)"),
        "state_dir": ("/var/lib/battery-gateway", _str(), "path",
                      "chain position, counters; created if missing"),
    },
    "can": {
        "interface": ("socketcan", _str(), "",
                      "python-can interface name, or elm327 (an OBD dongle: docs/transport.md)"),
        "channel": ("can0", _str(), "", "python-can channel (can0, a multicast group, ...); for elm327 a tty, "
                                        "tty@baud or socket://host:port"),
        "bitrate": (500000, _num(10_000, 8_000_000, integer=True), "bit/s",
                    "bus bitrate (socketcan takes it from the interface)"),
        "receive_timeout_s": (0.2, _num(0.01, 5.0), "s", "how long one bus read waits before timers run"),
        "udp_multicast_port": (43113, _num(1024, 65535, integer=True), "",
                               "UDP port of the udp_multicast interface (simulators, tests); ignored otherwise"),
    },
    "vehicle": {
        "profile": ("leaf-ze1", _str(), "", "built-in profile name or path to a profile TOML"),
        "rated_capacity_ah": (0.0, _num(0.0, 2000.0), "Ah",
                              "pack capacity when new; 0 = detect, else the profile's default"),
    },
    "mqtt": {
        "host": ("127.0.0.1", _str(), "", "broker host"),
        "port": (1883, _num(1, 65535, integer=True), "", "broker port"),
        "tls": (False, _bool, "", "mutual TLS with ca_file, cert_file, key_file"),
        "ca_file": ("", _str(False), "path", "CA bundle that signed the broker certificate (tls)"),
        "cert_file": ("", _str(False), "path", "device certificate (tls)"),
        "key_file": ("", _str(False), "path", "device TLS key (tls)"),
        "topic_prefix": ("bp/v1", _topic_prefix, "", "topics are {topic_prefix}/{device.id}/... (levels of "
                                                     "A-Z a-z 0-9 . _ -, no wildcards)"),
        "keepalive_s": (60, _num(5, 3600, integer=True), "s", "MQTT keep-alive"),
        "max_inflight": (100, _num(1, 65535, integer=True), "messages",
                         "QoS 1 messages sent and not yet acknowledged (the window)"),
        "max_backoff_s": (60.0, _num(1.0, 3600.0), "s",
                          "longest pause between reconnect attempts (exponential, full jitter, from 1 s)"),
        "session_expiry_s": (3600, _num(0, 30 * 86400, integer=True), "s",
                             "the broker keeps the session (subscriptions, messages in flight) this long "
                             "(MQTT 5; with 3.1.1 the broker decides)"),
        "protocol": ("5", lambda v: None if v in ("5", "3.1.1") else f'expected "5" or "3.1.1" (a string), got {v!r}',
                     "",
                     'MQTT version: "5", or "3.1.1" for brokers without MQTT 5 (NATS, older brokers)'),
        "hosts": ([], _hosts, "", 'ordered "HOST:PORT" list of brokers; replaces host and port; the first that '
                                  "answers is used, and the gateway moves back to the first when it returns"),
    },
    "publish": {
        "reading_interval_s": (60.0, _num(0.1, 86400.0), "s", "one signed reading this often"),
        "passport_interval_s": (86400.0, _num(1.0, 30 * 86400.0), "s",
                                "a passport at least this often while the car is active"),
        "soh_change_pct": (1.0, _num(0.1, 100.0), "pp", "a passport when the BMS SOH moves this much"),
        "silence_s": (5.0, _num(0.5, 3600.0), "s", "no battery frames this long = car off (key-off passport)"),
        "batch": (1, _num(1, 1000, integer=True), "readings",
                  "readings signed together in one envelope (cellular fleets); 1 = one envelope per reading"),
        "stale_after_s": (10.0, _num(0.1, 3600.0), "s", "values older than this are left out of readings"),
    },
    "outbox": {
        "max_mb": (64, _num(1, 100_000, integer=True), "MiB", "disk cap of the outbox; above it readings are thinned"),
        "thin_bucket_s": (600.0, _num(1.0, 86400.0), "s",
                          "first thinning keeps one reading per this many seconds; each further round doubles it"),
    },
    "ota": {
        "metadata_url": ("", _str(False), "URL", "TUF metadata base URL; empty = over-the-air updates off"),
        "targets_url": ("", _str(False), "URL", "TUF targets base URL; empty = {metadata_url}/../targets"),
        "trusted_root": ("/etc/battery-gateway/tuf-root.json", _str(), "path",
                         "the TUF root shipped in the image (the trust anchor, bootstrap)"),
        "target": ("battery-gateway/stable.tar", _str(), "", "TUF target path of the release bundle to follow"),
        "hardware_id": ("rpi-arm64", _str(), "", "this device's hardware id; a bundle must list it"),
        "dir": ("/var/lib/battery-gateway-ota", _str(), "path",
                "updater state: TUF metadata cache, partial downloads, release counter, probation"),
        "releases_dir": ("/opt/battery-gateway", _str(), "path",
                         "holds releases/<version>/ and the atomic `current` symlink"),
        "probation_s": (300.0, _num(5.0, 86400.0), "s",
                        "a new release must be healthy (bus, broker, first reading acknowledged) within this"),
        "max_crashes": (3, _num(1, 100, integer=True), "starts",
                        "a new release that starts this many times without becoming healthy is rolled back"),
        "max_bundle_mb": (200, _num(1, 10_000, integer=True), "MiB", "largest release bundle accepted"),
        "restart_command": ("sh -c 'systemctl reset-failed battery-gateway.service; "
                            "systemctl restart battery-gateway.service'", _str(), "",
                            "how the updater restarts the daemon after switching releases"),
        "command_key": ("", _str(False), "path",
                        "backend public key (PEM) that signs commands (cmd/ota, cmd/passport); empty = commands are "
                        "ignored"),
    },
    "warranty": {
        "threshold_pct": (70.0, _num(1.0, 100.0), "%", "the SoH the battery must keep (capacity-based)"),
        "horizon_years": (3.0, _choice_num(1.0, 3.0, 5.0), "years", "when it must still keep it: 1, 3 or 5"),
        "min_probability": (0.9, _num(0.5, 0.999), "", "accept when P(SoH >= threshold at horizon) reaches this"),
    },
    "logging": {
        "level": ("INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "", "log level (stderr, for journald)"),
    },
}

_CLASSES = {"device": DeviceConfig, "can": CanConfig, "vehicle": VehicleConfig, "mqtt": MqttConfig,
            "publish": PublishConfig, "outbox": OutboxConfig, "ota": OtaConfig, "warranty": WarrantyConfig,
            "logging": LoggingConfig}


def parse_config(data: Mapping[str, Any], *, sections: tuple[str, ...] = tuple(SCHEMA)) -> Config:
    """Validate a parsed TOML mapping and fill in defaults.

    Args:
        data: the TOML document.
        sections: the sections that must be valid; for ``replay`` only ``vehicle`` and ``publish`` matter,
            and a missing ``device.id`` is then no problem.

    Raises:
        ConfigError: naming every bad key as ``section.key: problem``.
    """
    problems = [f"{s}: unknown section" for s in data if s not in SCHEMA]
    built: dict[str, Any] = {}
    for section, keys in SCHEMA.items():
        raw = data.get(section, {})
        if not isinstance(raw, Mapping):
            problems.append(f"{section}: expected a table")
            raw = {}
        problems.extend(f"{section}.{k}: unknown key" for k in raw if k not in keys)
        values: dict[str, Any] = {}
        for key, (default, check, _, _) in keys.items():
            if key not in raw:
                if default is None and section in sections:
                    problems.append(f"{section}.{key}: required")
                values[key] = default if default is not None else ""
                continue
            problem = check(raw[key])
            if problem and (section in sections or key in raw):
                problems.append(f"{section}.{key}: {problem}")
            values[key] = raw[key]
        if section == "vehicle":  # 0 means "detect"; a wrong type was reported above
            rated = values["rated_capacity_ah"]
            values["rated_capacity_ah"] = float(rated) if isinstance(rated, int | float) and rated else None
        if section == "mqtt" and values["tls"] is True and section in sections:
            problems.extend(f"mqtt.{k}: required when tls = true" for k in ("ca_file", "cert_file", "key_file")
                            if not values[k])
        built[section] = values
    if problems:
        raise ConfigError(problems)
    return Config(**{s: _CLASSES[s](**v) for s, v in built.items()})


def render_toml(config: Config) -> str:
    """The effective configuration as TOML, every key with its value (defaults filled in)."""
    lines: list[str] = []
    for section in SCHEMA:
        obj = getattr(config, section)
        lines.append(f"[{section}]")
        for f in fields(obj):
            value = getattr(obj, f.name)
            unit = SCHEMA[section][f.name][2]
            if value is None:
                value = 0.0
            text = ("true" if value else "false") if isinstance(value, bool) else \
                json.dumps(value) if isinstance(value, str | list) else repr(value)
            lines.append(f"{f.name} = {text}" + (f"  # {unit}" if unit and unit != "path" else ""))
        lines.append("")
    return "\n".join(lines)
