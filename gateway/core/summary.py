"""One-line, human summaries of payloads, for ``replay`` without ``--json`` and for ``demo``. Pure."""

from __future__ import annotations

from typing import Any

from .passport import expand_batch

__all__ = ["describe"]


def _measurements(m: dict[str, Any]) -> str:
    parts = [f"SoC {m['soc_pct']:.1f} %" if "soc_pct" in m else "",
             f"{m['pack_v']:.1f} V" if "pack_v" in m else "", f"{m['pack_a']:+.1f} A" if "pack_a" in m else "",
             f"BMS SOH {m['bms_soh_pct']:g} %" if "bms_soh_pct" in m else "",
             f"Hx {m['hx_pct']:.2f} %" if "hx_pct" in m else "",
             f"{m['capacity_ah']:.1f} Ah" if "capacity_ah" in m else "",
             f"cells {m['cell_v_min']:.3f}..{m['cell_v_max']:.3f} V" if "cell_v_max" in m else "",
             _temperatures(m), _soh(m.get("soh"))]
    return "  ".join(p for p in parts if p)


def _temperatures(m: dict[str, Any]) -> str:
    """min..max when both are fresh, else whatever is (a reading may carry only some of them)."""
    if "temp_c_min" in m and "temp_c_max" in m:
        return f"{m['temp_c_min']:g}..{m['temp_c_max']:g} degC"
    known = [f"{m[k]:g}" for k in ("temp_c_min", "temp_c_avg", "temp_c_max") if k in m]
    return f"{'/'.join(known)} degC" if known else ""


def _soh(soh: Any) -> str:
    if not isinstance(soh, dict) or "est_pct" not in soh:
        return ""
    return f"SoH {soh['est_pct']:.1f} % ({soh.get('lo_pct', 0):.1f}..{soh.get('hi_pct', 0):.1f})"


def describe(body: dict[str, Any]) -> str:
    """What a person wants to see of a payload on one line."""
    kind = body.get("kind")
    bat = f"  pack {body['bat']}" if body.get("bat") else ""
    if kind == "reading":
        return _measurements(body["m"]) + bat
    if kind == "batch":
        rows = expand_batch(body)
        return f"{len(rows)} readings, last: {_measurements(rows[-1]['m'])}{bat}"
    if kind == "passport":
        doc, ext = body["doc"], body["ext"]
        warranty = ext.get("warranty")
        parts = [f"({ext['reason']})", f"BMS SOH {ext['bms_soh_pct']:g} %" if "bms_soh_pct" in ext else "",
                 _soh(ext.get("soh")), f"SoC {doc['StateOfCharge']['StateOfChargeValue']:g} %",
                 f"cycles {doc['NumberOfFullCycles']['NumberOfFullCyclesValue']:g}",
                 f"{doc['EnergyThroughput']['EnergyThroughputValue']:.3f} kWh throughput",
                 f"pack {ext['rated_energy_kwh']:g} kWh ({ext['rated_source']})",
                 f"warranty {warranty['decision']} (p {warranty['probability']:.2f})" if warranty else ""]
        return "  ".join(p for p in parts if p)
    if kind == "certificate":
        return _measurements(body["m"]) + bat
    return str(kind)
