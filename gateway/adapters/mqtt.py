"""paho-mqtt 2.x (MQTT 5) -> ``Publisher``. The only module that imports paho.

Threads: paho's network thread (``loop_start``) runs the ``_on_*`` callbacks while holding paho's
lock; they only record acks and put commands on a queue (paho issues #354/#346). ``publish`` is
called from the main loop and never blocks on the network: while the broker is unreachable paho
keeps up to ``max_queued`` messages in memory and sends them after reconnecting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import PublishError
from ..model import OutgoingMessage

__all__ = ["COSE_CONTENT_TYPE", "PahoPublisher"]

log = logging.getLogger(__name__)

COSE_CONTENT_TYPE = 'application/cose; cose-type="cose-sign1"'
JSON_CONTENT_TYPE = "application/json"


def _props(content_type: str) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho ships no annotation here
    props.ContentType = content_type
    return props


class PahoPublisher:
    """Publishes signed envelopes under ``{prefix}/{device_id}/`` with QoS 1; receives ``cmd/#``."""

    def __init__(self, *, host: str, port: int, device_id: str, topic_prefix: str, sw: str,
                 keepalive_s: int = 60, max_queued: int = 1000, tls_files: tuple[str, str, str] | None = None,
                 ) -> None:
        """Configure the client and start connecting in the background.

        Args:
            tls_files: (ca_file, cert_file, key_file) for mutual TLS, or None for plain TCP.

        Raises:
            PublishError: TLS files unreadable or the host cannot be resolved.
        """
        self.base = f"{topic_prefix}/{device_id}"
        self.commands: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=100)
        self.connected = threading.Event()
        self._device_id, self._sw = device_id, sw
        self._lock = threading.Lock()
        self._unacked: set[int] = set()
        self._early: set[int] = set()
        self._refused = 0
        self._closing = False
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)  # type: ignore[attr-defined]  # paho re-exports it without __all__
        c.username_pw_set(device_id)
        c.max_queued_messages_set(max_queued)
        c.reconnect_delay_set(min_delay=1, max_delay=60)
        c.will_set(f"{self.base}/status", self._status("offline", "connection lost"), qos=1, retain=True,
                   properties=_props(JSON_CONTENT_TYPE))
        if tls_files is not None:
            ca, cert, key = tls_files
            try:
                c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
            except (OSError, ValueError) as exc:
                raise PublishError(f"mqtt: cannot load TLS files ({ca}, {cert}, {key}): {exc}") from exc
        c.on_connect, c.on_disconnect = self._on_connect, self._on_disconnect
        c.on_publish, c.on_message = self._on_publish, self._on_message
        self._client = c
        try:
            c.connect_async(host, port, keepalive=keepalive_s)
        except (OSError, ValueError) as exc:
            raise PublishError(f"mqtt: cannot connect to {host}:{port}: {exc}") from exc
        c.loop_start()
        log.info("MQTT connecting to %s:%d as %s", host, port, device_id)

    def _status(self, state: str, reason: str = "") -> bytes:
        body = {"state": state, "dev": self._device_id, "sw": self._sw, "ts": round(time.time() * 1000)}
        if reason:
            body["reason"] = reason
        return json.dumps(body, separators=(",", ":")).encode()

    # -- paho's thread ---------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("MQTT broker refused the connection: %s", reason)
            return
        log.info("MQTT connected")
        client.publish(f"{self.base}/status", self._status("online"), qos=1, retain=True,
                       properties=_props(JSON_CONTENT_TYPE))
        client.subscribe(f"{self.base}/cmd/#", qos=1)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.connected.is_set() and not self._closing:
            log.warning("MQTT disconnected (%s); reconnecting", reason)
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            if mid in self._unacked:
                self._unacked.remove(mid)
            else:
                self._early.add(mid)  # acked before publish() recorded it
            if reason.is_failure:
                self._refused += 1

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(queue.Full):  # a flood of commands: drop, the main loop is behind anyway
            self.commands.put_nowait((msg.topic.removeprefix(f"{self.base}/cmd/"), bytes(msg.payload)))

    # -- main thread -----------------------------------------------------------------------------
    def publish(self, message: OutgoingMessage) -> None:
        """Queue one envelope for delivery (QoS 1). Never blocks on the network."""
        # Not under self._lock: paho calls _on_publish holding its own message lock (lock order).
        info = self._client.publish(f"{self.base}/{message.topic}", message.payload, qos=1,
                                    retain=message.retain, properties=_props(COSE_CONTENT_TYPE))
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            log.error("MQTT queue full: %s seq %d dropped", message.kind, message.seq)
            return
        with self._lock:
            if info.mid in self._early:
                self._early.remove(info.mid)
            else:
                self._unacked.add(info.mid)

    @property
    def pending(self) -> int:
        """Messages handed to paho and not yet acknowledged."""
        with self._lock:
            return len(self._unacked)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every message was acknowledged, or ``timeout_s``. True when all were."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.pending

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush, say offline (retained), disconnect, and stop paho's thread."""
        if self.connected.is_set():
            self.flush(timeout_s)
            info = self._client.publish(f"{self.base}/status", self._status("offline", "shutdown"), qos=1,
                                        retain=True, properties=_props(JSON_CONTENT_TYPE))
            info.wait_for_publish(timeout=min(timeout_s, 2.0))
        self._closing = True
        left = self.pending
        if left:
            log.error("MQTT: %d messages not acknowledged at shutdown", left)
        self._client.disconnect()
        self._client.loop_stop()
