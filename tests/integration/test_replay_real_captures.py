"""Replays of the real captures in ../shared/can-data give the documented values (leaf_formulas.md §4)."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.capture_files import CaptureStats
from gateway.app.replay import replay_capture
from gateway.core.config import parse_config
from tests.conftest import capture_path

pytestmark = pytest.mark.captures

CONFIG = parse_config({}, sections=("vehicle", "publish"))


def replay(relative: str, profile: str, *, interval_s: float | None = None) -> tuple[list[dict[str, Any]], Any]:
    config = CONFIG
    if interval_s is not None:
        config = parse_config({"publish": {"reading_interval_s": interval_s}}, sections=("vehicle", "publish"))
    stats = CaptureStats()
    run = replay_capture(str(capture_path(relative)), config=config, profile=profile, bus=None, stats=stats)
    bodies = [m.body for m in run.messages]
    return bodies, run


def last(bodies: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return [b for b in bodies if b["kind"] == kind][-1]


@pytest.mark.parametrize("relative,profile,soh,soc_lo,soc_hi", [
    ("dalathegreat-EV-CANlogs/EV-CANeplus2.log", "leaf-ze1", 91, 93.0, 93.5),
    ("derived-candump/EV-CANeplus2.log.candump.log", "leaf-ze1", 91, 93.0, 93.5),
    ("dalathegreat-EV-CANlogs/env200-2015-with-40kWh-normal-charge-coldbattery-nocooling-nobridge.crtd",
     "leaf-ze1", 94, 58.3, 58.5),
    ("dalathegreat-EV-CANlogs/ZE0w24kWhstock.log", "leaf-ze0", 51, 75.0, 75.2),
    ("damienmaguire-LeafLogs/pumpbrake5timesinpark.csv", "leaf-ze0", 72, 68.7, 68.9),
    ("dalathegreat-EV-CANlogs/AZE0w40kWhv2.48.log", "leaf-aze0", 93, 95.6, 95.8),
    ("dalathegreat-EV-CANlogs/ME0_40kWh_IGN.log", "leaf-aze0", 98, 20.7, 20.9),
    ("dalathegreat-EV-CANlogs/62kWh-Battery-only-EVcan.txt", "leaf-ze1", 96, 86.5, 86.7),
    ("damienmaguire-LeafLogs/leaf_on_wotind_off.txt", "leaf-ze0", 85, 86.6, 87.1),
])
def test_documented_soh_and_soc(relative: str, profile: str, soh: int, soc_lo: float, soc_hi: float) -> None:
    bodies, run = replay(relative, profile)
    reading = last(bodies, "reading")
    assert reading["m"]["bms_soh_pct"] == soh
    assert soc_lo <= reading["m"]["soc_pct"] <= soc_hi
    assert run.counts()["crc"] == 0  # every real 0x1DB/0x1DC/0x55B frame passes the CRC


def test_ze0_stock_is_the_degraded_car_with_six_capacity_bars() -> None:
    bodies, _ = replay("dalathegreat-EV-CANlogs/ZE0w24kWhstock.log", "leaf-ze0")
    passport = last(bodies, "passport")
    assert passport["ext"]["bms_soh_pct"] == 51 and passport["ext"]["capacity_bars"] == 6
    assert last(bodies, "reading")["m"]["pack_v"] == pytest.approx(385.5, abs=1.0)


def test_ze0_wide_open_throttle_current_is_negative_not_a_thousand_amps() -> None:
    bodies, run = replay("damienmaguire-LeafLogs/leaf_on_wotind_off.txt", "leaf-ze0", interval_s=0.1)
    currents = [b["m"]["pack_a"] for b in bodies if b["kind"] == "reading" and "pack_a" in b["m"]]
    assert min(currents) == pytest.approx(-249.0, abs=15.0)  # sampled every 0.1 s
    assert max(currents) < 100
    assert run.parts.tracker.counters.ah_discharged > 0


def test_e_plus_detects_the_62_kwh_pack_and_reports_full_energy() -> None:
    bodies, run = replay("dalathegreat-EV-CANlogs/EV-CANeplus2.log", "leaf-ze1")
    m = last(bodies, "reading")["m"]
    assert m["full_energy_kwh"] == 55.3
    assert run.parts.tracker.pack()[0].energy_kwh == 62.0
    assert run.parts.tracker.generation == "ze1"  # the 51-byte group 0x01 reply


def test_ze1_passport_takes_its_temperature_from_the_group_04_poll() -> None:
    bodies, _ = replay("dalathegreat-EV-CANlogs/EV-CANeplus2.log", "leaf-ze1")
    passport = last(bodies, "passport")
    assert 15 <= passport["doc"]["TemperatureInformation"]["MeasuredTemp"] <= 25
    assert passport["prov"]["TemperatureInformation"]["signal"].startswith("0x79B 21 04")


def test_ze1_without_polls_gives_no_passport_rather_than_an_invented_temperature() -> None:
    bodies, run = replay("dalathegreat-EV-CANlogs/62kWh-Battery-only-EVcan.txt", "leaf-ze1")
    assert not [b for b in bodies if b["kind"] == "passport"]
    assert run.parts.tracker.missing() == ["temperature"]


def polled(relative: str, profile: str = "leaf-ze1") -> tuple[set[float], set[float], Any]:
    bodies, run = replay(relative, profile, interval_s=0.1)
    readings = [b["m"] for b in bodies if b["kind"] == "reading"]
    return ({round(m["hx_pct"], 2) for m in readings if "hx_pct" in m},
            {m["capacity_ah"] for m in readings if "capacity_ah" in m}, run)


@pytest.mark.parametrize("relative,hx,ahr,cells", [
    ("dalathegreat-EV-CANlogs/EV-CANeplus2.log", 86.20, 162.1998, 96),
    ("dalathegreat-EV-CANlogs/EV-CANeplus3.log", 86.18, 162.1998, 96),
    ("dalathegreat-EV-CANlogs/env200-2015-with-40kWh-normal-charge-coldbattery-nocooling-nobridge.crtd",
     86.19, 108.7675, 96),
])
def test_someone_elses_polls_are_reassembled_to_the_documented_values(relative: str, hx: float, ahr: float,
                                                                       cells: int) -> None:
    hx_seen, ahr_seen, run = polled(relative)
    assert hx in hx_seen
    assert ahr_seen == {ahr}
    assert len(run.parts.tracker.arrays["cells_v"]) == cells
    assert all(3.0 < v < 4.3 for v in run.parts.tracker.arrays["cells_v"])
    assert run.counts()["isotp_sequence"] == 0


def test_kia_battery_gives_a_passport_from_uds_dids_0101_and_0105_with_a_data_only_profile() -> None:
    bodies, run = replay("dalathegreat-EV-CANlogs/37501-Q4151+BatteryEmulator.csv", "kia-eniro-64")
    sohs = {b["m"]["bms_soh_pct"] for b in bodies if b["kind"] == "reading" and "bms_soh_pct" in b["m"]}
    assert sohs == {100.0}
    assert run.counts()["diag:bms-did-0105-soh"] == 3 and run.counts()["diag:bms-did-0101"] == 3
    passport = last(bodies, "passport")
    assert passport["doc"]["StateOfCharge"]["StateOfChargeValue"] == 53.0
    assert passport["doc"]["TemperatureInformation"]["MeasuredTemp"] == 11.0  # mean of 10 and 12 degC
    assert passport["ext"]["bms_soh_pct"] == 100.0 and passport["ext"]["rated_energy_kwh"] == 64.0
    assert passport["prov"]["StateOfCharge"]["signal"] == "0x7E4 22 01 01 (bms-did-0101)"


def test_corrupted_reassembly_gives_no_hx_at_all() -> None:
    # bus-2 overruns duplicate 0x7BB frames and drop others: naive reassembly gives Hx 622 %
    hx_seen, ahr_seen, run = polled("dalathegreat-EV-CANlogs/env200-2015-with-40kWh-startup-nobridge.crtd")
    assert hx_seen == set() and ahr_seen == set()
    assert run.counts()["isotp_sequence"] + run.counts()["isotp_unexpected"] > 0


def test_env200_crtd_passport_carries_94_pct_and_the_40_kwh_pack() -> None:
    bodies, _ = replay("dalathegreat-EV-CANlogs/env200-2015-with-40kWh-normal-charge-coldbattery-nocooling-"
                       "nobridge.crtd", "leaf-aze0")
    passport = last(bodies, "passport")
    assert passport["ext"]["bms_soh_pct"] == 94
    assert passport["ext"]["rated_energy_kwh"] == 40.0 and passport["ext"]["rated_source"] == "detected"
    assert passport["doc"]["RemainingEnergy"]["RemainingEnergyValue"] == 37.8


def test_backward_timestamps_do_not_lose_frames() -> None:
    # pumpbrake jumps back 581.8 s after frame 45; Kia GVRET steps back 77 times
    bodies, _ = replay("damienmaguire-LeafLogs/pumpbrake5timesinpark.csv", "leaf-ze0", interval_s=1)
    readings = [b for b in bodies if b["kind"] == "reading"]
    assert len(readings) >= 9  # about 9.5 s of real traffic, not collapsed into one instant
    assert all(b["ts"] <= a["ts"] + 1100 for a, b in pairwise(readings))


def test_replay_cli_prints_json_lines_with_hex_bytes() -> None:
    path = capture_path("dalathegreat-EV-CANlogs/AZE0w40kWhv2.48.log")
    out = subprocess.run([sys.executable, "-m", "gateway", "replay", str(path), "--profile", "leaf-aze0", "--json"],
                         capture_output=True, text=True, check=True, timeout=60)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert {b["kind"] for b in lines} == {"reading", "passport"}
    assert lines[-1]["kind"] == "passport" and lines[-1]["ext"]["bms_soh_pct"] == 93
    assert lines[0]["prev"] == "00" * 32
    assert "battery frames" in out.stderr


def test_replay_of_a_foreign_car_decodes_nothing_and_says_so(tmp_path: Path) -> None:
    path = capture_path("dalathegreat-EV-CANlogs/ZE1-chademo-starting-and-charging.csv")
    out = subprocess.run([sys.executable, "-m", "gateway", "replay", str(path), "--profile", "leaf-ze1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == ""
    assert "0 battery frames" in out.stderr


def test_replay_summarises_batches_for_people(tmp_path: Path) -> None:
    path = capture_path("dalathegreat-EV-CANlogs/AZE0w40kWhv2.48.log")
    config = tmp_path / "replay.toml"  # a file with only [vehicle] and [publish] is enough
    config.write_text('[vehicle]\nprofile = "leaf-aze0"\n[publish]\nbatch = 3\nreading_interval_s = 2\n')
    out = subprocess.run([sys.executable, "-m", "gateway", "replay", str(path), "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "3 readings, last: SoC 95.7 %" in out.stdout
    assert "(final)  BMS SOH 93 %" in out.stdout
