"""The canonical battery state and the counters the gateway keeps on the device.

Owns: latest value and measurement time per canonical field, completeness, the pack variant (rated
capacity), which 0x5BC layout the battery ECU sends, and the lifetime counters of PASSPORT.md (Ah/energy
throughput, full equivalent cycles, deep-discharge/overcharge events, minutes in extreme temperatures,
SoC/temperature histograms).
Invariants: time only moves forward (``ts`` older than the last current sample integrates nothing);
a gap longer than ``max_gap_s`` integrates nothing (a dropped bus is not a 10-minute 400 A pulse); the
rated pack is never smaller than the energy or capacity the battery ECU reports (``pack``); a value whose
decoding depends on the ECU's layout is held back until the layout is known, never published from the
wrong bits. Pure: values and times in, values out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from ..model import FIELDS, SOC_BINS_PCT, TEMP_BINS_C, Counters, SegmentModel
from .polls import ARRAY_FIELDS
from .profile import PackVariant, Profile
from .soh import OCV_CELL_V, SohEstimator

__all__ = ["FAST_CHARGE_A", "MAX_PLAUSIBLE_SOH_PCT", "BatteryTracker", "vin_hash"]

_CHARGING_A = 1.0  # pack_a above this counts as charging
FAST_CHARGE_A = 40.0  # above this a Leaf is on a DC fast charger (on-board chargers give <= 30 A)
MAX_PLAUSIBLE_SOH_PCT = 110.0  # a BMS capacity above this share of the rated one means a wrong rating
_MAX_EVENTS = 20
# GIDs projected to a full pack only this far (in SoC points) above the SoC at which the GIDs reach 0
_GIDS_PROJECTION_MIN_SPAN_PCT = 10.0
# A field as a ZE0 battery ECU sends it -> the canonical field it stands for (0x5BC has two layouts: a ZE0
# LBC, or a newer pack behind a CAN bridge in a ZE0, puts the bars in the low nibble of d[2]).
_ZE0_LAYOUT_FIELDS = {"capacity_bars_ze0": "capacity_bars"}
_NEWER_LAYOUT_FIELDS = ("full_energy_kwh", "gids_full")  # only AZE0 and later ECUs send them (0x59E, max GIDs)
_LAYOUT_WAIT_S = 2.0  # 0x59E comes every 0.5 s: none this long after the first value means the ZE0 layout


def _bin(value: float, edges: tuple[int, ...]) -> int:
    for i, edge in enumerate(edges):
        if value < edge:
            return i
    return len(edges)


def vin_hash(salt: bytes, vin: str) -> str:
    """The pseudonymous VIN (32 hex digits of SHA-256 over the device's salt and the VIN): the VIN itself
    is never stored or sent."""
    return hashlib.sha256(salt + vin.encode()).hexdigest()[:32]


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
        self.max_gap_s = max(max_gap_s, 1.5 * profile.poll_pace_s)  # a car read only by polls: its pace
        self.values: dict[str, float] = {}
        self.times: dict[str, float] = {}
        self.arrays: dict[str, list[float]] = {}  # polled: cells_v, temps_c
        self.texts: dict[str, str] = {}  # polled: bat (pack serial), part_number, vin_hash
        self.generation = ""  # the pack generation a poll reply identified (ze0, aze0, ze1)
        self.ecu_layout = ""  # the 0x5BC layout the battery ECU sends: "ze0", "newer", "" while unknown
        self._layout_bound = {_ZE0_LAYOUT_FIELDS.get(s.field, s.field) for s in profile.signals
                              if s.field in _ZE0_LAYOUT_FIELDS}  # canonical fields the profile reads both ways
        self._held: dict[str, dict[str, tuple[float, float]]] = {"ze0": {}, "newer": {}}
        self._first_ts: float | None = None
        self.last_ts: float | None = None
        self._last_current: tuple[float, float] | None = None  # (ts, amps)
        self._deep = self._over = False
        self._pack_cells = any(p.cells_series for p in profile.packs)
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
        if self._first_ts is None:
            self._first_ts = ts
        if self._layout_bound and not self.ecu_layout:
            self._settle_layout(ts, values)
        for name, value in values:
            if name in _ZE0_LAYOUT_FIELDS or name in self._layout_bound:
                self._layout_value(ts, name, value)
            else:
                self._store(ts, name, value)

    def _settle_layout(self, ts: float, values: list[tuple[str, float]]) -> None:
        """Tell the 0x5BC layout from the frames seen; then store the values held back for it."""
        if any(name in _NEWER_LAYOUT_FIELDS for name, _ in values):
            self.ecu_layout = "newer"
        elif self._first_ts is not None and ts - self._first_ts >= _LAYOUT_WAIT_S:
            self.ecu_layout = "ze0"
        else:
            return
        for name, (held_ts, value) in self._held[self.ecu_layout].items():
            self._store(held_ts, name, value)
        self._held = {"ze0": {}, "newer": {}}

    def _layout_value(self, ts: float, name: str, value: float) -> None:
        """A value whose bits depend on the layout: stored when it is the car's layout, held while unknown."""
        layout = "ze0" if name in _ZE0_LAYOUT_FIELDS else "newer"
        canonical = _ZE0_LAYOUT_FIELDS.get(name, name)
        if self.ecu_layout == layout:
            self._store(ts, canonical, value)
        elif not self.ecu_layout:
            self._held[layout][canonical] = (ts, value)

    def _store(self, ts: float, name: str, value: float) -> None:
        """Record one value and advance what depends on it (the profile's derived fields too)."""
        self.values[name] = value
        self.times[name] = ts
        for d in self.profile.derive:
            if name not in (d.numerator, d.denominator):
                continue
            num, den = self.fresh(d.numerator, ts), self.fresh(d.denominator, ts)  # both measured lately
            if num is None or not den:
                continue
            derived, spec = round(d.scale * num / den, 2), FIELDS[d.field]
            if spec.hi < derived <= spec.hi * 1.05:  # a new pack's full energy a little above its BOL energy
                derived = spec.hi
            if spec.lo <= derived <= spec.hi:  # anything further out is no value: the last plausible one stays
                self._store(ts, d.field, derived)
        if name == "pack_a":
            self._integrate(ts, value)
            self.soh.cells_series = self.cells_series()
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

    def cells_series(self) -> int:
        """Cells in series of the rated pack (a profile may list packs of different series counts)."""
        if not self._pack_cells:
            return self.profile.cells_series
        return self.pack()[0].cells_series or self.profile.cells_series

    def _check_voltage_events(self, ts: float, volts: float) -> None:
        p, cells = self.profile, self.cells_series()
        low, high = p.cell_v_min * cells, p.cell_v_max * cells
        hysteresis = 0.05 * cells  # 50 mV per cell before an event can fire again
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
        """The profile's ``complete`` fields not seen yet (``temperature`` = any pack temperature,
        ``rated_pack`` = the car's own data tell its pack: ``pack_evidence``)."""
        out = []
        for name in self.profile.complete:
            if name == "temperature":
                if not any(k in self.values for k in ("temp_c_min", "temp_c_max", "temp_c_avg")):
                    out.append(name)
            elif name == "rated_pack":
                if not self.pack_evidence():
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

    def reported_full_kwh(self) -> float | None:
        """The full energy the battery ECU reports, or None.

        In order: its full usable energy (0x59E), its full-capacity GIDs, or its GIDs projected to a
        full pack along the SoC (the GIDs reach 0 at ``gids_zero_soc_pct``, not at 0 %; the projection
        is used only ``_GIDS_PROJECTION_MIN_SPAN_PCT`` above it).
        """
        v, p = self.values, self.profile
        if "full_energy_kwh" in v:
            return v["full_energy_kwh"]
        if "gids_full" in v:
            return v["gids_full"] * p.wh_per_gid / 1000.0
        gids, soc = v.get("gids"), v.get("soc_pct")
        if gids is None or soc is None or soc - p.gids_zero_soc_pct < _GIDS_PROJECTION_MIN_SPAN_PCT:
            return None
        full_gids = gids * (100.0 - p.gids_zero_soc_pct) / (soc - p.gids_zero_soc_pct)
        return round(full_gids * p.wh_per_gid / 1000.0, 2)

    def pack_evidence(self) -> bool:
        """True when the car's own data tell its pack: a full energy (``reported_full_kwh``) or the
        battery ECU's capacity in Ah."""
        return self.reported_full_kwh() is not None or "capacity_ah" in self.values

    def pack(self) -> tuple[PackVariant, str]:
        """The rated pack and how it was chosen: ``config``, ``detected``, ``detected-over-config`` (the
        configured capacity is smaller than the pack reports) or ``profile-default``.

        Never a pack smaller than what the battery ECU reports: a pack whose energy or capacity, times
        ``MAX_PLAUSIBLE_SOH_PCT``, is below the reported full energy or Ah is ruled out, configured or not.
        """
        if self._configured_ah is not None:
            configured = self._configured_pack()
            if self._holds_reported(configured):
                return configured, "config"
            return self._detected()[0], "detected-over-config"
        if len(self.profile.packs) == 1:
            return self.profile.packs[0], "profile-default"
        return self._detected()

    def _configured_pack(self) -> PackVariant:
        """The configured capacity with the energy it implies: the nominal voltage of the nearest pack."""
        ah = float(self._configured_ah or 0.0)
        nearest = min(self.profile.packs, key=lambda p: abs(p.capacity_ah - ah))
        return PackVariant(round(ah * nearest.energy_kwh / nearest.capacity_ah, 1), ah, nearest.upgrade,
                           nearest.cells_series)

    def _holds_reported(self, pack: PackVariant) -> bool:
        """True when ``pack`` is not smaller than the energy and capacity the battery ECU reports."""
        most = MAX_PLAUSIBLE_SOH_PCT / 100.0
        full_kwh, ah = self.reported_full_kwh(), self.values.get("capacity_ah")
        return ((full_kwh is None or pack.energy_kwh * most >= full_kwh)
                and (ah is None or pack.capacity_ah * most >= ah))

    def _detected(self) -> tuple[PackVariant, str]:
        """The pack nearest to what the car reports scaled back to new by its SOH, among those that hold it."""
        packs = self.profile.packs
        fitting = [p for p in packs if self._holds_reported(p)] or [max(packs, key=lambda p: p.energy_kwh)]
        soh, full_kwh, ah = self.values.get("bms_soh_pct"), self.reported_full_kwh(), self.values.get("capacity_ah")
        if soh is not None and full_kwh is not None:
            return min(fitting, key=lambda p: abs(p.energy_kwh - full_kwh / (soh / 100.0))), "detected"
        if soh is not None and ah is not None:
            return min(fitting, key=lambda p: abs(p.capacity_ah - ah / (soh / 100.0))), "detected"
        default = next(p for p in packs if not p.upgrade)
        if default in fitting:
            return default, "profile-default"
        return next((p for p in fitting if not p.upgrade), fitting[0]), "detected"

    def soh_estimate(self) -> dict[str, Any] | None:
        """The gateway's own capacity-based SoH against the rated capacity, or None without evidence."""
        return self.soh.estimate(self.pack()[0].capacity_ah)

    def full_cycles(self) -> float:
        """Full equivalent cycles: Ah throughput (charge + discharge) / 2 / rated capacity."""
        c = self.counters
        return (c.ah_charged + c.ah_discharged) / 2.0 / self.pack()[0].capacity_ah
