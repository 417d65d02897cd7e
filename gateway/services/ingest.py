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

from ..core.chainverify import KeyLookup, check_envelope
from ..core.passport import expand_batch
from ..core.signing import open_envelope
from ..errors import EnvelopeError
from ..model import Delivery, Received
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

        Raises:
            StoreError: the database did not commit the batch; nothing of it was acknowledged, and the
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
        result = self._store.store(batch)  # StoreError: held, retried by the next call
        self._held = None
        self._source.ack(deliveries)
        rejected = [f"{r.topic}: REJECTED: {r.reason}" for r in batch if r.checked is None] + result.problems
        for line in rejected[:LOGGED_PER_BATCH]:  # a flood of junk on the broker does not flood the journal
            log.warning("%s", line)
        if len(rejected) > LOGGED_PER_BATCH:
            log.warning("... and %d more in this batch (all in the rejections table)", len(rejected) - LOGGED_PER_BATCH)
        t = self.totals
        t.stored, t.duplicates, t.rejected = t.stored + result.stored, t.duplicates + result.duplicates, \
            t.rejected + result.rejected
        t.batches += 1
        return len(deliveries)

    def _check(self, d: Delivery) -> Received:
        try:
            c = check_envelope(d.payload, self._keys, topic=d.topic)
        except EnvelopeError as exc:
            return Received(d.topic, d.payload, reason=str(exc), dev=_claimed_device(d.payload))
        if c.kind == "batch":
            try:
                readings = tuple((r["seq"], r["ts"], r["m"]) for r in expand_batch(c.payload))
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # signed, but not our batch format
                reason = f"{c.name}: batch cannot be read: {type(exc).__name__}: {exc}"
                return Received(d.topic, d.payload, reason=reason, dev=c.dev)
        elif c.kind == "reading" and isinstance(c.payload.get("m"), dict) and isinstance(c.payload.get("ts"), int):
            readings = ((c.seq, c.payload["ts"], c.payload["m"]),)
        else:
            readings = ()
        return Received(d.topic, d.payload, c, dev=c.dev, readings=readings)


def _claimed_device(envelope: bytes) -> str | None:
    try:
        dev = open_envelope(envelope).payload.get("dev")
    except EnvelopeError:
        return None
    return dev[:64] if isinstance(dev, str) else None
