"""The uplink on MQTT 3.1.1 and over an ordered list of brokers, with the real daemon and real mosquittos.

3.1.1 (for NATS and older brokers): the same signed readings arrive, without MQTT 5 properties,
``verify --mqtt --protocol 3.1.1`` checks them, and the outbox empties through acknowledgements.
``mqtt.hosts``: a broker that goes away is replaced by the next one in the list, the first is taken back
when it returns, and the device's chain reaches the backend without a gap across the three connections.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.sim.battery import LeafBattery
from gateway.sim.broker import LocalBroker
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
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_on_mqtt_3_1_1_the_signed_readings_arrive_and_the_outbox_waits_for_acks(
        rig: Rig, sub: Subscriber, broker: LocalBroker) -> None:
    set_mqtt(rig.config, 'protocol = "3.1.1"')
    # the backend's verify on 3.1.1 too (a broker without MQTT 5 has no other way in)
    pub = rig.tmp / "key.pub"
    pub.write_bytes(rig.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    verify = subprocess.Popen([sys.executable, "-m", "gateway", "verify", "--pubkey", str(pub),
                               "--mqtt", f"127.0.0.1:{broker.port}", "--topic", f"bp/v1/{rig.device}/#",
                               "--protocol", "3.1.1", "--duration", "120"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=60)
    try:
        wait_for(lambda: "Received SUBSCRIBE from verify-" in broker.log_path.read_text(errors="replace"), 30,
                 "verify to subscribe")
        daemon = start_daemon(rig)
        got = sub.collect(count("reading", 3), 30)
        assert stop_daemon(daemon) == 0
    finally:
        car.close()
        verify.send_signal(signal.SIGINT)  # stops it; it reports what it saw
        verified = verify.communicate(timeout=30)[1]
    assert verified.count("signature verified (reading") >= 3 and "REJECTED" not in verified, verified
    assert verify.returncode == 0 and "(p2, c1," in broker.log_path.read_text(errors="replace")
    got += sub.drain()
    readings = [(t, p, props) for t, p, props in got if t == "reading"]
    assert len(signed(rig, readings)) >= 3  # the same COSE envelopes, verified
    # mosquitto logs the protocol level: p2 is 3.1.1, c0 a persistent session
    assert f"as {rig.device} (p2, c0," in broker.log_path.read_text(errors="replace")
    assert not any(hasattr(props, "ContentType") for _, _, props in readings)  # 3.1.1 has no properties
    assert outbox_rows(rig) == 0  # every message was acknowledged before it left the outbox
    assert "MQTT 3.1.1 connecting to" in daemon_log(rig)


def test_a_broker_that_dies_is_replaced_by_the_next_and_taken_back_when_it_returns(rig: Rig) -> None:
    first = LocalBroker(persistent=True).start()  # persistent: the backend's session on it survives its restart
    second = LocalBroker(persistent=True).start()
    subs = [Subscriber(first.port, rig.device), Subscriber(second.port, rig.device)]
    set_mqtt(rig.config, f'hosts = ["127.0.0.1:{first.port}", "127.0.0.1:{second.port}"]\nmax_backoff_s = 2')
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=120)
    got: list[list[tuple[str, bytes, object]]] = [[], []]
    try:
        daemon = start_daemon(rig)
        got[0] += subs[0].collect(count("reading", 2), 30)
        assert count("reading", 2)(got[0])
        first.halt()
        got[1] += subs[1].collect(count("reading", 2), 60)  # failed over
        assert count("reading", 2)(got[1])
        seen = max(body["seq"] for body, _ in signed(rig, got[0] + got[1]))
        first.start()
        wait_for(lambda: "answers again: moving back to it" in daemon_log(rig), 60, "the move back to the first broker")
        got[0] += subs[0].collect(lambda g: any(b["seq"] > seen for b, _ in signed(rig, g)), 60)
        assert stop_daemon(daemon) == 0
        got[0] += subs[0].drain()
        got[1] += subs[1].drain()
    finally:
        car.close()
        for s in subs:
            s.close()
        first.stop()
        second.stop()
    seqs = {body["seq"] for body, _ in signed(rig, got[0] + got[1])}
    assert seqs == set(range(1, max(seqs) + 1)), sorted(set(range(1, max(seqs) + 1)) - seqs)  # no gap
    assert max(seqs) > seen and outbox_rows(rig) == 0
    log = daemon_log(rig)
    assert log.count(f"MQTT connected to 127.0.0.1:{second.port}") == 1  # no flapping between the two
    assert log.count("answers again: moving back to it") == 1
    assert log.count(f"MQTT connected to 127.0.0.1:{first.port}") == 2
    # the broker it left says where the device is not: offline, moved (retained), not a stale "online"
    statuses = [json.loads(p) for t, p, _ in got[1] if t == "status"]
    assert statuses[-1]["state"] == "offline" and statuses[-1]["reason"] == "moved to another broker"


@pytest.mark.parametrize("how", ["refuses the device", "takes the connection and never answers"])
def test_a_first_broker_that_does_not_work_is_looked_at_less_and_less(rig: Rig, how: str) -> None:
    working = LocalBroker().start()
    sub = Subscriber(working.port, rig.device)
    refusing = LocalBroker(anonymous=False) if how == "refuses the device" else None
    silent = socket.socket()  # listens (the kernel completes the handshake) and never reads
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    first = refusing.start().port if refusing else silent.getsockname()[1]
    set_mqtt(rig.config, f'hosts = ["127.0.0.1:{first}", "127.0.0.1:{working.port}"]\nmax_backoff_s = 1')
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=120)
    try:
        daemon = start_daemon(rig)
        # the readings flow through the second broker, and each failed move back doubles the wait: 2, 4 s
        wait_for(lambda: "gave no session; next look in 4 s" in daemon_log(rig), 90, "the second failed look")
        got = sub.collect(count("reading", 3), 30)
        assert stop_daemon(daemon) == 0
        got += sub.drain()
    finally:
        car.close()
        sub.close()
        working.stop()
        silent.close()
        if refusing:
            refusing.stop()
    assert len(signed(rig, got)) >= 3
    log = daemon_log(rig)
    assert log.count("next look in 2 s") == 1 and log.count("next look in 4 s") == 1
    if refusing is None:
        assert f"MQTT broker 127.0.0.1:{first} took the connection but sent no CONNACK in 10 s" in log
