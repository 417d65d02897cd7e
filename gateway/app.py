"""Composition root: builds adapters from the config, wires the services, owns threads and shutdown.

The only module that imports adapters. Shutdown order: stop reading the bus, sign nothing more, save
the state, flush the publisher (bounded wait), say offline, close.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric import ec

from . import __version__
from .adapters.can_bus import PythonCanSource
from .adapters.isotp import IsoTpDiagClient
from .adapters.capture_files import CaptureStats, read_capture
from .adapters.keystore import generate_key, load_private_key, load_public_key, public_pem
from .adapters.mqtt import PahoPublisher
from .adapters.state_store import JsonStateStore
from .adapters.systemd import SystemdNotifier
from .battery import BatteryTracker, Counters
from .config import Config
from .decoding import Decoder
from .diagnostics import DiagService
from .errors import ConfigError, TransportError
from .model import OutgoingMessage
from .pipeline import Pipeline, PublishPolicy
from .ports import StateStore
from .profile import load_profile
from .replay import replay_frames
from .signing import Chain, Signer, key_id

__all__ = ["CaptureStats", "build_pipeline", "create_device_key", "load_public_key", "policy_from",
           "replay_capture", "run_daemon"]

log = logging.getLogger(__name__)

SW = f"battery-gateway/{__version__}"


def create_device_key(path: str) -> tuple[bytes, str]:
    """Create the device key file; return its key id and public key PEM (for ``keygen``)."""
    key = generate_key(path)
    return key_id(key.public_key()), public_pem(key)


def policy_from(config: Config) -> PublishPolicy:
    """The ``[publish]`` section as the pipeline's policy."""
    p = config.publish
    return PublishPolicy(reading_interval_s=p.reading_interval_s, passport_interval_s=p.passport_interval_s,
                         soh_change_pct=p.soh_change_pct, silence_s=p.silence_s)


def build_pipeline(config: Config, key: ec.EllipticCurvePrivateKey, *, chain: Chain, counters: Counters,
                   store: StateStore | None, device_id: str, passive_diag: bool = False,
                   vin_salt: bytes = b"") -> Pipeline:
    """Profile + decoder + tracker + signer -> pipeline.

    Raises:
        ConfigError: unknown profile or a DBC that does not load.
    """
    profile, dbs = load_profile(config.vehicle.profile)
    decoder = Decoder(profile, dbs)
    tracker = BatteryTracker(profile, counters=counters, rated_capacity_ah=config.vehicle.rated_capacity_ah,
                             stale_after_s=config.publish.stale_after_s)
    return Pipeline(decoder, tracker, Signer(key), chain, device_id=device_id, sw=SW,
                    policy=policy_from(config), store=store, passive_diag=passive_diag, vin_salt=vin_salt)


def _handle_commands(publisher: PahoPublisher, pipeline: Pipeline) -> None:
    while not publisher.commands.empty():
        name, _ = publisher.commands.get_nowait()
        if name == "passport":
            log.info("passport requested over MQTT")
            pipeline.request_passport("request")
        else:
            log.warning("unknown command %r ignored", name)


def open_bus(config: Config, pipeline: Pipeline) -> PythonCanSource:
    """The CAN interface with the profile's broadcast and reply ids as filters."""
    return PythonCanSource(interface=config.can.interface, channel=config.can.channel, bitrate=config.can.bitrate,
                           frame_ids=pipeline.decoder.profile.frame_ids,
                           udp_multicast_port=config.can.udp_multicast_port)


def _vin_salt(state_dir: str) -> bytes:
    """The device's VIN salt (16 random bytes, created once in ``state_dir``)."""
    path = Path(state_dir) / "vin-salt"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        salt = os.urandom(16)
        path.write_bytes(salt)
        path.chmod(0o600)
        return salt


def run_daemon(config: Config, *, stop: threading.Event) -> int:
    """Run until ``stop`` is set. Returns the exit code (0 after a clean stop).

    Raises:
        ConfigError: bad key file or profile (exit 2 in the CLI).
        TransportError: CAN interface or state directory unusable at start (exit 1).
    """
    key = load_private_key(config.device.key_file)
    store = JsonStateStore(config.device.state_dir)
    chain, counters = store.load()
    pipeline = build_pipeline(config, key, chain=chain, counters=counters, store=store,
                              device_id=config.device.id, vin_salt=_vin_salt(config.device.state_dir))
    m = config.mqtt
    tls = (m.ca_file, m.cert_file, m.key_file) if m.tls else None
    publisher = PahoPublisher(host=m.host, port=m.port, device_id=config.device.id, topic_prefix=m.topic_prefix,
                              sw=SW, keepalive_s=m.keepalive_s, max_queued=m.max_queued, tls_files=tls)
    notifier = SystemdNotifier.from_environment()
    source = None
    code = 0
    try:
        source = open_bus(config, pipeline)
        diag = DiagService(pipeline, IsoTpDiagClient(source.send))
        notifier.notify("READY=1")
        log.info("running: profile %s, device %s, epoch %d seq %d", pipeline.decoder.profile.name,
                 config.device.id, chain.ep, chain.seq)
        timeout = config.can.receive_timeout_s
        while not stop.is_set():
            frame = source.recv(0.005 if diag.client.busy else timeout)
            if frame is not None and diag.on_frame(frame):
                frame = None
            messages = pipeline.on_frame(frame) if frame is not None else pipeline.tick(time.time())
            diag.step(time.time(), schedule=diag.specs != ())
            for message in messages:
                publisher.publish(message)
            _handle_commands(publisher, pipeline)
    except TransportError as exc:
        log.error("%s", exc)
        code = 1
    finally:
        notifier.notify("STOPPING=1")
        if source is not None:
            source.close()
        try:
            store.save(pipeline.chain, pipeline.tracker.counters)
        except TransportError as exc:
            log.error("%s", exc)
            code = 1
        publisher.close()
        log.info("stopped: %s", ", ".join(f"{k} {v}" for k, v in sorted(pipeline.counts.items())))
    return code


def replay_capture(capture: str, *, config: Config, profile: str | None, bus: int | None,
                   stats: CaptureStats, progress: Callable[[], None] | None = None,
                   ) -> tuple[Pipeline, Iterator[OutgoingMessage]]:
    """Build a pipeline for offline replay and the iterator of what it would publish.

    The device key is the config's when it exists and is readable, else a throw-away key (the payloads
    are the same; only the signatures differ). Nothing is persisted.

    Raises:
        ConfigError: unknown profile.
        CaptureError: unreadable or unrecognised capture (raised when iteration starts).
    """
    if profile:
        config = replace(config, vehicle=replace(config.vehicle, profile=profile))
    try:
        key = load_private_key(config.device.key_file)
    except ConfigError:
        key = ec.generate_private_key(ec.SECP256R1())
    pipeline = build_pipeline(config, key, chain=Chain(), counters=Counters(), store=None,
                              device_id=config.device.id or "replay", passive_diag=True, vin_salt=os.urandom(16))
    frames = read_capture(capture, want=pipeline.decoder.profile.frame_ids, stats=stats)
    return pipeline, replay_frames(pipeline, frames, bus=bus, progress=progress)
