"""The canonical battery state and the counters the gateway keeps on the device.

Owns: latest value and measurement time per canonical field, completeness, the pack variant (rated
capacity), and the lifetime counters of PASSPORT.md (Ah/energy throughput, full equivalent cycles,
deep-discharge/overcharge events, minutes in extreme temperatures, SoC/temperature histograms).
Invariants: time only moves forward (``ts`` older than the last current sample integrates nothing);
a gap longer than ``max_gap_s`` integrates nothing (a dropped bus is not a 10-minute 400 A pulse).
Pure: values and times in, values out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..model import SOC_BINS_PCT, TEMP_BINS_C, Counters, SegmentModel
from .polls import ARRAY_FIELDS
from .profile import PackVariant, Profile
from .soh import OCV_CELL_V, SohEstimator

__all__ = ["FAST_CHARGE_A", "MAX_PLAUSIBLE_SOH_PCT", "BatteryTracker"]

_CHARGING_A = 1.0  # pack_a above this counts as charging
FAST_CHARGE_A = 40.0  # above this a Leaf is on a DC fast charger (on-board chargers give <= 30 A)
MAX_PLAUSIBLE_SOH_PCT = 110.0  # a BMS capacity above this share of the rated one means a wrong rating
_MAX_EVENTS = 20


def _bin(value: float, edges: tuple[int, ...]) -> int:
    for i, edge in enumerate(edges):
        if value < edge:
            return i
    return len(edges)


class BatteryTracker:
    """Latest values of the canonical fields plus the counters, updated from decoded values."""

    def __init__(self, profile: Profile, *, counters: Counters | None = None,
                 rated_capacity_ah: float | None = None, stale_after_s: float = 10.0,
                 polled_stale_after_s: float = 1800.0, max_gap_s: float = 2.0,
                 soh_model: Callable[[], SegmentModel | None] | None = None) -> None:
        self.profile = profile
        self.counters = counters or Counters()
        self._configured_ah = rated_capacity_ah
        self.stale_after_s = stale_after_s
        self.polled_stale_after_s = polled_stale_after_s
        # Values only polls give are refreshed every few minutes, not every 100 ms.
        polled = {f.name for p in profile.polls for lay in p.layouts for f in lay.fields}
        polled |= {derived for name in polled & set(ARRAY_FIELDS) for derived in ARRAY_FIELDS[name]}
        self._polled_only = polled - {s.field for s in profile.signals}
        self.max_gap_s = max_gap_s
        self.values: dict[str, float] = {}
        self.times: dict[str, float] = {}
        self.arrays: dict[str, list[float]] = {}  # polled: cells_v, temps_c
        self.texts: dict[str, str] = {}  # polled: bat (pack serial), part_number, vin_hash
        self.generation = ""  # the pack generation a poll reply identified (ze0, aze0, ze1)
        self.last_ts: float | None = None
        self._last_current: tuple[float, float] | None = None  # (ts, amps)
        self._deep = self._over = False
        self.soh = SohEstimator(rated_ah=self.pack()[0].capacity_ah, state=self.counters.soh,
                                ocv=OCV_CELL_V.get(profile.chemistry), cells_series=profile.cells_series,
                                model=soh_model)

    # -- updates ---------------------------------------------------------------------------------
    def update(self, ts: float, values: list[tuple[str, float]]) -> None:
        """Record decoded values measured at ``ts`` and advance the counters."""
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts
        if not self.counters.since_ts:
            self.counters.since_ts = ts
        for name, value in values:
            self.values[name] = value
            self.times[name] = ts
            if name == "pack_a":
                self._integrate(ts, value)
                self.soh.on_current(ts, value, self.values.get("pack_v"))
            elif name == "pack_v":
                self._check_voltage_events(ts, value)
            elif name == "soc_pct":
                self.soh.on_soc(ts, value)
            elif name in ("temp_c_max", "temp_c_min", "temp_c_avg"):
                self.soh.on_temperature(value)

    def _integrate(self, ts: float, amps: float) -> None:
        prev = self._last_current
        self._last_current = (ts, amps)
        if prev is None:
            return
        dt = ts - prev[0]
        if not 0 < dt <= self.max_gap_s:
            return
        c = self.counters
        ah = prev[1] * dt / 3600.0
        volts = self.values.get("pack_v")
        if ah >= 0:
            c.ah_charged += ah
            if prev[1] >= FAST_CHARGE_A:
                c.ah_charged_fast += ah
        else:
            c.ah_discharged -= ah
        if volts is not None:
            kwh = ah * volts / 1000.0
            if kwh >= 0:
                c.kwh_charged += kwh
            else:
                c.kwh_discharged -= kwh
        minutes = dt / 60.0
        charging = prev[1] > _CHARGING_A
        soc = self.fresh("soc_pct", ts)
        if soc is not None:
            c.soc_hist_min[_bin(soc, SOC_BINS_PCT)] += minutes
        temps = [t for t in (self.fresh(k, ts) for k in ("temp_c_max", "temp_c_avg", "temp_c_min"))
                 if t is not None]
        if temps:
            c.temp_hist_min[_bin(sum(temps) / len(temps), TEMP_BINS_C)] += minutes
            if max(temps) >= self.profile.temp_high_c:
                if charging:
                    c.min_high_temp_charging += minutes
                else:
                    c.min_high_temp_idle += minutes
            if min(temps) <= self.profile.temp_low_c:
                if charging:
                    c.min_low_temp_charging += minutes
                else:
                    c.min_low_temp_idle += minutes

    def _check_voltage_events(self, ts: float, volts: float) -> None:
        p = self.profile
        low, high = p.cell_v_min * p.cells_series, p.cell_v_max * p.cells_series
        hysteresis = 0.05 * p.cells_series  # 50 mV per cell before an event can fire again
        if volts < low and not self._deep:
            self._deep = True
            self.counters.deep_discharge_events += 1
            self._event("deep-discharge", ts)
        elif volts > low + hysteresis:
            self._deep = False
        if volts > high and not self._over:
            self._over = True
            self.counters.overcharge_events += 1
            self._event("overcharge", ts)
        elif volts < high - hysteresis:
            self._over = False

    def _event(self, kind: str, ts: float) -> None:
        self.counters.events = [*self.counters.events, {"kind": kind, "ts": ts}][-_MAX_EVENTS:]

    # -- queries ---------------------------------------------------------------------------------
    def fresh(self, name: str, now: float) -> float | None:
        """The latest value of ``name`` if it was measured within ``stale_after_s`` of ``now``."""
        ts = self.times.get(name)
        window = self.polled_stale_after_s if name in self._polled_only else self.stale_after_s
        if ts is None or now - ts > window:
            return None
        return self.values[name]

    def snapshot(self, now: float) -> dict[str, float]:
        """Every fresh value at ``now``."""
        return {k: v for k in self.values if (v := self.fresh(k, now)) is not None}

    def missing(self) -> list[str]:
        """The profile's ``complete`` fields not seen yet (``temperature`` = any pack temperature)."""
        out = []
        for name in self.profile.complete:
            if name == "temperature":
                if not any(k in self.values for k in ("temp_c_min", "temp_c_max", "temp_c_avg")):
                    out.append(name)
            elif name == "bms_soh_pct" and name not in self.values and self.soh_estimate() is not None:
                continue  # no BMS SOH (or only its "no value" marker), but the gateway's own estimate
            elif name not in self.values:
                out.append(name)
        return out

    @property
    def charging(self) -> bool:
        """True while the latest current is a charging current."""
        return self.values.get("pack_a", 0.0) > _CHARGING_A

    def pack(self) -> tuple[PackVariant, str]:
        """The pack variant and how it was chosen: ``config``, ``detected`` or ``profile-default``."""
        packs = self.profile.packs
        if self._configured_ah is not None:
            nearest = min(packs, key=lambda p: abs(p.capacity_ah - self._configured_ah))  # type: ignore[operator]
            return PackVariant(nearest.energy_kwh, self._configured_ah), "config"
        if len(packs) == 1:
            return packs[0], "profile-default"
        full = self.values.get("full_energy_kwh")
        if full is None and "gids_full" in self.values:
            full = self.values["gids_full"] * self.profile.wh_per_gid / 1000.0
        soh = self.values.get("bms_soh_pct")
        if full is None or soh is None:
            return packs[0], "profile-default"
        new_kwh = full / (soh / 100.0)
        return min(packs, key=lambda p: abs(p.energy_kwh - new_kwh)), "detected"

    def soh_estimate(self) -> dict[str, Any] | None:
        """The gateway's own capacity-based SoH against the rated capacity, or None without evidence."""
        return self.soh.estimate(self.pack()[0].capacity_ah)

    def full_cycles(self) -> float:
        """Full equivalent cycles: Ah throughput (charge + discharge) / 2 / rated capacity."""
        c = self.counters
        return (c.ah_charged + c.ah_discharged) / 2.0 / self.pack()[0].capacity_ah
