"""Capture files -> ``Frame`` streams, for ``replay`` and the tests.

Formats are recognised from the content (the suffix decides only when the content does not). Parsed
here: candump ``-l`` (fast path: ids outside ``want`` are skipped before the rest of the line is
parsed), candump's default text, OVMS CRTD and GVRET-PC text, SavvyCAN/GVRET CSV (with or without Dir),
the tab-separated "ParserFlags" export and the CANHacker ``.trc``. Through python-can's readers: Vector
ASC and BLF, PCAN ``.trc``, python-can CSV, MF4 and ``.db``.

A source (a path, or ``-`` for standard input) is opened once and read once, front to back: the first
16 KiB that detection looks at are handed to the parser ahead of the rest, so a pipe loses nothing. A
FIFO is opened non-blocking (no writer: empty, not a hang); a directory or a device other than standard
input is refused; MF4 and ``.db`` are read by seeking and need a regular file.

Invariants: memory is bounded: a line over 64 KiB ends the read with ``CaptureError``, and python-can's
readers get a stream whose ``read(n)`` allocates only what it has read. A line that cannot be parsed,
or whose timestamp is not finite or is more than 1e10 s (317 years) from 1970, is counted in
``stats.bad_lines`` and skipped (the first three kept in ``stats.bad_examples``), as are the warnings of
python-can and asammdf, which never reach stderr. Timestamps within the range pass as they are, negative
ones too (SavvyCAN exports may count up from a negative origin). Only an unreadable, unrecognisable or
broken source raises ``CaptureError``, naming the file (and line) and the cause; any exception of a
python-can reader (zlib, sqlite3, BLFParseError, KeyError, ...) becomes one, chained.

Here: the source and the detection. ``_text_formats`` parses the formats read here and holds the rules
for lines and frames; ``_python_can_formats`` wraps python-can's readers.
"""

from __future__ import annotations

import io
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import CaptureError
from ...model import Frame
from ._python_can_formats import LIBRARY, read_with_python_can
from ._text_formats import CHUNK, PARSERS, CaptureStats, parse_candump_l, parse_lines, read_lines, text_stream
from .leafspy import is_leafspy

__all__ = ["STDIN", "CaptureStats", "read_capture"]

STDIN = "-"
_HEAD_BYTES = 16 * 1024

_CANDUMP_L = re.compile(r"^\(\s*-?\d+(\.\d+)?\)\s+\S+\s+[0-9A-Fa-f]+#")
_CANDUMP_TXT = re.compile(r"^\s*(\(\s*[\d.]+\)\s+)?\S+\s+[0-9A-Fa-f]{1,8}\s+\[\d+\]")
_CRTD = re.compile(r"^-?\d+(\.\d+)?\s+(\d?[RT](11|29)|\d?C[A-Z]{2})\b")
_GVRET_CSV = re.compile(r"^-?\d+,[0-9A-Fa-f]{1,8},(true|false),", re.IGNORECASE)  # a data line, header cut off
_CANHACKER = re.compile(r"^\d+[.,]\d+\t\d+\t[0-9A-Fa-f]+\t[0-9A-Fa-f]{1,8}\t\d+\t")
_MAGIC = ((b"LOGG", "blf"), (b"MDF     ", "mf4"), (b"UnFinMF ", "mf4"), (b"SQLite format 3\x00", "sqlite"))
_BY_SUFFIX = {".asc": "asc", ".blf": "blf", ".trc": "pcan-trc", ".csv": "python-can-csv", ".mf4": "mf4",
              ".db": "sqlite", ".log": "candump-l"}
_FORMATS_HINT = ("candump -l or text, OVMS CRTD, GVRET text or CSV, ParserFlags, CANHacker .trc, "
                 "ASC, BLF, PCAN .trc, python-can CSV, MF4, .db")


def read_capture(path: str | Path, *, want: frozenset[int] | None = None,
                 stats: CaptureStats | None = None) -> Iterator[Frame]:
    """Yield the frames of a capture, in file order, reading the source once.

    Args:
        path: the capture file, or ``-`` for standard input.
        want: CAN ids to keep (all when None); others are counted in ``stats.skipped``.
        stats: filled in while reading.

    Raises:
        CaptureError: (when iteration starts or later) the source cannot be opened or read, its
            format is unknown, a line is longer than 64 KiB, or python-can's reader gave up.
    """
    source = str(path)
    st = stats if stats is not None else CaptureStats()
    st.path = "<stdin>" if source == STDIN else source
    raw, st.size_bytes = _open_source(source, st.path)
    with raw:
        head = _read_head(raw, st.path)
        st.format = _detect(head, "" if source == STDIN else Path(source).suffix.lower(), st.path)
        src = _Replayed(raw, head, st)
        if st.format in LIBRARY:
            seekable_path = source if st.size_bytes and source != STDIN else None
            yield from read_with_python_can(src, seekable_path, want, st)
            return
        lines = read_lines(text_stream(src), st.path)
        if st.format == "candump-l":
            yield from parse_candump_l(lines, want, st)
        else:
            yield from parse_lines(lines, PARSERS[st.format], want, st)


# --- the source: opened once, read once ----------------------------------------------------------

def _open_source(source: str, name: str) -> tuple[io.FileIO, int]:
    """The source, unbuffered, and its size when it is a regular file (else 0)."""
    try:
        if source == STDIN:
            info = os.fstat(0)
            return io.FileIO(0, "rb", closefd=False), info.st_size if stat.S_ISREG(info.st_mode) else 0
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO: do not wait for a writer
    except OSError as exc:
        raise CaptureError(f"cannot read: {exc.strerror}", path=name) from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise CaptureError("is a directory, not a capture file", path=name)
        if (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)) and not _is_stdin(info):
            raise CaptureError("is a device, not a capture file (give - to read standard input)", path=name)
        os.set_blocking(fd, True)  # a FIFO with no writer now reads as EOF; with one, reads wait for its data
        return io.FileIO(fd, "rb", closefd=True), info.st_size if stat.S_ISREG(info.st_mode) else 0
    except BaseException:
        os.close(fd)
        raise


def _is_stdin(info: os.stat_result) -> bool:
    try:
        own = os.fstat(0)
    except OSError:
        return False
    return (own.st_dev, own.st_ino) == (info.st_dev, info.st_ino)


def _read_head(raw: io.FileIO, name: str) -> bytes:
    parts: list[bytes] = []
    n = 0
    try:
        while n < _HEAD_BYTES and (chunk := raw.read(_HEAD_BYTES - n)):
            parts.append(chunk)
            n += len(chunk)
    except OSError as exc:
        raise CaptureError(f"cannot read: {exc.strerror}", path=name) from exc
    return b"".join(parts)


class _Replayed(io.RawIOBase):
    """The source from its first byte again: the head detection read, then the rest. Counts bytes read."""

    def __init__(self, raw: io.FileIO, head: bytes, stats: CaptureStats) -> None:
        super().__init__()
        self._raw, self._head, self._stats = raw, memoryview(head), stats

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n], self._head = self._head[:n], self._head[n:]
        else:
            try:
                n = self._raw.readinto(view) or 0
            except OSError as exc:
                raise CaptureError(f"read failed: {exc.strerror}", path=self._stats.path) from exc
        self._stats.bytes_read += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        """At most ``size`` bytes, allocated as they arrive: a corrupt length field may ask for gigabytes.

        Raises:
            CaptureError: asked for the whole rest of the source: only a binary reader does that here (the
                text formats read in chunks), when a length field is smaller than its header (a negative size).
        """
        if size is None or size < 0:
            raise CaptureError("broken length field: the reader asked for the whole rest of the file at once",
                               path=self._stats.path)
        parts: list[bytes] = []
        while size > 0:
            chunk = bytearray(min(size, CHUNK))
            n = self.readinto(chunk)
            if not n:
                break
            parts.append(bytes(chunk[:n]))
            size -= n
        return b"".join(parts)

    def close(self) -> None:
        self._raw.close()
        super().close()


# --- detection -----------------------------------------------------------------------------------

def _detect(head: bytes, suffix: str, name: str) -> str:
    if is_leafspy(head):
        raise CaptureError("a LeafSpy log (values LeafSpy decoded, not CAN frames): import its history with "
                           f"`battery-gateway import-log {name} --config PATH`", path=name)
    for magic, binary in _MAGIC:
        if head.startswith(magic):
            return binary
    lines = (h.strip("\ufeff") for h in head.decode("utf-8", errors="replace").splitlines()[:200])
    text = [line for line in lines if line.strip()][:20]
    if not text:
        raise CaptureError("empty file (nothing to read)", path=name)
    kind = _detect_text(text) or _BY_SUFFIX.get(suffix)
    if kind is None:
        raise CaptureError(f"unknown capture format (known: {_FORMATS_HINT})", path=name)
    return kind


def _detect_text(text: list[str]) -> str | None:
    first = text[0]
    compact = first.replace(" ", "").lower()
    for prefix, kind in (("parserflags", "parserflags"), ("timestamp,id,extended", "gvret-csv"),
                         ("timestamp,arbitration_id", "python-can-csv"), ("@text@", "canhacker-trc"),
                         (";", "pcan-trc"), ("date", "asc"), ("base", "asc")):
        if compact.startswith(prefix):
            return kind
    for line in text[:10]:
        for pattern, kind in ((_CANDUMP_L, "candump-l"), (_CRTD, "crtd"), (_CANDUMP_TXT, "candump-text"),
                              (_CANHACKER, "canhacker-trc"), (_GVRET_CSV, "gvret-csv")):
            if pattern.match(line):
                return kind
    return None

