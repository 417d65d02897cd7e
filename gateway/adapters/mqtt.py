"""paho-mqtt 2.x (MQTT 5) -> the uplink. The only module that imports paho.

Threads: one network thread of ours runs paho's ``loop()`` and connects/reconnects with exponential
backoff and full jitter (a fleet that lost its broker does not come back all in the same second).
paho calls the ``_on_*`` callbacks on that thread while holding its own lock: they only record state
and put acknowledgements and commands on queues (paho issues #354/#346). ``publish`` is called from
the main loop and never waits for the network.

Session: ``clean_start`` false with a session expiry (MQTT 3.1.1: ``clean_session`` false, the broker
decides the expiry), so subscriptions and QoS 1 messages in flight survive a reconnect; the number of
messages in flight is bounded (``max_inflight``).

Brokers: an ordered list. A connection that ends before its CONNACK (unreachable, refused, silent for
``CONNACK_TIMEOUT_S``) or soon after it moves on to the next broker after the backoff; while connected to
a later one, the first is probed every ``max_backoff_s`` and taken back when it accepts connections (a
move back that gives no session doubles that interval, up to 16 times).

MQTT 3.1.1 carries no properties: no content type (the topic says what a payload is), no session expiry,
no reason code in a PUBACK (a broker that drops a publish it may not accept still acknowledges it; the
backend sees the gap in ``seq``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import PublishError
from ..model import Delivery, OutgoingMessage
from .fs import read_regular

__all__ = ["COSE_CONTENT_TYPE", "PahoGroupSource", "PahoPublisher", "PahoSubscriber", "check_tls_files", "port_open"]

log = logging.getLogger(__name__)

COSE_CONTENT_TYPE = 'application/cose; cose-type="cose-sign1"'
JSON_CONTENT_TYPE = "application/json"
CONNACK_TIMEOUT_S = 10.0  # a broker that takes the connection and never answers is left after this
SHORT_SESSION_S = 10.0  # a session that ends sooner moves on to the next broker (one that throttles or refuses)


def check_tls_files(*, ca_file: str, cert_file: str, key_file: str) -> list[str]:
    """What is wrong with the TLS files, one line each naming the config key (empty when they load)."""
    problems = []
    for key, path in (("mqtt.ca_file", ca_file), ("mqtt.cert_file", cert_file), ("mqtt.key_file", key_file)):
        try:
            read_regular(path, max_bytes=1 << 20, private=key == "mqtt.key_file")
        except OSError as exc:
            problems.append(f"{key}: {path}: {exc.strerror}")
    if problems:
        return problems
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        problems.append(f"mqtt.ca_file: {ca_file}: no PEM CA certificate in it ({exc})")
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        problems.append(f"mqtt.cert_file, mqtt.key_file: {cert_file}, {key_file}: not a PEM certificate and its key "
                        f"({exc})")
    return problems


def port_open(host: str, port: int, timeout_s: float = 0.3) -> bool:
    """True when something accepts TCP connections at host:port (is a broker there at all?)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except (OSError, ValueError):  # ValueError: a name the resolver cannot encode
        return False


def _props(packet: int, **values: Any) -> Properties:
    props = Properties(packet)  # type: ignore[no-untyped-call]  # paho ships no annotation here
    for name, value in values.items():
        setattr(props, name, value)
    return props


def _client(client_id: str, tls_files: tuple[str, str, str] | None, protocol: str = "5",
            persistent: bool = False) -> mqtt.Client:
    if protocol == "5":
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)  # type: ignore[attr-defined]  # paho re-exports it
    else:  # 3.1.1: a persistent session is asked for here, not in CONNECT's clean_start
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,  # type: ignore[attr-defined]
                        clean_session=not persistent)
    if tls_files is not None:
        ca, cert, key = tls_files
        try:
            c.tls_set(ca_certs=ca or None, certfile=cert or None, keyfile=key or None)
        except (OSError, ValueError) as exc:
            raise PublishError(f"mqtt: cannot load TLS files ({ca}, {cert}, {key}): {exc}") from exc
    return c


class PahoPublisher:
    """Publishes signed envelopes under ``{prefix}/{device_id}/`` with QoS 1; receives ``cmd/#``."""

    def __init__(self, *, hosts: Sequence[tuple[str, int]], device_id: str, topic_prefix: str, sw: str,
                 protocol: str = "5", keepalive_s: int = 60, max_inflight: int = 100, session_expiry_s: int = 3600,
                 tls_files: tuple[str, str, str] | None = None, min_backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0) -> None:
        """Configure the client and start the network thread (it connects in the background).

        Args:
            hosts: the brokers, (host, port), in order of preference.
            protocol: "5" or "3.1.1".

        Raises:
            PublishError: the TLS files cannot be loaded.
        """
        self.base = f"{topic_prefix}/{device_id}"
        self.hosts, self.keepalive_s = list(hosts), keepalive_s
        self._at = 0  # index in hosts of the broker in use or being tried (network thread)
        self._session_up = False  # a CONNACK arrived on the current connection (network thread)
        self._up_since = 0.0  # when it arrived
        self._moving: tuple[mqtt.MQTTMessageInfo, float] | None = None  # a move back under way: its status, deadline
        self._failing_back = False  # the current connection attempt is a move back to hosts[0]
        self._probe_every = max_backoff_s  # how often a later broker looks whether the first is back
        self._v5 = protocol == "5"
        self.commands: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=100)
        self.connected = threading.Event()
        self._acks: queue.SimpleQueue[tuple[int, int, str]] = queue.SimpleQueue()
        self._device_id, self._sw = device_id, sw
        self._session_expiry_s = session_expiry_s
        self._backoff = (min_backoff_s, max_backoff_s)
        self._stop = threading.Event()
        self._attached = False  # a socket is open (CONNECT sent); touched by the network thread only
        self._refused_logged = False
        self.failed = ""  # why the network thread stopped (set on that thread): the daemon exits, systemd restarts
        self.dropped: dict[str, int] = {"retained": 0, "queue_full": 0}  # commands not handed on (network thread)
        c = _client(device_id, tls_files, protocol, persistent=True)
        c.username_pw_set(device_id)
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)  # unbounded in paho: the outbox decides what is sent when
        c.will_set(f"{self.base}/status", self._status("offline", "connection lost"), qos=1, retain=True,
                   properties=self._props(PacketTypes.WILLMESSAGE, ContentType=JSON_CONTENT_TYPE))
        c.on_connect, c.on_disconnect = self._on_connect, self._on_disconnect
        c.on_publish, c.on_message = self._on_publish, self._on_message
        self._client = c
        self._thread = threading.Thread(target=self._network, name="mqtt-network", daemon=True)
        self._thread.start()
        log.info("MQTT %s connecting to %s as %s", "5" if self._v5 else "3.1.1",
                 ", ".join(f"{h}:{p}" for h, p in self.hosts), device_id)

    def _props(self, packet: int, **values: Any) -> Properties | None:
        """MQTT 5 properties; None with 3.1.1, which has none."""
        return _props(packet, **values) if self._v5 else None

    def _status(self, state: str, reason: str = "") -> bytes:
        body = {"state": state, "dev": self._device_id, "sw": self._sw, "ts": round(time.time() * 1000)}
        if reason:
            body["reason"] = reason
        return json.dumps(body, separators=(",", ":")).encode()

    # -- our network thread ----------------------------------------------------------------------
    def _network(self) -> None:
        try:
            self._run_network()
        except Exception as exc:  # whatever paho raises, the daemon must learn that it is offline
            self.failed = f"{type(exc).__name__}: {exc}"
            log.error("MQTT network thread stopped: %s", self.failed)
            self.connected.clear()

    def _run_network(self) -> None:
        delay = self._backoff[0]
        attached_at = probe_at = 0.0
        while not self._stop.is_set():
            if not self._attached:
                if not self._connect():
                    self._next_host()
                    # full jitter: anywhere up to ``delay``, which doubles up to the maximum
                    self._stop.wait(random.uniform(0.1, delay))
                    delay = min(delay * 2, self._backoff[1])
                    continue
                self._attached, self._session_up = True, False
                attached_at = time.monotonic()
                probe_at = attached_at + self._probe_every
            rc = self._client.loop(timeout=0.1)
            now = time.monotonic()
            silent = not self._session_up and now - attached_at > CONNACK_TIMEOUT_S
            if silent:
                log.warning("MQTT broker %s:%d took the connection but sent no CONNACK in %g s", *self.hosts[self._at],
                            CONNACK_TIMEOUT_S)
            if rc != mqtt.MQTT_ERR_SUCCESS or silent:
                self._detach()  # connection lost (the next connect() closes the socket): retry after a jittered pause
                self._stop.wait(random.uniform(0.1, delay))
                delay = min(delay * 2, self._backoff[1])
            elif self.connected.is_set():
                delay = self._backoff[0]
                if self._failing_back and now - self._up_since >= SHORT_SESSION_S:  # back for good
                    self._failing_back, self._probe_every = False, self._backoff[1]
                if self._moving is not None:
                    if self._moving[0].is_published() or now > self._moving[1]:
                        self._move_back()
                elif self._at and now >= probe_at:
                    probe_at = now + self._probe_every
                    if port_open(*self.hosts[0], timeout_s=1.0):
                        self._moving = (self._client.publish(
                            f"{self.base}/status", self._status("offline", "moved to another broker"), qos=1,
                            retain=True, properties=self._props(PacketTypes.PUBLISH, ContentType=JSON_CONTENT_TYPE)),
                            now + 2.0)

    def _move_back(self) -> None:
        """Leave a later broker for the first, which accepts connections again (its status says so first)."""
        log.info("MQTT broker %s:%d answers again: moving back to it", *self.hosts[0])
        self._moving, self._attached, self._failing_back = None, False, True
        self.connected.clear()  # a planned disconnect: no warning, and _detach leaves the list alone
        self._at = 0
        self._client.disconnect()
        self._client.loop(timeout=0.1)  # sends the DISCONNECT: the old broker keeps the will to itself

    def _connect(self) -> bool:
        host, port = self.hosts[self._at]
        try:
            if self._v5:
                self._client.connect(host, port, keepalive=self.keepalive_s, clean_start=False,
                                     properties=_props(PacketTypes.CONNECT,
                                                       SessionExpiryInterval=self._session_expiry_s))
            else:
                self._client.connect(host, port, keepalive=self.keepalive_s)
            return True
        except (OSError, ValueError, mqtt.WebsocketConnectionError) as exc:
            log.debug("MQTT connect to %s:%d failed: %s", host, port, exc)
            self._failed_back()
            return False

    def _next_host(self) -> None:
        if len(self.hosts) > 1:
            self._at = (self._at + 1) % len(self.hosts)
            log.debug("MQTT trying %s:%d next", *self.hosts[self._at])

    def _failed_back(self) -> None:
        """A move back to the first broker gave no session: look again later, and less often each time."""
        if self._failing_back:
            self._failing_back = False
            self._probe_every = min(self._probe_every * 2, 16 * self._backoff[1])
            log.warning("MQTT broker %s:%d accepts connections but gave no session; next look in %.0f s",
                        *self.hosts[0], self._probe_every)

    def _detach(self) -> None:
        """The connection ended (network thread). One that never got its CONNACK, or lost its session within
        ``SHORT_SESSION_S``, moves on to the next broker; a longer one is tried again on the same broker first."""
        if self._attached and (not self._session_up or time.monotonic() - self._up_since < SHORT_SESSION_S):
            self._failed_back()
            self._next_host()
        self._attached, self._moving = False, None
        self.connected.clear()

    # -- paho's callbacks (our network thread, paho's lock held): record and hand off only ----------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            if not self._refused_logged:
                self._refused_logged = True
                log.error("MQTT broker refused the connection: %s", reason)
            return
        self._session_up, self._up_since = True, time.monotonic()
        log.info("MQTT connected to %s:%d", *self.hosts[self._at])
        client.publish(f"{self.base}/status", self._status("online"), qos=1, retain=True,
                       properties=self._props(PacketTypes.PUBLISH, ContentType=JSON_CONTENT_TYPE))
        client.subscribe(f"{self.base}/cmd/#", qos=1)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason)
        self._detach()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._acks.put((mid, int(reason.value), str(reason)))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:  # a command kept by the broker is old news at every reconnect: never acted on
            self._drop("retained", "a retained command on %s ignored (commands are never taken from the "
                       "broker's store; further ones are counted)", msg.topic)
            return
        try:
            self.commands.put_nowait((msg.topic.removeprefix(f"{self.base}/cmd/"), bytes(msg.payload)))
        except queue.Full:  # a flood of commands: drop, the main loop is behind anyway
            self._drop("queue_full", "command queue full (%d): commands dropped until the main loop catches up; "
                       "further ones are counted", self.commands.maxsize)

    def _drop(self, why: str, message: str, arg: object) -> None:
        self.dropped[why] += 1
        if self.dropped[why] == 1:
            log.warning(message, arg)

    # -- main thread -----------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()

    def publish(self, message: OutgoingMessage) -> int | None:
        """Hand one envelope to paho (QoS 1). Returns its message id, or None when not connected."""
        if not self.connected.is_set():
            return None
        info = self._client.publish(f"{self.base}/{message.topic}", message.payload, qos=1, retain=message.retain,
                                    properties=self._props(PacketTypes.PUBLISH, ContentType=COSE_CONTENT_TYPE))
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            return None
        return int(info.mid)

    def publish_notice(self, subtopic: str, body: bytes) -> bool:
        """Publish a retained JSON notice (QoS 1) under ``{prefix}/{device}/``. False when not connected."""
        if not self.connected.is_set():
            return False
        info = self._client.publish(f"{self.base}/{subtopic}", body, qos=1, retain=True,
                                    properties=self._props(PacketTypes.PUBLISH, ContentType=JSON_CONTENT_TYPE))
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def take_acks(self) -> list[tuple[int, int, str]]:
        """PUBACKs received since the last call: (message id, reason code, reason text)."""
        out = []
        while True:
            try:
                out.append(self._acks.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout_s: float = 2.0) -> None:
        """Say offline (retained), disconnect, and stop the network thread."""
        if self.connected.is_set():
            info = self._client.publish(f"{self.base}/status", self._status("offline", "shutdown"), qos=1,
                                        retain=True, properties=self._props(PacketTypes.PUBLISH,
                                                                            ContentType=JSON_CONTENT_TYPE))
            deadline = time.monotonic() + timeout_s
            while not info.is_published() and time.monotonic() < deadline and self._thread.is_alive():
                time.sleep(0.02)
        self._stop.set()
        self._thread.join(timeout_s + 1)
        with contextlib.suppress(Exception):  # already disconnected
            self._client.disconnect()
            self._client.loop(timeout=0.1)


class _Subscription:
    """A backend-side MQTT subscription: connect, subscribe to ``topics`` at QoS 1 on every CONNACK, and
    record a refused connection or subscription on paho's network thread for ``wait_ready`` / ``check``
    to raise on the caller's."""

    def _start(self, client: mqtt.Client, host: str, port: int, topics: Sequence[str], **connect: Any) -> None:
        """Connect (TLS handshake included) and subscribe in the background.

        Raises:
            PublishError: the broker cannot be reached.
        """
        self.topics, self._where, self._client = list(topics), f"{host}:{port}", client
        self._subscribed = threading.Event()
        self._failure = ""
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        try:
            client.connect(host, port, **connect)
        except (OSError, ValueError) as exc:
            raise PublishError(f"mqtt: cannot connect to {self._where}: {exc}") from exc
        client.loop_start()

    def _connected(self) -> None:
        """A CONNACK accepted the connection (network thread)."""

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._failure = f"broker {self._where} refused the connection: {reason}"
            self._subscribed.set()  # wake wait_ready
            return
        self._connected()
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        refused = [f"{t}: {r}" for t, r in zip(self.topics, reasons, strict=False) if r.is_failure]
        if refused:
            self._failure = f"broker {self._where} refused the subscription to {'; '.join(refused)}"
        self._subscribed.set()

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Block until the subscription is in place.

        Raises:
            PublishError: the broker refused the connection or the subscription, or did not answer.
        """
        if not self._subscribed.wait(timeout_s):
            raise PublishError(f"mqtt: no answer from {self._where} within {timeout_s:g} s (CONNACK/SUBACK)")
        self.check()

    def check(self) -> None:
        """Raises PublishError when the broker refused the connection or subscription since."""
        if self._failure:
            raise PublishError(f"mqtt: {self._failure}")

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class PahoSubscriber(_Subscription):
    """A backend-side subscriber (``verify --mqtt``, the demo): collects (topic, payload) on a queue.

    ``messages`` is filled on paho's network thread and read by the caller's thread.
    """

    def __init__(self, *, host: str, port: int, topic: str, client_id: str = "",
                 tls_files: tuple[str, str, str] | None = None, protocol: str = "5") -> None:
        """Connect (TLS handshake included) and subscribe in the background.

        Raises:
            PublishError: the broker cannot be reached or the TLS files cannot be loaded.
        """
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        client = _client(client_id or f"verify-{random.randrange(1 << 30)}", tls_files, protocol)
        client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self._start(client, host, port, [topic])


class PahoGroupSource(_Subscription):
    """An ingest worker's MQTT 5 shared subscription (``$share/{group}/...``): the broker hands each message
    of the filters to one member of the group. Implements the ``GroupSource`` port.

    The session persists (``clean_start`` false, ``session_expiry_s``) and acknowledgements are manual:
    a message is PUBACKed only once ``ack`` is called after the commit, so the broker keeps what a dead
    worker took and sends it again when that worker (same ``client_id``) is back. An acknowledgement for a
    delivery from an earlier connection is not sent (packet ids start again per connection; the broker
    redelivers those itself). ``receive_max`` bounds the messages the broker sends ahead of acknowledgements
    (mosquitto also caps it with ``max_inflight_messages``). A refusal is over once a later CONNACK accepts.
    """

    def __init__(self, *, host: str, port: int, group: str, filters: Sequence[str], client_id: str,
                 tls_files: tuple[str, str, str] | None = None, session_expiry_s: int = 7 * 86400,
                 receive_max: int = 1000) -> None:
        """Connect and subscribe in the background.

        Raises:
            PublishError: the broker cannot be reached or the TLS files cannot be loaded.
        """
        self._queue: queue.Queue[Delivery] = queue.Queue()
        self._generation = 0  # connections so far (network thread writes, caller's thread compares)
        self._receive_max = receive_max
        self._dropped_qos0 = 0
        client = _client(client_id, tls_files, "5")
        client.manual_ack_set(True)
        client.reconnect_delay_set(1, 10)
        client.on_message = self._on_message
        self._start(client, host, port, [f"$share/{group}/{f}" for f in filters], clean_start=False,
                    properties=_props(PacketTypes.CONNECT, SessionExpiryInterval=session_expiry_s,
                                      ReceiveMaximum=receive_max))

    def _connected(self) -> None:
        self._generation += 1
        self._failure = ""  # a refusal before is over

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # QoS 1 is bounded by receive_max; QoS 0 (no device sends it) is not, and cannot be sent again
        if msg.qos == 0 and self._queue.qsize() > self._receive_max:
            if not self._dropped_qos0:
                log.warning("mqtt: a QoS 0 message on %r dropped: the worker is behind and QoS 0 cannot be sent "
                            "again (devices publish QoS 1); further drops are not logged", msg.topic[:200])
            self._dropped_qos0 += 1
            return
        self._queue.put(Delivery(msg.topic, bytes(msg.payload), (self._generation, msg.mid, msg.qos)))

    def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        self.check()
        try:
            out = [self._queue.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        while len(out) < max_messages:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def ack(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            gen, mid, qos = d.token
            if gen == self._generation and qos > 0:  # read each time: a reconnect may come in between
                self._client.ack(mid, qos)
