"""The text formats parsed here, line by line; what a reader saw (``CaptureStats``); what a frame must be.

Lines come from ``read_lines``: any line end (LF, CR LF, CR), none longer than 64 KiB (``CaptureError``
otherwise: memory stays bounded). A line a parser cannot read raises one of ``BAD_LINE`` and is counted
by ``count_bad``; ``make_frame`` refuses a timestamp that is not finite or is more than 1e10 s from
1970, an id out of range, or more than 64 data bytes. Also used by ``_python_can_formats``.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from ...errors import CaptureError
from ...model import Frame

log = logging.getLogger(__name__)

_MAX_EXAMPLES = 3
CHUNK = 64 * 1024  # bytes read at a time
_MAX_LINE_CHARS = 64 * 1024
_MAX_ABS_TS_S = 1e10  # about 2286; as far back, for exports that count from a negative origin
BAD_LINE = (ValueError, IndexError, OverflowError)  # what a malformed line raises in a parser


@dataclass
class CaptureStats:
    """What a reader saw. ``frames`` counts frames handed out, ``skipped`` frames filtered by id, ``lines``
    text lines (python-can: messages); ``size_bytes`` (0 for a stream) and ``bytes_read`` tell progress."""

    path: str = ""
    format: str = ""
    size_bytes: int = 0
    bytes_read: int = 0
    lines: int = 0
    frames: int = 0
    skipped: int = 0
    events: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)

    @property
    def first_bad(self) -> str:
        """The first unreadable line, named with file and line number ("" when there was none)."""
        return self.bad_examples[0] if self.bad_examples else ""


def text_stream(src: io.RawIOBase) -> io.TextIOWrapper:
    """``src`` as text: UTF-8 (a bad byte becomes U+FFFD), any line end read as ``\\n``."""
    return io.TextIOWrapper(io.BufferedReader(src, CHUNK), encoding="utf-8", errors="replace", newline=None)


def _too_long(name: str, lineno: int) -> CaptureError:
    return CaptureError(f"line longer than {_MAX_LINE_CHARS // 1024} KiB: not a capture (binary data?)",
                        path=name, line=lineno)


def read_lines(text: TextIO, name: str) -> Iterator[str]:
    """The lines of ``text`` without their ends (any of LF, CR LF, CR).

    Raises:
        CaptureError: a line is longer than 64 KiB (named by its number in ``name``).
    """
    return itertools.chain.from_iterable(_line_batches(text, name))  # no generator step per line: hot path


def _line_batches(text: TextIO, name: str) -> Iterator[list[str]]:
    tail, n = "", 0
    while chunk := text.read(_MAX_LINE_CHARS):
        lines = (tail + chunk).split("\n")
        tail = lines.pop()
        if lines and len(lines[0]) > _MAX_LINE_CHARS:  # only the first can be longer than a chunk
            raise _too_long(name, n + 1)
        n += len(lines)
        if len(tail) > _MAX_LINE_CHARS:
            raise _too_long(name, n + 1)
        yield lines
    if tail:
        yield [tail]


def count_bad(st: CaptureStats, lineno: int, line: str, reason: object, *, unit: str = "line") -> None:
    """Count an unreadable line (or python-can message); keep the first three, named, for the summary."""
    st.bad_lines += 1
    if len(st.bad_examples) < _MAX_EXAMPLES:
        msg = f"{st.path}:{lineno}: skipped unreadable {unit} ({reason})" + (line and f": {line.strip()[:60]!r}")
        st.bad_examples.append(msg)
        log.debug("%s", msg)


def make_frame(ts: float, can_id: int, data: bytes, bus: int = 0, *, extended: bool = False,
               tx: bool = False) -> Frame:
    """A ``Frame``, if it can be one.

    Raises:
        ValueError: the timestamp is not finite or more than 1e10 s from 1970; the id or length is out of range.
    """
    if not -_MAX_ABS_TS_S <= ts <= _MAX_ABS_TS_S:  # NaN fails both comparisons
        raise ValueError(f"timestamp {ts:.6g} is not a time (|t| > {_MAX_ABS_TS_S:.0e} s)")
    if not 0 <= can_id <= (0x1FFFFFFF if extended else 0x7FF) or len(data) > 64:
        raise ValueError(f"id 0x{can_id:X} or length {len(data)} out of range")
    return Frame(ts, can_id, data, bus, extended, tx)


def parse_lines(lines: Iterable[str], parse: Callable[[str, dict[str, list[str]]], Frame | None],
                want: frozenset[int] | None, st: CaptureStats) -> Iterator[Frame]:
    """The frames ``parse`` finds in ``lines`` with an id in ``want``; what it cannot read is counted."""
    ctx: dict[str, list[str]] = {}  # per-file parser state (the GVRET CSV header)
    for lineno, line in enumerate(lines, 1):
        st.lines = lineno
        if not line.strip():
            continue
        try:
            frame = parse(line, ctx)
        except BAD_LINE as exc:
            count_bad(st, lineno, line, exc)
            continue
        if frame is None:
            st.events += 1
            continue
        if want is not None and frame.can_id not in want:
            st.skipped += 1
            continue
        st.frames += 1
        yield frame


def parse_candump_l(lines: Iterable[str], want: frozenset[int] | None, st: CaptureStats) -> Iterator[Frame]:
    """The frames of candump ``-l`` lines with an id in ``want`` (others skipped before they are parsed)."""
    # Hot path of replay: keep it flat. Ids are compared as strings before anything is converted.
    want_ids = None if want is None else {f"{i:03X}" for i in want} | {f"{i:08X}" for i in want}
    lineno = 0
    for lineno, line in enumerate(lines, 1):
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
            frame = make_frame(ts, int(ident, 16), bytes.fromhex(data), bus, extended=len(ident) > 3)
        except BAD_LINE as exc:
            if line.strip():
                count_bad(st, lineno, line, exc)
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
    return make_frame(ts, int(ident, 16), data, bus, extended=len(ident) > 3)


def _parse_crtd(line: str, ctx: dict[str, list[str]]) -> Frame | None:
    # OVMS CRTD "1632426782.096037 1R11 390 04 00 ..." and GVRET-PC "511.794004 R11 000001DB FF C0 ...".
    parts = line.split()
    kind = parts[1]
    bus_digits = kind[:-3] if kind[-3:-2] in ("R", "T") else None
    if bus_digits is None or kind[-2:] not in ("11", "29"):
        return None  # CXX/CVR/CEV/CER/...: comments, events and errors
    data = bytes.fromhex("".join(parts[3:]))
    return make_frame(float(parts[0]), int(parts[2], 16), data, int(bus_digits or 0),
                      extended=kind[-2:] == "29", tx=kind[-3] == "T")


def _parse_gvret_csv(line: str, ctx: dict[str, list[str]]) -> Frame | None:
    # "Time Stamp,ID,Extended,Dir,Bus,LEN,D1,...": Dir is missing in some exports.
    cells = [c.strip() for c in line.split(",")]
    if cells[0].replace(" ", "").lower() == "timestamp":
        cols = [c.lower() for c in cells]
        missing = {"time stamp", "id", "extended", "bus", "len"} - set(cols)
        if missing:
            raise ValueError(f"header without {', '.join(sorted(missing))}")
        ctx["cols"] = cols
        return None
    if "cols" not in ctx:  # no header (cut off): there is a Dir column if the fourth cell says Rx or Tx
        ctx["cols"] = ["time stamp", "id", "extended", "bus", "len"]
        if cells[3].strip().lower() in ("rx", "tx"):
            ctx["cols"].insert(3, "dir")
    cols = ctx["cols"]
    col = {name: i for i, name in enumerate(cols)}
    n = int(cells[col["len"]])
    first = col["len"] + 1
    data = bytes(int(c, 16) for c in cells[first:first + n])
    if len(data) != n:
        raise ValueError(f"LEN {n}, {len(data)} data bytes")
    ts = int(cells[col["time stamp"]]) / 1e6  # microseconds; some exports count up from a negative origin
    tx = "dir" in col and cells[col["dir"]].lower() == "tx"
    return make_frame(ts, int(cells[col["id"]], 16), data, int(cells[col["bus"]] or 0),
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
    return make_frame(int(cells[4]) / 1000.0, can_id, data, int(cells[1] or 0), extended=can_id > 0x7FF,
                      tx=cells[3].strip().upper() == "TX")


def _parse_canhacker(line: str, ctx: dict[str, list[str]]) -> Frame | None:
    # "55,038000\t2\t00000004\t1FF\t8\t01 00 00 00 00 00 00 00\t00000000\t        \t": seconds since the
    # trace started (comma or point), two columns not interpreted, id, DLC, data, then an ASCII view.
    if line[:1] in ("@", "#"):
        return None  # "@ TEXT @ ..." header, "# $LocalTime=..." comments
    cells = line.split("\t")
    ident, n = cells[3].strip(), int(cells[4])
    data = bytes.fromhex(cells[5])
    if len(data) != n:
        raise ValueError(f"DLC {n}, {len(data)} data bytes")
    return make_frame(float(cells[0].strip().replace(",", ".")), int(ident, 16), data, extended=len(ident) > 3)


PARSERS: dict[str, Callable[[str, dict[str, list[str]]], Frame | None]] = {
    "candump-text": _parse_candump_text,
    "crtd": _parse_crtd,
    "gvret-csv": _parse_gvret_csv,
    "parserflags": _parse_parserflags,
    "canhacker-trc": _parse_canhacker,
}

