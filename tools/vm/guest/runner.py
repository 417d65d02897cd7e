#!/usr/bin/env python3
"""In the VM: the scenarios of ``make vm-test``, on the real system (systemd as PID 1, systemd-networkd,
SocketCAN, the kernel's ISO-TP, mosquitto). Each prints ``VMTEST RESULT name PASS|FAIL seconds detail``
on the serial console; ``VMTEST END`` last. Standard library only (the system's Python 3.11).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

GW = "/opt/battery-gateway/current/bin/battery-gateway"
STATE = Path("/var/lib/battery-gateway")
OTA_STATE = Path("/var/lib/battery-gateway-ota/state.json")
BOOT = Path("/boot/firmware")
PAYLOAD = Path("/opt/vmtest")
VMTEST_STATE = Path("/var/lib/vmtest")  # kept from one boot to the next
SERIAL = "230UK1192E001482"  # what the simulated battery ECU answers in group 0x84
facts: dict[str, object] = {}
SCENARIOS: dict[str, Callable[[], None]] = {}  # in the order they run


def sh(*argv: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout)[-300:]}")
    return done.stdout


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except (OSError, ValueError, subprocess.SubprocessError, AssertionError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.5)


def journal(unit: str) -> str:
    return sh("journalctl", "-u", unit, "--no-pager", "-o", "cat", check=False)


def restarts(unit: str = "battery-gateway.service") -> int:
    return int(sh("systemctl", "show", "-p", "NRestarts", "--value", unit).strip() or 0)


def active(unit: str) -> bool:
    return sh("systemctl", "is-active", unit, check=False).strip() == "active"


def verify(seconds: float) -> tuple[list[dict[str, object]], str]:
    """What the backend receives on the VM's broker for ``seconds``: accepted payloads and verify's report."""
    trust = Path("/run/vmtest-trust")
    trust.mkdir(exist_ok=True)
    device = str(facts["device"])
    (trust / f"{device}.pem").write_text((BOOT / "battery-gateway" / f"{device}.pub").read_text())
    done = subprocess.run([GW, "verify", "--mqtt", "127.0.0.1:1883", "--trust", str(trust), "--duration",
                           str(seconds)], capture_output=True, text=True, timeout=seconds + 60, check=False)
    bodies = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        raise AssertionError(f"verify exited {done.returncode}: {done.stderr[-400:]}")
    return bodies, done.stderr


def scenario(name: str, *units: str) -> Callable[[Callable[[], str]], Callable[[], None]]:
    """A scenario: its return value is the detail of a PASS; any exception is a FAIL, followed by the end of
    the journal of ``units`` (what a developer needs to see why)."""
    def wrap(fn: Callable[[], str]) -> Callable[[], None]:
        def run() -> None:
            t0 = time.monotonic()
            try:
                detail, ok = fn(), True
            except Exception as exc:  # every failure is a result, never the end of the run
                detail, ok = f"{type(exc).__name__}: {exc}", False
            detail = " ".join(str(detail).split())[:600]
            print(f"VMTEST RESULT {name} {'PASS' if ok else 'FAIL'} {time.monotonic() - t0:.0f} {detail}", flush=True)
            for unit in units if not ok else ():
                for line in journal(unit).splitlines()[-25:]:
                    print(f"VMTEST LOG {unit}: {line[:300]}", flush=True)
        SCENARIOS[name] = run
        return run
    return wrap


@scenario("boot")
def boot() -> str:
    wait_for(lambda: "Startup finished" in sh("systemd-analyze", "time", check=False), 120, "the boot to finish")
    return sh("systemd-analyze", "time").splitlines()[0]


@scenario("networkd-brings-up-can0", "systemd-networkd.service")
def networkd_can0() -> str:
    wait_for(lambda: "UP" in json.loads(sh("ip", "-j", "link", "show", "can0"))[0]["flags"], 60, "can0 up")
    link = json.loads(sh("ip", "-j", "-d", "link", "show", "can0"))[0]
    status = sh("networkctl", "status", "can0", "--no-pager", check=False)
    assert link["linkinfo"]["info_kind"] == "vcan", link
    assert "/etc/systemd/network/80-can0.network" in status, status
    state = re.search(r"State: (\S+ \(\S+\))", status)
    return f"can0 {link['linkinfo']['info_kind']} UP, network file 80-can0.network, {state.group(1) if state else '?'}"


def device_id() -> str:
    return next(line.split(": ")[1] for line in (STATE / "device.txt").read_text().splitlines()
                if line.startswith("device id: "))


def owner_and_mode(path: Path) -> tuple[str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)


@scenario("first-boot-without-config", "battery-gateway-firstboot.service")
def first_boot_without_config() -> str:
    # vmtest.service runs after the first-boot unit: it has finished
    result = sh("systemctl", "show", "-p", "Result", "--value", "battery-gateway-firstboot.service").strip()
    assert result == "success", result
    device = device_id()
    assert owner_and_mode(STATE / "device-key.pem") == ("battery-gateway", 0o600)
    assert "BEGIN CERTIFICATE REQUEST" in (BOOT / "battery-gateway" / f"{device}.csr").read_text()
    assert not Path("/etc/battery-gateway/gateway.toml").exists()
    assert not Path("/var/lib/battery-gateway-provision/provisioned").exists()
    assert "not provisioned yet" in journal("battery-gateway-firstboot.service")
    assert not active("battery-gateway.service"), "the daemon must wait for a config"
    (VMTEST_STATE / "device").write_text(device)
    return f"device {device}: key 0600 battery-gateway and CSR made, not provisioned, the daemon waits"


@scenario("first-boot-provisions-once", "battery-gateway-firstboot.service", "battery-gateway.service")
def first_boot() -> str:
    wait_for(lambda: (STATE / "device.txt").exists() and Path("/etc/battery-gateway/gateway.toml").exists(), 300,
             "first boot to install the config")
    device = facts["device"] = device_id()
    earlier = VMTEST_STATE / "device"
    assert not earlier.exists() or earlier.read_text() == device, "the device identity changed between boots"
    # what the daemon reads is the service user's, even after systemd gave the directory to root for this unit
    for name in ("device-key.pem", "tls-key.pem"):
        assert owner_and_mode(STATE / name) == ("battery-gateway", 0o600), name
    assert owner_and_mode(STATE)[0] == "battery-gateway"
    assert "BEGIN CERTIFICATE REQUEST" in (BOOT / "battery-gateway" / f"{device}.csr").read_text()
    installed = Path("/etc/battery-gateway/gateway.toml").read_text()
    assert f'id = "{device}"' in installed
    assert (BOOT / "battery-gateway.toml.applied").exists()
    assert Path("/var/lib/battery-gateway-provision/provisioned").exists()
    result = sh("systemctl", "show", "-p", "Result", "--value", "battery-gateway-firstboot.service").strip()
    assert result == "success", result
    wait_for(lambda: active("battery-gateway.service"), 120, "the daemon to start after provisioning")
    # once: a config someone puts on the boot partition later is never read (the unit does not even start)
    planted = BOOT / "battery-gateway.toml"
    planted.write_text(installed.replace("127.0.0.1:8080", "evil.example"))
    try:
        sh("systemctl", "restart", "battery-gateway-firstboot.service")
        condition = sh("systemctl", "show", "-p", "ConditionResult", "--value", "battery-gateway-firstboot.service")
        assert condition.strip() == "no", condition
        assert Path("/etc/battery-gateway/gateway.toml").read_text() == installed and planted.exists()
    finally:
        planted.unlink()
    boots = "second boot" if earlier.exists() else "first boot"
    return (f"device {device} provisioned at its {boots}: keys 0600 battery-gateway, config checked and installed, "
            "the daemon started; a later config on the boot partition is not read")


@scenario("daemon-on-socketcan", "battery-gateway.service", "vm-ecu.service")
def daemon() -> str:
    sh("systemd-run", "--unit=vm-ecu", GW, "simulate", "--interface", "socketcan", "--channel", "can0",
       "--generation", "aze0", "--soh", "85", "--duration", "3000")
    bodies, report = verify(30)
    readings = [b for b in bodies if b["kind"] == "reading"]
    passports = [b for b in bodies if b["kind"] == "passport"]
    assert len(readings) >= 5 and passports, report
    polled = [b["m"] for b in readings if "hx_pct" in b["m"]]  # type: ignore[operator]
    assert polled, "no polled value in any reading"
    m = polled[-1]
    assert m["hx_pct"] == 85.0 and abs(m["capacity_ah"] - 79.0 * 0.85) < 0.01, m  # type: ignore[index]
    assert any(b.get("bat") == SERIAL for b in passports + readings), "pack serial from group 0x84 missing"
    assert "user-space ISO-TP stack instead" not in journal("battery-gateway.service")
    facts["ep"], facts["seq"] = readings[-1]["ep"], max(int(b["seq"]) for b in bodies)  # type: ignore[arg-type]
    return (f"{len(readings)} readings, {len(passports)} passports verified; Hx {m['hx_pct']}, AHr "  # type: ignore[index]
            f"{m['capacity_ah']} as the simulator; polled through the kernel's ISO-TP; "  # type: ignore[index]
            f"daemon RSS {rss_mb('battery-gateway.service'):.1f} MB")


@scenario("sigkill-restart-same-epoch", "battery-gateway.service")
def sigkill() -> str:
    before = restarts()
    sh("systemctl", "kill", "-s", "KILL", "battery-gateway.service")
    wait_for(lambda: restarts() > before and active("battery-gateway.service"), 60, "systemd to restart it")
    bodies, _ = verify(15)
    after = [b for b in bodies if b["kind"] == "reading"]
    assert after and all(b["ep"] == facts["ep"] for b in after), (facts, after[:1])
    assert min(int(b["seq"]) for b in after) > int(facts["seq"]), "the chain went back"  # type: ignore[arg-type]
    facts["seq"] = max(int(b["seq"]) for b in bodies)  # type: ignore[arg-type]
    return f"restarted by systemd (NRestarts {restarts()}), chain continues in epoch {facts['ep']}"


@scenario("watchdog-restarts-a-hung-loop", "battery-gateway.service")
def watchdog() -> str:
    before, fired = restarts(), journal("battery-gateway.service").count("Watchdog timeout")
    sh("systemctl", "kill", "-s", "STOP", "--kill-who=main", "battery-gateway.service")
    wait_for(lambda: restarts() > before and active("battery-gateway.service"), 150, "the watchdog to restart it")
    assert journal("battery-gateway.service").count("Watchdog timeout") == fired + 1
    return f"WatchdogSec fired on the stopped main loop; restarted (NRestarts {restarts()})"


@scenario("isotp-kernel-and-user-space")
def isotp() -> str:
    sh("ip", "link", "add", "vcan1", "type", "vcan")
    sh("ip", "link", "set", "vcan1", "up")
    got = json.loads(sh("/opt/battery-gateway/current/bin/python", str(PAYLOAD / "isotp_check.py"), "vcan1",
                        timeout=300))
    expected = {"none": ("ok", "6101"), "drop": ("error", "isotp_sequence"), "dup": ("error", "isotp_sequence"),
                "silent": ("timeout", ""), "nrc": ("ok", "7f2112"), "pending": ("ok", "6101")}
    flow_control = got.pop("bystander")
    assert flow_control == 1, f"{flow_control} flow-control frames for another tester's poll: ours answered too"
    for transport, outcomes in got.items():
        for fault, (kind, start) in expected.items():
            outcome = outcomes[fault]
            assert outcome[0] == kind and outcome[-1].startswith(start), (transport, fault, outcome)
    ok = got["kernel"]["none"][1]
    return (f"kernel and user space alike: group 0x01 ({len(ok) // 2} B), dropped/duplicated CF, silence, NRC, "
            "response pending; an idle kernel client keeps quiet while another tester polls")


def _ota_notice(device: str) -> dict[str, object]:
    out = sh("mosquitto_sub", "-h", "127.0.0.1", "-t", f"bp/v1/{device}/ota", "-C", "1", "-W", "5", check=False)
    return json.loads(out) if out.strip() else {}


def _ota_state() -> dict[str, object]:
    return dict(json.loads(OTA_STATE.read_text()))


@scenario("ota-update-under-systemd", "battery-gateway-update.service", "battery-gateway.service")
def ota_update() -> str:
    device = str(facts["device"])
    repo = PAYLOAD / "repo"
    (repo / "current").symlink_to("a")
    sh("systemd-run", "--unit=vm-tuf", "/usr/bin/python3", "-m", "http.server", "8080", "--bind", "127.0.0.1",
       "--directory", str(repo / "current"))
    wait_for(lambda: sh("python3", "-c", "import urllib.request; urllib.request.urlopen("
                        "'http://127.0.0.1:8080/metadata/timestamp.json')") == "", 30, "the TUF server")
    sh("sh", "-c", f"{GW} command ota --key {PAYLOAD / 'backend-command.pem'} --device {device} --out - "
       f"| mosquitto_pub -h 127.0.0.1 -t bp/v1/{device}/cmd/ota -q 1 -s")
    wait_for(lambda: (STATE / "ota-command.json").exists(), 60, "the daemon to accept cmd/ota")
    t0 = time.monotonic()
    wait_for(lambda: os.readlink("/opt/battery-gateway/current").endswith("1.1.0") and _ota_state()["counter"] == 2
             and _ota_state()["probation"] is None, 1500, "1.1.0 installed, on probation and committed")
    took = time.monotonic() - t0
    wait_for(lambda: _ota_notice(device).get("state") == "committed", 60, "the committed notice on .../ota")
    assert "ota checking" in journal("battery-gateway-update.service"), "the path unit did not start the updater"
    bodies, _ = verify(15)
    new = [b for b in bodies if b["kind"] == "reading" and b["sw"] == "battery-gateway/1.1.0"]
    assert new and new[0]["ep"] == facts["ep"], "the new release must continue the device's chain"
    return f"cmd/ota -> path unit -> updater: 1.1.0 installed, healthy and committed in {took:.0f} s; same epoch"


@scenario("ota-crash-loop-rolled-back-never-retried", "battery-gateway-update.service", "battery-gateway.service")
def ota_rollback() -> str:
    repo = PAYLOAD / "repo"
    (repo / "current").unlink()
    (repo / "current").symlink_to("b")  # the repository now offers 1.2.0, which crashes at every start
    sh("systemctl", "start", "--no-block", "battery-gateway-update.service")
    wait_for(lambda: "ota rolled_back" in journal("battery-gateway-update.service"), 1500, "the rollback")
    assert "1.2.0" in _ota_state()["rolled_back"] and _ota_state()["probation"] is None  # type: ignore[operator]
    assert os.readlink("/opt/battery-gateway/current").endswith("1.1.0")
    rolled = next(line for line in journal("battery-gateway-update.service").splitlines() if "ota rolled_back" in line)
    assert "without becoming healthy" in rolled, rolled
    wait_for(lambda: active("battery-gateway.service"), 120, "1.1.0 to run again")
    wait_for(lambda: sh("systemctl", "show", "-p", "ActiveState", "--value", "battery-gateway-update.service")
             .strip() in ("inactive", "failed"), 120, "the updater to finish")
    sh("systemctl", "start", "battery-gateway-update.service", check=False, timeout=600)  # the timer fires again
    assert "was rolled back on this device before" in journal("battery-gateway-update.service")
    assert os.readlink("/opt/battery-gateway/current").endswith("1.1.0")
    timers = sh("systemctl", "list-timers", "--all", "--no-pager", "battery-gateway-update.timer")
    assert "battery-gateway-update.timer" in timers, timers
    reason = rolled.split("reason ", 1)[-1]
    return f"1.2.0 rolled back to 1.1.0 ({reason}), refused when offered again; timer listed"


@scenario("soh-model-on-device")
def soh_model() -> str:
    """The shipped TensorFlow Lite model through the gateway's adapter, in the installed release."""
    out = sh("/opt/battery-gateway/current/bin/python", "-c", MODEL_CALL, timeout=600)
    got = json.loads(out)
    assert got["runtime"] in ("tflite_runtime", "ai_edge_litert") and got["worst"] < 1e-4, got
    return (f"{got['machine']} {got['runtime']}: one call {got['first_ms']:.1f} ms (model loaded and checked "
            f"against its SHA-256), then {got['per_call_us']:.0f} us per call; largest difference from the "
            f"reference outputs {got['worst']:.1e}")


MODEL_CALL = """
import json, math, platform, sys, time
from gateway.adapters.tflite import TfliteSegmentModel
t0 = time.perf_counter()
model = TfliteSegmentModel()
ref = model.manifest["reference"]
mu, sigma = model.predict(ref["inputs"][0])
first = time.perf_counter() - t0
worst = max(max(abs(m - r[0]), abs(math.log(s) - r[1]))
            for x, r in zip(ref["inputs"], ref["outputs"]) for m, s in [model.predict(x)])
t0 = time.perf_counter()
for _ in range(200):
    model.predict(ref["inputs"][0])
runtime = "tflite_runtime" if "tflite_runtime" in sys.modules else "ai_edge_litert"
print(json.dumps({"machine": platform.machine(), "runtime": runtime, "first_ms": first * 1e3,
                  "per_call_us": (time.perf_counter() - t0) / 200 * 1e6, "worst": worst}))
"""


@scenario("security-of-every-service")
def security() -> str:
    limits = {"battery-gateway.service": 2.0, "battery-gateway-firstboot.service": 2.0,
              "battery-gateway-update.service": 4.5}
    scores = {}
    for unit, limit in limits.items():
        out = sh("systemd-analyze", "security", "--no-pager", unit, check=False)
        found = re.search(r"Overall exposure level for \S+: ([\d.]+) (\S+)", out)
        assert found, out[-300:]
        scores[unit] = f"{found.group(1)} {found.group(2)}"
        assert float(found.group(1)) <= limit, (unit, scores[unit])
    return "; ".join(f"{u} {s}" for u, s in scores.items())


def rss_mb(unit: str) -> float:
    pid = sh("systemctl", "show", "-p", "MainPID", "--value", unit).strip()
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def main() -> None:
    VMTEST_STATE.mkdir(exist_ok=True)
    boot_file = VMTEST_STATE / "boots"
    n = int(boot_file.read_text()) + 1 if boot_file.exists() else 1
    boot_file.write_text(str(n))
    plan = (PAYLOAD / "scenarios").read_text().splitlines()  # the host's plan: a line of scenarios a boot
    print(f"VMTEST START boot {n}, uptime {Path('/proc/uptime').read_text().split()[0]} s", flush=True)
    for name in plan[n - 1].split() if n <= len(plan) else ():
        SCENARIOS[name]()
    print("VMTEST END", flush=True)


if __name__ == "__main__":
    main()
