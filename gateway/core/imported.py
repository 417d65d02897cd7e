"""Battery history from another tool's log (a LeafSpy CSV, years of which a Leaf owner often has): its
BMS capacity readings become weekly points of the SoH estimator's history, which the forecast uses as
the vehicle's own fade (``forecast._observed_rate``). They are kept apart from the device's own
measurements (``SohEstimator.history_sources``), so everything published from them says they came from
an imported log. Pure: rows in, a record and the estimator's state out.
"""

from __future__ import annotations

from typing import Any

from ..model import LogRow

__all__ = ["MAX_POINTS", "WEEK_S", "import_rows", "imported_note"]

WEEK_S = 7 * 86_400
MAX_POINTS = 520  # ten years of weekly points


def imported_note(history: dict[str, Any]) -> str:
    """The provenance note of a forecast whose history includes imported points (``history_sources``)."""
    return (f"the vehicle's fade includes {history['imported-log']} weekly capacity points imported from another "
            "tool's log (LeafSpy), not measured by this device")


def _ends(values: list[float]) -> list[float] | None:
    return [round(values[0], 2), round(values[-1], 2)] if values else None


def import_rows(soh_state: dict[str, Any], rows: list[LogRow], *, source: str, file: str,
                vin_hash: str | None) -> dict[str, Any]:
    """Add the rows' weekly capacity points to the estimator's state (``soh_state``, the ``Counters.soh``
    table) and return the record of this import.

    A point is the last capacity reading of each calendar week (of the Unix epoch). A week that already
    has an imported point keeps it (importing the same log twice adds nothing).

    Raises:
        ValueError: no row has a capacity reading.
    """
    rows = sorted(rows, key=lambda r: r.t)
    readings = [r for r in rows if r.capacity_ah is not None]
    if not readings:
        raise ValueError("no row has a capacity (AHr) reading")
    weekly: dict[int, tuple[float, float]] = {}
    for r in readings:
        assert r.capacity_ah is not None
        weekly[int(r.t // WEEK_S)] = (r.t, r.capacity_ah)
    imported = soh_state.setdefault("imported", {"points": [], "logs": []})
    have = {int(t // WEEK_S) for t, _ in imported["points"]}
    new = [[t, round(cap, 4)] for week, (t, cap) in sorted(weekly.items()) if week not in have]
    imported["points"] = sorted(imported["points"] + new)[-MAX_POINTS:]
    temps = [r.temp_c for r in rows if r.temp_c is not None]
    socs = [r.soc_pct for r in rows if r.soc_pct is not None]
    record = {
        "source": source, "file": file, "rows": len(rows), "from": rows[0].t, "to": rows[-1].t, "vin_hash": vin_hash,
        "points_added": len(new), "capacity_ah": _ends([r.capacity_ah for r in readings if r.capacity_ah]),
        "bms_soh_pct": _ends([r.soh_pct for r in rows if r.soh_pct is not None]),
        "hx_pct": _ends([r.hx_pct for r in rows if r.hx_pct is not None]),
        "soc_mean_pct": round(sum(socs) / len(socs), 1) if socs else None,
        "temp_mean_c": round(sum(temps) / len(temps), 1) if temps else None,
    }
    same = [log for log in imported["logs"] if all(log.get(k) == record[k] for k in ("source", "file", "from", "to"))]
    if not same:  # the same log imported again adds nothing, not even a second record
        imported["logs"] = (imported["logs"] + [record])[-50:]
    return record
