"""``battery-gateway import-log``: a Leaf owner's LeafSpy logs become the vehicle's history in the
forecast, marked as imported; ``replay`` recognises such a log instead of failing on it."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.core.qrclaim import decode_qr
from gateway.core.signing import open_envelope
from gateway.sim.battery import LeafBattery
from gateway.sim.ecu import LbcResponder
from tests.conftest import SHARED
from tests.integration import test_inspection_certificate as bay

REAL_LOG = SHARED / "can-data" / "field-captures" / "leafspy-csv-aze0" / "Log_U6064208_200130_a7c06.csv"
HEADER = "Date/Time,Gids,SOC,AHr,Pack T1 C,Pack T2 C,VIN,Hx,SOH,epoch time"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120)


SIM_VIN = LbcResponder.__dataclass_fields__["vin"].default  # the VIN the simulated car answers with


def write_log(path: Path, *, start: float, days: int, ah_from: float, ah_to: float, vin: str = SIM_VIN) -> Path:
    """A LeafSpy-format log: three rows a week, the capacity falling linearly."""
    lines = [HEADER]
    for day in range(0, days + 1, 2):
        t = start + day * 86_400
        ah = ah_from + (ah_to - ah_from) * day / days
        stamp = time.strftime("%d/%m/%Y %H:%M", time.gmtime(t))
        lines.append(f"{stamp},250,{600000 + day},{round(ah * 10_000)},12.5,none,{vin},{ah / 0.79:.2f},"
                     f"{100 * ah / 79:.2f},{int(t)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.captures
def test_a_real_leafspy_log_is_recognised_by_replay_and_imported(tmp_path: Path) -> None:
    if not REAL_LOG.is_file():
        pytest.skip("../shared/can-data is not here")
    replayed = cli("replay", str(REAL_LOG))
    assert replayed.returncode == 2 and "a LeafSpy log (values LeafSpy decoded, not CAN frames)" in replayed.stderr
    assert f"battery-gateway import-log {REAL_LOG} --config PATH" in replayed.stderr
    assert replayed.stderr.strip().count("\n") == 0
    config, _ = bay.setup(tmp_path, "aze0")
    done = cli("import-log", str(REAL_LOG), "--config", str(config))
    assert done.returncode == 0, done.stderr
    # the values the log's rows state (SOURCE.md: a 2013-2017 Leaf, 30 January 2020)
    assert "243 rows (0 unreadable), 2020-01-30 to 2020-01-30: 1 weekly capacity points added" in done.stdout
    assert "capacity 74.05 -> 73.94 Ah, BMS SOH 91.45 -> 91.31 %, Hx 79.14 -> 78.71 %" in done.stdout
    again = cli("import-log", str(REAL_LOG), "--config", str(config))
    assert again.returncode == 0 and "0 weekly capacity points added" in again.stdout
    assert "0 weekly points measured by this device, 1 imported" in again.stdout


def inspect_car(tmp_path: Path, config: Path, port: int) -> dict[str, Any]:
    battery = LeafBattery(generation="aze0", rated_kwh=30.0, rated_ah=79.0, soh_pct=84)
    ecu = bay.Ecu(port, battery, LbcResponder(battery))
    try:
        out = bay.inspect(config, tmp_path / "out")
    finally:
        ecu.close()
    assert out.returncode == 0, out.stderr
    certificate: dict[str, Any] = json.loads((tmp_path / "out" / "certificate.json").read_text())
    return certificate


def test_imported_years_of_this_car_drive_the_forecast_and_say_so_everywhere(tmp_path: Path) -> None:
    config, port = bay.setup(tmp_path, "aze0")
    now = time.time()
    log = write_log(tmp_path / "Log_U0012345_2024.csv", start=now - 730 * 86_400, days=720, ah_from=76.0,
                    ah_to=66.4)
    done = cli("import-log", str(log), "--config", str(config))
    assert done.returncode == 0, done.stderr
    certificate = inspect_car(tmp_path, config, port)
    rate = certificate["forecast"]["rate_factor"]
    assert rate["from_history"] is True  # two years of the vehicle's own fade, not the prior alone
    assert rate["history"]["imported-log"] >= 100 and rate["history"]["device"] == 0
    assert rate["history"]["logs"][0]["rows"] == 361 and "file" not in rate["history"]["logs"][0]  # no VIN tail
    prov = certificate["prov"]["forecast.rate_factor"]
    assert prov["src"] == "imported-log" and "not measured by this device" in prov["note"]
    assert rate["median"] > 1.0  # it faded faster than the prior's reference car
    page = (tmp_path / "out" / "certificate.html").read_text()
    assert f"includes {rate['history']['imported-log']} weekly points from another tool" in page
    qr = re.search(r'id="qr-text">(BP1:[^<]+)<', page).group(1)  # type: ignore[union-attr]
    assert open_envelope(decode_qr(html.unescape(qr))).payload["imp"] == rate["history"]["imported-log"]


def test_a_doctored_log_cannot_buy_a_better_forecast_and_another_cars_log_counts_for_nothing(tmp_path: Path) -> None:
    config, port = bay.setup(tmp_path, "aze0")
    now = time.time()
    # GIVEN a log claiming two years without fade (a seller's wish)
    write_log(tmp_path / "flat.csv", start=now - 730 * 86_400, days=720, ah_from=67.0, ah_to=66.9)
    assert cli("import-log", str(tmp_path / "flat.csv"), "--config", str(config)).returncode == 0
    flat = inspect_car(tmp_path, config, port)["forecast"]["rate_factor"]
    assert flat["median"] == 1.0 and flat["from_history"] is False and flat["history"]["imported-log"] > 0
    # GIVEN another car's log on a fresh device (the car read now has another VIN)
    config2, port2 = bay.setup(tmp_path / "b", "aze0")
    log = write_log(tmp_path / "other.csv", start=now - 730 * 86_400, days=720, ah_from=76.0, ah_to=66.4,
                    vin="SJNFAAZE0U6000001")
    assert cli("import-log", str(log), "--config", str(config2)).returncode == 0
    other = inspect_car(tmp_path / "b", config2, port2)
    assert "history" not in other["forecast"]["rate_factor"] and "forecast.rate_factor" not in other["prov"]


def test_another_vehicles_log_and_a_log_of_two_vehicles_are_refused_storing_nothing(tmp_path: Path) -> None:
    config, _ = bay.setup(tmp_path, "aze0")
    now = time.time()
    first = write_log(tmp_path / "a.csv", start=now - 60 * 86_400, days=30, ah_from=70, ah_to=69.9)
    assert cli("import-log", str(first), "--config", str(config)).returncode == 0
    other = write_log(tmp_path / "b.csv", start=now - 20 * 86_400, days=10, ah_from=60, ah_to=59.9,
                      vin="SJNFAAZE0U6000001")
    refused = cli("import-log", str(other), "--config", str(config))
    assert refused.returncode == 2 and "another vehicle's log" in refused.stderr and "b.csv" in refused.stderr
    mixed = tmp_path / "c.csv"
    mixed.write_text(first.read_text() + "\n".join(other.read_text().splitlines()[1:]) + "\n")
    refused = cli("import-log", str(mixed), "--config", str(config))
    assert refused.returncode == 2 and "rows of 2 vehicles" in refused.stderr
    check = cli("import-log", str(first), "--config", str(config))
    assert "0 weekly capacity points added" in check.stdout
    no_vin = tmp_path / "d.csv"
    no_vin.write_text(first.read_text().replace(SIM_VIN, ""))
    refused = cli("import-log", str(no_vin), "--config", str(config))
    assert refused.returncode == 2 and "no VIN in the log" in refused.stderr
