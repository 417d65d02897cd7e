"""Over-the-air updates against a real TUF repository served on 127.0.0.1 (built with python-tuf's
repository tooling in the test), through the real ``battery-gateway update`` command.

The attack tests stop before anything is installed; the install tests build real release bundles
(this checkout as a wheel at another version, plus every dependency's wheel), install them into a
virtual environment, switch ``current`` and run the new daemon against the simulated Leaf and mosquitto.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from gateway.sim.battery import LeafBattery
from gateway.sim.broker import LocalBroker
from tests.conftest import FAKETIME
from tests.rig import Car, Rig, Subscriber, daemon_log, signed, wait_for
from tests.tufrepo import (
    RepoServer,
    Supervisor,
    TufRepo,
    base_release,
    build_bundle,
    build_hanging_bundle,
    build_wheelhouse,
)

TARGET = "battery-gateway/stable.tar"

pytestmark = [pytest.mark.broker]


class Device:
    """The device's OTA side: config with [ota], releases dir with a base release, updater state."""

    def __init__(self, rig: Rig, server: RepoServer, repo: TufRepo, *, probation_s: float = 60.0) -> None:
        self.rig = rig
        self.releases = rig.tmp / "opt"
        self.ota_dir = rig.tmp / "ota"
        base_release(self.releases)
        (rig.tmp / "tuf-root.json").write_bytes(repo.root_bytes())
        self.flag = rig.tmp / "restart-requested"
        with rig.config.open("a") as f:
            f.write(f"""
[ota]
metadata_url = "{server.url}/metadata"
targets_url = "{server.url}/targets"
trusted_root = "{rig.tmp / 'tuf-root.json'}"
target = "{TARGET}"
hardware_id = "test-hw"
dir = "{self.ota_dir}"
releases_dir = "{self.releases}"
probation_s = {probation_s}
max_crashes = 3
restart_command = "touch {self.flag}"
""")

    def update(self, *args: str, timeout_s: float = 300, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "update", "--config", str(self.rig.config), *args],
                              capture_output=True, text=True, timeout=timeout_s, env={**os.environ, **(env or {})})

    def current(self) -> str:
        return os.readlink(self.releases / "current").rsplit("/", 1)[-1]

    def state(self) -> dict[str, object]:
        return dict(json.loads((self.ota_dir / "state.json").read_text()))


@pytest.fixture
def repo(tmp_path: Path) -> TufRepo:
    return TufRepo(tmp_path / "repo")


@pytest.fixture
def server(repo: TufRepo) -> Iterator[RepoServer]:
    s = RepoServer(repo.dir)
    yield s
    s.close()


@pytest.fixture
def device(rig: Rig, server: RepoServer, repo: TufRepo) -> Device:
    return Device(rig, server, repo)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


def _refused(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stderr.lower()
    assert all(w.lower() in text for w in words), out.stderr


FAKE_BUNDLE = b"not installed by the attack tests" * 100


# -- the TUF attacks: each refused before anything is installed ------------------------------------

def test_check_reports_available_release(device: Device, repo: TufRepo) -> None:
    repo.add_release(TARGET, FAKE_BUNDLE, version="9.0.0", counter=2)
    out = device.update("--check")
    assert out.returncode == 0, out.stderr
    assert "available" in out.stderr and "9.0.0" in out.stderr
    assert device.current() == "0.0.1"


def test_tampered_target_is_refused_and_not_resumed(device: Device, repo: TufRepo, server: RepoServer) -> None:
    repo.add_release(TARGET, FAKE_BUNDLE, version="9.0.0", counter=2)
    f = repo.target_file(TARGET)
    f.write_bytes(b"X" + f.read_bytes()[1:])  # same length, one byte changed on the server
    _refused(device.update(), "does not match the signed targets metadata")
    assert device.current() == "0.0.1"
    assert not list((device.ota_dir / "partial").glob("*")), "a tampered download must not be kept for resuming"


def test_oversized_target_is_refused(device: Device, repo: TufRepo) -> None:
    repo.add_release(TARGET, FAKE_BUNDLE, version="9.0.0", counter=2)
    f = repo.target_file(TARGET)
    f.write_bytes(f.read_bytes() + b"trailing payload")  # endless-data attack: more than the signed length
    _refused(device.update(), "refused")
    assert device.current() == "0.0.1"


def test_expired_targets_metadata_is_refused(device: Device, repo: TufRepo) -> None:
    repo.expiry["targets"] = -repo.expiry["targets"]
    repo.add_release(TARGET, FAKE_BUNDLE, version="9.0.0", counter=2)
    _refused(device.update("--check"), "ExpiredMetadataError")


def test_rollback_of_metadata_versions_is_refused(device: Device, repo: TufRepo) -> None:
    repo.add_release(TARGET, FAKE_BUNDLE, version="9.0.0", counter=2)
    old_timestamp = (repo.dir / "metadata" / "timestamp.json").read_bytes()
    repo.add_release(TARGET, FAKE_BUNDLE + b"2", version="9.0.1", counter=3)
    assert device.update("--check").returncode == 0  # the device has seen the newer timestamp
    (repo.dir / "metadata" / "timestamp.json").write_bytes(old_timestamp)  # a mirror serves an older one
    _refused(device.update("--check"), "BadVersionNumberError")


@pytest.mark.skipif(FAKETIME is None, reason="Debian's libfaketime is not installed (make setup installs it)")
def test_freeze_with_stale_timestamp_is_refused(device: Device, repo: TufRepo) -> None:
    from datetime import timedelta

    repo.expiry["timestamp"] = timedelta(hours=1)
    repo.add_release(TARGET, FAKE_BUNDLE, version="9.0.0", counter=2)
    assert device.update("--check").returncode == 0
    # WHEN the mirror keeps serving the same timestamp two hours later (the device's clock moves on)
    later = {"LD_PRELOAD": str(FAKETIME), "FAKETIME": "+2h"}
    _refused(device.update("--check", env=later), "ExpiredMetadataError")


def test_mix_and_match_of_targets_versions_is_refused(device: Device, repo: TufRepo) -> None:
    repo.add_release(TARGET, FAKE_BUNDLE, version="9.0.0", counter=2)
    older = (repo.dir / "metadata" / "2.targets.json").read_bytes()
    repo.add_release(TARGET, FAKE_BUNDLE + b"2", version="9.0.1", counter=3)
    (repo.dir / "metadata" / "3.targets.json").write_bytes(older)  # targets v2 where snapshot says v3
    _refused(device.update("--check"), "BadVersionNumberError")


def test_targets_signed_by_an_unknown_key_are_refused(device: Device, repo: TufRepo) -> None:
    from securesystemslib.signer import CryptoSigner

    repo.add_release(TARGET, FAKE_BUNDLE, version="9.0.0", counter=2)
    repo.sign_with("targets", [CryptoSigner.generate_ecdsa()])
    _refused(device.update("--check"), "UnsignedMetadataError")


def test_key_rotation_is_followed_and_the_revoked_key_refused(device: Device, repo: TufRepo) -> None:
    repo.add_release(TARGET, FAKE_BUNDLE, version="9.0.0", counter=2)
    assert device.update("--check").returncode == 0
    old_targets_key = repo.signers["targets"]
    repo.rotate("root")
    repo.rotate("targets")
    repo.add_release(TARGET, FAKE_BUNDLE + b"2", version="9.0.1", counter=3)
    out = device.update("--check")  # the device still ships root v1: it walks to root v3
    assert out.returncode == 0 and "9.0.1" in out.stderr, out.stderr
    assert (device.ota_dir / "metadata" / "root_history" / "3.root.json").exists() or \
        json.loads((device.ota_dir / "metadata" / "root.json").read_text())["signed"]["version"] == 3
    repo.sign_with("targets", old_targets_key)  # a stolen, revoked key
    _refused(device.update("--check"), "UnsignedMetadataError")


def test_downgrade_by_release_counter_is_refused(device: Device, repo: TufRepo) -> None:
    (device.ota_dir).mkdir()
    (device.ota_dir / "state.json").write_text(json.dumps({"counter": 5, "rolled_back": [], "probation": None}))
    repo.add_release(TARGET, FAKE_BUNDLE, version="9.9.9", counter=4)  # validly signed, newer version string
    _refused(device.update(), "downgrade", "release counter 4")
    assert device.current() == "0.0.1" and device.state()["counter"] == 5


def test_bundle_for_other_hardware_is_refused(device: Device, repo: TufRepo, server: RepoServer) -> None:
    repo.add_release(TARGET, FAKE_BUNDLE, version="9.0.0", counter=2, hardware_ids=("rpi-zero2w-mcp2515",))
    _refused(device.update(), "is for hardware rpi-zero2w-mcp2515", "this device is test-hw")
    assert not any("targets/" in path for path, _ in server.requests), "nothing downloaded for other hardware"


def test_two_updates_never_run_at_once(device: Device, repo: TufRepo) -> None:
    repo.add_release(TARGET, FAKE_BUNDLE, version="9.0.0", counter=2)
    device.ota_dir.mkdir()
    with (device.ota_dir / "lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = device.update()
    assert out.returncode == 0 and "another update is running" in out.stderr
    assert device.current() == "0.0.1"


# -- installs: a good release committed; bad ones rolled back ---------------------------------------

def _ota_notice(broker: LocalBroker, device: str, state: str, timeout_s: float = 20) -> dict[str, object]:
    """The retained notice on ``{prefix}/{device}/ota`` once it says ``state`` (the daemon relays the
    updater's ota-status.json about once a second)."""
    import paho.mqtt.client as mqtt

    def latest() -> dict[str, object]:
        got: list[dict[str, object]] = []
        ready = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ota-read-{time.time_ns()}",
                        protocol=mqtt.MQTTv5)
        c.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
        c.on_subscribe = lambda *a: ready.set()
        c.on_connect = lambda cl, *a: cl.subscribe(f"bp/v1/{device}/ota", qos=1)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        try:  # a retained message is sent before the SUBACK; one round trip more makes sure it is here
            assert ready.wait(5)
            c.publish("bp/v1/ping", b"", qos=1).wait_for_publish(5)
        finally:
            c.loop_stop()
            c.disconnect()
        return got[-1] if got else {}

    notice: dict[str, object] = {}
    wait_for(lambda: (notice.update(latest()) or notice.get("state") == state), timeout_s,
             f"an ota notice saying {state}")
    return notice


@pytest.mark.slow
def test_update_resumes_interrupted_download_installs_and_commits_on_health(
        device: Device, repo: TufRepo, server: RepoServer, wheelhouse: Path, broker: LocalBroker,
        sub: Subscriber) -> None:
    rig = device.rig
    bundle = build_bundle(wheelhouse, rig.tmp, version="9.1.0")
    repo.add_release(TARGET, bundle, version="9.1.0", counter=2)
    config_before = rig.config.read_bytes()
    car = Car(rig, LeafBattery(generation="aze0", soh_pct=85, soc_pct=70.0), duration_s=120)
    sup = Supervisor(device.releases, rig.config, rig.tmp / "daemon.log")
    try:
        before = signed(rig, sub.collect(lambda got: any(t == "reading" for t, *_ in got), 20))
        assert before, "the base release never published"
        server.cut_once["stable.tar"] = len(bundle) // 3  # the link dies a third of the way through
        first = device.update()
        assert first.returncode == 1 and "download interrupted" in first.stderr and "resumes" in first.stderr
        assert device.current() == "0.0.1"
        second = device.update(timeout_s=600)
        assert second.returncode == 0, second.stderr + (rig.tmp / "daemon.log").read_text()[-3000:]
        ranges = [r for path, r in server.requests if path.endswith("stable.tar") and r]
        assert len(ranges) == 1, server.requests
        resumed_at = int(ranges[0].removeprefix("bytes=").rstrip("-"))
        assert len(bundle) // 6 < resumed_at <= len(bundle) // 3  # what arrived (whole chunks) was kept
        assert server.target_bytes_sent == len(bundle) - resumed_at, "only the missing part is sent again"
        assert device.current() == "9.1.0" and device.state()["counter"] == 2
        assert "9.1.0" in sup.started
        health = json.loads((rig.tmp / "state" / "health.json").read_text())
        assert health["sw"] == "9.1.0" and health["acked"] is True
        assert rig.config.read_bytes() == config_before
        assert _ota_notice(broker, rig.device, "committed")["version"] == "9.1.0"
        assert (device.releases / "releases" / "0.0.1").exists(), "the previous release is kept for a rollback"
        again = device.update("--check")
        assert again.returncode == 0 and "up_to_date" in again.stderr
        after = signed(rig, sub.collect(lambda got: any(t == "reading" and b"/9.1.0" in p for t, p, _ in got), 30))
        new = [m for m, _ in after if m["sw"] == "battery-gateway/9.1.0"]
        assert new and new[0]["ep"] == before[0][0]["ep"] and new[0]["seq"] > before[-1][0]["seq"], \
            "the new release continues the device's chain: state_dir was kept"
    finally:
        sup.close()
        car.close()


@pytest.mark.slow
def test_release_that_never_becomes_healthy_is_rolled_back(rig: Rig, server: RepoServer, repo: TufRepo,
                                                           wheelhouse: Path, broker: LocalBroker) -> None:
    device = Device(rig, server, repo, probation_s=20)
    bundle = build_hanging_bundle(rig.tmp, version="9.2.0")
    repo.add_release(TARGET, bundle, version="9.2.0", counter=2)
    car = Car(rig, LeafBattery(generation="aze0", soh_pct=85, soc_pct=70.0), duration_s=120)
    sup = Supervisor(device.releases, rig.config, rig.tmp / "daemon.log")
    try:
        out = device.update(timeout_s=600)
        assert out.returncode == 1, out.stderr
        assert "rolled_back" in out.stderr and "not healthy within its probation" in out.stderr
        assert device.current() == "0.0.1"
        state = device.state()
        assert state["counter"] == 0 and state["rolled_back"] == ["9.2.0"] and state["probation"] is None
        deadline = time.monotonic() + 20
        while sup.started[-1] != "0.0.1" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sup.started[-2:] == ["9.2.0", "0.0.1"], sup.started  # the old release runs again
        assert _ota_notice(broker, rig.device, "rolled_back")["offered"] == "9.2.0"
        retry = device.update()  # the timer fires again: the bad release is not installed twice
        assert retry.returncode == 1 and "was rolled back on this device before" in retry.stderr
    finally:
        sup.close()
        car.close()


@pytest.mark.slow
def test_release_that_crash_loops_is_rolled_back_before_its_deadline(
        rig: Rig, server: RepoServer, repo: TufRepo, wheelhouse: Path, broker: LocalBroker) -> None:
    device = Device(rig, server, repo, probation_s=600)
    # the real program, shipped with a damaged forecast prior: every start records itself, then exits 2
    bundle = build_bundle(wheelhouse, rig.tmp, version="9.3.0", damaged_data="soh_prior.json")
    repo.add_release(TARGET, bundle, version="9.3.0", counter=2)
    sup = Supervisor(device.releases, rig.config, rig.tmp / "daemon.log")
    try:
        t0 = time.monotonic()
        out = device.update(timeout_s=600)
        # the supervisor restarts every 0.5 s and the updater looks every second: 3 or a few more starts
        assert out.returncode == 1, out.stderr
        why = r"started [3-9] times without becoming healthy \(ota.max_crashes = 3\)"
        assert re.search(why, out.stderr), out.stderr
        assert time.monotonic() - t0 < 120, "rolled back on the crashes, not on the 600 s deadline"
        assert device.current() == "0.0.1" and device.state()["rolled_back"] == ["9.3.0"]
    finally:
        sup.close()


# -- cmd/ota: a signed command from the backend starts an update; anything else is ignored ----------

def test_signed_ota_command_requests_an_update_and_forged_or_replayed_ones_do_not(
        rig: Rig, broker: LocalBroker, tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    from tests.rig import start_daemon, stop_daemon

    def make_key(name: str) -> Path:
        out = subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(tmp_path / name)],
                             check=True, capture_output=True, text=True).stdout
        (tmp_path / f"{name}.pub").write_text(out[out.index("-----BEGIN PUBLIC KEY"):])
        return tmp_path / name

    backend, attacker = make_key("backend.pem"), make_key("attacker.pem")
    with rig.config.open("a") as f:
        f.write(f'\n[ota]\ncommand_key = "{tmp_path / "backend.pem.pub"}"\n')

    def command(key: Path, device: str) -> bytes:
        out = tmp_path / "cmd.cose"
        subprocess.run([sys.executable, "-m", "gateway", "command", "ota", "--key", str(key), "--device", device,
                        "--out", str(out)], check=True, capture_output=True)
        return out.read_bytes()

    request = rig.tmp / "state" / "ota-command.json"  # what battery-gateway-update.path watches
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="backend", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    proc = start_daemon(rig)
    try:
        wait_for(lambda: "MQTT connected" in daemon_log(rig), 20, "the daemon to connect")
        topic = f"bp/v1/{rig.device}/cmd/ota"
        forged, elsewhere = command(attacker, rig.device), command(backend, "gw-someone-else")
        good = command(backend, rig.device)
        for payload in (forged, elsewhere, good):  # taken in order: when the good one is in, so are the others
            c.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_for(request.exists, 15, "the accepted command's update request")
        accepted = json.loads(request.read_text())["ts"]
        assert accepted == cbor2.loads(cbor2.loads(good).value[2])["ts"], "only the good command was taken"
        c.publish(topic, good, qos=1).wait_for_publish(5)  # recorded and replayed
        c.publish(f"bp/v1/{rig.device}/cmd/passport", b"not even cbor", qos=1).wait_for_publish(5)  # a marker
        wait_for(lambda: "cmd/passport ignored" in daemon_log(rig), 15, "the marker after the replay")
        assert json.loads(request.read_text())["ts"] == accepted, "a replayed command must not start an update"
    finally:
        assert stop_daemon(proc) == 0
        c.loop_stop()
        c.disconnect()
    log = daemon_log(rig)
    assert "cmd/ota ignored: kid does not match" in log  # the first of the minute is logged ...
    assert "commands_ignored 4" in log  # ... every one is counted: forged, misaddressed, replayed, the marker
