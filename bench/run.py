"""Benchmarks of issue "The gateway, end to end". Prints figures; compares with named baselines in the same run.

    make bench                    # all
    .venv/bin/python bench/run.py replay
    .venv/bin/python bench/run.py daemon --seconds 60

replay: frames/s of ``battery-gateway replay`` (reader + decode + state + signing) on a ~500k-frame
        candump -l file (EV-CANeplus2 repeated 20 times), against
        baseline "logreader+cantools": python-can LogReader + cantools decode_message of every frame the
        DBC files define, and ceiling "logreader": python-can LogReader alone.
daemon: resident memory after N seconds, first signed reading after start (wall clock, local broker),
        bytes per reading (envelope, and the whole MQTT PUBLISH packet).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EPLUS2 = REPO.parent / "shared" / "can-data" / "derived-candump" / "EV-CANeplus2.log.candump.log"
OUT = REPO / "bench" / "out"


def _big_capture(copies: int = 20) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"eplus2x{copies}.log"
    if path.exists():
        return path
    lines = EPLUS2.read_text().splitlines()
    span = float(lines[-1][1:lines[-1].index(")")]) - float(lines[0][1:lines[0].index(")")]) + 0.01
    with path.open("w") as f:
        for c in range(copies):
            for line in lines:
                close = line.index(")")
                f.write(f"({float(line[1:close]) + c * span:.6f}){line[close + 1:]}\n")
    return path


def _time(fn: object, repeat: int = 3) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t)
    return best, n


def bench_replay() -> None:
    import can
    import cantools

    from gateway.adapters.capture_files import CaptureStats
    from gateway.app import replay_capture
    from gateway.config import parse_config
    from gateway.profile import load_profile

    if not EPLUS2.is_file():
        print(f"replay: skipped, {EPLUS2} is absent")
        return
    path = _big_capture()
    profile, _ = load_profile("leaf-ze1")
    db = cantools.database.Database()
    for dbc in profile.dbc_files:
        db.add_dbc_file(str(dbc))
    ids = {m.frame_id for m in db.messages}

    def logreader() -> int:
        return sum(1 for _ in can.LogReader(str(path)))

    def baseline() -> int:
        n = 0
        for msg in can.LogReader(str(path)):
            n += 1
            if msg.arbitration_id in ids:
                with contextlib.suppress(Exception):  # cantools raises on frames it cannot unpack
                    db.decode_message(msg.arbitration_id, msg.data)
        return n

    config = parse_config({}, sections=("vehicle", "publish"))

    def gateway() -> int:
        stats = CaptureStats()
        _, messages = replay_capture(str(path), config=config, profile="leaf-ze1", bus=None, stats=stats)
        for _ in messages:
            pass
        return stats.frames + stats.skipped

    print(f"replay: {path.name}, {path.stat().st_size / 1e6:.1f} MB")
    results = {}
    for name, fn in (("logreader (ceiling)", logreader), ("logreader+cantools (baseline)", baseline),
                     ("battery-gateway replay", gateway)):
        seconds, frames = _time(fn)
        results[name] = frames / seconds
        print(f"  {name:32} {frames:>9,} frames in {seconds:6.2f} s = {frames / seconds:>10,.0f} frames/s")
    ratio = results["battery-gateway replay"] / results["logreader+cantools (baseline)"]
    print(f"  gateway / baseline = {ratio:.2f}x (must be >= 1.0, goal 1.5)")


def bench_daemon(seconds: float) -> None:
    import can
    import paho.mqtt.client as mqtt

    from gateway.adapters.keystore import generate_key
    from gateway.adapters.mqtt import COSE_CONTENT_TYPE
    from gateway.localbroker import LocalBroker
    from gateway.sim import LeafBattery
    from gateway.simecu import LbcResponder, run_ecu

    group, can_port = "ff11:7079:7468:6f6e:6465:6d6f:6d63:6173", 43911
    with tempfile.TemporaryDirectory() as tmpdir, LocalBroker() as broker:
        tmp = Path(tmpdir)
        generate_key(tmp / "key.pem")
        config = tmp / "g.toml"
        config.write_text(f'[device]\nid = "gw-bench"\nkey_file = "{tmp / "key.pem"}"\nstate_dir = "{tmp / "s"}"\n'
                          f'[can]\ninterface = "udp_multicast"\nchannel = "{group}"\nudp_multicast_port = {can_port}\n'
                          f'[vehicle]\nprofile = "leaf-aze0"\n[mqtt]\nport = {broker.port}\n'
                          f'[publish]\nreading_interval_s = 1\n')
        got: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sub.on_message = lambda c, u, m: got.put((time.monotonic(), m.topic, m.payload))
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("bp/v1/gw-bench/#", qos=1)
        sub.loop_start()
        stop = threading.Event()
        bus = can.Bus(interface="udp_multicast", channel=group, port=can_port, ignore_config=True)
        battery = LeafBattery(generation="aze0")
        car = threading.Thread(target=run_ecu, args=(battery, bus), kwargs={
            "duration_s": seconds + 30, "stop": stop.is_set, "responder": LbcResponder(battery)})
        car.start()
        time.sleep(1.0)
        start = time.monotonic()
        daemon = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)],
                                  stderr=subprocess.DEVNULL)
        first = None
        readings: list[bytes] = []
        deadline = start + seconds
        while time.monotonic() < deadline:
            try:
                t, topic, payload = got.get(timeout=0.2)
            except queue.Empty:
                continue
            if topic.endswith("/reading"):
                first = first or t - start
                readings.append(payload)
        rss_kb = int(next(line.split()[1] for line in Path(f"/proc/{daemon.pid}/status").read_text().splitlines()
                          if line.startswith("VmRSS:")))
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
        stop.set()
        car.join(5)
        bus.shutdown()
        sub.loop_stop()
        sub.disconnect()
    envelope = sum(map(len, readings)) / max(1, len(readings))
    topic_len = len("bp/v1/gw-bench/reading")
    props = 1 + 1 + 2 + len(COSE_CONTENT_TYPE)  # property length, id, string length, content type
    remaining = 2 + topic_len + 2 + props + envelope
    packet = 1 + (1 if remaining < 128 else 2) + remaining
    print(f"daemon: {len(readings)} readings in {seconds:.0f} s")
    print(f"  resident memory after {seconds:.0f} s: {rss_kb / 1024:.1f} MB (target <= 60 MB)")
    print(f"  first signed reading after start: {first if first is not None else float('nan'):.2f} s "
          f"(target <= 2 s; includes Python start-up)")
    print(f"  bytes per reading: envelope {envelope:.0f} B, MQTT 5 PUBLISH packet {packet:.0f} B "
          f"(topic {topic_len} B, content type {len(COSE_CONTENT_TYPE)} B)")


def bench_inspect(runs: int = 3) -> None:
    import can

    from gateway.adapters.can_bus import PythonCanSource
    from gateway.adapters.isotp import IsoTpDiagClient
    from gateway.adapters.keystore import generate_key
    from gateway.battery import BatteryTracker
    from gateway.decoding import Decoder
    from gateway.diagnostics import DiagService
    from gateway.pipeline import Pipeline, PublishPolicy
    from gateway.profile import load_profile
    from gateway.signing import Chain, Signer
    from gateway.sim import LeafBattery
    from gateway.simecu import LbcResponder, run_ecu, segment

    group, port = "ff11:7079:7468:6f6e:6465:6d6f:6d63:6174", 43912
    battery = LeafBattery(generation="ze1", rated_kwh=62.0, rated_ah=176.0)
    stop = threading.Event()
    ecu_bus = can.Bus(interface="udp_multicast", channel=group, port=port, ignore_config=True)
    ecu = threading.Thread(target=run_ecu, args=(battery, ecu_bus),
                           kwargs={"duration_s": 120, "stop": stop.is_set, "responder": LbcResponder(battery)})
    ecu.start()
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            generate_key(tmp / "key.pem")
            config = tmp / "g.toml"
            config.write_text(f'[device]\nid = "gw-bench"\nkey_file = "{tmp / "key.pem"}"\nstate_dir = "{tmp / "s"}"\n'
                              f'[can]\ninterface = "udp_multicast"\nchannel = "{group}"\nudp_multicast_port = {port}\n'
                              f'[vehicle]\nprofile = "leaf-ze1"\n[mqtt]\nport = 1\n')
            walls = []
            for i in range(runs):
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "gateway", "inspect", "--config", str(config), "--out",
                                str(tmp / f"out{i}")], check=True, capture_output=True)
                walls.append(time.perf_counter() - t)
        # CPU of one full poll cycle, in process: every group of the ZE1 profile once, back to back
        profile, dbs = load_profile("leaf-ze1")
        from cryptography.hazmat.primitives.asymmetric import ec
        pipeline = Pipeline(Decoder(profile, dbs), BatteryTracker(profile),
                            Signer(ec.generate_private_key(ec.SECP256R1())), Chain(), device_id="b", sw="b",
                            policy=PublishPolicy(), emit=False)
        source = PythonCanSource(interface="udp_multicast", channel=group, bitrate=500000,
                                 frame_ids=profile.frame_ids, udp_multicast_port=port)
        diag = DiagService(pipeline, IsoTpDiagClient(source.send))
        cycles = []
        try:
            for _ in range(5):
                cpu, wall = time.process_time(), time.perf_counter()
                for spec in profile.polls:
                    diag.request(spec)
                    done = None
                    while done is None:
                        frame = source.recv(0.002)
                        if frame is not None and not diag.on_frame(frame):
                            pipeline.on_frame(frame)
                        done = diag.step(time.time(), schedule=False)
                cycles.append((time.process_time() - cpu, time.perf_counter() - wall))
        finally:
            source.close()
    finally:
        stop.set()
        ecu.join(5)
        ecu_bus.shutdown()
    print(f"inspect: wall time from start to certificate written (CLI, incl. Python start-up), {runs} runs: "
          f"min {min(walls):.2f} s, max {max(walls):.2f} s (goal <= 15 s)")
    best = min(cycles)
    # Baseline: the same exchange on a real 500 kbit/s bus, ~130 bits per 8-byte frame with stuffing
    responder = LbcResponder(battery)
    frames = 0
    for spec in profile.polls:
        reply = (b"\x61\x81" + bytes(19)) if spec.request_id == 0x797 else (
            bytes([0x61, spec.request[1]]) + responder._group(spec.request[1]))
        frames += 1 + len(segment(reply)) + (1 if len(reply) > 7 else 0)  # request, reply, flow control
    print(f"  one full poll cycle ({len(profile.polls)} requests, ZE1): CPU {best[0] * 1000:.1f} ms, "
          f"wall {best[1] * 1000:.1f} ms on loopback; baseline 'bus minimum' at 500 kbit/s: {frames} frames "
          f"= {frames * 130 / 500:.0f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="*", default=["replay", "daemon", "inspect"],
                   choices=["replay", "daemon", "inspect"])
    p.add_argument("--seconds", type=float, default=60.0, help="daemon run time before measuring memory")
    args = p.parse_args()
    if "replay" in args.which:
        bench_replay()
    if "daemon" in args.which:
        bench_daemon(args.seconds)
    if "inspect" in args.which:
        bench_inspect()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
