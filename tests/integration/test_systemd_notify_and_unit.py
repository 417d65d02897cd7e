"""systemd integration: sd_notify READY/WATCHDOG/STOPPING from the real daemon process, and the unit file
checked with Debian's systemd-analyze (works without systemd as PID 1)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from gateway.sim.battery import LeafBattery
from tests.conftest import REPO
from tests.rig import Car, Rig, start_daemon, stop_daemon

UNIT = REPO / "systemd" / "battery-gateway.service"
ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.broker
def test_ready_then_watchdog_pings_from_the_main_loop_then_stopping(rig: Rig, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    car = Car(rig, LeafBattery(generation="aze0"), duration_s=30)
    daemon = start_daemon(rig, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    got: list[str] = []
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                got.append(sock.recv(4096).decode())
        assert stop_daemon(daemon) == 0
        for _ in range(10):
            try:
                got.append(sock.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        car.close()
        sock.close()
    assert got[0] == "READY=1"
    pings = [g for g in got if g.startswith("WATCHDOG=1")]
    assert len(pings) >= 6  # every half WatchdogSec
    assert "STATUS=epoch 1 seq" in pings[-1] and "outbox" in pings[-1]
    assert got[-1] == "STOPPING=1"


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (Debian's systemd package)")
def test_every_unit_verifies_clean_and_the_root_ones_are_hardened(tmp_path: Path) -> None:
    assert ANALYZE is not None
    exe = shutil.which("battery-gateway") or str(Path(REPO / ".venv" / "bin" / "battery-gateway"))
    units = sorted((REPO / "systemd").glob("battery-gateway*"))
    assert {u.name for u in units} == {"battery-gateway.service", "battery-gateway-update.service",
                                       "battery-gateway-update.timer", "battery-gateway-update.path",
                                       "battery-gateway-firstboot.service"}
    firstboot = REPO / "image" / "stage-gateway" / "01-gateway" / "files" / "battery-gateway-firstboot"
    for u in units:  # the image's paths do not exist here: point ExecStart at this checkout's files
        (tmp_path / u.name).write_text(u.read_text().replace("/opt/battery-gateway/current/bin/battery-gateway", exe)
                                       .replace("/usr/local/sbin/battery-gateway-firstboot", str(firstboot)))
    verify = subprocess.run([ANALYZE, "verify", *(str(tmp_path / u.name) for u in units)], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (verify.stdout + verify.stderr).splitlines() if "battery-gateway" in line]
    assert problems == [], problems
    for unit, limit in ((UNIT, 2.0), (REPO / "systemd" / "battery-gateway-firstboot.service", 2.0),
                        (REPO / "systemd" / "battery-gateway-update.service", 4.5)):
        security = subprocess.run([ANALYZE, "security", "--offline=true", str(unit)], capture_output=True,
                                  text=True, timeout=60)
        overall = next(line for line in security.stdout.splitlines() if "Overall exposure level" in line)
        print(overall)  # the scores, in the test log
        assert float(overall.split(":")[1].split()[0]) <= limit, overall
    text = UNIT.read_text()
    for needed in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=",
                   "RestrictAddressFamilies=AF_CAN AF_INET AF_INET6 AF_UNIX AF_NETLINK", "CapabilityBoundingSet=\n",
                   "OnFailure=battery-gateway-update.service"):
        assert needed in text
