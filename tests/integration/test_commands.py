"""Commands to a device, with the real daemon and mosquitto: `cmd/passport` is signed and checked like
`cmd/ota`; a command the broker kept as retained is never acted on; junk is counted, not obeyed; a
flood fills a bounded queue that says so once; the MQTT network thread cannot die silently."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.adapters.mqtt import PahoPublisher
from gateway.core.signing import verify_envelope
from gateway.errors import EnvelopeError
from gateway.sim.battery import LeafBattery
from gateway.sim.broker import LocalBroker
from tests.rig import Car, Rig, Subscriber, daemon_log, start_daemon, stop_daemon, wait_for

pytestmark = [pytest.mark.broker]


def _key(tmp: Path, name: str) -> Path:
    out = subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(tmp / name)], check=True,
                         capture_output=True, text=True).stdout
    (tmp / f"{name}.pub").write_text(out[out.index("-----BEGIN PUBLIC KEY"):])
    return tmp / name


def _command(key: Path, device: str, name: str = "passport") -> bytes:
    return subprocess.run([sys.executable, "-m", "gateway", "command", name, "--key", str(key), "--device", device,
                           "--out", "-"], check=True, capture_output=True).stdout


def _client(broker: LocalBroker) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"backend-{time.time_ns()}", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


def _requested(rig: Rig, got: list[tuple[str, bytes, object]]) -> int:
    """Passports the device signed because one was requested (the subscription also sees cmd/passport)."""
    bodies = []
    for _topic, payload, _ in got:
        try:
            bodies.append(verify_envelope(payload, rig.public_key))
        except EnvelopeError:
            continue  # a command on .../cmd/passport, not the device's passport
    return sum(1 for b in bodies if b["kind"] == "passport" and b["ext"]["reason"] == "request")


def test_only_a_signed_fresh_passport_command_for_this_device_makes_a_passport(
        rig: Rig, broker: LocalBroker, sub: Subscriber, tmp_path: Path) -> None:
    backend, attacker = _key(tmp_path, "backend.pem"), _key(tmp_path, "attacker.pem")
    with rig.config.open("a") as f:
        f.write(f'\n[ota]\ncommand_key = "{tmp_path / "backend.pem.pub"}"\n')
    topic = f"bp/v1/{rig.device}/cmd/passport"
    c = _client(broker)
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=60)
    daemon = start_daemon(rig)
    try:
        sub.collect(lambda g: any(t == "passport" for t, *_ in g), 20)  # the first passport is out
        # GIVEN unsigned, forged and misaddressed requests (150 of them made 75 passports before); fewer than
        # the command queue holds, so none is dropped however slowly the daemon runs (the flood test below)
        junk = [b"please"] * 60 + [_command(attacker, rig.device), _command(backend, "gw-other")]
        for payload in junk:
            c.publish(topic, payload, qos=1)
        good = _command(backend, rig.device)
        c.publish(topic, good, qos=1).wait_for_publish(5)  # WHEN one good one follows (commands keep order)
        got = sub.collect(lambda g: _requested(rig, g) >= 1, 20)
        c.publish(topic, good, qos=1).wait_for_publish(5)  # and is replayed
        c.publish(f"bp/v1/{rig.device}/cmd/reboot", b"", qos=1).wait_for_publish(5)  # marker: processed after
        wait_for(lambda: "unknown command 'reboot'" in daemon_log(rig), 15, "the marker")
        got += sub.drain(0.5)
        assert stop_daemon(daemon) == 0
    finally:
        car.close()
        c.loop_stop()
        c.disconnect()
    # THEN exactly one passport was requested, and every other command was counted
    assert _requested(rig, got) == 1
    log = daemon_log(rig)
    assert "cmd/passport accepted" in log and "commands_ignored 63," in log, log[-1500:]
    assert "commands_queue_full" not in log
    assert log.count("cmd/passport ignored") == 1  # logged once a minute, counted always


def test_a_retained_command_is_never_acted_on(rig: Rig, broker: LocalBroker, sub: Subscriber,
                                              tmp_path: Path) -> None:
    backend = _key(tmp_path, "backend.pem")
    with rig.config.open("a") as f:
        f.write(f'\n[ota]\ncommand_key = "{tmp_path / "backend.pem.pub"}"\n')
    # GIVEN a valid, fresh, signed cmd/passport that the broker keeps (retained) before the device connects
    c = _client(broker)
    c.publish(f"bp/v1/{rig.device}/cmd/passport", _command(backend, rig.device), qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=60)
    try:
        for _ in range(2):  # WHEN the device connects, and reconnects after a restart
            daemon = start_daemon(rig)
            wait_for(lambda: "retained command" in daemon_log(rig), 20, "the retained command to arrive")
            got = sub.collect(lambda g: any(t == "passport" for t, *_ in g), 20)
            assert stop_daemon(daemon) == 0
            # THEN it is dropped before it reaches the command intake: no requested passport
            assert _requested(rig, got + sub.drain(0.5)) == 0
    finally:
        car.close()
    assert "cmd/passport accepted" not in daemon_log(rig)


def test_a_flood_of_commands_fills_a_bounded_queue_and_says_so_once(broker: LocalBroker,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN the uplink of a daemon whose main loop does not take commands (it is busy)
    publisher = PahoPublisher(hosts=[("127.0.0.1", broker.port)], device_id="gw-flood", topic_prefix="bp/v1", sw="t")
    c = _client(broker)
    try:
        wait_for(publisher.connected.is_set, 10, "the uplink to connect")
        wait_for(lambda: "Received SUBSCRIBE from gw-flood" in broker.log_path.read_text(errors="replace"), 10,
                 "the cmd/# subscription")
        with caplog.at_level("WARNING"):
            for _ in range(150):  # WHEN 150 commands arrive
                c.publish("bp/v1/gw-flood/cmd/passport", b"x", qos=1)
            wait_for(lambda: publisher.commands.qsize() + publisher.dropped["queue_full"] == 150, 15,
                     "every command to be queued or dropped")
        # THEN 100 wait, 50 were dropped and counted, and the log said so once
        assert publisher.commands.qsize() == 100 and publisher.dropped["queue_full"] == 50
        assert caplog.text.count("command queue full") == 1
    finally:
        c.loop_stop()
        c.disconnect()
        publisher.close()


def test_an_exception_in_the_network_thread_is_not_a_silent_offline_daemon(broker: LocalBroker) -> None:
    # GIVEN a client id paho cannot even encode (65,536 bytes: struct.error in CONNECT)
    publisher = PahoPublisher(hosts=[("127.0.0.1", broker.port)], device_id="x" * 65536, topic_prefix="bp/v1",
                              sw="t")
    try:
        # THEN the thread says why it stopped, for the daemon to exit and systemd to restart it
        wait_for(lambda: publisher.failed != "", 10, "the network thread to report its failure")
        assert "error" in publisher.failed.lower() and not publisher.is_connected
    finally:
        publisher.close()


DYNSEC = next(iter(sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))), None)


@pytest.mark.skipif(DYNSEC is None, reason="Debian's mosquitto ships mosquitto_dynamic_security.so; not here")
def test_verify_fails_loudly_when_the_broker_refuses(tmp_path: Path) -> None:
    # GIVEN a broker that lets no anonymous client in, and one that lets it in but denies every subscription
    # (mosquitto's dynamic security plugin answers SUBACK 0x87)
    dynsec = tmp_path / "dynamic-security.json"
    dynsec.write_text('{"defaultACLAccess": {"publishClientSend": false, "publishClientReceive": true, '
                      '"subscribe": false, "unsubscribe": true}, "clients": [], "groups": [], "roles": []}')
    refusing = LocalBroker(extra_conf="allow_anonymous false\n").start()
    denying = LocalBroker(extra_conf=f"plugin {DYNSEC}\nplugin_opt_config_file {dynsec}\n").start()
    key = _key(tmp_path, "k.pem")
    try:
        for broker, why in ((refusing, "refused the connection: Not authorized"),
                            (denying, "refused the subscription to bp/v1/+/#: Not authorized")):
            t0 = time.monotonic()
            out = subprocess.run([sys.executable, "-m", "gateway", "verify", "--pubkey", f"{key}.pub", "--mqtt",
                                  f"127.0.0.1:{broker.port}", "--duration", "60"], capture_output=True, text=True,
                                 timeout=120)
            # THEN exit 1 at once, one line saying why, not "0 accepted, 0 rejected" after the duration
            assert out.returncode == 1 and why in out.stderr, out.stderr
            assert out.stderr.strip().count("\n") == 0 and time.monotonic() - t0 < 30
    finally:
        refusing.stop()
        denying.stop()
