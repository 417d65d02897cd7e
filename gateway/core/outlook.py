"""Forecast and warranty for one battery, from the tracker's state: which present SoH to trust, the
usage from the counters, and the vehicle's own SoH history (``forecast.py`` does the arithmetic).

Pure: the tracker and the prior in, plain maps out.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..model import SOC_BINS_PCT, TEMP_BINS_C
from .battery import MAX_PLAUSIBLE_SOH_PCT, BatteryTracker
from .config import WarrantyConfig
from .forecast import MIN_DAYS, Prior, Usage, forecast, usage_from_counters, warranty

__all__ = ["build_outlook", "present_soh"]

def present_soh(tracker: BatteryTracker) -> tuple[float, float, str, str] | None:
    """(SoH %, 1-sigma, basis, method): the gateway's estimate (``gateway-estimate``), else the BMS capacity
    ratio (``capacity-ratio``), else the BMS SOH (``bms-reported``)."""
    est = tracker.soh_estimate()
    if est is not None:
        return (est["est_pct"], (est["hi_pct"] - est["lo_pct"]) / 2 / tracker.soh.settings.interval_z,
                f"gateway estimate {est['est_pct']:.1f} % (80 % interval {est['lo_pct']:.1f}-{est['hi_pct']:.1f}, "
                f"{est['method']})", "gateway-estimate")
    rated = tracker.pack()[0].capacity_ah
    cap = tracker.values.get("capacity_ah")
    if cap and cap / rated * 100.0 <= MAX_PLAUSIBLE_SOH_PCT:
        return (cap / rated * 100.0, 2.0, f"BMS capacity {cap:.1f} Ah / {rated:g} Ah rated (single reading, +/-2 pp)",
                "capacity-ratio")
    for name in ("lbc_soh_pct", "bms_soh_pct"):
        if tracker.values.get(name):
            value = tracker.values[name]
            return (value, 4.0, f"BMS SOH {value:.0f} % as reported (method not stated by the vehicle, +/-4 pp)",
                    "bms-reported")
    return None


def _worse(prior: Prior, chemistry: str, usage: Usage, tried: Usage) -> Usage:
    """``tried`` where the prior's curve says it leaves the pack less capacity at its last year, else ``usage``
    (neither a warmer nor a fuller pack ages faster in every table)."""
    def end(u: Usage) -> float:
        return prior.curve(chemistry, temp_c=u.temp_c, soc_mean=u.soc_mean, dod_per_day=u.dod_per_day)[-1]

    return tried if end(tried) < end(usage) else usage


def build_outlook(tracker: BatteryTracker, *, prior: Prior, chemistry: str, rule: WarrantyConfig,
                  now: float) -> dict[str, Any] | None:
    """``{"forecast": ..., "warranty": ...}``, or None when no present SoH is known."""
    present = present_soh(tracker)
    if present is None:
        return None
    soh, sigma, basis, method = present
    c = tracker.counters
    rated = tracker.pack()[0].capacity_ah
    usage = usage_from_counters(c, rated_ah=rated, soc_edges=SOC_BINS_PCT, temp_edges=TEMP_BINS_C,
                                days=(now - c.since_ts) / 86400.0 if c.since_ts else 0.0)
    vin = tracker.texts.get("vin_hash")  # imported logs count only for the car read now
    logged = tracker.soh.imported_usage(vin) if usage.days < MIN_DAYS else None
    if logged is not None:  # a log stands in for the missing counters, and may only make the outlook worse
        usage = replace(usage, source="imported-log")
        usage = _worse(prior, chemistry, usage, replace(usage, temp_c=logged[0]))
        usage = _worse(prior, chemistry, usage, replace(usage, soc_mean=logged[1] / 100))
    sources = tracker.soh.history_sources(vin)
    outlook = forecast(prior, chemistry, usage, soh_pct=soh, soh_sigma_pct=sigma,
                       history=tracker.soh.history(rated, vin), extra_horizons=(rule.horizon_years,),
                       history_may_slow=not sources["imported-log"])
    decision = warranty(outlook, rule, basis=basis)
    del outlook["_samples"]
    if sources["imported-log"]:  # the fade the forecast saw includes points this device did not measure
        outlook["rate_factor"]["history"] = sources
    outlook["present"] = {"soh_pct": round(soh, 2), "sigma_pct": round(sigma, 2), "basis": basis,
                          "method": method}
    return {"forecast": outlook, "warranty": decision}
