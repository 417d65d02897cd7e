"""The gateway's own SoH from days of driving and charging in a capture, through the real ``replay``
command: a simulated Leaf whose BMS reports no SOH, with a known true capacity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.sim.battery import LeafBattery


def _write_capture(path: Path, *, soh_pct: int, days: int) -> None:
    """Per day: a one-hour drive (varying discharge), a rest with no frames, a 16 A charge to ~90 %."""
    bat = LeafBattery(generation="aze0", soh_pct=soh_pct, soc_pct=90.0, report_soh=False, tick_s=0.5,
                      rated_ah=79.0, rated_kwh=30.0)
    t = 1_700_000_000.0
    with path.open("w") as f:
        def session(seconds: float) -> None:
            for fr in bat.frames(seconds, start_ts=t):
                f.write(f"({fr.ts:.6f}) can0 {fr.can_id:03X}#{fr.data.hex().upper()}\n")

        for day in range(days):
            bat.current = lambda s, d=day: -30.0 * (1.0 + 0.5 * ((int(s) // 60 + d) % 3 - 1))
            session(3600 + 600 * day)
            t += 86400 / 2
            need_ah = (90.0 - bat.soc_pct) / 100 * 79.0 * soh_pct / 100
            bat.current = lambda s: 16.0
            session(need_ah / 16.0 * 3600)
            t += 86400 / 2


def _replay(capture: Path, *args: str) -> list[dict[str, object]]:
    out = subprocess.run([sys.executable, "-m", "gateway", "replay", str(capture), "--json", *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.slow
def test_replay_of_days_of_driving_gives_an_soh_estimate_without_a_bms_soh(tmp_path: Path) -> None:
    capture = tmp_path / "three-days.log"
    _write_capture(capture, soh_pct=78, days=3)
    config = tmp_path / "vehicle.toml"
    config.write_text("[vehicle]\nprofile = \"leaf-aze0\"\nrated_capacity_ah = 79.0\n")  # only [vehicle]
    messages = _replay(capture, "--config", str(config))
    readings = [m for m in messages if m["kind"] == "reading"]
    assert readings and not any("bms_soh_pct" in r["m"] for r in readings), "a missing BMS SOH is never a value"
    first_with = next(i for i, r in enumerate(readings) if "soh" in r["m"])
    assert first_with > 0, "no estimate before there is evidence"
    soh = readings[-1]["m"]["soh"]
    assert soh["method"] == "coulomb-kf/1" and soh["model"] == "physics-1"
    assert abs(soh["est_pct"] - 78.0) < 1.5, soh
    assert soh["lo_pct"] <= 78.0 <= soh["hi_pct"], soh
    passports = [m for m in messages if m["kind"] == "passport"]
    assert passports, "with the gateway's own estimate a passport needs no BMS SOH"
    doc, ext, prov = passports[-1]["doc"], passports[-1]["ext"], passports[-1]["prov"]
    assert "bms_soh_pct" not in ext and ext["soh"]["est_pct"] == soh["est_pct"]
    assert "StateOfCertifiedEnergy" not in doc, "a capacity-based SoH is not SOCE"
    assert abs(doc["RemainingCapacity"]["RemainingCapacityValue"] - 79.0 * 0.78) < 1.5
    assert prov["RemainingCapacity"]["src"] == "calculated" and prov["ext.soh"]["segments"] >= 3
    forecast, warranty = ext["forecast"], ext["warranty"]
    assert forecast["present"]["basis"].startswith("gateway estimate 78.0 %")
    assert forecast["chemistry"] == "lmo-leaf" and forecast["prior"].startswith("blast-lite")
    assert forecast["horizons"]["+3y"]["p50"] < 78.0 and warranty["decision"] in ("accept", "decline")
    human = subprocess.run([sys.executable, "-m", "gateway", "replay", str(capture), "--config", str(config)],
                           capture_output=True, text=True, timeout=300)
    assert human.returncode == 0, human.stderr  # the summary lines without a BMS SOH
    assert "SoH 78.0 %" in human.stdout and f"warranty {warranty['decision']}" in human.stdout
