"""Composition root of ``battery-gateway inspect``: the one-shot inspection-bay read.

Waits for the battery ECU, polls every group once, signs the certificate as the next message of the
device's chain (stored in the outbox like any other message), writes ``certificate.cose``, ``.json``,
``.html`` (with the signed QR claim, docs/qr.md) and ``.pdf`` (when a headless Chromium is installed), and
publishes the outbox when a broker answers. The readings and passports the pipeline
would sign on the way are dropped without taking a chain position, so the backend sees no gap.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..adapters.fs import safe_dir, write_atomic
from ..adapters.keystore import load_private_key
from ..adapters.mqtt import port_open
from ..adapters.pdf import find_browser, print_pdf
from ..adapters.sqlite_outbox import SqliteOutbox
from ..core.certificate import build_certificate
from ..core.certificate_html import Language, render_certificate
from ..core.config import Config
from ..core.polls import PollSpec
from ..core.qrclaim import build_claim, encode_qr
from ..core.signing import Signer
from ..errors import ConfigError, InspectionError
from ..model import ChainPosition, Counters, OutgoingMessage
from ..services.diagnostics import DiagService
from ..services.forwarder import Forwarder
from ..services.pipeline import Pipeline
from .wiring import (
    SW,
    Assembly,
    Bus,
    assemble,
    drain,
    load_language,
    open_bus,
    open_diag,
    open_store,
    open_uplink,
    vin_salt,
)

__all__ = ["InspectionResult", "poll_once", "run_inspection"]


@dataclass
class InspectionResult:
    """Where the certificate went, and what it says."""

    out_dir: Path
    payload: dict[str, object]
    digest_hex: str
    published: bool
    seconds: float
    qr_text: str
    pdf: str  # "written", or why not


class DroppingSink:
    """``MessageSink`` that takes no chain position: an inspection signs only its certificate."""

    def put(self, message: OutgoingMessage, *, chain: ChainPosition, counters: Counters) -> bool:
        return False

    def take_thinned(self) -> int:
        return 0


def run_inspection(config: Config, *, out_dir: str, lang: str, wait_s: float = 5.0,
                   progress: Callable[[str], None] = lambda line: None) -> InspectionResult:
    """One-shot inspection-bay read: wait for the battery ECU, poll every group once, sign and write the
    certificate (``certificate.cose``, ``.json``, ``.html``), and publish it when a broker answers.

    Raises:
        InspectionError: nothing answered (no certificate is written).
        ConfigError: ``out_dir`` is not a safe place to write (checked before anything is read or signed);
            as for the daemon otherwise.
        TransportError: as for the daemon.
    """
    started = time.monotonic()
    language = load_language(lang)
    out = _output_dir(out_dir)
    key = load_private_key(config.device.key_file)
    store = open_store(config)
    try:
        chain, counters = store.load()
        parts = assemble(config, key, sink=DroppingSink(), chain=chain, counters=counters,
                         device_id=config.device.id, vin_salt=vin_salt(config.device.state_dir))
        source = open_bus(config, parts.profile)
        try:
            polls = _inspect_bus(config, parts, source, wait_s=wait_s, progress=progress)
        finally:
            source.close()
        message = _sign_certificate(config, parts, store, chain, polls)
        digest = hashlib.sha256(message.payload).hexdigest()
        qr_text = _qr_text(parts.signer, message)
        _write_files(out, message, language=language, key_id_hex=parts.signer.kid.hex(), digest_hex=digest,
                     qr_text=qr_text)
        published = _publish_certificate(config, store, progress)
        pdf = _write_pdf(out, progress)  # last: a slow browser delays nothing else
    finally:
        store.close()
    return InspectionResult(out, message.body, digest, published, time.monotonic() - started, qr_text, pdf)


def _sign_certificate(config: Config, parts: Assembly, store: SqliteOutbox, chain: ChainPosition,
                      polls: dict[str, str]) -> OutgoingMessage:
    """Sign the certificate as the next message of the chain and store it in the outbox.

    Raises:
        StateError: it could not be stored (nothing is written, nothing handed out).
    """
    now = time.time()
    payload = build_certificate(parts.tracker, now=now, device_id=config.device.id, chain=chain.header(), sw=SW,
                                signals=parts.profile.field_sources(), polls=polls,
                                profile_title=parts.profile.title, outlook=parts.outlook(parts.tracker, now))
    envelope = parts.signer.sign(payload)
    message = OutgoingMessage(topic="certificate", payload=envelope, retain=False, kind="certificate",
                              seq=payload["seq"], ep=payload["ep"], body=payload)
    store.put(message, chain=chain.after(envelope), counters=parts.tracker.counters)
    return message


def _output_dir(out_dir: str, *, create: bool = False) -> Path:
    """``--out``, refused when it is a link, another user's, or others can write it; created 0700 (when
    ``create``) only once there is a certificate to put in it."""
    out = Path(out_dir)
    try:
        if create or out.exists() or out.is_symlink():
            safe_dir(out)
    except OSError as exc:
        raise ConfigError(f"inspect --out {out_dir}: {exc.strerror}") from exc
    return out


def _qr_text(signer: Signer, message: OutgoingMessage) -> str:
    """The signed health claim for the page's QR: signed by the device key, outside the chain (it is a
    summary of the chained certificate, bound to it by the certificate's SHA-256)."""
    claim = build_claim(message.body, certificate_sha256=hashlib.sha256(message.payload).digest())
    return encode_qr(signer.sign(claim))


def _write_pdf(out: Path, progress: Callable[[str], None]) -> str:
    """``certificate.pdf`` from ``certificate.html``; a missing or failing browser costs the PDF only."""
    browser = find_browser()
    if browser is None:
        progress("certificate.pdf not written: no headless Chromium (apt install chromium-headless-shell)")
        return "no headless Chromium"
    try:
        print_pdf(browser, out / "certificate.html", out / "certificate.pdf")
    except OSError as exc:
        progress(f"certificate.pdf not written: {exc}")
        return str(exc)
    return "written"


def _write_files(out: Path, message: OutgoingMessage, *, language: Language, key_id_hex: str, digest_hex: str,
                 qr_text: str) -> None:
    _output_dir(str(out), create=True)
    body = json.dumps(message.body, default=_hex, ensure_ascii=False, indent=1) + "\n"
    page = render_certificate(message.body, language=language, key_id_hex=key_id_hex, digest_hex=digest_hex,
                              qr_text=qr_text)
    for name, data in (("certificate.cose", message.payload), ("certificate.json", body.encode()),
                       ("certificate.html", page.encode())):
        write_atomic(out / name, data, mode=0o600)  # battery serial, VIN hash: the operator hands it on


def _hex(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


def poll_once(diag: DiagService, source: Bus, pipeline: Pipeline, spec: PollSpec) -> str:
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


def _wait_for_broadcast(source: Bus, diag: DiagService, pipeline: Pipeline, *, wait_s: float,
                        progress: Callable[[str], None]) -> bool:
    """Read the bus until one full cycle of broadcast frames was seen, or ``wait_s``. True if any came."""
    deadline = time.monotonic() + wait_s
    settle_until = None
    while time.monotonic() < (settle_until or deadline):
        frame = source.recv(0.05)
        if frame is not None and not diag.on_frame(frame):
            pipeline.on_frame(frame)
            if settle_until is None:
                settle_until = time.monotonic() + 1.2  # one full cycle of the 500 ms frames
                progress(f"battery ECU broadcasting (frame 0x{frame.can_id:03X})")
    return settle_until is not None


def _inspect_bus(config: Config, parts: Assembly, source: Bus, *, wait_s: float,
                 progress: Callable[[str], None]) -> dict[str, str]:
    client = open_diag(config, source)
    try:
        diag = DiagService(parts.profile.polls, client, on_reply=parts.pipeline.on_diag_reply,
                           vehicle_state=parts.pipeline.vehicle_state)
        return _poll_every_group(config, parts, source, diag, wait_s=wait_s, progress=progress)
    finally:
        client.close()


def _poll_every_group(config: Config, parts: Assembly, source: Bus, diag: DiagService, *, wait_s: float,
                      progress: Callable[[str], None]) -> dict[str, str]:
    profile, pipeline = parts.profile, parts.pipeline
    progress(f"waiting for the battery ECU on {config.can.interface} {config.can.channel} ...")
    heard = _wait_for_broadcast(source, diag, pipeline, wait_s=wait_s, progress=progress)
    if not heard and profile.signals:
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
    _require_main_ecu(profile.polls, results, heard=heard)
    return results


def _require_main_ecu(polls: tuple[PollSpec, ...], results: dict[str, str], *, heard: bool) -> None:
    """Raise InspectionError when the battery ECU (the first poll's) answered none of its requests."""
    if not polls:
        return
    main = polls[0]
    outcomes = {results[s.name] for s in polls if s.request_id == main.request_id}
    if "ok" not in outcomes:
        why = "it broadcasts but does not answer" if heard else "no broadcast frames either"
        raise InspectionError(f"battery ECU did not answer: no reply on 0x{main.response_id:03X} to requests on "
                              f"0x{main.request_id:03X} ({', '.join(sorted(outcomes))}); {why}. "
                              "Check the ignition is on and the adapter is on the EV-CAN pins.")


def _publish_certificate(config: Config, store: SqliteOutbox, progress: Callable[[str], None]) -> bool:
    """Send the outbox (the certificate and anything older) while a broker answers; what is not
    acknowledged stays in the outbox for the daemon."""
    m = config.mqtt
    where = ", ".join(f"{h}:{p}" for h, p in m.endpoints())
    if not any(port_open(h, p, timeout_s=1.0) for h, p in m.endpoints()):
        progress(f"broker {where} not reachable: the certificate waits in the outbox")
        return False
    publisher = open_uplink(config)
    try:
        if not publisher.connected.wait(6.0 * len(m.endpoints())):  # paho's TCP connect gives up after 5 s
            progress(f"broker {where} did not accept the connection: the certificate waits in the outbox")
            return False
        drain(Forwarder(store, publisher, window=m.max_inflight), timeout_s=5.0)
        ok = store.count() == 0
        progress(f"published on {m.topic_prefix}/{config.device.id}/certificate" if ok else
                 "broker did not acknowledge everything: the rest waits in the outbox")
        return ok
    finally:
        publisher.close(timeout_s=2.0)
