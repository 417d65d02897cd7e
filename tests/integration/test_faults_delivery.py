"""Faults with real processes: SIGKILL while publishing (20 times), a broker that goes away and comes
back. Every signed message must arrive exactly once after deduplication by (dev, ep, seq), and the
chain must stay intact."""

from __future__ import annotations

import random
import signal
import sqlite3
import time

import pytest

from gateway.core.chainverify import ChainVerifier
from gateway.sim.battery import LeafBattery
from gateway.sim.broker import LocalBroker
from tests.conftest import FAKETIME
from tests.rig import (
    Car,
    Rig,
    Subscriber,
    count,
    daemon_log,
    outbox_rows,
    set_mqtt,
    signed,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def fast(rig: Rig) -> None:
    rig.config.write_text(rig.config.read_text().replace("reading_interval_s = 1", "reading_interval_s = 0.2"))


def last_seq(rig: Rig) -> tuple[int, int]:
    """The stored chain position, (0, 0) before the daemon made its database (never creates it)."""
    path = rig.tmp / "state" / "state.db"
    if not path.exists():
        return 0, 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT ep, seq FROM chain").fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)
    except sqlite3.OperationalError:  # the daemon has not created its tables yet
        return 0, 0
    finally:
        db.close()


def _bodies(rig: Rig, got: list[tuple[str, bytes, object]]) -> list[dict[str, object]]:
    return [b for b, _ in signed(rig, got)]


def check_exactly_once(rig: Rig, envelopes: list[bytes]) -> ChainVerifier:
    verifier = ChainVerifier(lambda dev: rig.public_key if dev == rig.device else None)
    for env in envelopes:
        verdict = verifier.add(env)
        assert verdict.status != "rejected", verdict.reason
    lines, intact = verifier.report()
    ep, seq = last_seq(rig)
    assert intact, lines
    assert f"{rig.device} epoch {ep}: {seq} messages, seq 1..{seq}; none missing" in lines[0], lines
    return verifier


def test_sigkill_at_random_moments_loses_nothing_and_reuses_no_sequence_number(rig: Rig, sub: Subscriber) -> None:
    fast(rig)
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=120)
    rng = random.Random(random.getrandbits(32))  # the session seed decides the moments (printed in the header)
    try:
        for _ in range(20):
            daemon = start_daemon(rig)
            time.sleep(rng.uniform(0.6, 1.6))  # the random moment is the point of this test, not a wait
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
        daemon = start_daemon(rig)
        wait_for(lambda: outbox_rows(rig) == 0 and last_seq(rig)[1] > 0, 60, "the last daemon to drain the outbox")
        assert stop_daemon(daemon) == 0
    finally:
        car.close()
    envelopes = [p for t, p, _ in sub.drain(1.5) if t in ("reading", "passport")]  # quiet: all daemons stopped
    verifier = check_exactly_once(rig, envelopes)
    assert verifier.accepted > 40
    assert outbox_rows(rig) == 0
    assert last_seq(rig)[0] == 1  # SIGKILL never loses the committed state: same epoch throughout


def test_broker_gone_for_a_while_then_every_message_arrives(rig: Rig) -> None:
    # A durable broker (persistence on): what it acknowledged before it went down is its responsibility;
    # everything else waits in the gateway's outbox on disk and arrives after it comes back.
    broker = LocalBroker(persistent=True).start()
    write_config(rig.tmp, device=rig.device, mqtt_port=broker.port, can_port=rig.can_port)
    fast(rig)
    set_mqtt(rig.config, "max_backoff_s = 4")
    sub = Subscriber(broker.port, rig.device)
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=120)
    daemon = start_daemon(rig)
    try:
        wait_for(lambda: "MQTT connected" in daemon_log(rig) and outbox_rows(rig) == 0 and last_seq(rig)[1] >= 3,
                 30, "the first readings delivered")
        broker.halt()  # the uplink is gone; readings pile up in the outbox on disk
        wait_for(lambda: outbox_rows(rig) >= 100, 120, "100 readings piled up on disk")  # WAL: reading is harmless
        piled = outbox_rows(rig)
        broker.start()
        wait_for(lambda: outbox_rows(rig) == 0, 60, "the backlog to drain after the broker came back")
        assert stop_daemon(daemon) == 0
        _, last = last_seq(rig)
        got = sub.collect(lambda g: len({m.get("seq") for m in _bodies(rig, g)}) >= last, 30)
        envelopes = [p for t, p, _ in got if t in ("reading", "passport")]
    finally:
        if daemon.poll() is None:
            daemon.kill()
        car.close()
        sub.close()
        broker.stop()
    assert piled >= 100
    assert outbox_rows(rig) == 0
    check_exactly_once(rig, envelopes)
    assert "MQTT disconnected" in daemon_log(rig)


@pytest.mark.skipif(FAKETIME is None, reason="Debian's libfaketime is not installed (make setup installs it)")
def test_wall_clock_stepping_back_an_hour_in_a_real_process(rig: Rig, sub: Subscriber) -> None:
    # GIVEN the daemon under libfaketime, whose offset a file sets while it runs
    offset = rig.tmp / "faketime"
    offset.write_text("+0\n")
    env = {"LD_PRELOAD": str(FAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1"}
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=60)
    daemon = start_daemon(rig, env=env)
    try:
        before = signed(rig, sub.collect(count("reading", 3), 15))
        offset.write_text("-3600\n")  # WHEN NTP steps the clock back by an hour
        after = signed(rig, sub.collect(count("reading", 4), 15))
        assert stop_daemon(daemon) == 0
    finally:
        car.close()
    # THEN readings go on at once, stamped with the new time, and the chain continues
    late = [b for b, _ in after if b["kind"] == "reading" and b["ts"] < before[-1][0]["ts"] - 3_000_000]
    assert len(late) >= 3
    assert "clock stepped back by" in (rig.tmp / "daemon.log").read_text()
    check_exactly_once(rig, [env for _, env in before + after] + [p for t, p, _ in sub.drain(1.0)
                                                                   if t in ("reading", "passport")])
