"""In the VM: both ISO-TP transports against the simulated battery ECU on a vcan, with its fault modes,
and what an idle kernel client sends when another tester polls the same ECU (nothing).

Run with the installed release's Python. Prints one JSON object: {transport: {fault: outcome}, "bystander":
flow-control frames on the request id during another tester's poll}, an outcome being ["ok", reply hex] |
["error", kind] | ["timeout", message].
"""

from __future__ import annotations

import json
import sys
import threading
import time

from gateway.adapters.can_bus import PythonCanBus
from gateway.adapters.isotp import IsoTpDiagClient, KernelIsoTpDiagClient
from gateway.sim.battery import LeafBattery
from gateway.sim.ecu import REQUEST_IDS, LbcResponder, run_ecu

CHANNEL = sys.argv[1] if len(sys.argv) > 1 else "vcan1"
FAULTS = ("none", "drop", "dup", "silent", "nrc", "pending")


def ask(transport: str, fault: str) -> list[str]:
    battery = LeafBattery(generation="aze0")
    responder = LbcResponder(battery, faults={} if fault == "none" else {0x01: fault})
    ecu_bus = PythonCanBus(interface="socketcan", channel=CHANNEL, bitrate=500000, frame_ids=REQUEST_IDS)
    bus = PythonCanBus(interface="socketcan", channel=CHANNEL, bitrate=500000, frame_ids={0x7BB})
    stop = threading.Event()
    ecu = threading.Thread(target=run_ecu, args=(battery, ecu_bus), daemon=True,
                           kwargs={"duration_s": 10, "stop": stop.is_set, "responder": responder, "broadcast": False})
    ecu.start()
    client = KernelIsoTpDiagClient(CHANNEL) if transport == "kernel" else IsoTpDiagClient(bus.send)
    try:
        client.start(0x79B, 0x7BB, b"\x21\x01", timeout_s=1.0)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            frame = bus.recv(0.005)
            if frame is not None:
                client.feed(frame)
            outcome = client.poll()
            if outcome is not None:
                return [str(outcome[0]), outcome[1].hex() if isinstance(outcome[1], bytes) else str(outcome[1])] \
                    if len(outcome) > 1 else [str(outcome[0])]
        return ["no outcome"]
    finally:
        stop.set()
        ecu.join(5)
        client.close()
        bus.close()
        ecu_bus.close()


def bystander() -> int:
    """Flow-control frames on 0x79B while another tester (user space) polls group 0x01, our kernel client
    being open and idle after a poll of its own: 1 (the tester's) when ours keeps quiet."""
    ours = KernelIsoTpDiagClient(CHANNEL)
    monitor = PythonCanBus(interface="socketcan", channel=CHANNEL, bitrate=500000, frame_ids={0x79B})
    try:
        ours.start(0x79B, 0x7BB, b"\x21\x01", timeout_s=0.2)
        while ours.poll() is None:
            time.sleep(0.01)
        while monitor.recv(0.05) is not None:  # forget our own poll
            pass
        assert ask("user", "none")[0] == "ok"
        flow_control = 0
        while (frame := monitor.recv(0.2)) is not None:
            flow_control += frame.data[0] >> 4 == 3
        return flow_control
    finally:
        ours.close()
        monitor.close()


def main() -> int:
    print(json.dumps({**{t: {f: ask(t, f) for f in FAULTS} for t in ("kernel", "user")}, "bystander": bystander()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
