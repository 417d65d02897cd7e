"""The fleet broker set-up of docs/delivery.md, tested with a real mosquitto: mutual TLS, the device id
taken from the certificate (use_identity_as_username), ACL ``pattern readwrite bp/v1/%u/#``."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.adapters.keystore import load_public_key
from gateway.sim.battery import LeafBattery
from gateway.sim.broker import LocalBroker
from tests.pki import FleetPki
from tests.rig import Car, Rig, outbox_rows, start_daemon, stop_daemon, write_config

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[FleetPki, LocalBroker]:
    pki = FleetPki(tmp_path / "pki")
    acl = tmp_path / "pki" / "acl"
    acl.write_text("user backend\ntopic read bp/v1/#\n\npattern readwrite bp/v1/%u/#\n")
    broker = LocalBroker(extra_conf=pki.mosquitto_conf(acl)).start()
    yield pki, broker
    broker.stop()


def tls_rig(tmp: Path, pki: FleetPki, broker: LocalBroker, *, device: str, cert_cn: str) -> Rig:
    subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(tmp / "key.pem")], check=True,
                   capture_output=True)
    cert, key = pki.issue(cert_cn)
    can_port = random.randint(40000, 49999)
    config = write_config(tmp, device=device, mqtt_port=broker.port, can_port=can_port)
    config.write_text(config.read_text().replace(
        "[mqtt]\n", f'[mqtt]\ntls = true\nca_file = "{pki.ca_file}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'))
    return Rig(tmp, config, device, can_port, load_public_key(tmp / "key.pem"))


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
    time.sleep(1.5)  # the backend subscribes first
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
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=20)
    daemon = start_daemon(rig)
    try:
        time.sleep(5)
    finally:
        assert stop_daemon(daemon) == 0
        car.close()
    log = (tmp_path / "daemon.log").read_text()
    assert "broker refused a message (PUBACK 0x87" in log  # "Not authorized"
    assert outbox_rows(rig) >= 3  # nothing was deleted: the messages wait for a corrected ACL or certificate


def test_a_client_without_a_certificate_cannot_connect(tmp_path: Path, fleet: tuple[FleetPki, LocalBroker]) -> None:
    pki, broker = fleet
    rig = tls_rig(tmp_path, pki, broker, device="gw-3", cert_cn="gw-3")
    rig.config.write_text(rig.config.read_text().replace("tls = true", "tls = false"))
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=20)
    daemon = start_daemon(rig)
    try:
        time.sleep(3)
    finally:
        assert stop_daemon(daemon) == 0
        car.close()
    assert outbox_rows(rig) >= 1  # signed and kept, never sent
    assert "MQTT connected" not in (tmp_path / "daemon.log").read_text()
