"""The fleet broker as shipped in deploy/mosquitto (fleet.conf, fleet.acl), run by a real mosquitto with
mutual TLS: the device id comes from the certificate and is also the client id; each device writes only
its own subtree; the backend reads everything and may command devices; nobody else gets in."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.adapters.keystore import load_public_key
from gateway.sim.battery import LeafBattery
from gateway.sim.broker import LocalBroker
from tests.pki import FleetPki
from tests.rig import (
    Car,
    Rig,
    daemon_log,
    outbox_rows,
    set_mqtt,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[FleetPki, LocalBroker]]:
    pki = FleetPki(tmp_path / "pki")
    broker = LocalBroker(extra_conf=pki.fleet_conf()).start()
    yield pki, broker
    broker.stop()


def broker_log(broker: LocalBroker) -> str:
    return broker.log_path.read_text(errors="replace")


def tls_rig(tmp: Path, pki: FleetPki, broker: LocalBroker, *, device: str, cert_cn: str) -> Rig:
    subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(tmp / "key.pem")], check=True,
                   capture_output=True)
    cert, key = pki.issue(cert_cn)
    can_port = random.randint(40000, 49999)
    config = write_config(tmp, device=device, mqtt_port=broker.port, can_port=can_port)
    set_mqtt(config, f'tls = true\nca_file = "{pki.ca_file}"\ncert_file = "{cert}"\nkey_file = "{key}"')
    return Rig(tmp, config, device, can_port, load_public_key(tmp / "key.pem"))


def tls_client(pki: FleetPki, broker: LocalBroker, cn: str, *, client_id: str) -> tuple[mqtt.Client, list[int]]:
    """A paho client with ``cn``'s certificate, connected; returns it and the CONNACK reason codes seen."""
    cert, key = (pki.dir / f"{cn}.pem", pki.dir / f"{cn}.key")
    if not cert.exists():
        pki.issue(cn)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(pki.ca_file), certfile=str(cert), keyfile=str(key))
    connacks: list[int] = []
    connected = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: (connacks.append(int(rc.value)), connected.set())
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    assert connected.wait(10), "no CONNACK"
    return c, connacks


def backend(pki: FleetPki, broker: LocalBroker, seconds: float) -> subprocess.Popen[str]:
    cert, key = pki.issue("backend")
    return subprocess.Popen([sys.executable, "-m", "gateway", "verify", "--mqtt", f"127.0.0.1:{broker.port}",
                             "--tls", str(pki.ca_file), str(cert), str(key), "--trust", str(pki.dir / "trust"),
                             "--duration", str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_device_with_its_certificate_publishes_and_the_backend_verifies_over_tls(
        tmp_path: Path, fleet: tuple[FleetPki, LocalBroker]) -> None:
    pki, broker = fleet
    rig = tls_rig(tmp_path, pki, broker, device="gw-7", cert_cn="gw-7")
    (pki.dir / "trust").mkdir()
    (pki.dir / "trust" / "gw-7.pem").write_bytes((tmp_path / "key.pem").read_bytes())
    verify = backend(pki, broker, 12)
    wait_for(lambda: "Received SUBSCRIBE from backend" in broker_log(broker), 20, "the backend's subscription")
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=20)
    daemon = start_daemon(rig)
    try:
        out, err = verify.communicate(timeout=40)
    finally:
        assert stop_daemon(daemon) == 0
        car.close()
    assert verify.returncode == 0, err
    assert "gw-7 epoch 1:" in err and "0 rejected" in err
    assert out.count('"kind":"reading"') >= 3


def test_a_device_that_publishes_as_another_is_refused_and_keeps_its_messages(
        tmp_path: Path, fleet: tuple[FleetPki, LocalBroker]) -> None:
    pki, broker = fleet
    # its certificate says gw-2, its config says gw-1: the ACL lets it write only under bp/v1/gw-2/
    rig = tls_rig(tmp_path, pki, broker, device="gw-1", cert_cn="gw-2")
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=30)
    daemon = start_daemon(rig)
    try:
        wait_for(lambda: "broker refused a message (PUBACK 0x87" in daemon_log(rig), 20, "PUBACK 0x87")
        wait_for(lambda: outbox_rows(rig) >= 3, 20, "three messages kept in the outbox")
    finally:
        assert stop_daemon(daemon) == 0
        car.close()
    # nothing was deleted: the messages wait for a corrected ACL or certificate
    assert outbox_rows(rig) >= 3


def test_a_client_without_a_certificate_cannot_connect(tmp_path: Path, fleet: tuple[FleetPki, LocalBroker]) -> None:
    pki, broker = fleet
    rig = tls_rig(tmp_path, pki, broker, device="gw-3", cert_cn="gw-3")
    rig.config.write_text(rig.config.read_text().replace("tls = true", "tls = false"))
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=20)
    daemon = start_daemon(rig)
    try:
        wait_for(lambda: outbox_rows(rig) >= 1, 20, "a message signed and kept")
        # plain MQTT on the TLS listener; mosquitto words it by when the bytes came (during the handshake:
        # "Client connection from ... failed: ...", after it: "OpenSSL Error[0]: ..."), the cause is the same
        wait_for(lambda: "SSL routines::wrong version number" in broker_log(broker), 20,
                 "the broker to refuse a connection attempt")
    finally:
        assert stop_daemon(daemon) == 0
        car.close()
    assert "MQTT connected" not in daemon_log(rig)


def test_one_device_cannot_take_over_another_devices_session(
        tmp_path: Path, fleet: tuple[FleetPki, LocalBroker]) -> None:
    # GIVEN gw-1 online with its own certificate
    pki, broker = fleet
    rig = tls_rig(tmp_path, pki, broker, device="gw-1", cert_cn="gw-1")
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=40)
    daemon = start_daemon(rig)
    attackers: list[mqtt.Client] = []
    try:
        wait_for(lambda: "MQTT connected" in daemon_log(rig), 20, "gw-1 to connect")
        # WHEN a client holding gw-2's valid certificate connects again and again as client id "gw-1"
        for _ in range(6):
            client, connacks = tls_client(pki, broker, "gw-2", client_id="gw-1")
            attackers.append(client)
            assert connacks == [0]
        wait_for(lambda: broker_log(broker).count("as gw-2 (") >= 6, 10, "six connections named gw-2")
        after = len(broker_log(broker))
        wait_for(lambda: "Received PUBLISH from gw-1" in broker_log(broker)[after:], 15, "gw-1 to go on publishing")
    finally:
        for client in attackers:
            client.loop_stop()
            client.disconnect()
        assert stop_daemon(daemon) == 0
        car.close()
    # THEN the broker named every one of those connections gw-2, and gw-1 was never disconnected
    assert broker_log(broker).count("as gw-1 (") == 1  # the daemon's own connection only
    assert "MQTT disconnected" not in daemon_log(rig), daemon_log(rig)[-2000:]


def test_the_backend_commands_a_device_through_the_fleet_acl(
        tmp_path: Path, fleet: tuple[FleetPki, LocalBroker]) -> None:
    # GIVEN gw-5 with a backend command key, online through the fleet broker
    pki, broker = fleet
    rig = tls_rig(tmp_path, pki, broker, device="gw-5", cert_cn="gw-5")
    command_key = tmp_path / "backend-command.pem"
    out = subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(command_key)], check=True,
                         capture_output=True, text=True).stdout
    (tmp_path / "backend-command.pub").write_text(out[out.index("-----BEGIN PUBLIC KEY"):])
    with rig.config.open("a") as f:
        f.write(f'\n[ota]\ncommand_key = "{tmp_path / "backend-command.pub"}"\n')
    envelope = subprocess.run([sys.executable, "-m", "gateway", "command", "ota", "--key", str(command_key),
                               "--device", "gw-5", "--out", "-"], check=True, capture_output=True).stdout
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=30)
    daemon = start_daemon(rig)
    backend_client = None
    try:
        wait_for(lambda: "Received SUBSCRIBE from gw-5" in broker_log(broker), 20, "gw-5 to subscribe to cmd/#")
        # WHEN the backend, with its own certificate, publishes a signed cmd/ota (QoS 1)
        backend_client, _ = tls_client(pki, broker, "backend", client_id="backend")
        acks: list[int] = []
        done = threading.Event()
        backend_client.on_publish = lambda c, u, mid, rc, p: (acks.append(int(rc.value)), done.set())
        backend_client.publish("bp/v1/gw-5/cmd/ota", envelope, qos=1)
        assert done.wait(10)
        # THEN the broker accepts it and the device records the update request for the updater
        assert acks == [0], f"PUBACK {acks}"
        request = tmp_path / "state" / "ota-command.json"
        wait_for(request.exists, 15, "ota-command.json")
        assert json.loads(request.read_text())["ts"] > 0
    finally:
        if backend_client is not None:
            backend_client.loop_stop()
            backend_client.disconnect()
        assert stop_daemon(daemon) == 0
        car.close()
    assert "cmd/ota accepted" in daemon_log(rig)
