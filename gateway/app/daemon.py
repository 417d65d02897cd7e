"""Composition root of the daemon (``battery-gateway run``): builds the adapters from the config, wires
the services, runs the main loop, and shuts down in order.

One loop on the main thread (docs/adr/0006-single-threaded-main-loop.md): read one frame, hand a poll
reply to the diagnostics service and anything else to the pipeline, tick the pipeline with the wall
clock, drive the next poll, let the forwarder send what the outbox holds, take commands, ping the
watchdog. paho's network thread is the only other thread.

Shutdown order: stop reading the bus, sign nothing more, save the state, flush the outbox (bounded
wait), say offline, close.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from .. import __version__
from ..adapters.health import HealthFile
from ..adapters.keystore import load_private_key
from ..adapters.mqtt import PahoPublisher
from ..adapters.releases import read_status
from ..adapters.sqlite_outbox import SqliteOutbox
from ..adapters.systemd import SystemdNotifier
from ..core.commands import COMMANDS
from ..core.config import Config
from ..errors import TransportError
from ..services.diagnostics import DiagService
from ..services.forwarder import Forwarder
from ..services.pipeline import Pipeline
from .commands import CommandIntake
from .wiring import Assembly, Bus, assemble, drain, open_bus, open_diag, open_store, open_uplink, vin_salt

__all__ = ["run_daemon"]

log = logging.getLogger(__name__)


class _Commands:
    """Takes the commands paho queued: signed ones to the intake, unknown ones counted (logged at most once
    a minute, with the count: a flood of junk cannot fill the journal)."""

    def __init__(self, intake: CommandIntake) -> None:
        self.intake = intake
        self.unknown = 0
        self._logged_at = -60.0

    def take(self, publisher: PahoPublisher, pipeline: Pipeline) -> None:
        while not publisher.commands.empty():
            name, payload = publisher.commands.get_nowait()
            if name not in COMMANDS:
                self._unknown(name)
            elif self.intake.accept(name, payload, now_ms=round(time.time() * 1000)) and name == "passport":
                pipeline.request_passport("request")  # an accepted cmd/ota already wrote the update request

    def _unknown(self, name: str) -> None:
        self.unknown += 1
        now = time.monotonic()
        if now - self._logged_at >= 60.0:
            self._logged_at = now
            log.warning("unknown command %r ignored (%d unknown commands so far)", name[:64], self.unknown)


class _OtaNotices:
    """Publishes the updater's latest notice (``ota-status.json`` in the releases directory) retained on
    ``{prefix}/{device}/ota``: the updater never connects itself, so the device has one MQTT identity."""

    def __init__(self, releases_dir: str) -> None:
        self._dir = releases_dir
        self._published: tuple[int, int] | None = None
        self._next_look = 0.0

    def step(self, publisher: PahoPublisher) -> None:
        now = time.monotonic()
        if now < self._next_look or not publisher.is_connected:
            return
        self._next_look = now + 1.0
        status = read_status(self._dir)
        if status is not None and status[0] != self._published and publisher.publish_notice("ota", status[1]):
            self._published = status[0]


class _Watchdog:
    """WATCHDOG=1 from the main loop, twice per WatchdogSec, while frames flow or the car is known asleep.

    A hung CAN read never comes back to ``step``, so systemd's watchdog fires and restarts the service.
    """

    def __init__(self, notifier: SystemdNotifier) -> None:
        self._notifier = notifier
        self.last_frame = self._last_ping = time.monotonic()

    def step(self, pipeline: Pipeline, store: SqliteOutbox) -> None:
        period = self._notifier.watchdog_s
        now = time.monotonic()
        if not period or now - self._last_ping < period / 2:
            return
        state = pipeline.vehicle_state()
        if now - self.last_frame > period and state != "off":
            return  # frames stopped but the car is not known to be asleep: let the watchdog decide
        chain = pipeline.chain
        self._notifier.notify(f"WATCHDOG=1\nSTATUS=epoch {chain.ep} seq {chain.seq}, car {state}, "
                              f"outbox {store.count()}")
        self._last_ping = now


def run_daemon(config: Config, *, stop: threading.Event) -> int:
    """Run until ``stop`` is set. Returns the exit code (0 after a clean stop).

    Raises:
        ConfigError: bad key file or profile (exit 2 in the CLI).
        TransportError: CAN interface or state directory unusable at start (exit 1).
    """
    health = HealthFile(config.device.state_dir, __version__)  # first: a crash below still counts a start
    key = load_private_key(config.device.key_file)
    intake = CommandIntake(config)
    store = open_store(config)
    chain, counters = store.load()
    parts = assemble(config, key, sink=store, chain=chain, counters=counters, device_id=config.device.id,
                     vin_salt=vin_salt(config.device.state_dir), epoch_note=store.new_epoch_reason)
    daemon = _Daemon(config, parts, store=store, publisher=open_uplink(config), intake=intake, health=health)
    code = 0
    try:
        daemon.run(stop)
    except TransportError as exc:
        log.error("%s", exc)
        code = 1
    finally:
        code = max(code, daemon.shut_down())
    return code


class _Daemon:
    """The running daemon's parts, its main loop, and its orderly shutdown."""

    def __init__(self, config: Config, parts: Assembly, *, store: SqliteOutbox, publisher: PahoPublisher,
                 intake: CommandIntake, health: HealthFile) -> None:
        self.config, self.parts, self.store, self.publisher = config, parts, store, publisher
        self.commands, self.health = _Commands(intake), health
        self.notices = _OtaNotices(config.ota.releases_dir) if config.ota.metadata_url else None
        self.forwarder = Forwarder(store, publisher, window=config.mqtt.max_inflight)
        self.notifier = SystemdNotifier.from_environment()
        self.watchdog = _Watchdog(self.notifier)
        self.source: Bus | None = None
        self.diag: DiagService | None = None

    def run(self, stop: threading.Event) -> None:
        """Open the bus, say ready, and run the loop until ``stop``. Raises TransportError (bus gone)."""
        pipeline, profile = self.parts.pipeline, self.parts.profile
        self.source = source = open_bus(self.config, profile)
        self.diag = diag = DiagService(profile.polls, open_diag(self.config, source), on_reply=pipeline.on_diag_reply,
                                       vehicle_state=pipeline.vehicle_state)
        self.notifier.notify("READY=1")
        self.health.mark("bus")
        log.info("running: profile %s, device %s, epoch %d seq %d", profile.name, self.config.device.id,
                 pipeline.chain.ep, pipeline.chain.seq)
        while not stop.is_set():
            self._step(source, diag)

    def _step(self, source: Bus, diag: DiagService) -> None:
        pipeline = self.parts.pipeline
        frame = source.recv(0.005 if diag.client.busy else self.config.can.receive_timeout_s)
        if frame is not None:
            self.watchdog.last_frame = time.monotonic()
            if diag.on_frame(frame):
                frame = None
        now = time.time()
        if frame is not None:  # what the pipeline signs goes to the outbox; the forwarder sends it
            pipeline.on_frame(frame)
        else:
            pipeline.tick(now)
        finished = diag.step(now, schedule=diag.specs != ())
        if finished is not None and finished[1] == "ok":  # a reply is the battery ECU talking (all a car
            self.watchdog.last_frame = time.monotonic()  # read by polls says, and the kernel's ISO-TP hides)
        self.forwarder.step(now)
        self.commands.take(self.publisher, pipeline)
        if self.notices is not None:
            self.notices.step(self.publisher)
        if self.publisher.failed:  # offline for good otherwise: exit 1, systemd restarts the service
            raise TransportError(f"mqtt: the network thread stopped ({self.publisher.failed})")
        if self.publisher.is_connected:
            self.health.mark("broker")
            if self.forwarder.counts["delivered"]:
                self.health.mark("acked")
        self.watchdog.step(pipeline, self.store)

    def shut_down(self) -> int:
        """Stop reading, save the state, drain for up to 5 s, say offline, close. Returns 1 when the state
        could not be saved, else 0."""
        code = 0
        self.notifier.notify("STOPPING=1")
        if self.diag is not None:
            self.diag.client.close()
        if self.source is not None:
            self.source.close()
        pipeline = self.parts.pipeline
        try:
            self.store.save(pipeline.chain, self.parts.tracker.counters)
        except TransportError as exc:
            log.error("%s", exc)
            code = 1
        drain(self.forwarder, timeout_s=5.0)  # what is still unsent stays in the outbox for the next start
        self.publisher.close()
        diag = Counter({f"diag_{k}": v for k, v in (self.diag.failures if self.diag else {}).items()})
        dropped = {f"commands_{k}": v for k, v in self.publisher.dropped.items() if v}
        if self.commands.unknown:
            dropped["commands_unknown"] = self.commands.unknown
        if self.commands.intake.ignored:
            dropped["commands_ignored"] = self.commands.intake.ignored
        counts = pipeline.counts + diag + self.forwarder.counts + Counter(dropped)
        log.info("stopped: %d messages left in the outbox; %s", self.store.count(),
                 ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        self.store.close()
        return code
