"""Capture files -> ``Frame`` streams, for ``replay`` and the tests.

Reads every format python-can reads (candump ``-l``, ASC, BLF, TRC, python-can CSV, MF4) through
``can.LogReader``, plus the text formats the EV community shares, which python-can cannot read:
OVMS CRTD, SavvyCAN/GVRET CSV (with or without a Dir column), GVRET-PC text, candump's default
(``-ta`` or no timestamp) text, and the tab-separated "ParserFlags" export. candump ``-l`` has a fast
path of its own: ids outside ``want`` are skipped before the line is parsed further.

Invariants: a line that cannot be parsed is counted in ``stats.bad_lines`` and skipped (the first
few are logged with file and line number); only an unreadable or unrecognisable file raises
``CaptureError``. Timestamps are passed through as the file has them, negative ones too (some
SavvyCAN exports count up from a negative origin); ``gateway.replay`` handles backward steps.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import can

from ..errors import CaptureError
from ..model import Frame

__all__ = ["CaptureStats", "detect_format", "read_capture"]

log = logging.getLogger(__name__)

_MAX_LOGGED_BAD = 3
_CANDUMP_L = re.compile(r"^\(\s*-?\d+(\.\d+)?\)\s+\S+\s+[0-9A-Fa-f]+#")
_CANDUMP_TXT = re.compile(r"^\s*(\(\s*[\d.]+\)\s+)?\S+\s+[0-9A-Fa-f]{1,8}\s+\[\d+\]")
_CRTD = re.compile(r"^-?\d+(\.\d+)?\s+(\d?[RT](11|29)|\d?C[A-Z]{2})\b")
_PYTHON_CAN_SUFFIXES = {".asc", ".blf", ".trc", ".mf4", ".csv", ".log", ".db"}


@dataclass
class CaptureStats:
    """What a reader saw. ``frames`` counts frames handed out, ``skipped`` frames filtered by id."""

    path: str = ""
    format: str = ""
    lines: int = 0
    frames: int = 0
    skipped: int = 0
    events: int = 0
    bad_lines: int = 0
    first_bad: str = ""


def detect_format(path: Path) -> str:
    """Name the capture format from the file's first lines (or its suffix for binary formats).

    Raises:
        CaptureError: unreadable file or unknown format.
    """
    if path.suffix.lower() in (".blf", ".mf4", ".db"):
        return "python-can"
    try:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            head = [line for _, line in zip(range(20), f, strict=False)]
    except OSError as exc:
        raise CaptureError(f"cannot read: {exc.strerror}", path=str(path)) from exc
    text = [h.strip("\ufeff\r\n") for h in head if h.strip()]
    if not text:
        raise CaptureError("empty file", path=str(path))
    first = text[0]
    if first.startswith("ParserFlags"):
        return "parserflags"
    if first.replace(" ", "").lower().startswith("timestamp,id,extended"):
        return "gvret-csv"
    for line in text[:10]:
        if _CANDUMP_L.match(line):
            return "candump-l"
        if _CRTD.match(line):
            return "crtd"
        if _CANDUMP_TXT.match(line):
            return "candump-text"
    if path.suffix.lower() in _PYTHON_CAN_SUFFIXES:
        return "python-can"
    raise CaptureError("unknown capture format (candump -l/ASC/BLF/TRC/CSV/MF4, OVMS CRTD, GVRET CSV or "
                       "text, candump text, ParserFlags)", path=str(path))


def read_capture(path: str | Path, *, want: frozenset[int] | None = None,
                 stats: CaptureStats | None = None) -> Iterator[Frame]:
    """Yield the frames of a capture, in file order.

    Args:
        path: the capture file.
        want: CAN ids to keep (all when None); others are counted in ``stats.skipped``.
        stats: filled in while reading.

    Raises:
        CaptureError: the file cannot be opened or its format is unknown.
    """
    p = Path(path)
    st = stats if stats is not None else CaptureStats()
    st.path, st.format = str(p), detect_format(p)
    if st.format == "python-can":
        yield from _python_can(p, want, st)
        return
    with p.open("r", encoding="utf-8", errors="replace") as f:
        if st.format == "candump-l":
            yield from _candump_l(f, want, st)
            return
        parse = _PARSERS[st.format]
        ctx: dict[str, list[str]] = {}  # per-file parser state (the GVRET CSV header)
        for lineno, line in enumerate(f, 1):
            st.lines = lineno
            if not line.strip():
                continue
            try:
                frame = parse(line, ctx)
            except (ValueError, IndexError) as exc:
                _bad(st, lineno, line, exc)
                continue
            if frame is None:
                st.events += 1
                continue
            if want is not None and frame.can_id not in want:
                st.skipped += 1
                continue
            st.frames += 1
            yield frame


def _bad(st: CaptureStats, lineno: int, line: str, exc: Exception) -> None:
    st.bad_lines += 1
    if st.bad_lines <= _MAX_LOGGED_BAD:
        msg = f"{st.path}:{lineno}: skipped unreadable line ({exc}): {line.strip()[:60]!r}"
        st.first_bad = st.first_bad or msg
        log.warning("%s", msg)


def _frame(ts: float, can_id: int, data: bytes, bus: int = 0, *, extended: bool = False,
           tx: bool = False) -> Frame:
    if not 0 <= can_id <= (0x1FFFFFFF if extended else 0x7FF) or len(data) > 64:
        raise ValueError(f"id 0x{can_id:X} or length {len(data)} out of range")
    return Frame(ts, can_id, data, bus, extended, tx)


def _candump_l(f: TextIO, want: frozenset[int] | None, st: CaptureStats) -> Iterator[Frame]:
    # Hot path of replay: keep it flat. Ids are compared as strings before anything is converted.
    want_ids = None if want is None else {f"{i:03X}" for i in want} | {f"{i:08X}" for i in want}
    lineno = 0
    for lineno, line in enumerate(f, 1):
        try:
            close = line.index(")")
            iface, body = line[close + 1:].split()[:2]
            ident, _, data = body.partition("#")
            if want_ids is not None and ident.upper() not in want_ids:
                st.skipped += 1
                continue
            if data[:1] == "R":
                st.events += 1  # remote frame: no data
                continue
            ts = float(line[1:close])
            if data[:1] == "#":  # CAN FD: ID##<flags><data>
                data = data[2:]
            bus = int(iface[-1]) if iface[-1:].isdigit() else 0
            frame = _frame(ts, int(ident, 16), bytes.fromhex(data), bus, extended=len(ident) > 3)
        except (ValueError, IndexError) as exc:
            if line.strip():
                _bad(st, lineno, line, exc)
            continue
        st.frames += 1
        yield frame
    st.lines = lineno


def _parse_candump_text(line: str, ctx: dict[str, list[str]]) -> Frame | None:
    # "  can0  1DB   [8]  00 04 C2 ..." or "(1436509052.249713)  can0  1DB   [8]  00 ..."
    ts = 0.0
    s = line.strip()
    if s.startswith("("):
        close = s.index(")")
        ts = float(s[1:close])
        s = s[close + 1:]
    parts = s.split()
    iface, ident, dlc = parts[0], parts[1], int(parts[2].strip("[]"))
    data = bytes.fromhex("".join(parts[3:3 + dlc]))
    if len(data) != dlc:
        raise ValueError(f"{dlc} data bytes announced, {len(data)} found")
    bus = int(iface[-1]) if iface[-1:].isdigit() else 0
    return _frame(ts, int(ident, 16), data, bus, extended=len(ident) > 3)


def _parse_crtd(line: str, ctx: dict[str, list[str]]) -> Frame | None:
    # OVMS CRTD "1632426782.096037 1R11 390 04 00 ..." and GVRET-PC "511.794004 R11 000001DB FF C0 ...".
    parts = line.split()
    kind = parts[1]
    bus_digits = kind[:-3] if kind[-3:-2] in ("R", "T") else None
    if bus_digits is None or kind[-2:] not in ("11", "29"):
        return None  # CXX/CVR/CEV/CER/...: comments, events and errors
    data = bytes.fromhex("".join(parts[3:]))
    return _frame(float(parts[0]), int(parts[2], 16), data, int(bus_digits or 0),
                  extended=kind[-2:] == "29", tx=kind[-3] == "T")


def _parse_gvret_csv(line: str, ctx: dict[str, list[str]]) -> Frame | None:
    # "Time Stamp,ID,Extended,Dir,Bus,LEN,D1,...": Dir is missing in some exports.
    cells = [c.strip() for c in line.rstrip("\r\n").split(",")]
    if cells[0].replace(" ", "").lower() == "timestamp":
        cols = [c.lower() for c in cells]
        missing = {"time stamp", "id", "extended", "bus", "len"} - set(cols)
        if missing:
            raise ValueError(f"header without {', '.join(sorted(missing))}")
        ctx["cols"] = cols
        return None
    cols = ctx.get("cols", ["time stamp", "id", "extended", "dir", "bus", "len"])
    col = {name: i for i, name in enumerate(cols)}
    n = int(cells[col["len"]])
    first = col["len"] + 1
    data = bytes(int(c, 16) for c in cells[first:first + n])
    if len(data) != n:
        raise ValueError(f"LEN {n}, {len(data)} data bytes")
    ts = int(cells[col["time stamp"]]) / 1e6  # microseconds; some exports count up from a negative origin
    tx = "dir" in col and cells[col["dir"]].lower() == "tx"
    return _frame(ts, int(cells[col["id"]], 16), data, int(cells[col["bus"]] or 0),
                  extended=cells[col["extended"]].lower() == "true", tx=tx)


def _parse_parserflags(line: str, ctx: dict[str, list[str]]) -> Frame | None:
    # "1\t0\t1\tRX\t48659509\t\t0x000001db\t8\t0xee c0 c3 ...\tDefault Parser"
    if line.startswith("ParserFlags"):
        return None
    cells = line.split("\t")
    n = int(cells[7])
    data = bytes.fromhex(cells[8].strip().removeprefix("0x"))
    if len(data) != n:
        raise ValueError(f"Len {n}, {len(data)} data bytes")
    can_id = int(cells[6], 16)
    return _frame(int(cells[4]) / 1000.0, can_id, data, int(cells[1] or 0), extended=can_id > 0x7FF,
                  tx=cells[3].strip().upper() == "TX")


_PARSERS: dict[str, Callable[[str, dict[str, list[str]]], Frame | None]] = {
    "candump-text": _parse_candump_text,
    "crtd": _parse_crtd,
    "gvret-csv": _parse_gvret_csv,
    "parserflags": _parse_parserflags,
}


def _python_can(path: Path, want: frozenset[int] | None, st: CaptureStats) -> Iterator[Frame]:
    try:
        reader = can.LogReader(str(path))
    except Exception as exc:  # python-can raises ValueError (suffix), OSError, and format-specific errors
        hint = " (MF4 needs asammdf: pip install 'battery-gateway[mf4]')" if "asammdf" in str(exc) else ""
        raise CaptureError(f"python-can cannot read it: {exc}{hint}", path=str(path)) from exc
    try:
        for msg in reader:
            st.lines += 1
            if msg.is_error_frame or msg.is_remote_frame:
                st.events += 1
                continue
            if want is not None and msg.arbitration_id not in want:
                st.skipped += 1
                continue
            st.frames += 1
            ch = msg.channel
            bus = ch if isinstance(ch, int) else int(ch[-1]) if isinstance(ch, str) and ch[-1:].isdigit() else 0
            yield Frame(msg.timestamp, msg.arbitration_id, bytes(msg.data), bus, msg.is_extended_id,
                        not msg.is_rx)
    except (ValueError, IndexError, OSError, EOFError) as exc:
        raise CaptureError(f"python-can stopped after {st.lines} messages: {exc}", path=str(path)) from exc
    finally:
        stop = getattr(reader, "stop", None)
        if stop is not None:
            stop()
