"""Battery state and lifetime counters: throughput, cycles, events, extreme temperatures, pack detection."""

from __future__ import annotations

import pytest

from gateway.app.wiring import load_profile
from gateway.core.battery import BatteryTracker
from gateway.model import Counters

ZE1 = load_profile("leaf-ze1")[0]
ZE0 = load_profile("leaf-ze0")[0]


def feed_current(t: BatteryTracker, amps: float, volts: float, seconds: float, *, start: float = 0.0,
                 step: float = 0.01, extra: tuple[tuple[str, float], ...] = ()) -> float:
    n = round(seconds / step)
    for k in range(n + 1):
        t.update(start + k * step, [*extra, ("pack_v", volts), ("pack_a", amps)])
    return start + n * step


def test_ah_and_energy_throughput_are_integrated_by_direction() -> None:
    t = BatteryTracker(ZE1)
    end = feed_current(t, -36.0, 360.0, 100.0)  # 1 Ah out at 360 V
    feed_current(t, 18.0, 380.0, 100.0, start=end + 0.01)  # 0.5 Ah in
    c = t.counters
    assert c.ah_discharged == pytest.approx(1.0, rel=1e-3)
    assert c.ah_charged == pytest.approx(0.5, rel=1e-2)
    assert c.kwh_discharged == pytest.approx(0.36, rel=1e-3)
    assert c.kwh_charged == pytest.approx(0.19, rel=1e-2)


def test_a_gap_in_the_bus_integrates_nothing() -> None:
    t = BatteryTracker(ZE1, max_gap_s=2.0)
    t.update(0.0, [("pack_v", 360.0), ("pack_a", -400.0)])
    t.update(600.0, [("pack_a", -400.0)])  # ten minutes later: the bus was down, not a 400 A pulse
    assert t.counters.ah_discharged == 0.0


def test_full_cycles_use_the_detected_pack() -> None:
    t = BatteryTracker(ZE1)
    t.update(0.0, [("full_energy_kwh", 55.3), ("bms_soh_pct", 91.0)])
    assert t.pack()[0].capacity_ah == 176.0 and t.pack()[1] == "detected"
    t.counters.ah_charged = t.counters.ah_discharged = 176.0
    assert t.full_cycles() == pytest.approx(1.0)


def test_configured_capacity_wins_over_detection() -> None:
    t = BatteryTracker(ZE1, rated_capacity_ah=176.0)
    t.update(0.0, [("full_energy_kwh", 36.0), ("bms_soh_pct", 91.0)])  # detection alone would say 40 kWh
    assert t.pack() [0].capacity_ah == 176.0 and t.pack()[1] == "config"


def test_deep_discharge_and_overcharge_count_once_per_excursion() -> None:
    t = BatteryTracker(ZE1)  # 96 cells: below 240 V deep discharge, above 403.2 V overcharge
    for k, v in enumerate([300, 239, 238, 239, 300, 239, 404, 405, 300]):
        t.update(float(k), [("pack_v", float(v))])
    assert t.counters.deep_discharge_events == 2
    assert t.counters.overcharge_events == 1
    assert [e["kind"] for e in t.counters.events] == ["deep-discharge", "deep-discharge", "overcharge"]


def test_minutes_in_extreme_temperature_split_idle_and_charging() -> None:
    t = BatteryTracker(ZE0)  # high limit 40 degC
    hot = (("temp_c_max", 45.0), ("temp_c_min", 41.0), ("soc_pct", 50.0))
    end = feed_current(t, 0.0, 380.0, 60.0, step=1.0, extra=hot)
    feed_current(t, 20.0, 380.0, 120.0, start=end + 1.0, step=1.0, extra=hot)
    c = t.counters
    assert c.min_high_temp_idle == pytest.approx(1.0, abs=0.05)
    assert c.min_high_temp_charging == pytest.approx(2.0, abs=0.05)
    assert c.min_low_temp_idle == 0.0
    assert sum(c.soc_hist_min) == pytest.approx(3.0, abs=0.1)


def test_completeness_needs_a_temperature_on_leafs() -> None:
    t = BatteryTracker(ZE1)  # ZE1 also needs the full energy (0x59E) to tell a 40 from a 62 kWh pack
    t.update(0.0, [("soc_pct", 50.0), ("pack_v", 360.0), ("pack_a", 0.0), ("bms_soh_pct", 90.0),
                   ("full_energy_kwh", 55.0)])
    assert t.missing() == ["temperature"]
    t.update(0.1, [("temp_c_avg", 20.0)])
    assert t.missing() == []


def test_stale_values_are_not_fresh() -> None:
    t = BatteryTracker(ZE1, stale_after_s=10.0)
    t.update(0.0, [("soc_pct", 50.0)])
    assert t.fresh("soc_pct", 5.0) == 50.0
    assert t.fresh("soc_pct", 11.0) is None


def test_counters_round_trip_and_reject_corruption() -> None:
    c = Counters(ah_charged=1.5, deep_discharge_events=2)
    assert Counters.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError):
        Counters.from_dict({**c.to_dict(), "ah_charged": -1})
    with pytest.raises(ValueError):
        Counters.from_dict({**c.to_dict(), "bogus": 1})
