"""Field captures not seen before (../shared/can-data/field-captures): upgraded packs, the ZE1 group 0x06
layout and a poll reply the capture cuts off give the values derived from the data (docs/profiles.md).

Derived facts (leaf_formulas.md and the frames themselves):
- ZE0w30kWhv2.48.log: a ZE0 behind a CAN bridge; 0x5BC in the ZE0 layout (d[2] = 0x2C: capacity bars 12 in
  the low nibble, the high nibble a constant 2), no 0x59E, SOH 90 %, 220 GIDs at 62.6 % SoC.
- QC_ZE0_30kWhABB_SUCCESS_PER.txt (USB-CAN text): the same kind of car quick charging at about +123 A, SoC
  31.9 -> 34.0 %, GIDs 92 -> 102, SOH 99 %, 12 capacity bars: a straight line through (SoC, GIDs) reaches
  0 GIDs at 8-9 % SoC and 358-370 GIDs at 100 % (a new 30 kWh pack: 356-363).
- ZE1 group 0x06: 24 payload bytes, one bit per cell in bytes 0..11 (96 cells), bytes 12..23 all 0xFF filler.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.capture_files import CaptureStats
from gateway.app.replay import ReplayRun, replay_capture
from gateway.app.wiring import load_profile
from gateway.core.battery import MAX_PLAUSIBLE_SOH_PCT, BatteryTracker
from gateway.core.config import parse_config
from gateway.core.decoding import Decoder
from gateway.errors import DecodeError
from gateway.model import Frame
from tests.conftest import capture_path

pytestmark = pytest.mark.captures

ZE0_30 = "field-captures/leaf-ze0-30kwh-upgrade/ZE0w30kWhv2.48.log"
ZE0_30_QC = "field-captures/leaf-ze0-30kwh-qc-usbcan/QC_ZE0_30kWhABB_SUCCESS_PER.txt"
ECO = "field-captures/leaf-ze1-62-eplus-eco/EV-CANepluseco.log"
STARTUP = "field-captures/leaf-ze1-62-eplus-startup-ign/EV-CANeplusstartup_ign.log"
ENV200 = "dalathegreat-EV-CANlogs/env200-2015-with-40kWh-normal-charge-coldbattery-nocooling-nobridge.crtd"


def _replay(relative: str, profile: str, rated_capacity_ah: float | None = None,
            interval_s: float = 60.0) -> tuple[list[dict[str, Any]], ReplayRun]:
    vehicle: dict[str, Any] = {} if rated_capacity_ah is None else {"rated_capacity_ah": rated_capacity_ah}
    config = parse_config({"vehicle": vehicle, "publish": {"reading_interval_s": interval_s}},
                          sections=("vehicle", "publish"))
    run = replay_capture(str(capture_path(relative)), config=config, profile=profile, bus=None, stats=CaptureStats())
    return [m.body for m in run.messages], run


replay = functools.cache(_replay)  # one replay per capture, profile and config for the whole module


def passports(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in bodies if b["kind"] == "passport"]


def readings(bodies: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for b in bodies:
        if b["kind"] == "reading":
            yield b["m"]
        elif b["kind"] == "batch":
            cols = b["cols"]
            for row in b["rows"]:
                yield {c: v * r for c, r, v in zip(cols, b["res"], row[1:], strict=True) if v is not None}


def assert_never_smaller_than_reported(tracker: BatteryTracker) -> None:
    pack, _ = tracker.pack()
    full_kwh = tracker.reported_full_kwh()
    assert full_kwh is not None
    assert pack.energy_kwh * MAX_PLAUSIBLE_SOH_PCT / 100 >= full_kwh


def test_ze0_with_a_30_kwh_pack_is_rated_30_kwh_from_its_gids_soc_and_soh() -> None:
    bodies, run = replay(ZE0_30, "leaf-ze0")
    found = passports(bodies)
    assert found, "a ZE0 passport"
    for passport in found:  # the first passport too: it waits for valid GIDs
        ext = passport["ext"]
        assert (ext["rated_energy_kwh"], ext["rated_capacity_ah"], ext["rated_source"]) == (30.0, 79.0, "detected")
        assert ext["bms_soh_pct"] == 90 and ext["capacity_bars"] == 12
    tracker = run.parts.tracker
    assert tracker.values["gids"] == 220 and tracker.values["soc_pct"] == 62.6
    assert tracker.reported_full_kwh() == pytest.approx(29.65, abs=0.05)  # 220 GIDs * 92 / 54.6 * 80 Wh
    assert_never_smaller_than_reported(tracker)


def test_leaf_aze0_on_the_upgraded_ze0_reads_the_ze0_bars_and_publishes_a_passport() -> None:
    bodies, run = replay(ZE0_30, "leaf-aze0", interval_s=1.0)
    assert run.parts.tracker.ecu_layout == "ze0"  # no 0x59E: the bars are in the low nibble
    bars = {m["capacity_bars"] for m in readings(bodies) if "capacity_bars" in m}
    assert bars == {12.0}, "never the high nibble's 2 bars"
    found = passports(bodies)
    assert found and found[-1]["ext"]["capacity_bars"] == 12
    assert found[-1]["ext"]["rated_energy_kwh"] == 30.0 and "RemainingEnergy" not in found[-1]["doc"]


@pytest.mark.parametrize("configured_ah,expected", [
    (79.0, (30.0, 79.0, "config")),  # was 24 kWh / 79 Ah
    (66.0, (30.0, 79.0, "detected-over-config")),  # 24 kWh cannot hold the ~29.7 kWh the car reports
])
def test_a_configured_capacity_maps_to_a_consistent_pack_never_smaller_than_reported(
        configured_ah: float, expected: tuple[float, float, str]) -> None:
    bodies, run = replay(ZE0_30, "leaf-ze0", rated_capacity_ah=configured_ah)
    ext = passports(bodies)[-1]["ext"]
    assert (ext["rated_energy_kwh"], ext["rated_capacity_ah"], ext["rated_source"]) == expected
    assert_never_smaller_than_reported(run.parts.tracker)


def _usbcan_frames(path: Path) -> Iterator[Frame]:
    """The USB-CAN tool's text export (NUL between columns, wall-clock ``HH:MM:SS:mmm``); test-only."""
    for line in path.read_bytes().replace(b"\0", b"").decode("ascii", "replace").splitlines()[1:]:
        cols = line.split()
        if len(cols) < 9 or cols[1] != "Receive":
            continue
        h, m, s, ms = (int(x) for x in cols[2].split(":"))
        n = int(cols[8])
        yield Frame(h * 3600 + m * 60 + s + ms / 1000, int(cols[7], 16), bytes.fromhex("".join(cols[9:9 + n])))


def _tracked(path: Path, profile: str) -> tuple[BatteryTracker, list[tuple[float, float]]]:
    p, dbs = load_profile(profile)
    decoder, tracker = Decoder(p, dbs), BatteryTracker(p)
    soc_gids: list[tuple[float, float]] = []
    for frame in _usbcan_frames(path):
        if frame.can_id not in decoder.frame_ids:
            continue
        try:
            tracker.update(frame.ts, decoder.decode(frame))
        except DecodeError:
            continue
        if frame.can_id == 0x5BC and {"gids", "soc_pct"} <= set(tracker.values):
            soc_gids.append((tracker.values["soc_pct"], tracker.values["gids"]))
    return tracker, soc_gids


@pytest.mark.parametrize("profile", ["leaf-ze0", "leaf-aze0"])
def test_ze0_quick_charge_detects_the_30_kwh_pack_and_gids_reach_zero_near_8_pct(profile: str) -> None:
    tracker, soc_gids = _tracked(capture_path(ZE0_30_QC), profile)
    assert tracker.pack() == (tracker.profile.packs[1], "detected") and tracker.pack()[0].energy_kwh == 30.0
    assert tracker.values["bms_soh_pct"] == 99 and tracker.values["capacity_bars"] == 12
    assert tracker.values["pack_a"] > 100  # quick charging
    n = len(soc_gids)
    mean_soc, mean_gids = sum(s for s, _ in soc_gids) / n, sum(g for _, g in soc_gids) / n
    slope = (sum((s - mean_soc) * (g - mean_gids) for s, g in soc_gids)
             / sum((s - mean_soc) ** 2 for s, _ in soc_gids))
    zero_soc = mean_soc - mean_gids / slope
    assert abs(zero_soc - tracker.profile.gids_zero_soc_pct) < 1.5  # 8-9 % over 2 SoC points of charge
    full_gids = mean_gids + (100 - mean_soc) * slope  # new packs: 24 kWh 281, 30 kWh 356-363, 40 kWh 502 GIDs
    assert full_gids == pytest.approx(360, abs=20)


def test_ze1_group_06_counts_one_bit_per_cell_and_not_the_ff_filler() -> None:
    bodies, run = replay(ECO, "leaf-ze1", interval_s=1.0)
    seen = {m["balancing_cells"] for m in readings(bodies) if "balancing_cells" in m}
    assert seen == {42.0, 48.0, 41.0}  # 0x55 with 6-7 bits clear, and 0xAA: never 69..72
    assert run.parts.tracker.values["balancing_cells"] == 41
    assert run.counts()["diag:lbc-group-06-shunts"] == 8


def test_ze1_40_kwh_pack_with_zero_shunt_bytes_balances_no_cell() -> None:
    _, run = replay(ENV200, "leaf-ze1")
    assert run.parts.tracker.values["balancing_cells"] == 0  # 12 x 0x00 then 12 x 0xFF filler (was 48)


def test_a_poll_reply_cut_off_by_the_end_of_the_capture_is_counted_and_summarised() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "replay", str(capture_path(ECO)), "--profile", "leaf-ze1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    summary = next(line for line in out.stderr.splitlines() if line.startswith("replay: "))
    assert "isotp_incomplete 1" in summary  # group 0x02: 69 of 198 bytes when the capture ends
    assert "diag:lbc-group-02-cells 7" in summary  # the 7 complete ones of 8 requests
    assert "passport" in out.stdout.lower()


def test_ze1_wake_up_without_polls_detects_the_62_kwh_pack_and_cuts_nothing_off() -> None:
    bodies, run = replay(STARTUP, "leaf-ze1")
    tracker = run.parts.tracker
    assert tracker.pack() == (tracker.profile.packs[1], "detected")  # 0x59E 55.3 kWh at SOH 91 %
    assert run.counts()["isotp_incomplete"] == 0 and "balancing_cells" not in tracker.values
    assert run.missing() == ["temperature"] and not passports(bodies)  # no group 0x04 poll in this capture


@pytest.mark.parametrize("relative,profile,energy_kwh", [
    ("dalathegreat-EV-CANlogs/ZE0w24kWhstock.log", "leaf-ze0", 24.0),
    ("damienmaguire-LeafLogs/leaf_on_wotind_off.txt", "leaf-ze0", 24.0),
    ("damienmaguire-LeafLogs/pumpbrake5timesinpark.csv", "leaf-ze0", 24.0),
    ("field-captures/leaf-ze0-shift-pdn/ZE0_Shift_P_D_ECO_N.log", "leaf-ze0", 24.0),
    ("dalathegreat-EV-CANlogs/AZE0w40kWhv2.48.log", "leaf-aze0", 40.0),
    ("dalathegreat-EV-CANlogs/ME0_40kWh_IGN.log", "leaf-aze0", 40.0),
    (ENV200, "leaf-ze1", 40.0),
    ("dalathegreat-EV-CANlogs/EV-CANeplus2.log", "leaf-ze1", 62.0),
])
def test_older_captures_keep_their_packs(relative: str, profile: str, energy_kwh: float) -> None:
    bodies, run = replay(relative, profile)
    assert {p["ext"]["rated_energy_kwh"] for p in passports(bodies)} == {energy_kwh}
    assert run.parts.tracker.pack()[1] == "detected"
    assert_never_smaller_than_reported(run.parts.tracker)
