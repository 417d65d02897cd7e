"""LeafSpy CSV logs: one row of values LeafSpy decoded per poll (not CAN frames), with its header line
``Date/Time,Lat,Long,Elv,Speed,Gids,SOC,AHr,...``. Units as LeafSpy writes them: ``AHr`` and ``SOC`` in
1/10,000 (740504 = 74.0504 Ah), ``SOH`` and ``Hx`` in %, ``Pack T1 C``..``Pack T4 C`` in °C or ``none``,
``epoch time`` in Unix seconds (``Date/Time`` is the phone's local time, so it is used only when the
epoch column is missing). A row dated before 2010 or in the future is unreadable.

A row that cannot be read is counted and skipped (the first three kept, with their line numbers); a value
out of any plausible range is left out of its row.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ...errors import CaptureError
from ...model import LogRow
from ..fs import read_regular

__all__ = ["LeafSpyStats", "is_leafspy", "read_leafspy"]

_NEEDED = ("AHr", "SOH", "Hx", "SOC")
_MAX_BYTES = 256 << 20  # years of logging at one row a minute


def is_leafspy(head: bytes) -> bool:
    """True for the first bytes of a LeafSpy CSV log (its header line)."""
    first = head.split(b"\n", 1)[0].lstrip(b"\xef\xbb\xbf")
    return first.startswith(b"Date/Time,") and all(b"," + name.encode() + b"," in first for name in _NEEDED)


@dataclass
class LeafSpyStats:
    rows: int = 0
    bad_rows: int = 0
    bad_examples: list[str] = field(default_factory=list)


def _number(text: str | None, scale: float = 1.0, *, low: float, high: float) -> float | None:
    try:
        value = float(text or "") / scale
    except ValueError:
        return None
    return value if math.isfinite(value) and low <= value <= high else None


_FIRST_LEAF = 1_262_304_000  # 2010-01-01: no Leaf logged anything before


def _time(row: dict[str, str], now: float) -> float:
    epoch = _number(row.get("epoch time"), low=_FIRST_LEAF, high=now + 86_400)
    if epoch is not None:
        return epoch
    t = datetime.strptime(row["Date/Time"], "%d/%m/%Y %H:%M").timestamp()  # the gateway's zone, not the phone's
    if not _FIRST_LEAF <= t <= now + 86_400:
        raise ValueError(f"dated {row['Date/Time']}: before 2010 or in the future")
    return t


def _rows(reader: csv.DictReader[str], path: str) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as exc:
        raise CaptureError(f"unreadable CSV: {exc}", path=path, line=reader.line_num) from exc


def read_leafspy(path: str | Path, stats: LeafSpyStats | None = None) -> list[LogRow]:
    """The rows of a LeafSpy log, in file order.

    Raises:
        CaptureError: unreadable, not a LeafSpy log (naming the missing columns), or no readable row.
    """
    st = stats if stats is not None else LeafSpyStats()
    try:
        text = read_regular(path, max_bytes=_MAX_BYTES).decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise CaptureError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc
    reader = csv.DictReader(io.StringIO(text))
    try:
        missing = [name for name in ("Date/Time", *_NEEDED) if name not in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise CaptureError(f"not a LeafSpy log: {exc}", path=str(path)) from exc
    if missing:
        raise CaptureError(f"not a LeafSpy log: no column {', '.join(missing)}", path=str(path))
    rows = []
    now = time.time()
    for line, row in _rows(reader, str(path)):
        try:
            temps = [v for v in (_number(row.get(f"Pack T{i} C"), low=-40, high=85) for i in range(1, 5))
                     if v is not None]
            vin = (row.get("VIN") or "").strip()
            rows.append(LogRow(
                t=_time(row, now), capacity_ah=_number(row["AHr"], 10_000, low=1, high=1000),
                soh_pct=_number(row["SOH"], low=1, high=120), hx_pct=_number(row["Hx"], low=1, high=200),
                soc_pct=_number(row["SOC"], 10_000, low=0, high=100),
                temp_c=round(sum(temps) / len(temps), 2) if temps else None,
                vin=vin if len(vin) == 17 and vin.isalnum() else None))
        except (KeyError, TypeError, ValueError) as exc:
            st.bad_rows += 1
            if len(st.bad_examples) < 3:
                st.bad_examples.append(f"line {line}: {exc}")
    st.rows = len(rows)
    if not rows:
        raise CaptureError(f"a LeafSpy log with no readable row ({st.bad_rows} unreadable)", path=str(path))
    return rows
