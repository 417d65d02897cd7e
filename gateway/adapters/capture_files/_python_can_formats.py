"""The formats python-can reads: Vector ASC and BLF, PCAN TRC, python-can CSV, MF4 and SQLite ``.db``.

Every exception of a reader becomes ``CaptureError`` naming the file, the format and the library's
message (chained); the libraries' warnings (python-can's, asammdf's own handler too) are counted as bad
lines instead of reaching stderr. MF4 is read in a forked child that hands its frames over as candump
``-l`` lines: on a damaged file asammdf can kill the interpreter (numpy segfaults) or spin for ever, and
two runs on the same damage need not agree, so it never runs in the gateway's own process.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO

import can

from ...errors import CaptureError
from ...model import Frame
from ._text_formats import BAD_LINE, CaptureStats, count_bad, make_frame, parse_candump_l, read_lines, text_stream

log = logging.getLogger(__name__)

LIBRARY: dict[str, tuple[str, Callable[[Any], can.io.generic.MessageReader]]] = {
    "asc": ("Vector ASC", can.ASCReader),
    "blf": ("Vector BLF", can.BLFReader),
    "pcan-trc": ("PCAN TRC", can.TRCReader),
    "python-can-csv": ("python-can CSV", can.CSVReader),
    "mf4": ("ASAM MF4", can.MF4Reader),
    "sqlite": ("python-can SQLite", can.SqliteReader),
}
_LIBRARY_TEXT = frozenset({"asc", "pcan-trc", "python-can-csv"})
_LIBRARY_SEEKS = frozenset({"mf4", "sqlite"})
_LIBRARY_LOGGERS = ("can.io", "asammdf")


def read_with_python_can(src: io.RawIOBase, seekable_path: str | None, want: frozenset[int] | None,
                         st: CaptureStats) -> Iterator[Frame]:
    """The frames of a capture in one of the ``LIBRARY`` formats (``st.format``), through python-can.

    Args:
        src: the source from its first byte (for BLF and the text formats).
        seekable_path: the path of a regular file (MF4 and SQLite need one), else None.

    Raises:
        CaptureError: the reader cannot open the source, or gave up on it.
    """
    label, reader_type = LIBRARY[st.format]
    if st.format in _LIBRARY_SEEKS:
        if seekable_path is None:
            raise CaptureError(f"{label} is read by seeking: give the file's path, not a stream", path=st.path)
        if st.format == "mf4":
            yield from _mf4_in_a_child(seekable_path, label, want, st)
            return
        arg: Any = seekable_path
    elif st.format in _LIBRARY_TEXT:
        arg = (line + "\n" for line in read_lines(text_stream(src), st.path))  # iterated and closed, like a file
    else:
        arg = src
    with _library_warnings_counted(st):
        try:
            reader = reader_type(arg)
        except CaptureError:
            raise
        except Exception as exc:  # python-can raises whatever its format library raises
            raise _library_error(label, "cannot read it", exc, st) from exc
        try:
            yield from _messages(reader, label, want, st)
        finally:
            with contextlib.suppress(Exception):  # closing a reader that already failed
                reader.stop()


def _mf4_in_a_child(path: str, label: str, want: frozenset[int] | None, st: CaptureStats) -> Iterator[Frame]:
    """MF4 through a forked child (``_mf4_child``) that writes its frames as candump ``-l`` lines, read here.

    Raises:
        CaptureError: the child crashed, gave up (python-can's message), or took longer than a minute plus
            a second a MB.
    """
    folder = tempfile.mkdtemp(prefix="battery-gateway-")
    try:
        pid = os.fork()
        if pid == 0:
            _mf4_child(path, folder)
        timeout_s = 60 + st.size_bytes / 1e6
        status = _wait(pid, timeout_s)
        if status is None:
            raise CaptureError(f"{label}: python-can's reader did not finish in {timeout_s:.0f} s", path=st.path)
        if os.WIFSIGNALED(status):
            signame = signal.Signals(os.WTERMSIG(status)).name
            raise CaptureError(f"{label}: python-can's reader crashed ({signame}): a damaged file", path=st.path)
        if os.waitstatus_to_exitcode(status):
            raise CaptureError(f"{label}: python-can's reader cannot read it: {_child_error(folder)}", path=st.path)
        with io.FileIO(Path(folder, "frames.log"), "rb") as frames:
            yield from parse_candump_l(read_lines(text_stream(frames), st.path), want, st)
        st.bytes_read = st.size_bytes
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait(pid: int, timeout_s: float) -> int | None:
    """The child's wait status; None when it was killed for taking longer than ``timeout_s``."""
    finished: list[int] = []
    try:
        pidfd = os.pidfd_open(pid)
        try:
            finished = select.select([pidfd], [], [], timeout_s)[0]
        finally:
            os.close(pidfd)
    finally:
        if not finished:  # too slow, or we are interrupted: no child outlives the read
            os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    return status if finished else None


def _child_error(folder: str) -> str:
    try:
        return Path(folder, "error").read_text()
    except OSError:
        return "no detail"


def _mf4_child(path: str, folder: str) -> NoReturn:
    # The forked child: silent, its frames as candump -l lines (a warning as a "#" line, a bad line there), its
    # error in a file, and gone without running any of the parent's clean-up.
    code = 3
    try:
        tempfile.tempdir = folder  # where asammdf copies an MF4 flagged unfinalised; the parent removes it
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        with Path(folder, "frames.log").open("w") as out:
            for lg in (logging.getLogger(name) for name in _LIBRARY_LOGGERS):
                lg.handlers, lg.propagate = [_CommentHandler(out)], False
            for msg in can.MF4Reader(path):
                out.write(_candump_line(msg))
        code = 0
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            Path(folder, "error").write_text(_describe(exc))
    finally:
        os._exit(code)


def _candump_line(msg: can.Message) -> str:
    try:
        ident = f"{msg.arbitration_id:08X}" if msg.is_extended_id else f"{msg.arbitration_id:03X}"
        data = "R" if msg.is_remote_frame or msg.is_error_frame else bytes(msg.data).hex().upper()
        return f"({float(msg.timestamp):.6f}) can{_bus(msg)} {ident}#{data}\n"
    except (*BAD_LINE, TypeError) as exc:
        return f"# unreadable message: {exc}\n"


def _messages(reader: Iterable[can.Message], label: str, want: frozenset[int] | None,
              st: CaptureStats) -> Iterator[Frame]:
    messages = iter(reader)
    while True:
        try:
            msg = next(messages)
        except StopIteration:
            return
        except CaptureError:
            raise
        except Exception as exc:  # zlib.error, sqlite3.DatabaseError, BLFParseError, KeyError, ...
            raise _library_error(label, f"stopped after {st.lines} messages", exc, st) from exc
        st.lines += 1
        if msg.is_error_frame or msg.is_remote_frame:
            st.events += 1
            continue
        try:
            frame = _message_frame(msg)
        except (*BAD_LINE, TypeError) as exc:
            count_bad(st, st.lines, f"id {msg.arbitration_id!r} at {msg.timestamp!r}", exc, unit="message")
            continue
        if want is not None and frame.can_id not in want:
            st.skipped += 1
            continue
        st.frames += 1
        yield frame


def _bus(msg: can.Message) -> int:
    ch = msg.channel
    return ch if isinstance(ch, int) else int(ch[-1]) if isinstance(ch, str) and ch[-1:].isdigit() else 0


def _message_frame(msg: can.Message) -> Frame:
    return make_frame(float(msg.timestamp), int(msg.arbitration_id), bytes(msg.data), _bus(msg),
                      extended=bool(msg.is_extended_id), tx=not msg.is_rx)


def _describe(exc: BaseException) -> str:
    kind = type(exc).__qualname__
    if type(exc).__module__ not in ("builtins", "__main__"):
        kind = f"{type(exc).__module__}.{kind}"
    detail = "".join(c if c.isprintable() else "?" for c in " ".join(str(exc).split())[:200]) or "no detail"
    hint = " (MF4 needs asammdf: pip install 'battery-gateway[mf4]')" if isinstance(exc, NotImplementedError) else ""
    return f"{kind}: {detail}{hint}"


def _library_error(label: str, what: str, exc: Exception, st: CaptureStats) -> CaptureError:
    return CaptureError(f"{label}: python-can's reader {what}: {_describe(exc)}", path=st.path)


def _one_line(record: logging.LogRecord) -> str:
    text = record.getMessage()
    head, traceback, trace = text.partition("Traceback (most recent call last)")
    if traceback:  # asammdf logs formatted tracebacks: keep what failed, its last line
        text = head + (trace.strip().splitlines() or [""])[-1]
    return f"{record.name}: {' '.join(text.split())[:160]}"


class _CountingHandler(logging.Handler):
    """A library's warnings about the capture, counted as bad lines; its other records go on at DEBUG."""

    def __init__(self, st: CaptureStats) -> None:
        super().__init__(logging.DEBUG)
        self.st = st

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            log.debug("%s: %s", record.name, record.getMessage())
        else:
            count_bad(self.st, self.st.lines + 1, "", _one_line(record), unit="message")


class _CommentHandler(logging.Handler):
    """In the MF4 child: a library's warning as a ``#`` line, which the parent counts as a bad line."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(logging.WARNING)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.write(f"# {_one_line(record)}\n")


@contextlib.contextmanager
def _library_warnings_counted(st: CaptureStats) -> Iterator[None]:
    # Only the counter hears the libraries while a reader runs: asammdf even prints tracebacks itself.
    loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    saved = [(lg.handlers, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [_CountingHandler(st)], False
    try:
        yield
    finally:
        for lg, (handlers, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
