"""Composition root: builds adapters from the config, wires the services, owns threads and shutdown.

The only module that imports adapters. Shutdown order: stop reading the bus, sign nothing more, save
the state, flush the publisher (bounded wait), say offline, close.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from . import __version__
from .adapters.can_bus import PythonCanSource
from .adapters.capture_files import CaptureStats, read_capture
from .adapters.health import HealthFile
from .adapters.isotp import IsoTpDiagClient
from .adapters.keystore import certificate_request, generate_key, load_private_key, load_public_key, public_pem
from .adapters.mqtt import PahoPublisher, PahoSubscriber
from .adapters.sqlite_outbox import SqliteOutbox
from .adapters.systemd import SystemdNotifier
from .adapters.tflite import load_segment_model
from .battery import BatteryTracker, Counters
from .certificate import build_certificate
from .certificate_html import render_certificate
from .config import Config
from .decoding import Decoder
from .diagnostics import DiagService
from .errors import ConfigError, EnvelopeError, InspectionError, TransportError
from .forecast import WarrantyRule
from .forwarder import Forwarder
from .localbroker import port_open
from .model import OutgoingMessage
from .ota import check_command
from .outlook import build_outlook
from .pipeline import Pipeline, PublishPolicy
from .polls import PollSpec
from .ports import StateStore
from .profile import load_prior, load_profile
from .replay import replay_frames
from .signing import Chain, Signer, key_id, verify_envelope

__all__ = ["CaptureStats", "InspectionResult", "build_pipeline", "create_csr", "create_device_key", "load_public_key",
           "policy_from", "replay_capture", "run_daemon", "run_inspection"]

log = logging.getLogger(__name__)

SW = f"battery-gateway/{__version__}"


def create_device_key(path: str) -> tuple[bytes, str]:
    """Create the device key file; return its key id and public key PEM (for ``keygen``)."""
    key = generate_key(path)
    return key_id(key.public_key()), public_pem(key)


def create_csr(key_path: str, device_id: str) -> bytes:
    """The TLS key (created if missing) and a CSR for it, CN = ``device_id`` (for ``csr``)."""
    return certificate_request(key_path, device_id)


def policy_from(config: Config) -> PublishPolicy:
    """The ``[publish]`` section as the pipeline's policy."""
    p = config.publish
    return PublishPolicy(reading_interval_s=p.reading_interval_s, passport_interval_s=p.passport_interval_s,
                         soh_change_pct=p.soh_change_pct, silence_s=p.silence_s, batch=p.batch)


def build_pipeline(config: Config, key: ec.EllipticCurvePrivateKey, *, chain: Chain, counters: Counters,
                   store: StateStore | None, device_id: str, passive_diag: bool = False,
                   vin_salt: bytes = b"", emit: bool = True) -> Pipeline:
    """Profile + decoder + tracker + signer -> pipeline.

    Raises:
        ConfigError: unknown profile or a DBC that does not load.
    """
    profile, dbs = load_profile(config.vehicle.profile)
    decoder = Decoder(profile, dbs)
    tracker = BatteryTracker(profile, counters=counters, rated_capacity_ah=config.vehicle.rated_capacity_ah,
                             stale_after_s=config.publish.stale_after_s, soh_model=load_segment_model)
    prior = load_prior()
    w = config.warranty
    rule = WarrantyRule(threshold_pct=w.threshold_pct, horizon_years=w.horizon_years, min_probability=w.min_probability)

    def outlook(t: BatteryTracker, now: float) -> dict[str, Any] | None:
        return build_outlook(t, prior=prior, chemistry=profile.chemistry, rule=rule, now=now)

    return Pipeline(decoder, tracker, Signer(key), chain, device_id=device_id, sw=SW,
                    policy=policy_from(config), store=store, passive_diag=passive_diag, vin_salt=vin_salt,
                    emit=emit, outlook=outlook)


class _OtaCommands:
    """``cmd/ota``: a COSE_Sign1 command signed by the backend key (``ota.command_key``).

    An accepted command rewrites ``{state_dir}/ota-command.json`` (its ``ts``); the
    ``battery-gateway-update.path`` unit sees the change and starts the updater (the daemon itself has no
    right to install anything). The same ``ts`` is the replay guard: a recorded command is refused, also
    after a restart.
    """

    def __init__(self, config: Config) -> None:
        self._key = load_public_key(config.ota.command_key) if config.ota.command_key else None
        self._device_id = config.device.id
        self._dir = Path(config.device.state_dir)
        try:
            self._last_ts = int(json.loads((self._dir / "ota-command.json").read_text())["ts"])
        except (OSError, ValueError, KeyError, TypeError):
            self._last_ts = 0

    def handle(self, envelope: bytes) -> None:
        if self._key is None:
            log.warning("cmd/ota ignored: no ota.command_key configured")
            return
        try:
            payload = verify_envelope(envelope, self._key)
        except EnvelopeError as exc:
            log.warning("cmd/ota ignored: %s", exc)
            return
        problem = check_command(payload, device_id=self._device_id, now_ms=round(time.time() * 1000),
                                last_ts_ms=self._last_ts)
        if problem:
            log.warning("cmd/ota ignored: %s", problem)
            return
        self._last_ts = payload["ts"]
        try:
            _write_atomic(self._dir / "ota-command.json", json.dumps({"ts": self._last_ts}).encode())
        except OSError as exc:
            log.error("cmd/ota accepted but %s cannot be written (%s): no update starts", self._dir, exc.strerror)
            return
        log.info("cmd/ota accepted: update requested")


def _handle_commands(publisher: PahoPublisher, pipeline: Pipeline, ota: _OtaCommands) -> None:
    while not publisher.commands.empty():
        name, payload = publisher.commands.get_nowait()
        if name == "passport":
            log.info("passport requested over MQTT")
            pipeline.request_passport("request")
        elif name == "ota":
            ota.handle(payload)
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
        try:
            path.write_bytes(salt)
            path.chmod(0o600)
        except OSError as exc:  # a read-only state_dir must not stop the gateway; the hash changes at restart
            log.error("device.state_dir: cannot write %s (%s): VIN hashes use a salt for this run only",
                      path, exc.strerror)
        return salt


def open_store(config: Config) -> SqliteOutbox:
    """The device's state database and outbox."""
    return SqliteOutbox(config.device.state_dir, max_bytes=config.outbox.max_mb * 1024 * 1024,
                        thin_bucket_s=config.outbox.thin_bucket_s)


def open_uplink(config: Config) -> PahoPublisher:
    """The MQTT client, connecting in the background."""
    m = config.mqtt
    tls = (m.ca_file, m.cert_file, m.key_file) if m.tls else None
    return PahoPublisher(host=m.host, port=m.port, device_id=config.device.id, topic_prefix=m.topic_prefix,
                         sw=SW, keepalive_s=m.keepalive_s, max_inflight=m.max_inflight,
                         session_expiry_s=m.session_expiry_s, tls_files=tls, max_backoff_s=m.max_backoff_s)


def _watchdog(notifier: SystemdNotifier, pipeline: Pipeline, *, last_frame: float, last_ping: float,
              store: SqliteOutbox) -> float:
    """WATCHDOG=1 from the main loop, twice per WatchdogSec, while frames flow or the car is known asleep.

    A hung CAN read never comes back here, so systemd's watchdog fires and restarts the service.
    """
    now = time.monotonic()
    if not notifier.watchdog_s or now - last_ping < notifier.watchdog_s / 2:
        return last_ping
    if now - last_frame > notifier.watchdog_s and pipeline.vehicle_state() != "off":
        return last_ping  # frames stopped but the car is not known to be asleep: let the watchdog decide
    notifier.notify(f"WATCHDOG=1\nSTATUS=epoch {pipeline.chain.ep} seq {pipeline.chain.seq}, "
                    f"car {pipeline.vehicle_state()}, outbox {store.count()}")
    return now


def _drain(forwarder: Forwarder, *, timeout_s: float) -> None:
    """Send what the outbox holds until it is empty, nothing is in flight, or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sent = forwarder.step(time.time())
        if not sent and not forwarder.in_flight:
            return
        time.sleep(0.01)


def run_daemon(config: Config, *, stop: threading.Event) -> int:
    """Run until ``stop`` is set. Returns the exit code (0 after a clean stop).

    Raises:
        ConfigError: bad key file or profile (exit 2 in the CLI).
        TransportError: CAN interface or state directory unusable at start (exit 1).
    """
    health = HealthFile(config.device.state_dir, __version__)  # first: a crash below still counts a start
    key = load_private_key(config.device.key_file)
    ota = _OtaCommands(config)
    store = open_store(config)
    chain, counters = store.load()
    pipeline = build_pipeline(config, key, chain=chain, counters=counters, store=store,
                              device_id=config.device.id, vin_salt=_vin_salt(config.device.state_dir))
    pipeline.epoch_note = store.new_epoch_reason
    publisher = open_uplink(config)
    forwarder = Forwarder(store, publisher, window=config.mqtt.max_inflight)
    notifier = SystemdNotifier.from_environment()
    source = None
    code = 0
    try:
        source = open_bus(config, pipeline)
        diag = DiagService(pipeline, IsoTpDiagClient(source.send))
        notifier.notify("READY=1")
        health.mark("bus")
        log.info("running: profile %s, device %s, epoch %d seq %d", pipeline.decoder.profile.name,
                 config.device.id, chain.ep, chain.seq)
        timeout = config.can.receive_timeout_s
        last_frame = last_ping = time.monotonic()
        while not stop.is_set():
            frame = source.recv(0.005 if diag.client.busy else timeout)
            if frame is not None:
                last_frame = time.monotonic()
                if diag.on_frame(frame):
                    frame = None
            now = time.time()
            if frame is not None:  # what the pipeline signs goes to the outbox; the forwarder sends it
                pipeline.on_frame(frame)
            else:
                pipeline.tick(now)
            diag.step(now, schedule=diag.specs != ())
            forwarder.step(now)
            _handle_commands(publisher, pipeline, ota)
            if publisher.is_connected:
                health.mark("broker")
                if forwarder.counts["delivered"]:
                    health.mark("acked")
            last_ping = _watchdog(notifier, pipeline, last_frame=last_frame, last_ping=last_ping, store=store)
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
        _drain(forwarder, timeout_s=5.0)  # what is still unsent stays in the outbox for the next start
        publisher.close()
        log.info("stopped: %d messages left in the outbox; %s", store.count(),
                 ", ".join(f"{k} {v}" for k, v in sorted((pipeline.counts + forwarder.counts).items())))
        store.close()
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


@dataclass
class InspectionResult:
    """Where the certificate went, and what it says."""

    out_dir: Path
    payload: dict[str, object]
    digest_hex: str
    published: bool
    seconds: float


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run_inspection(config: Config, *, out_dir: str, lang: str, wait_s: float = 5.0,
                   progress: Callable[[str], None] = lambda line: None) -> InspectionResult:
    """One-shot inspection-bay read: wait for the battery ECU, poll every group once, sign and write the
    certificate (``certificate.cose``, ``.json``, ``.html``), and publish it when a broker answers.

    Raises:
        InspectionError: nothing answered (no certificate is written).
        ConfigError, TransportError: as for the daemon.
    """
    started = time.monotonic()
    key = load_private_key(config.device.key_file)
    store = open_store(config)
    try:
        chain, counters = store.load()
        pipeline = build_pipeline(config, key, chain=chain, counters=counters, store=store,
                                  device_id=config.device.id, vin_salt=_vin_salt(config.device.state_dir),
                                  emit=False)
        source = open_bus(config, pipeline)
        try:
            polls = _inspect_bus(config, pipeline, source, wait_s=wait_s, progress=progress)
        finally:
            source.close()
        now = time.time()
        payload = build_certificate(pipeline.tracker, now=now, device_id=config.device.id,
                                    chain=pipeline.chain.header(), sw=SW, signals=pipeline.signals, polls=polls,
                                    profile_title=pipeline.decoder.profile.title,
                                    outlook=pipeline.outlook(pipeline.tracker, now) if pipeline.outlook else None)
        message = pipeline.sign_message("certificate", payload)  # also stored in the outbox
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(message.payload).hexdigest()
        _write_atomic(out / "certificate.cose", message.payload)
        _write_atomic(out / "certificate.json", (json.dumps(payload, default=_hex, ensure_ascii=False, indent=1)
                                                 + "\n").encode())
        page = render_certificate(payload, lang=lang, key_id_hex=pipeline.signer.kid.hex(), digest_hex=digest)
        _write_atomic(out / "certificate.html", page.encode())
        published = _publish_certificate(config, store, progress)
    finally:
        store.close()
    return InspectionResult(out, payload, digest, published, time.monotonic() - started)


def _hex(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


def poll_once(diag: DiagService, source: PythonCanSource, pipeline: Pipeline, spec: PollSpec) -> str:
    """Send one poll and read the bus (replies to ``diag``, the rest to the pipeline) until it finishes.

    Returns:
        ``ok``, an error kind, or ``timeout``.
    """
    diag.request(spec)
    while True:
        frame = source.recv(0.005)
        if frame is not None and not diag.on_frame(frame):
            pipeline.on_frame(frame)
        finished = diag.step(time.time(), schedule=False)
        if finished is not None:
            return finished[1]


def _inspect_bus(config: Config, pipeline: Pipeline, source: PythonCanSource, *, wait_s: float,
                 progress: Callable[[str], None]) -> dict[str, str]:
    profile = pipeline.decoder.profile
    diag = DiagService(pipeline, IsoTpDiagClient(source.send))
    progress(f"waiting for the battery ECU on {config.can.interface} {config.can.channel} ...")
    deadline = time.monotonic() + wait_s
    settle_until = None
    while time.monotonic() < (settle_until or deadline):
        frame = source.recv(0.05)
        if frame is not None and not diag.on_frame(frame):
            pipeline.on_frame(frame)
            if settle_until is None:
                settle_until = time.monotonic() + 1.2  # one full cycle of the 500 ms frames
                progress(f"battery ECU broadcasting (frame 0x{frame.can_id:03X})")
    if settle_until is None and profile.signals:
        progress(f"no broadcast frames within {wait_s:g} s; trying the diagnostic requests anyway")
    results: dict[str, str] = {}
    silent: set[int] = set()  # ECUs that timed out twice: do not spend 2 s on each of their other polls
    for i, spec in enumerate(profile.polls, 1):
        if spec.request_id in silent:
            results[spec.name] = "skipped"
            progress(f"[{i}/{len(profile.polls)}] {spec.name}: skipped (0x{spec.request_id:03X} is silent)")
            continue
        for attempt in (1, 2):  # one retry: a reply can be lost, the ECU may be waking up
            t0 = time.monotonic()
            results[spec.name] = poll_once(diag, source, pipeline, spec)
            if results[spec.name] == "ok" or attempt == 2:
                break
        if results[spec.name] == "timeout":
            silent.add(spec.request_id)
        progress(f"[{i}/{len(profile.polls)}] {spec.name}: {results[spec.name]} "
                 f"({(time.monotonic() - t0) * 1000:.0f} ms)")
    by_ecu: dict[int, list[str]] = {}
    for spec in profile.polls:
        by_ecu.setdefault(spec.request_id, []).append(results[spec.name])
    main = profile.polls[0].request_id if profile.polls else None
    if main is not None and "ok" not in by_ecu[main]:
        spec = profile.polls[0]
        heard = "no broadcast frames either" if settle_until is None else "it broadcasts but does not answer"
        raise InspectionError(f"battery ECU did not answer: no reply on 0x{spec.response_id:03X} to requests on "
                              f"0x{spec.request_id:03X} ({', '.join(sorted(set(by_ecu[main])))}); {heard}. "
                              "Check the ignition is on and the adapter is on the EV-CAN pins.")
    return results


def _publish_certificate(config: Config, store: SqliteOutbox, progress: Callable[[str], None]) -> bool:
    """Send the outbox (the certificate and anything older) while a broker answers; what is not
    acknowledged stays in the outbox for the daemon."""
    m = config.mqtt
    if not port_open(m.host, m.port, timeout_s=1.0):
        progress(f"broker {m.host}:{m.port} not reachable: the certificate waits in the outbox")
        return False
    publisher = open_uplink(config)
    try:
        if not publisher.connected.wait(3.0):
            progress(f"broker {m.host}:{m.port} did not accept the connection: the certificate waits in the outbox")
            return False
        _drain(Forwarder(store, publisher, window=m.max_inflight), timeout_s=5.0)
        ok = store.count() == 0
        progress(f"published on {m.topic_prefix}/{config.device.id}/certificate" if ok else
                 "broker did not acknowledge everything: the rest waits in the outbox")
        return ok
    finally:
        publisher.close(timeout_s=2.0)


def trusted_keys(*, pubkey: str | None, trust_dir: str | None) -> Callable[[str], ec.EllipticCurvePublicKey | None]:
    """Device id -> trusted public key: one key for every device (``--pubkey``) or ``DIR/<dev>.pem``.

    Raises:
        ConfigError: the key file or directory is unreadable.
    """
    if pubkey:
        key = load_public_key(pubkey)
        return lambda dev: key
    assert trust_dir is not None
    directory = Path(trust_dir)
    if not directory.is_dir():
        raise ConfigError(f"verify --trust: {directory} is not a directory")
    cache: dict[str, ec.EllipticCurvePublicKey | None] = {}

    def lookup(dev: str) -> ec.EllipticCurvePublicKey | None:
        if dev not in cache:
            path = directory / f"{dev}.pem"
            safe = dev and "/" not in dev and not dev.startswith(".")
            cache[dev] = load_public_key(path) if safe and path.is_file() else None
        return cache[dev]

    return lookup


def envelopes_from_files(names: list[str]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file named, directories expanded in name order.

    Raises:
        ConfigError: a name that does not exist.
    """
    for name in names:
        path = Path(name)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
        elif path.is_file():
            files = [path]
        else:
            raise ConfigError(f"verify: {path} does not exist")
        for f in files:
            yield str(f), f.read_bytes()


def envelopes_from_mqtt(address: str, *, topic: str, duration_s: float | None,
                        tls: list[str] | None) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) of the signed messages on a subscription, until ``duration_s`` (or forever).

    Raises:
        ConfigError: a malformed HOST:PORT. PublishError: the broker cannot be reached.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"verify --mqtt: expected HOST:PORT, got {address!r}")
    subscriber = PahoSubscriber(host=host, port=int(port), topic=topic,
                                tls_files=(tls[0], tls[1], tls[2]) if tls else None)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                name, payload = subscriber.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if not name.endswith(("/status", "/ota")) and "/cmd/" not in name:
                yield name, payload
    finally:
        subscriber.close()
