"""An ingest worker's share of a NATS cluster's MQTT messages: a durable JetStream pull consumer on the
stream NATS keeps its MQTT QoS 1 messages in (``$MQTT_msgs``). Implements the ``GroupSource`` port.

Why the MQTT stream itself and not a copy: a device's QoS 1 PUBACK means the message is in that stream
(replicated when ``mqtt { stream_replicas }`` says so); copying into a stream of our own happens after
the PUBACK and loses messages when a node dies. The stream keeps a message while a consumer has interest
in it, so the durable must exist before devices publish (the first worker creates it; later workers bind
to it). Every worker that pulls from the same durable gets a disjoint share; a message not acknowledged
within ``ack_wait_s`` goes to another worker.

nats-py is asyncio; this adapter keeps one event loop of its own and runs it only inside ``fetch`` and
``ack``, so the worker stays one synchronous loop (ADR 0006). The client reconnects to any node of the
cluster by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ..errors import PublishError
from ..model import Delivery

__all__ = ["MQTT_STREAM", "NatsGroupSource", "subject_of_topic", "topic_of_subject"]

log = logging.getLogger(__name__)

MQTT_STREAM = "$MQTT_msgs"
MQTT_SUBJECT_PREFIX = "$MQTT.msgs."

T = TypeVar("T")


def subject_of_topic(topic_filter: str) -> str:
    """An MQTT topic filter -> the subject of the MQTT stream, as NATS maps them: ``/`` -> ``.``, a ``.``
    inside a level -> ``//``, ``+`` -> ``*``, ``#`` -> ``>``."""
    levels = ({"+": "*", "#": ">"}.get(level, level.replace(".", "//")) for level in topic_filter.split("/"))
    return MQTT_SUBJECT_PREFIX + ".".join(levels)


def topic_of_subject(subject: str) -> str:
    """A subject of the MQTT stream -> the MQTT topic the device published on (the inverse of the above)."""
    return "/".join(t.replace("//", ".") for t in subject.removeprefix(MQTT_SUBJECT_PREFIX).split("."))


class NatsGroupSource:
    """A durable pull consumer named ``group`` on the MQTT stream, filtered on ``filters``."""

    def __init__(self, *, urls: Sequence[str], group: str, filters: Sequence[str], ack_wait_s: float = 30.0,
                 max_ack_pending: int = 20_000, connect_timeout_s: float = 10.0,
                 stream_wait_s: float = 120.0) -> None:
        """Connect to the cluster, create the durable (or bind to it) and start pulling.

        Raises:
            PublishError: no node answered, or JetStream refused the consumer.
        """
        self._loop = asyncio.new_event_loop()
        self._where = ", ".join(urls)
        self._failing = False
        subjects = [subject_of_topic(f) for f in filters]
        try:
            self._nc = self._run(nats.connect(
                servers=list(urls), connect_timeout=connect_timeout_s, max_reconnect_attempts=-1,
                reconnect_time_wait=0.5, allow_reconnect=True, name=f"battery-gateway ingest {group}",
                error_cb=self._on_error, disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect))
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            self._loop.close()
            raise PublishError(f"nats: cannot connect to {self._where}: {exc or type(exc).__name__}") from exc
        js = self._nc.jetstream()
        config = ConsumerConfig(durable_name=group, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                                filter_subjects=subjects, ack_wait=ack_wait_s, max_deliver=-1,
                                max_ack_pending=max_ack_pending)
        deadline = time.monotonic() + stream_wait_s
        while True:
            try:
                self._run(js.add_consumer(MQTT_STREAM, config, timeout=connect_timeout_s))
                self._sub = self._run(js.pull_subscribe_bind(durable=group, stream=MQTT_STREAM))
                break
            except nats.js.errors.NotFoundError as exc:  # the first MQTT connection creates the stream
                if time.monotonic() > deadline:
                    self.close()
                    raise PublishError(f"nats: no stream {MQTT_STREAM} after {stream_wait_s:g} s: is the "
                                       "cluster's mqtt listener enabled? (the stream appears with the first "
                                       "MQTT connection)") from exc
                if not self._failing:
                    log.warning("nats: waiting for the cluster's MQTT stream %s (the first MQTT connection makes "
                                "it; gateways must not publish before this worker's consumer exists)", MQTT_STREAM)
                self._failing = True
                self._run(asyncio.sleep(1.0))
            except (nats.errors.Error, TimeoutError) as exc:
                self.close()
                raise PublishError(f"nats: JetStream refused the consumer {group!r} on {MQTT_STREAM} "
                                   f"({', '.join(subjects)}): {exc or type(exc).__name__}") from exc
        self._failing = False

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats: %s", exc)

    async def _on_disconnect(self) -> None:
        if not self._nc.is_closed:
            log.warning("nats: connection lost, reconnecting to another node of %s", self._where)

    async def _on_reconnect(self) -> None:
        log.info("nats: connected to %s", self._nc.connected_url.netloc if self._nc.connected_url else "?")

    def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_messages``; [] when none came, or while the cluster moves the consumer's leader
        after a node died (logged once per outage)."""
        try:
            msgs = self._run(self._sub.fetch(max_messages, timeout=timeout_s))
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            if not self._failing:
                log.warning("nats: pull failed (%s); retrying while the cluster recovers", exc or type(exc).__name__)
            self._failing = True
            self._run(asyncio.sleep(min(timeout_s, 0.5)))  # no busy loop while no node answers
            return []
        if self._failing:
            log.info("nats: pulling again")
            self._failing = False
        return [Delivery(topic_of_subject(m.subject), m.data, m) for m in msgs]

    def ack(self, deliveries: list[Delivery]) -> None:
        """Acknowledge and flush; an acknowledgement lost on the way only means a redelivery, which the
        store drops as a duplicate."""
        async def ack_all() -> None:
            for d in deliveries:
                await d.token.ack()
            await self._nc.flush(timeout=5)

        try:
            self._run(ack_all())
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("nats: %d acknowledgements may be lost (%s): they come again and are dropped as "
                        "duplicates", len(deliveries), exc or type(exc).__name__)

    def close(self) -> None:
        if not self._loop.is_closed():
            with contextlib.suppress(nats.errors.Error, TimeoutError, AttributeError):
                # close, not drain: every acknowledgement was flushed in ack(); what was fetched and not
                # acknowledged goes to another worker after ack_wait
                self._run(asyncio.wait_for(self._nc.close(), 5))
            self._loop.close()
