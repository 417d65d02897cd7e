"""``battery-gateway demo``: a simulated battery ECU (a Leaf, or any profile's car) on a CAN bus -> the daemon
(a real subprocess) -> a local MQTT broker -> a subscriber that verifies every envelope and prints it.

The bus is python-can's ``udp_multicast`` on an interface-local IPv6 group (ff11::/16): frames never
leave this host. The run ends by itself after ``duration_s`` (or on Ctrl-C): the simulated car
drives, then switches off, which triggers the key-off passport.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapters.can_bus import PythonCanBus
from ..adapters.fs import write_atomic
from ..adapters.keystore import generate_key
from ..adapters.mqtt import PahoSubscriber, port_open
from ..core.profile import Profile
from ..core.signing import verify_envelope
from ..core.summary import describe
from ..errors import EnvelopeError, PublishError
from .battery import LeafBattery, SimPack
from .broker import LocalBroker
from .ecu import REQUEST_IDS, Broadcaster, LbcResponder, Responder, run_ecu
from .profile_bms import ProfileBms

__all__ = ["DEMO_GROUP", "SimCar", "run_demo", "sim_car", "simulate"]

DEMO_GROUP = "ff11:7079:7468:6f6e:6465:6d6f:6d63:6173"  # interface-local scope: stays on this host
LEAF_GENERATIONS = {"leaf-ze0": "ze0", "leaf-aze0": "aze0", "leaf-ze1": "ze1"}
LEAF_PACKS = {"ze0": (24.0, 66.0), "aze0": (30.0, 79.0), "ze1": (62.0, 176.0)}


@dataclass
class SimCar:
    """A simulated car: what broadcasts its battery frames, what answers its polls, the ids it listens on."""

    broadcaster: Broadcaster
    responder: Responder
    request_ids: frozenset[int]
    title: str


def sim_car(profile: Profile, databases: list[Any], *, soh_pct: int, soc_pct: float, hx_pct: float = 85.0) -> SimCar:
    """The car of ``profile``: a Leaf's own simulator (written from leaf_formulas.md) for the Leaf profiles,
    else ``ProfileBms`` over the profile's default pack."""
    generation = LEAF_GENERATIONS.get(profile.name)
    if generation:
        kwh, ah = LEAF_PACKS[generation]
        leaf = LeafBattery(generation=generation, rated_kwh=kwh, rated_ah=ah, soh_pct=soh_pct, soc_pct=soc_pct)
        return SimCar(leaf, LbcResponder(leaf, hx_pct=hx_pct), REQUEST_IDS,
                      f"Leaf {generation.upper()} {kwh:g} kWh (BMS SOH {soh_pct} %, SoC {soc_pct:g} %)")
    pack = next(p for p in profile.packs if not p.upgrade)
    bms = ProfileBms(profile, databases, SimPack(rated_kwh=pack.energy_kwh, rated_ah=pack.capacity_ah,
                                                 soh_pct=soh_pct, soc_pct=soc_pct, cells=profile.cells_series))
    return SimCar(bms, bms, bms.request_ids,
                  f"{profile.title}, {pack.energy_kwh:g} kWh (SoH {soh_pct} %, SoC {soc_pct:g} %)")


def ecu_bus(*, interface: str, channel: str, port: int, request_ids: frozenset[int] = REQUEST_IDS) -> PythonCanBus:
    """The simulated ECU's side of the bus: it listens to the diagnostic request ids.

    Raises:
        BusError: the interface cannot be opened.
    """
    return PythonCanBus(interface=interface, channel=channel, bitrate=500000, frame_ids=request_ids,
                        udp_multicast_port=port)


def simulate(*, interface: str, channel: str, port: int, profile: Profile, databases: list[Any], soh_pct: int,
             soc_pct: float, duration_s: float) -> int:
    """Run the simulated battery ECU of ``profile`` on a bus until ``duration_s`` or SIGTERM/SIGINT."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    car = sim_car(profile, databases, soh_pct=soh_pct, soc_pct=soc_pct)
    bus = ecu_bus(interface=interface, channel=channel, port=port, request_ids=car.request_ids)
    print(f"simulate: {car.title} on {interface} {channel}", file=sys.stderr)
    try:
        sent = run_ecu(car.broadcaster, bus, duration_s=duration_s, stop=stop.is_set, responder=car.responder)
    except KeyboardInterrupt:
        sent = 0
    finally:
        bus.close()
    print(f"simulate: sent {sent} frames", file=sys.stderr)
    return 0


def _config(tmp: Path, *, mqtt_port: int, can_port: int, profile: str) -> Path:
    path = tmp / "gateway.toml"
    text = f"""# written by battery-gateway demo
[device]
id = "demo-leaf"
key_file = "{tmp / 'device-key.pem'}"
state_dir = "{tmp / 'state'}"

[can]
interface = "udp_multicast"
channel = "{DEMO_GROUP}"
udp_multicast_port = {can_port}

[vehicle]
profile = "{profile}"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}

[publish]
reading_interval_s = 2
silence_s = 2
"""
    write_atomic(path, text.encode())
    return path


def run_demo(*, profile: Profile, databases: list[Any], profile_ref: str = "leaf-aze0",
             duration_s: float = 20.0) -> int:
    """The whole chain on this machine; prints every verified message. Returns 0 when all verified.

    Args:
        profile_ref: what the daemon's ``vehicle.profile`` says (a built-in name or a path) for ``profile``.
    """
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="bgw-demo-") as tmpdir:
        tmp = Path(tmpdir)
        key = generate_key(tmp / "device-key.pem")
        broker: LocalBroker | None = None
        if port_open("127.0.0.1", 1883):
            mqtt_port = 1883
            print("demo: using the MQTT broker already listening on 127.0.0.1:1883", file=out)
        else:
            try:
                broker = LocalBroker().start()
            except PublishError as exc:
                print(f"error: demo needs a broker: {exc}", file=sys.stderr)
                return 1
            mqtt_port = broker.port
            print(f"demo: started mosquitto on 127.0.0.1:{mqtt_port}", file=out)
        can_port = random.randint(40000, 49999)  # two demos at once do not hear each other's car
        config = _config(tmp, mqtt_port=mqtt_port, can_port=can_port, profile=profile_ref)
        car = sim_car(profile, databases, soh_pct=85, soc_pct=72.0, hx_pct=82.6)
        try:
            return _run(tmp, config, key.public_key(), mqtt_port, can_port, duration_s, car)
        finally:
            if broker is not None:
                broker.stop()


def _run(tmp: Path, config: Path, public_key: Any, mqtt_port: int, can_port: int, duration_s: float,
         car: SimCar) -> int:
    sub = PahoSubscriber(host="127.0.0.1", port=mqtt_port, topic="bp/v1/demo-leaf/#", client_id="demo-backend")
    sub.wait_ready()
    log_path = tmp / "daemon.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log_file:
        daemon = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)],
                                  stderr=log_file, stdout=log_file, env=env)
    drive_s = max(2.0, duration_s * 0.6)
    print(f"demo: simulated {car.title} drives for {drive_s:.0f} s, then switches off; the daemon "
          f"(pid {daemon.pid}) publishes a reading every 2 s", file=sys.stdout)
    stop = threading.Event()
    bus = ecu_bus(interface="udp_multicast", channel=DEMO_GROUP, port=can_port, request_ids=car.request_ids)
    sim = threading.Thread(target=run_ecu, args=(car.broadcaster, bus), daemon=True,
                           kwargs={"duration_s": drive_s, "stop": stop.is_set, "responder": car.responder})
    start = time.monotonic()
    counts = {"reading": 0, "passport": 0, "rejected": 0}
    sim.start()
    try:
        while time.monotonic() - start < duration_s and daemon.poll() is None:
            try:
                topic, payload = sub.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            kind = topic.rsplit("/", 1)[-1]
            stamp = f"[{time.monotonic() - start:5.1f}s]"
            if kind == "status":
                print(f"{stamp} status    {payload.decode(errors='replace')}")
                continue
            try:
                body = verify_envelope(payload, public_key)
            except EnvelopeError as exc:
                counts["rejected"] += 1
                print(f"{stamp} {kind:9} REJECTED: {exc}")
                continue
            counts[body["kind"]] = counts.get(body["kind"], 0) + 1
            print(f"{stamp} {kind:9} seq {body['seq']:<3} signature verified  {describe(body)}")
    except KeyboardInterrupt:
        print("demo: interrupted")
    finally:
        stop.set()
        sim.join(5)
        bus.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = -9
        time.sleep(0.3)
        sub.close()
    print(f"demo: {counts['reading']} readings and {counts['passport']} passports verified, "
          f"{counts['rejected']} rejected; daemon exited with {code}")
    if code != 0 or counts["rejected"] or not counts["passport"]:
        print(f"demo: FAILED; daemon log:\n{log_path.read_text()[-3000:]}", file=sys.stderr)
        return 1
    return 0
