"""Composition root of ``battery-gateway import-log``: a vehicle's history from another tool's logs
(LeafSpy CSV) into the device's SoH history (``core/imported.py``), stored with the device's state, so
the forecast of the next passport or inspection uses it, marked as imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..adapters.capture_files.leafspy import LeafSpyStats, read_leafspy
from ..core.battery import vin_hash
from ..core.config import Config
from ..core.imported import import_rows
from ..errors import CaptureError
from .wiring import open_store, vin_salt

__all__ = ["import_logs"]


def import_logs(config: Config, files: list[str]) -> tuple[list[tuple[dict[str, Any], LeafSpyStats]], dict[str, Any]]:
    """Import every file, all or none: ((record, stats) per file, the history's sources afterwards).

    Raises:
        CaptureError: a file that is unreadable, not a LeafSpy log, without capacity readings, or of
            another vehicle than the logs imported before (nothing is stored then).
        StateError: the state directory is locked by the running daemon, or unwritable.
    """
    store = open_store(config)  # creates the state directory, where the VIN salt lives
    try:
        salt = vin_salt(config.device.state_dir)
        chain, counters = store.load()
        known = {log.get("vin_hash") for log in counters.soh.get("imported", {}).get("logs", [])} - {None}
        results = []
        for name in files:
            stats = LeafSpyStats()
            rows = read_leafspy(name, stats)
            vins = {row.vin for row in rows if row.vin}
            if len(vins) > 1:
                raise CaptureError(f"rows of {len(vins)} vehicles (VINs differ): one vehicle per log", path=name)
            if not vins:
                raise CaptureError("no VIN in the log: it cannot be tied to a vehicle", path=name)
            digest = vin_hash(salt, vins.pop())
            if known and digest not in known:
                raise CaptureError("another vehicle's log (its VIN differs from the logs imported before): a "
                                   "device keeps the history of one vehicle", path=name)
            known.add(digest)
            try:
                record = import_rows(counters.soh, rows, source="leafspy", file=Path(name).name, vin_hash=digest)
            except ValueError as exc:
                raise CaptureError(str(exc), path=name) from exc
            results.append((record, stats))
        store.save(chain, counters)
    finally:
        store.close()
    imported = counters.soh.get("imported", {})
    own = len(counters.soh.get("hist", []))
    return results, {"device": own, "imported-log": len(imported.get("points", []))}
