"""The inspection certificate payload (``kind`` = ``certificate``, CONTRACT §5): every polled value with
all cell voltages, the passport ``doc``, provenance, and the forecast and warranty blocks.

Pure: the tracker and what the inspection saw in, a plain map out. Without a present SoH (no estimate,
no BMS capacity, no BMS SOH) the forecast and warranty blocks say ``not available`` and why, so a reader
never mistakes their absence for a pass.
"""

from __future__ import annotations

from typing import Any

from .battery import MAX_PLAUSIBLE_SOH_PCT, BatteryTracker
from .imported import imported_note
from .passport import build_passport, build_reading

__all__ = ["NOT_AVAILABLE", "build_certificate"]

NOT_AVAILABLE = "not available"


def build_certificate(tracker: BatteryTracker, *, now: float, device_id: str, chain: dict[str, Any], sw: str,
                      signals: dict[str, str], polls: dict[str, str], profile_title: str,
                      outlook: dict[str, Any] | None = None) -> dict[str, Any]:
    """The certificate payload.

    Args:
        polls: poll name -> result (``ok`` or the error kind) of this inspection.
        profile_title: the vehicle profile's human name.
        outlook: ``{"forecast", "warranty"}`` from ``outlook.build_outlook``, or None.
    """
    bat = tracker.texts.get("bat")
    reading = build_reading(tracker, now=now, device_id=device_id, chain=chain, sw=sw, bat=bat) or {"m": {}}
    m: dict[str, Any] = dict(reading["m"])
    if "cells_v" in tracker.arrays:
        m["cells_v"] = list(tracker.arrays["cells_v"])
    if "temps_c" in tracker.arrays:
        m["temps_c"] = list(tracker.arrays["temps_c"])
    pack, pack_source = tracker.pack()
    prov: dict[str, Any] = {}
    if "capacity_ah" in m:
        ratio = m["capacity_ah"] / pack.capacity_ah * 100
        basis = (f"BMS capacity ({signals.get('capacity_ah', '')}) / {pack.capacity_ah} Ah rated ({pack_source})")
        if ratio <= MAX_PLAUSIBLE_SOH_PCT:
            m["capacity_soh_pct"] = round(ratio, 2)
            prov["m.capacity_soh_pct"] = {"src": "calculated", "method": "capacity-ratio/1", "unit": "%", "sw": sw,
                                          "basis": basis}
        else:  # the pack is bigger than the rated capacity says: a wrong rating, not a 130 % battery
            prov["m.capacity_soh_pct"] = {"src": "calculated", "method": "capacity-ratio/1", "sw": sw,
                                          "basis": basis, "note": f"left out: {ratio:.0f} % means the rated "
                                          "capacity is wrong; set vehicle.rated_capacity_ah"}
    profile = tracker.profile
    if "hx_pct" in m:
        prov["m.hx_pct"] = {"src": "bms-reported", "method": "leaf-hx", "unit": "%", "sw": sw,
                            "signal": signals.get("hx_pct", ""), "validation": profile.validation_of("hx_pct"),
                            "note": "a battery ECU health figure of the Leaf; not SOH and not SOCE"}
    if "bms_soh_pct" in m:
        prov["m.bms_soh_pct"] = {"src": "calculated" if profile.derives("bms_soh_pct") else "bms-reported",
                                 "method": "bms-soh", "unit": "%", "sw": sw, "signal": signals.get("bms_soh_pct", ""),
                                 "validation": profile.validation_of("bms_soh_pct")}
    doc = None
    passport_prov: dict[str, Any] = {}
    if not tracker.missing():
        passport = build_passport(tracker, now=now, device_id=device_id, chain=chain, sw=sw, signals=signals,
                                  bat=bat, reason="inspection")
        doc, passport_prov = passport["doc"], passport["prov"]
    identity = {"vehicle": profile_title, "generation": tracker.generation or None,
                "part_number": tracker.texts.get("part_number"), "vin_hash": tracker.texts.get("vin_hash"),
                "rated_energy_kwh": pack.energy_kwh, "rated_capacity_ah": pack.capacity_ah,
                "rated_source": pack_source, "profile": profile.name, "builtin_profile": profile.builtin,
                "checked_against": list(dict.fromkeys(c.name for c in profile.captures))}
    history = outlook["forecast"]["rate_factor"].get("history") if outlook else None
    if history:
        prov["forecast.rate_factor"] = {
            "src": "imported-log", "method": "leafspy-import/1", "sw": sw,
            "note": imported_note(history), "logs": history["logs"]}
    reason = "no present SoH: no gateway estimate, BMS capacity or BMS SOH was read"
    forecast = outlook["forecast"] if outlook else {"status": NOT_AVAILABLE, "reason": reason}
    warranty = outlook["warranty"] if outlook else {"status": NOT_AVAILABLE, "decision": None, "reason": reason}
    return {
        "v": reading.get("v", 1), "kind": "certificate", "dev": device_id, **chain,
        "ts": reading.get("ts", round(now * 1000)), "sw": sw, "bat": bat, "m": m, "doc": doc,
        "prov": {**passport_prov, **prov}, "identity": identity, "polls": dict(polls),
        "forecast": forecast, "warranty": warranty,
    }
