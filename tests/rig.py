"""Helpers for tests that run the daemon as a real process against the simulated battery ECU on
``udp_multicast`` and a real mosquitto."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.adapters.keystore import load_public_key
from gateway.core.signing import verify_envelope
from gateway.sim.battery import LeafBattery
from gateway.sim.demo import SimCar, ecu_bus
from gateway.sim.ecu import REQUEST_IDS, LbcResponder, run_ecu

GROUP = "ff11:7079:7468:6f6e:6465:6d6f:6d63:6173"  # interface-local: never leaves this host


@dataclass
class Rig:
    tmp: Path
    config: Path
    device: str
    can_port: int
    public_key: ec.EllipticCurvePublicKey


def new_rig(tmp: Path, mqtt_port: int) -> Rig:
    """A device key (by ``keygen``), its config on a CAN port of its own; the daemon is not started."""
    out = subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(tmp / "key.pem")],
                         capture_output=True, text=True, check=True)
    assert "BEGIN PUBLIC KEY" in out.stdout and "device id:" in out.stdout
    device = f"gw-test-{random.randint(0, 99999)}"
    can_port = random.randint(40000, 49999)
    config = write_config(tmp, device=device, mqtt_port=mqtt_port, can_port=can_port)
    return Rig(tmp, config, device, can_port, load_public_key(tmp / "key.pem"))


def set_mqtt(config: Path, lines: str) -> None:
    """Add lines to the ``[mqtt]`` section of a config ``write_config`` wrote."""
    config.write_text(config.read_text().replace("[mqtt]\n", f"[mqtt]\n{lines}\n", 1))


def write_config(tmp: Path, *, device: str, mqtt_port: int, can_port: int) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(f"""
[device]
id = "{device}"
key_file = "{tmp / 'key.pem'}"
state_dir = "{tmp / 'state'}"
[can]
interface = "udp_multicast"
channel = "{GROUP}"
udp_multicast_port = {can_port}
[vehicle]
profile = "leaf-aze0"
[mqtt]
port = {mqtt_port}
[publish]
reading_interval_s = 1
silence_s = 2
""")
    return path


class Subscriber:
    """The backend: a persistent MQTT 5 session (the broker queues for it while it is away)."""

    def __init__(self, port: int, device: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes, Any]] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{device}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic.rsplit("/", 1)[-1], m.payload,
                                                                    m.properties))
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_connect = lambda c, *a: c.subscribe(f"bp/v1/{device}/#", qos=1)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        assert ready.wait(30), "no SUBACK from the test broker"

    def collect(self, predicate: Any, timeout_s: float) -> list[tuple[str, bytes, Any]]:
        got: list[tuple[str, bytes, Any]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not predicate(got):
            with contextlib.suppress(queue.Empty):
                got.append(self.messages.get(timeout=0.1))
        return got

    def drain(self, settle_s: float = 1.0) -> list[tuple[str, bytes, Any]]:
        """Everything that arrives until nothing came for ``settle_s``."""
        got: list[tuple[str, bytes, Any]] = []
        while True:
            try:
                got.append(self.messages.get(timeout=settle_s))
            except queue.Empty:
                return got

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Car:
    """The simulated battery ECU (broadcast frames and ISO-TP replies) on udp_multicast, in a thread: a Leaf, or
    any profile's car (``sim_car``)."""

    def __init__(self, rig: Rig, battery: LeafBattery | SimCar, duration_s: float = 30.0,
                 hx_pct: float = 85.0) -> None:
        self.stop = threading.Event()
        self.responder: Any
        if isinstance(battery, SimCar):
            broadcaster, self.responder, ids = battery.broadcaster, battery.responder, battery.request_ids
        else:
            broadcaster, self.responder, ids = battery, LbcResponder(battery, hx_pct=hx_pct), REQUEST_IDS
        self.bus = ecu_bus(interface="udp_multicast", channel=GROUP, port=rig.can_port, request_ids=ids)
        self.thread = threading.Thread(target=run_ecu, args=(broadcaster, self.bus),
                                       kwargs={"duration_s": duration_s, "stop": self.stop.is_set,
                                               "responder": self.responder})
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.bus.close()


_LOG_START: dict[int, tuple[Path, int]] = {}  # pid -> (daemon.log, its size when that daemon started)
_RUNNING: dict[int, subprocess.Popen[bytes]] = {}  # pid -> daemon started by start_daemon, not yet stopped


def start_daemon(rig: Rig, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    path = rig.tmp / "daemon.log"
    log = open(path, "ab")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(rig.config)],
                            stdout=log, stderr=log, env={**os.environ, **(env or {})})
    _LOG_START[proc.pid] = (path, log.tell())
    _RUNNING[proc.pid] = proc
    return proc


def kill_leftover_daemons() -> list[int]:
    """Kill every daemon a test started and left running (a failed assertion before its stop): the pids."""
    left = [proc for proc in _RUNNING.values() if proc.poll() is None]
    for proc in left:
        proc.kill()
        proc.wait(15)
    _RUNNING.clear()
    return [proc.pid for proc in left]


def stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM once this daemon has installed its handlers (it logged "running:"), and its exit code."""
    path, offset = _LOG_START.pop(proc.pid)
    _RUNNING.pop(proc.pid, None)
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline and \
            b"running:" not in path.read_bytes()[offset:]:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    return proc.wait(15)


def signed(rig: Rig, got: list[tuple[str, bytes, Any]]) -> list[tuple[dict[str, Any], bytes]]:
    return [(verify_envelope(payload, rig.public_key), payload) for topic, payload, _ in got
            if topic in ("reading", "passport")]


def counters(rig: Rig) -> dict[str, Any]:
    db = sqlite3.connect(rig.tmp / "state" / "state.db")
    try:
        return dict(json.loads(db.execute("SELECT counters FROM chain").fetchone()[0]))
    finally:
        db.close()


def count(kind: str, n: int) -> Any:
    return lambda got: sum(1 for t, *_ in got if t == kind) >= n


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout_s`` (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.05)


def daemon_log(rig: Rig) -> str:
    path = rig.tmp / "daemon.log"
    return path.read_text() if path.exists() else ""


def outbox_rows(rig: Rig) -> int:
    """Messages waiting in the daemon's outbox (a reader does not disturb it in WAL mode); 0 before it exists."""
    path = rig.tmp / "state" / "state.db"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # never creates the daemon's database
    try:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:  # the daemon has not created its tables yet
        return 0
    finally:
        db.close()
