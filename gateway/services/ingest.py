"""One ingest worker's loop: take a batch from the engine's consumer group, verify every envelope, store
the batch in one transaction, and acknowledge only after the commit.

Several workers, on any number of machines, share one consumer group; a message a worker took and did not
acknowledge (it died, the database refused) is delivered again, to it or another, and the store keeps
each ``(dev, ep, seq)`` once, so a message delivered twice is stored once. Nothing is acknowledged that
is not committed: a worker killed at any point loses nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..core.chainverify import MAX_TS_MS, KeyLookup, check_envelope, printable, storable
from ..core.passport import expand_batch
from ..core.signing import open_envelope
from ..errors import EnvelopeError, StoreError
from ..model import Delivery, Received, StoreResult
from ..ports import GroupSource, IngestStore

__all__ = ["IngestTotals", "IngestWorker"]

log = logging.getLogger(__name__)

LOGGED_PER_BATCH = 5


@dataclass
class IngestTotals:
    """Since the worker started: envelopes stored, copies dropped as duplicates, rejections, batches."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0

    def line(self) -> str:
        return (f"{self.stored} stored, {self.duplicates} duplicates dropped, {self.rejected} rejected "
                f"in {self.batches} batches")


class IngestWorker:
    """Verify and store what the source delivers; ``run_once`` is one batch."""

    def __init__(self, source: GroupSource, store: IngestStore, keys: KeyLookup, *, batch: int = 200) -> None:
        self._source, self._store, self._keys, self._batch = source, store, keys, batch
        self._held: tuple[list[Delivery], list[Received]] | None = None
        self.totals = IngestTotals()

    def run_once(self, timeout_s: float = 1.0) -> int:
        """Fetch, verify, store, acknowledge one batch; the number of messages it held (0: none came).

        A batch whose data the database refuses is stored one message at a time, and a message it refuses
        on its own becomes a rejection with the database's reason: one hostile message never blocks the
        others.

        Raises:
            StoreError: the database could not be reached; nothing of the batch was acknowledged, and the
                next call stores the same batch again before it fetches more (an MQTT broker would not
                send it again before a reconnect; a JetStream consumer may, to another worker, after
                its ack wait: stored once either way).
            PublishError: the engine refused the consumer.
        """
        if self._held:  # a batch the database refused last time: the same messages again, first
            deliveries, batch = self._held
        else:
            deliveries = self._source.fetch(self._batch, timeout_s)
            if not deliveries:
                return 0
            batch = [self._check(d) for d in deliveries]
        self._held = (deliveries, batch)
        result = self._store_all(batch)  # StoreError: held, retried by the next call
        self._held = None
        self._source.ack(deliveries)
        rejected = [f"{printable(topic)}: REJECTED: {reason}" for topic, reason in
                    [(r.topic, r.reason) for r in batch if r.checked is None] + result.problems]
        for line in rejected[:LOGGED_PER_BATCH]:  # a flood of junk on the broker does not flood the journal
            log.warning("%s", line)
        if len(rejected) > LOGGED_PER_BATCH:
            log.warning("... and %d more in this batch (all in the rejections table)", len(rejected) - LOGGED_PER_BATCH)
        t = self.totals
        t.stored, t.duplicates, t.rejected = t.stored + result.stored, t.duplicates + result.duplicates, \
            t.rejected + result.rejected
        t.batches += 1
        return len(deliveries)

    def _store_all(self, batch: list[Received]) -> StoreResult:
        try:
            return self._store.store(batch)
        except StoreError as exc:
            if not exc.refused_data:
                raise
            log.warning("%s; storing its messages one at a time", exc)
        total = StoreResult()
        for r in batch:
            try:
                one = self._store.store([r])
            except StoreError as exc:
                if not exc.refused_data:
                    raise
                reason = f"the database refused it: {printable(str(exc))}"
                one = self._store.store([Received(printable(r.topic, 500), r.envelope, reason=reason, dev=r.dev)])
                one.problems.append((r.topic, reason))
            total.stored += one.stored
            total.duplicates += one.duplicates
            total.rejected += one.rejected
            total.problems += one.problems
        return total

    def _check(self, d: Delivery) -> Received:
        """The verdict on one delivery. Everything in it came from the network: whatever fails to read it
        is a rejection, never an exception that would stop the worker (and the next one, on redelivery)."""
        try:
            c = check_envelope(d.payload, self._keys, topic=d.topic)
            readings: tuple[tuple[int, int, dict[str, Any]], ...] = ()
            if c.kind == "batch":
                readings = tuple((r["seq"], r["ts"], r["m"]) for r in expand_batch(c.payload))
            elif c.kind == "reading":
                readings = ((c.seq, c.payload["ts"], c.payload["m"]),)
            bat = c.payload.get("bat")
            if not (bat is None or (isinstance(bat, str) and 0 < len(bat) <= 128 and "\0" not in bat)):
                raise EnvelopeError(f"{c.name}: bat {printable(repr(bat), 40)} is not a pack id")
            if any(not (isinstance(ts, int) and 0 <= ts <= MAX_TS_MS) for _, ts, _ in readings):
                raise EnvelopeError(f"{c.name}: a reading's time is not a time in milliseconds")
            problem = storable(c.payload if c.kind in ("passport", "certificate") else [m for *_, m in readings])
            if problem or any(not isinstance(m, dict) for *_, m in readings):
                raise EnvelopeError(f"{c.name}: cannot be stored: {problem or 'measurements are not a map'}")
        except EnvelopeError as exc:
            return Received(d.topic, d.payload, reason=printable(str(exc), 300), dev=_claimed_device(d.payload))
        except Exception as exc:  # hostile input: any failure to read it is its rejection
            reason = printable(f"unreadable: {type(exc).__name__}: {exc}", 300)
            return Received(d.topic, d.payload, reason=reason, dev=_claimed_device(d.payload))
        return Received(d.topic, d.payload, c, dev=c.dev, readings=readings)


def _claimed_device(envelope: bytes) -> str | None:
    """The device a payload names, unverified, as printable text (for the rejections table)."""
    try:
        dev = open_envelope(envelope).payload.get("dev")
    except Exception:  # hostile input
        return None
    return printable(dev, 64) if isinstance(dev, str) else None
