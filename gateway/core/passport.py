"""Payloads of the signed messages: ``reading`` and ``passport`` (CONTRACT §5, PASSPORT.md).

Owns: the field names and units on the wire, the IDTA ProductCondition 1.0.1 document (exact key
names, every block with its own RFC 3339 ``LastUpdate``), and the provenance of every value.
Invariants: only semantically matching quantities go into model fields (no SOCE unless it is SOCE; the
BMS SOH goes to ``ext`` with provenance); a value never seen is left out, never guessed.
Pure: the tracker and times in, plain maps out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..model import SOC_BINS_PCT, TEMP_BINS_C
from .battery import BatteryTracker
from .imported import imported_note

__all__ = ["PAYLOAD_VERSION", "READING_FIELDS", "RESOLUTION", "build_batch", "build_passport", "build_reading",
           "expand_batch", "rfc3339", "ts_ms"]

PAYLOAD_VERSION = 1

# Canonical fields that readings carry in ``m`` (CONTRACT §5 names; the rest are documented in docs/mqtt.md).
READING_FIELDS = ("soc_pct", "pack_v", "pack_a", "cell_v_min", "cell_v_max", "temp_c_min", "temp_c_max",
                  "temp_c_avg", "bms_soh_pct", "lbc_soh_pct", "capacity_ah", "hx_pct", "full_energy_kwh",
                  "capacity_bars", "dash_soc_pct", "chg_limit_kw", "dis_limit_kw", "balancing_cells")


# Resolution of each field in a batch: values travel as integers of this step (what the source gives).
RESOLUTION = {"soc_pct": 0.01, "pack_v": 0.01, "pack_a": 0.1, "cell_v_min": 0.001, "cell_v_max": 0.001,
              "temp_c_min": 0.5, "temp_c_max": 0.5, "temp_c_avg": 0.5, "bms_soh_pct": 0.01, "lbc_soh_pct": 0.01,
              "capacity_ah": 0.0001, "hx_pct": 0.0001, "full_energy_kwh": 0.1, "capacity_bars": 1.0,
              "dash_soc_pct": 0.5, "chg_limit_kw": 0.25, "dis_limit_kw": 0.25, "balancing_cells": 1.0,
              "energy_kwh": 0.001, "soh.est_pct": 0.01, "soh.lo_pct": 0.01, "soh.hi_pct": 0.01, "soh.r_mohm": 0.1}


def build_batch(rows: list[tuple[float, dict[str, Any]]], *, device_id: str, chain: dict[str, Any], sw: str,
                bat: str | None) -> dict[str, Any]:
    """Several readings in one payload (``[publish] batch``): each keeps its own sequence number, ``seq``
    + its row index, so ``(dev, ep, seq)`` still identifies every reading.

    Columnar and integer-coded for cellular links: ``cols`` names the fields, ``res`` their resolution,
    each row is ``[ms after ts, value / res ...]`` with null where a field was not measured.
    """
    soh_tags = next(({"method": m["soh"]["method"], "model": m["soh"]["model"]}
                     for _, m in reversed(rows) if "soh" in m), None)
    flat = [(t, {**{k: v for k, v in m.items() if k != "soh"},
                 **{f"soh.{k}": v for k, v in m.get("soh", {}).items() if k not in ("method", "model")}})
            for t, m in rows]
    cols = sorted({k for _, m in flat for k in m})
    res = [RESOLUTION.get(c, 0.001) for c in cols]
    t0 = flat[0][0]
    table = [[round((t - t0) * 1000),
              *(None if c not in m else round(m[c] / r) for c, r in zip(cols, res, strict=True))] for t, m in flat]
    out = {"v": PAYLOAD_VERSION, "kind": "batch", "dev": device_id, **chain, "n": len(rows), "ts": ts_ms(t0),
           "sw": sw, "bat": bat, "cols": cols, "res": res, "rows": table}
    if soh_tags:
        out["soh"] = soh_tags  # method and model once per batch; the numbers are columns soh.*
    return out


def expand_batch(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The readings of a batch payload, each with its own ``seq`` and ``ts`` (for backends and tests)."""
    cols, res, out = payload["cols"], payload["res"], []
    for i, row in enumerate(payload["rows"]):
        m: dict[str, Any] = {c: round(v * r, 6) for c, r, v in zip(cols, res, row[1:], strict=True)
                             if v is not None and not c.startswith("soh.")}
        soh = {c[4:]: round(v * r, 6) for c, r, v in zip(cols, res, row[1:], strict=True)
               if v is not None and c.startswith("soh.")}
        if soh:
            m["soh"] = {**soh, **payload.get("soh", {})}
        out.append({"dev": payload["dev"], "ep": payload["ep"], "seq": payload["seq"] + i,
                    "ts": payload["ts"] + row[0], "m": m})
    return out


def ts_ms(ts: float) -> int:
    """Seconds since the epoch -> integer milliseconds."""
    return round(ts * 1000)


def rfc3339(ts: float) -> str:
    """Seconds since the epoch -> RFC 3339 UTC with ``T`` and ``Z`` (whole seconds)."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _header(kind: str, *, device_id: str, chain: dict[str, Any], ts: float, sw: str) -> dict[str, Any]:
    return {"v": PAYLOAD_VERSION, "kind": kind, "dev": device_id, **chain, "ts": ts_ms(ts), "sw": sw}


def _measurements(tracker: BatteryTracker, now: float) -> dict[str, float]:
    snap = tracker.snapshot(now)
    m = {k: snap[k] for k in READING_FIELDS if k in snap}
    if "gids" in snap:
        m["energy_kwh"] = round(snap["gids"] * tracker.profile.wh_per_gid / 1000.0, 3)
    return m


def build_reading(tracker: BatteryTracker, *, now: float, device_id: str, chain: dict[str, Any], sw: str,
                  bat: str | None = None) -> dict[str, Any] | None:
    """The ``reading`` payload at ``now``, or None when nothing fresh was measured."""
    m: dict[str, Any] = dict(_measurements(tracker, now))
    if not m:
        return None
    soh = tracker.soh_estimate()
    if soh is not None:
        m["soh"] = soh
    return {**_header("reading", device_id=device_id, chain=chain, ts=now, sw=sw), "bat": bat, "m": m}


def _src(signal: str, method: str, unit: str, *, src: str = "bms-reported", **extra: Any) -> dict[str, Any]:
    return {"src": src, "method": method, "signal": signal, "unit": unit, **extra}


def _temperature(tracker: BatteryTracker) -> tuple[float | None, str]:
    v = tracker.values
    if "temp_c_avg" in v:
        return v["temp_c_avg"], "temp_c_avg"
    known = [v[k] for k in ("temp_c_min", "temp_c_max") if k in v]
    if known:
        return round(sum(known) / len(known), 2), "mean(temp_c_min, temp_c_max)"
    return None, ""


def build_passport(tracker: BatteryTracker, *, now: float, device_id: str, chain: dict[str, Any], sw: str,
                   signals: dict[str, str], bat: str | None = None, reason: str = "",
                   outlook: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``passport`` payload: IDTA ProductCondition 1.0.1 ``doc``, ``prov`` per value, and ``ext``.

    Args:
        tracker: the battery state; must be complete (``tracker.missing()`` empty).
        now: measurement time of the update.
        signals: canonical field -> "0xID SIGNAL" it was decoded from, for provenance.
        reason: why this update was published (first, key-off, end-of-charge, daily, soh-change, request).
        outlook: ``{"forecast", "warranty"}`` from ``outlook.build_outlook``, carried in ``ext``.

    Raises:
        ValueError: the state is not complete (a schema-required value is missing).
    """
    if tracker.missing():
        raise ValueError(f"battery state incomplete: {', '.join(tracker.missing())}")
    v, t, c = tracker.values, tracker.times, tracker.counters
    profile = tracker.profile

    def bms(field: str, method: str, unit: str, **extra: Any) -> dict[str, Any]:
        """Provenance of a value the BMS reported (or the profile derives from two it reported): its signal,
        and how sure the profile is of it."""
        src = "calculated" if profile.derives(field) else "bms-reported"
        return _src(signals.get(field, ""), method, unit, src=src, validation=profile.validation_of(field), **extra)

    stamp = rfc3339(now)
    temp, temp_from = _temperature(tracker)
    pack, pack_source = tracker.pack()
    limits = f"low {tracker.profile.temp_low_c} degC, high {tracker.profile.temp_high_c} degC"
    doc: dict[str, Any] = {
        "NumberOfFullCycles": {"NumberOfFullCyclesValue": round(tracker.full_cycles(), 3), "LastUpdate": stamp},
        "StateOfCharge": {"StateOfChargeValue": v["soc_pct"], "LastUpdate": rfc3339(t["soc_pct"])},
        "TemperatureInformation": {
            "MeasuredTemp": temp,
            "TimeExtremeHighTemp": round(c.min_high_temp_idle, 2),
            "TimeExtremeLowTemp": round(c.min_low_temp_idle, 2),
            "TimeExtremeHighTempCharging": round(c.min_high_temp_charging, 2),
            "TimeExtremeLowTempCharging": round(c.min_low_temp_charging, 2),
            "LastUpdate": stamp,
        },
        "InformationOnAccidents": [],
        "EnergyThroughput": {"EnergyThroughputValue": round(c.kwh_charged + c.kwh_discharged, 3),
                             "LastUpdate": stamp},
        "CapacityThroughput": {"CapacityThroughputValue": round(c.ah_charged + c.ah_discharged, 3),
                               "LastUpdate": stamp},
    }
    counted = _src("", "gateway-counter/1", "", src="calculated",
                   basis=f"integrated from pack_a ({signals.get('pack_a', '')}) and pack_v, on this device only")
    prov: dict[str, Any] = {
        "NumberOfFullCycles": {**counted, "unit": "1", "method": "gateway-fec/1",
                               "basis": f"(Ah charged + Ah discharged) / 2 / {pack.capacity_ah} Ah "
                                        f"(rated capacity, {pack_source}); counted on this device only"},
        "StateOfCharge": bms("soc_pct", "bms-soc", "%"),
        "TemperatureInformation": bms(temp_from if temp_from in signals else "temp_c_min", "bms-temperature", "degC",
                                      extremes=limits, time_unit="min", derived=temp_from),
        "EnergyThroughput": {**counted, "unit": "kWh"},
        "CapacityThroughput": {**counted, "unit": "Ah"},
    }
    if "full_energy_kwh" in v:
        doc["RemainingEnergy"] = {"RemainingEnergyValue": v["full_energy_kwh"],
                                  "LastUpdate": rfc3339(t["full_energy_kwh"])}
        prov["RemainingEnergy"] = bms("full_energy_kwh", "bms-full-capacity", "kWh",
                                      note="the BMS's full usable energy, not measured by the UN GTR 22 "
                                           "certification procedure")
    if "capacity_ah" in v:
        doc["RemainingCapacity"] = {"RemainingCapacityValue": v["capacity_ah"],
                                    "LastUpdate": rfc3339(t["capacity_ah"])}
        prov["RemainingCapacity"] = bms("capacity_ah", "bms-capacity", "Ah",
                                        note="in Ah as DIN DKE SPEC 99100 §6.7.2.3 defines it (the model's "
                                             "unit says kWh)")
    events = [{"NegativeEventValue": e["kind"], "LastUpdate": rfc3339(e["ts"])} for e in c.events]
    if events:
        doc["NegativeEvents"] = events
        prov["NegativeEvents"] = {**counted, "unit": "",
                                  "basis": f"pack voltage outside {tracker.profile.cell_v_min}-"
                                           f"{tracker.profile.cell_v_max} V per cell"}
    ext: dict[str, Any] = {
        "reason": reason,
        "profile": {"name": profile.name, "validation": profile.validation},
        "rated_energy_kwh": pack.energy_kwh,
        "rated_capacity_ah": pack.capacity_ah,
        "rated_source": pack_source,
        "kwh_charged": round(c.kwh_charged, 3), "kwh_discharged": round(c.kwh_discharged, 3),
        "ah_charged": round(c.ah_charged, 3), "ah_discharged": round(c.ah_discharged, 3),
        "deep_discharge_events": c.deep_discharge_events, "overcharge_events": c.overcharge_events,
        "soc_hist_min": [round(x, 2) for x in c.soc_hist_min], "soc_hist_edges_pct": list(SOC_BINS_PCT),
        "temp_hist_min": [round(x, 2) for x in c.temp_hist_min], "temp_hist_edges_c": list(TEMP_BINS_C),
    }
    if "bms_soh_pct" in v:  # a missing or "no value" BMS SOH is left out, never taken as 0
        ext["bms_soh_pct"] = v["bms_soh_pct"]
        prov["ext.bms_soh_pct"] = bms("bms_soh_pct", "bms-soh", "%",
                                      note="the BMS's own SOH; not SOCE (EU 2023/1542 Annex VII), so it has "
                                           "no slot in ProductCondition")
    if "capacity_bars" in v:
        ext["capacity_bars"] = v["capacity_bars"]
    soh = tracker.soh_estimate()
    if soh is not None:
        ext["soh"] = soh
        details = tracker.soh.details()
        prov["ext.soh"] = _src(signals.get("pack_a", ""), soh["method"], "%", src="calculated",
                               basis=f"capacity-based SoH against {pack.capacity_ah} Ah ({pack_source}); "
                                     "not SOCE", **details)
        if "capacity_ah" not in v:  # no BMS capacity: the estimate's capacity, in Ah (DIN DKE SPEC 99100)
            doc["RemainingCapacity"] = {"RemainingCapacityValue": details["capacity_ah"],
                                        "LastUpdate": rfc3339(tracker.soh.state["t"] or now)}
            prov["RemainingCapacity"] = _src(signals.get("pack_a", ""), soh["method"], "Ah", src="calculated",
                                             note="estimated on this device from counted charge between SoC "
                                                  "anchors (docs/soh.md)")
    if outlook is not None:
        ext["forecast"], ext["warranty"] = outlook["forecast"], outlook["warranty"]
        prov["ext.forecast"] = _src("", outlook["forecast"]["method"], "%", src="gateway-estimated",
                                    basis=f"prior {outlook['forecast']['prior']}; present SoH "
                                          f"{outlook['forecast']['present']['basis']}")
        history = outlook["forecast"]["rate_factor"].get("history")
        if history:  # the fade includes points another tool logged: say so where the forecast is published
            prov["ext.forecast"]["note"] = imported_note(history)
        prov["ext.warranty"] = _src("", "warranty-rule/1", "", src="gateway-estimated",
                                    basis="P(SoH >= threshold at horizon) from the forecast draws")
    for p in prov.values():
        p["sw"] = sw
    return {**_header("passport", device_id=device_id, chain=chain, ts=now, sw=sw), "bat": bat, "doc": doc,
            "prov": prov, "ext": ext}
