"""Composition root of ``battery-gateway ingest``, the backend's scalable consumer: one worker process of
a consumer group (start as many as the load needs, on any machines), or ``--check`` / ``--migrate``.

Engines: a NATS cluster (``--nats``: a durable JetStream pull consumer on its MQTT stream) or an MQTT 5
broker with shared subscriptions (``--mqtt``: ``$share/{group}/...``, e.g. mosquitto). Database:
PostgreSQL (``--db``, or ``BGW_INGEST_DB``). docs/fleet.md has the schema, the sizing and the scripts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.chainverify import TOPIC_OF_KIND, EpochChain, KeyLookup
from ..errors import ConfigError, StoreError
from ..ports import GroupSource
from ..services.ingest import IngestWorker

if TYPE_CHECKING:  # psycopg is in the ingest extra: imported when a command needs it
    from ..adapters.postgres import PostgresStore

__all__ = ["IngestOptions", "check", "migrate", "run_worker"]

log = logging.getLogger("gateway.ingest")

STATS_EVERY_S = 60.0


@dataclass(frozen=True)
class IngestOptions:
    db: str
    group: str = "bgw-ingest"
    topic_prefix: str = "bp/v1"
    nats: tuple[str, ...] = ()
    mqtt: str = ""
    client_id: str = ""
    tls: tuple[str, str, str] | None = None
    batch: int = 200
    ack_wait_s: float = 30.0


def _source(opts: IngestOptions) -> GroupSource:
    # the topics signed envelopes come on (status, ota and cmd/ carry none)
    filters = [f"{opts.topic_prefix}/+/{topic}" for topic in sorted(set(TOPIC_OF_KIND.values()))]
    if opts.nats:
        from ..adapters.nats_source import NatsGroupSource

        return NatsGroupSource(urls=opts.nats, group=opts.group, filters=filters, ack_wait_s=opts.ack_wait_s,
                               max_ack_pending=max(1000, opts.batch * 50))
    from ..adapters.mqtt import PahoGroupSource

    host, _, port = opts.mqtt.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ingest --mqtt: expected HOST:PORT, got {opts.mqtt!r}")
    if not opts.client_id:
        raise ConfigError("ingest --mqtt: give --client-id, one per worker and the same after a restart "
                          "(the broker keeps a dead worker's unacknowledged messages in its session)")
    source = PahoGroupSource(host=host.strip("[]"), port=int(port), group=opts.group, filters=filters,
                             client_id=opts.client_id, tls_files=opts.tls, receive_max=max(100, opts.batch * 2))
    source.wait_ready()
    return source


def _store(dsn: str) -> PostgresStore:
    from ..adapters.postgres import PostgresStore

    return PostgresStore(dsn)


def migrate(dsn: str) -> list[str]:
    """Apply the schema's migrations that are not applied yet; their names."""
    store = _store(dsn)
    try:
        return list(store.migrate())
    finally:
        store.close()


def run_worker(opts: IngestOptions, keys: KeyLookup, *, stop: Callable[[], bool]) -> str:
    """Migrate, then verify and store batches until ``stop()``; the totals line.

    A database that cannot be reached gets the same batch again (nothing acknowledged in between), with a
    backoff up to 30 s; one that refuses a value is handled by the worker (the message is rejected).

    Raises:
        ConfigError: bad options.
        PublishError: the engine cannot be reached or refused the consumer.
        StoreError: the database cannot be reached at start.
    """
    store = _store(opts.db)
    applied = store.migrate()
    if applied:
        log.info("database schema: applied %s", ", ".join(applied))
    source = _source(opts)
    worker = IngestWorker(source, store, keys, batch=opts.batch)
    where = ", ".join(opts.nats) if opts.nats else opts.mqtt
    log.info("ingest worker in group %s on %s: verifying and storing", opts.group, where)
    backoff, last_stats, last_line = 1.0, time.monotonic(), ""
    try:
        while not stop():
            try:
                worker.run_once(timeout_s=0.5)
                backoff = 1.0
            except StoreError as exc:
                log.warning("%s; retrying the same batch in %g s", exc, backoff)
                deadline = time.monotonic() + backoff
                while not stop() and time.monotonic() < deadline:
                    time.sleep(0.1)
                backoff = min(backoff * 2, 30.0)
            if time.monotonic() - last_stats >= STATS_EVERY_S:
                if (line := worker.totals.line()) != last_line:  # a quiet worker does not fill the journal
                    log.info("ingest: %s", line)
                    last_line = line
                last_stats = time.monotonic()
    finally:
        source.close()
        store.close()
    return worker.totals.line()


def check(dsn: str) -> tuple[list[str], bool]:
    """``ingest --check``: per device and epoch what is stored, missing, broken or in conflict (the
    verifier's own report, ``core/chainverify.EpochChain``), then the rejections per claimed device; and
    whether every chain is whole. Rejections of messages no trusted key signed are listed but do not make
    a chain less whole (anyone on the broker can send junk claiming any device); conflicts do."""
    store = _store(dsn)
    lines: list[str] = []
    devices: set[str] = set()
    messages = missing = breaks = conflicts = 0
    try:
        for dev, ep, rows in store.chains():
            chain = EpochChain()
            for seq, n, prev, digest in rows:
                chain.add(seq, n, prev, digest)
            devices.add(dev)
            messages += len(rows)
            missing += chain.missing_count()
            breaks += len(chain.breaks())
            conflicts += len(set(chain.conflicts))
            lines.append(chain.describe(dev, ep))
        rejected = store.rejection_counts()
    finally:
        store.close()
    for claimed, count, conflicting, reason in rejected:
        who = f"{claimed} (signed)" if conflicting else f"claims {claimed}" if claimed else "(payload unreadable)"
        lines.append(f"{who}: {count} rejected" + (f", {conflicting} conflicts" if conflicting else "")
                     + f", e.g. {reason}")
    total_rejected = sum(n for _, n, _, _ in rejected)
    conflicts += sum(c for _, _, c, _ in rejected)
    lines.append(f"{len(devices)} devices, {messages} envelopes stored, {missing} sequence numbers missing, "
                 f"{breaks} chain breaks, {conflicts} conflicts, {total_rejected} rejected")
    return lines, not (missing or breaks or conflicts)
