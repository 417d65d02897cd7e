"""The parts every composition root builds the same way: the config, the vehicle profile with its DBC
files, the forecast prior, and one vehicle's pipeline with its decoder, tracker and signer; the CAN
bus, the outbox and the uplink from the config. Wiring only: no decisions live here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from .. import __version__
from ..adapters.can_bus import PythonCanBus
from ..adapters.elm327 import Elm327
from ..adapters.files import (
    BUILTIN_PROFILES,
    certificate_languages,
    check_json_file,
    load_dbc,
    missing_dbc,
    read_config,
    read_package_json,
    read_profile,
)
from ..adapters.fs import write_atomic
from ..adapters.isotp import IsoTpDiagClient, KernelIsoTpDiagClient, open_diag_client
from ..adapters.keystore import load_private_key, load_public_key
from ..adapters.mqtt import PahoPublisher, check_tls_files
from ..adapters.sqlite_outbox import SqliteOutbox
from ..adapters.tflite import load_segment_model
from ..core.battery import BatteryTracker
from ..core.certificate_html import Language, language_from_table
from ..core.config import SCHEMA, Config, parse_config
from ..core.decoding import Decoder
from ..core.forecast import Prior
from ..core.outlook import build_outlook
from ..core.profile import Profile, parse_profile
from ..core.signing import Signer
from ..errors import ConfigError
from ..model import ChainPosition, Counters
from ..ports import MessageSink
from ..services.forwarder import Forwarder
from ..services.pipeline import Pipeline

__all__ = [
    "SW",
    "Assembly",
    "Bus",
    "assemble",
    "check_files",
    "drain",
    "load_config",
    "load_prior",
    "load_profile",
    "open_bus",
    "open_diag",
    "open_store",
    "open_uplink",
    "vin_salt",
]

log = logging.getLogger(__name__)

SW = f"battery-gateway/{__version__}"

Outlook = Callable[[BatteryTracker, float], dict[str, Any] | None]


def load_config(path: str | Path, *, sections: tuple[str, ...] = tuple(SCHEMA)) -> Config:
    """Read and validate the TOML file at ``path`` (``sections``: see ``parse_config``).

    Raises:
        ConfigError: unreadable file, TOML syntax error, or bad keys, each line naming the file.
    """
    data = read_config(path)
    try:
        return parse_config(data, sections=sections)
    except ConfigError as exc:
        raise ConfigError([f"{path}: {problem}" for problem in exc.problems]) from None


def check_files(config: Config) -> None:
    """Open every file the config points at, as the daemon and the updater will (``check-config``).

    Raises:
        ConfigError: naming each broken file by its config key.
    """
    problems = []
    loaders: list[tuple[bool, Callable[[], object]]] = [
        (True, lambda: load_private_key(config.device.key_file)),
        (bool(config.ota.command_key), lambda: load_public_key(config.ota.command_key, what="ota.command_key")),
    ]
    for wanted, load in loaders:
        if wanted:
            try:
                load()
            except ConfigError as exc:
                problems.extend(exc.problems)
    m = config.mqtt
    if m.tls:
        problems += check_tls_files(ca_file=m.ca_file, cert_file=m.cert_file, key_file=m.key_file)
    if config.ota.metadata_url:
        problem = check_json_file(config.ota.trusted_root, key="ota.trusted_root", must_have=("signed", "signatures"))
        problems += [problem] if problem else []
    if problems:
        raise ConfigError(problems)


def load_profile(name_or_path: str) -> tuple[Profile, list[Any]]:
    """A built-in profile by name, or a profile TOML file, and its DBC databases.

    Raises:
        ConfigError: unknown profile, unreadable file, a bad key, or a DBC that does not load strictly.
    """
    data, dbc_dirs = read_profile(name_or_path)
    name = data.get("name") if isinstance(data.get("name"), str) and data.get("name") else "?"
    where = ", ".join(map(str, dbc_dirs))
    missing = [f"profile {name}: dbc: {n!r} not found in {where}" for n in missing_dbc(data.get("dbc"), dbc_dirs)]
    try:
        profile = parse_profile(data)
    except ConfigError as exc:  # every problem at once: the document's and the missing files'
        raise ConfigError([*exc.problems, *missing]) from None
    if name_or_path not in BUILTIN_PROFILES:  # its claims are its author's: none of ours travel with it
        profile = replace(profile, builtin=False, captures=())
    return profile, load_dbc(profile.name, profile.dbc, dbc_dirs)


def load_language(code: str) -> Language:
    """The certificate's language ``code`` from its data file, checked against the English one.

    Raises:
        ConfigError: no such language, or a file that lacks a key or changes a placeholder (named).
    """
    if code not in certificate_languages():
        raise ConfigError(f"language {code!r}: choose {', '.join(certificate_languages())} "
                          "(a language is a file in gateway/data/lang)")
    table = read_package_json(f"lang/{code}.json", what=f"certificate language {code}")
    try:
        return language_from_table(code, table, read_package_json("lang/en.json", what="certificate language en"))
    except ValueError as exc:
        raise ConfigError(f"gateway/data/lang/{code}.json: {exc}") from exc


def load_prior() -> Prior:
    """The forecast prior shipped with the package (``gateway/data/soh_prior.json``, tools/soh_prior.py).

    Raises:
        ConfigError: the file is damaged (reinstall the release).
    """
    doc = read_package_json("soh_prior.json", what="forecast prior")
    try:
        return Prior.from_json(doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"gateway/data/soh_prior.json: unreadable forecast prior ({exc}); reinstall the "
                          "release") from exc


@dataclass(frozen=True)
class Assembly:
    """One vehicle's parts as a composition root holds them; the pipeline was built from the others."""

    profile: Profile
    decoder: Decoder
    tracker: BatteryTracker
    signer: Signer
    outlook: Outlook
    pipeline: Pipeline


def assemble(config: Config, key: ec.EllipticCurvePrivateKey, *, sink: MessageSink, chain: ChainPosition,
             counters: Counters, device_id: str, vin_salt: bytes, epoch_note: str = "") -> Assembly:
    """Profile + decoder + tracker + signer + forecast -> a pipeline whose messages go to ``sink``.

    Raises:
        ConfigError: unknown profile, a DBC that does not load, or a damaged forecast prior.
    """
    profile, dbs = load_profile(config.vehicle.profile)
    decoder = Decoder(profile, dbs)
    tracker = BatteryTracker(profile, counters=counters, rated_capacity_ah=config.vehicle.rated_capacity_ah,
                             stale_after_s=config.publish.stale_after_s, soh_model=load_segment_model)
    prior = load_prior()

    def outlook(t: BatteryTracker, now: float) -> dict[str, Any] | None:
        return build_outlook(t, prior=prior, chemistry=profile.chemistry, rule=config.warranty, now=now)

    signer = Signer(key)
    pipeline = Pipeline(decoder, tracker, signer=signer, sink=sink, chain=chain, policy=config.publish,
                        device_id=device_id, sw=SW, vin_salt=vin_salt, epoch_note=epoch_note, outlook=outlook)
    return Assembly(profile, decoder, tracker, signer, outlook, pipeline)


Bus = PythonCanBus | Elm327


def open_bus(config: Config, profile: Profile) -> Bus:
    """The CAN interface, with the profile's broadcast and reply ids as filters; an ELM327 dongle for
    ``interface = "elm327"`` (it monitors the broadcast ids in turn).

    Raises:
        BusError: the interface cannot be opened.
        ConfigError: the profile needs what the ELM327 transport does not offer (29-bit ids, extended addressing).
    """
    if config.can.interface == "elm327":
        wide = [p.name for p in profile.polls if p.ext_address or p.ids_29bit]
        if wide:
            raise ConfigError(f"can.interface: elm327 polls with 11-bit ids only; profile {profile.name} needs "
                              f"29-bit ids or extended addressing for {', '.join(wide)} (use a CAN interface)")
        return Elm327(config.can.channel, bitrate=config.can.bitrate,
                      broadcast_ids={s.frame_id for s in profile.signals})
    return PythonCanBus(interface=config.can.interface, channel=config.can.channel, bitrate=config.can.bitrate,
                        frame_ids=profile.frame_ids, udp_multicast_port=config.can.udp_multicast_port)


def open_diag(config: Config, bus: Bus) -> IsoTpDiagClient | KernelIsoTpDiagClient | Elm327:
    """The ISO-TP transport for polling: the dongle's own on an ELM327, the kernel's on SocketCAN, the
    user-space stack on the bus otherwise."""
    if isinstance(bus, Elm327):
        return bus
    return open_diag_client(config.can.interface, config.can.channel, bus.send)


def open_store(config: Config) -> SqliteOutbox:
    """The device's state database and outbox (not loaded yet: call ``load``).

    Raises:
        StateError: the state directory cannot be used, or another process holds it.
    """
    return SqliteOutbox(config.device.state_dir, max_bytes=config.outbox.max_mb * 1024 * 1024,
                        thin_bucket_s=config.outbox.thin_bucket_s)


def open_uplink(config: Config) -> PahoPublisher:
    """The MQTT client, connecting in the background.

    Raises:
        PublishError: the TLS files cannot be loaded.
    """
    m = config.mqtt
    tls = (m.ca_file, m.cert_file, m.key_file) if m.tls else None
    return PahoPublisher(hosts=m.endpoints(), protocol=m.protocol, device_id=config.device.id,
                         topic_prefix=m.topic_prefix, sw=SW, keepalive_s=m.keepalive_s, max_inflight=m.max_inflight,
                         session_expiry_s=m.session_expiry_s, tls_files=tls, max_backoff_s=m.max_backoff_s)


def vin_salt(state_dir: str) -> bytes:
    """The device's VIN salt (16 random bytes, created once in ``state_dir``)."""
    path = Path(state_dir) / "vin-salt"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        salt = os.urandom(16)
        try:
            write_atomic(path, salt)
        except OSError as exc:  # a read-only state_dir must not stop the gateway; the hash changes at restart
            log.error("device.state_dir: cannot write %s (%s): VIN hashes use a salt for this run only",
                      path, exc.strerror)
        return salt


def drain(forwarder: Forwarder, *, timeout_s: float) -> None:
    """Send what the outbox holds until it is empty, nothing is in flight, or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sent = forwarder.step(time.time())
        if not sent and not forwarder.in_flight:
            return
        time.sleep(0.01)
