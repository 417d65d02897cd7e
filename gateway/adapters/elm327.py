"""ELM327 / STN OBD dongles as the CAN transport (``[can] interface = "elm327"``): USB, Bluetooth (an RFCOMM
tty) or Wi-Fi (TCP), through pyserial's ``serial_for_url`` (``/dev/ttyUSB0``, ``/dev/rfcomm0``,
``socket://192.168.0.10:35000``; a baud rate other than 38400 as ``/dev/ttyUSB0@115200``).

One object is both the ``FrameSource`` and the ``DiagClient``: the dongle holds one conversation at a time.

- Polls go through the dongle's own ISO-TP: ``AT SH`` (the request id), ``AT CRA`` (only the reply id is let
  through), the request in hex; the dongle sends the flow control (``AT CAF1``). Headers are on (``AT H1``),
  so every reply line is one CAN frame, id and PCI byte included: ``7EC 10 3E 62 01 01 FF F7 E7``. The lines
  are checked strictly (id, hex, at most 8 bytes) and reassembled by can-isotp in listen mode, so a missing,
  duplicated or out-of-order frame is refused as it is on a CAN HAT.
- Broadcast frames a profile needs are monitored in turn, one id at a time (``AT CRA id``, ``AT MA`` for
  ``monitor_s``, stopped by one space, which the dongle discards and would ignore in a command): a cheap
  dongle cannot pass a 500 kbit/s bus, and ``BUFFER FULL`` says so. The car's frames therefore arrive as
  samples, a few per id and cycle; counters that integrate the current see gaps (docs/transport.md).
- The dongle's failure strings are outcomes with a clear message: ``NO DATA`` (a timeout), ``CAN ERROR``,
  ``UNABLE TO CONNECT``, ``BUS ERROR``, ``FB ERROR`` (``can_send``: the bus refused us), ``BUFFER FULL``,
  ``STOPPED``, ``DATA ERROR``, ``<RX ERROR``, ``?`` (``adapter``).
- A link that drops (Bluetooth out of range, Wi-Fi gone, the dongle unplugged) is reopened every
  ``reconnect_s``; until then polls fail with ``can_send`` and no frames arrive.

Only normal addressing with 11-bit ids: a poll with a 29-bit id or extended addressing is refused when the
transport opens (the dongles can, the ELM327-emulator the tests use cannot, so it is not offered untested).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Iterable

import isotp
import serial

from ..errors import BusError, ConfigError
from ..model import Frame

__all__ = ["Elm327", "elm_channel"]

log = logging.getLogger(__name__)

_PROMPT = b">"
_LINE = re.compile(r"[0-9A-F]{3}(?: [0-9A-F]{2}){1,8}")
_SEND_ERRORS = ("CAN ERROR", "UNABLE TO CONNECT", "BUS ERROR", "BUS BUSY", "FB ERROR", "ERR")
_ADAPTER_ERRORS = ("BUFFER FULL", "STOPPED", "DATA ERROR", "<RX ERROR", "?", "ACT ALERT", "LV RESET")
_INFO = ("SEARCHING...", "OK", "")
_KINDS: dict[type[Exception], str] = {
    isotp.WrongSequenceNumberError: "isotp_sequence", isotp.UnexpectedConsecutiveFrameError: "isotp_unexpected",
    isotp.ConsecutiveFrameTimeoutError: "isotp_timeout", isotp.InvalidCanDataError: "isotp_length"}
_PROTOCOLS = {500_000: "6", 250_000: "8"}  # ISO 15765-4 CAN, 11-bit ids, at 500 / 250 kbit/s


def elm_channel(channel: str) -> tuple[str, int]:
    """The pyserial URL and baud rate of a ``can.channel`` (``/dev/ttyUSB0@115200`` -> that tty at 115200).

    Raises:
        ConfigError: a baud rate that is not a number.
    """
    url, _, baud = channel.partition("@") if not channel.startswith("socket://") else (channel, "", "")
    try:
        return url, int(baud) if baud else 38400
    except ValueError:
        raise ConfigError(f"can.channel: {channel!r}: the baud rate after @ must be a number") from None


class Elm327:
    """An ELM327-compatible dongle: implements ``FrameSource`` (``recv``) and ``DiagClient``."""

    def __init__(self, channel: str, *, bitrate: int, broadcast_ids: Iterable[int] = (), monitor_s: float = 0.3,
                 reconnect_s: float = 5.0, command_timeout_s: float = 2.0) -> None:
        """Open the link and set the dongle up.

        Raises:
            BusError: the link cannot be opened, or what answers is not an ELM327.
            ConfigError: a bitrate the dongle's CAN protocols do not offer.
        """
        if bitrate not in _PROTOCOLS:
            raise ConfigError(f"can.bitrate: {bitrate} with elm327: the dongles' CAN protocols run at "
                              f"{' or '.join(str(b) for b in _PROTOCOLS)} bit/s")
        self._url, self._baud = elm_channel(channel)
        self._protocol = _PROTOCOLS[bitrate]
        self._broadcast = sorted(broadcast_ids)
        self._monitor_s, self._reconnect_s, self._command_timeout_s = monitor_s, reconnect_s, command_timeout_s
        self._backoff_s = reconnect_s  # doubles while the dongle stays away, up to a minute
        self._link: serial.SerialBase | None = None
        self._buffer = bytearray()
        self._frames: deque[Frame] = deque()
        self._next_id = 0
        self._header = self._filter = ""
        self._down_since: float | None = None
        self._active: tuple[int, int] | None = None
        self._deadline = 0.0
        self._outcome: tuple[str, ...] | tuple[str, bytes] | None = None
        self.version = ""
        self._open()

    # -- the link ---------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self._link = serial.serial_for_url(self._url, baudrate=self._baud, timeout=0, write_timeout=1.0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise BusError(f"can: cannot open the ELM327 at {self._url}: {exc}") from exc
        self._buffer.clear()
        self._header = self._filter = ""
        try:
            self._settle()
            for _ in range(2):  # the settling character, or a half-typed line a previous run left, spoils one ATZ
                banner = self._command("ATZ", timeout_s=3.0)
                self.version = next((line for line in banner if "ELM327" in line or "STN" in line), "")
                if self.version:
                    break
            if not self.version:
                raise BusError(f"can: {self._url} answers ATZ with {banner!r}, not as an ELM327")
            for cmd in ("ATE0", "ATL0", "ATS1", "ATH1", "ATCAF1", "ATAT1", f"ATSP{self._protocol}", "ATST FA"):
                lines = self._command(cmd)
                if "?" in lines:
                    raise BusError(f"can: the ELM327 at {self._url} does not know {cmd} ({self.version})")
        except BusError:
            self._close_link()
            raise
        self._down_since, self._backoff_s = None, self._reconnect_s
        log.info("ELM327 %s at %s: protocol %s, %d broadcast ids monitored in turn", self.version, self._url,
                 self._protocol, len(self._broadcast))

    def _settle(self) -> None:
        """Stop whatever the dongle is doing and drop what it printed: one character ends a monitor (the
        dongle discards the character that stops it); an idle dongle keeps it in its line, so that the first
        ATZ becomes an unknown command ('?') and the second one resets. Never a bare CR: that repeats the
        dongle's last command (ATMA, or a request to the car)."""
        self._write(b"X")
        quiet_since, deadline = time.monotonic(), time.monotonic() + 2.0
        while time.monotonic() - quiet_since < 0.3 and time.monotonic() < deadline:
            before = len(self._buffer)
            self._pump()
            if len(self._buffer) != before:
                quiet_since = time.monotonic()
            time.sleep(0.01)
        self._buffer.clear()

    def _close_link(self) -> None:
        if self._link is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self._link.close()
        self._link = None

    def _dropped(self, exc: Exception) -> None:
        if self._down_since is None:
            log.warning("ELM327 at %s: the link dropped (%s); reopening it, first after %.0f s", self._url, exc,
                        self._reconnect_s)
            self._down_since = time.monotonic()
        self._close_link()

    def _reconnect(self) -> bool:
        """True when the link is up. A dropped one is reopened after ``reconnect_s``, then after twice that
        each time it fails, up to a minute: each attempt (open, reset) holds the main loop for seconds."""
        if self._link is not None:
            return True
        if self._down_since is not None and time.monotonic() - self._down_since < self._backoff_s:
            return False
        try:
            self._open()
        except (BusError, ConfigError) as exc:
            self._down_since = time.monotonic()
            self._backoff_s = min(60.0, self._backoff_s * 2)
            log.debug("ELM327 at %s: still down (%s)", self._url, exc)
            return False
        log.info("ELM327 at %s: link back", self._url)
        return True

    def _write(self, data: bytes) -> None:
        if self._link is None:
            raise BusError(f"can: the ELM327 link at {self._url} is down")
        try:
            self._link.write(data)
        except (serial.SerialException, OSError) as exc:
            self._dropped(exc)
            raise BusError(f"can: the ELM327 link at {self._url} dropped: {exc}") from exc

    def _pump(self) -> None:
        """Read what the link has (never blocks)."""
        if self._link is None:
            return
        try:
            data = self._link.read(4096)
        except (serial.SerialException, OSError) as exc:
            self._dropped(exc)
            return
        self._buffer += data

    def _read_until_prompt(self, timeout_s: float) -> list[str] | None:
        """The lines before the next ``>`` prompt, or None after ``timeout_s`` (blocks: set-up, header changes,
        the end of a monitor)."""
        deadline = time.monotonic() + timeout_s
        while _PROMPT not in self._buffer:
            if time.monotonic() > deadline or self._link is None:
                return None
            self._pump()
            time.sleep(0.005)
        return self._take_answer()

    def _take_answer(self) -> list[str]:
        """The lines before the prompt in the buffer, removed from it."""
        at = self._buffer.index(_PROMPT)
        text = bytes(self._buffer[:at]).decode("ascii", "replace").replace("\x00", "")
        del self._buffer[:at + 1]
        return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]

    def _command(self, cmd: str, *, timeout_s: float | None = None) -> list[str]:
        """Send an AT command and wait for its answer (setup and header changes).

        Raises:
            BusError: no prompt within the timeout, or the link dropped.
        """
        self._write(cmd.encode() + b"\r")
        lines = self._read_until_prompt(timeout_s or self._command_timeout_s)
        if lines is None:
            self._dropped(TimeoutError(f"no answer to {cmd}"))
            raise BusError(f"can: the ELM327 at {self._url} did not answer {cmd}")
        return lines

    def _set(self, header: str, filter_id: str) -> None:
        if header and header != self._header:
            self._expect_ok(f"ATSH{header}")
            self._header = header
        if filter_id != self._filter:
            self._expect_ok(f"ATCRA{filter_id}")
            self._filter = filter_id

    def _expect_ok(self, cmd: str) -> None:
        lines = self._command(cmd)
        if "OK" not in lines:
            raise BusError(f"can: the ELM327 at {self._url} answers {cmd} with {' '.join(lines)!r}")

    # -- FrameSource ------------------------------------------------------------------------------
    def recv(self, timeout_s: float) -> Frame | None:
        """A monitored broadcast frame, or None after ``timeout_s``; monitors the next id when idle."""
        if not self._frames and self._active is None and self._broadcast and self._reconnect():
            self._monitor_next()
        if not self._frames:
            time.sleep(min(timeout_s, 0.01))
        return self._frames.popleft() if self._frames else None

    def send(self, can_id: int, data: bytes) -> None:
        """Raw frames cannot be sent through the dongle (it sends requests itself).

        Raises:
            BusError: always.
        """
        raise BusError("can: elm327 sends diagnostic requests only, not raw frames")

    def _monitor_next(self) -> None:
        can_id = self._broadcast[self._next_id % len(self._broadcast)]
        self._next_id += 1
        try:
            self._set("", f"{can_id:03X}")
            self._write(b"ATMA\r")
            end = time.monotonic() + self._monitor_s
            while time.monotonic() < end and _PROMPT not in self._buffer:
                self._pump()
                time.sleep(0.005)
            if _PROMPT not in self._buffer:
                self._write(b" ")  # stop monitoring; the dongle answers STOPPED and a prompt
            lines = self._read_until_prompt(self._command_timeout_s)
        except BusError as exc:
            log.debug("ELM327 monitor 0x%03X: %s", can_id, exc)
            return
        if lines is None:
            self._dropped(TimeoutError("monitoring did not stop"))
            return
        now = time.time()
        for line in lines:
            frame = _frame(line, now)
            if frame is not None and frame.can_id == can_id:
                self._frames.append(frame)
            elif line not in ("STOPPED", *_INFO):
                log.debug("ELM327 monitor 0x%03X: line %r ignored", can_id, line)
            if line == "BUFFER FULL":
                log.warning("ELM327: BUFFER FULL while monitoring 0x%03X (the dongle cannot keep up)", can_id)

    # -- DiagClient -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A request is in flight."""
        return self._active is not None

    def start(self, request_id: int, response_id: int, request: bytes, *, timeout_s: float,
              ext: tuple[int, int] | None = None) -> None:
        """Send one request; its outcome comes from ``poll``.

        Raises:
            RuntimeError: a request is still in flight.
        """
        if self._active is not None:
            raise RuntimeError("a diagnostic request is already in flight")
        self._active, self._outcome = (request_id, response_id), None
        self._deadline = time.monotonic() + timeout_s + 1.0  # the dongle's own timeout (AT ST) comes first
        if ext is not None or max(request_id, response_id) > 0x7FF:
            self._outcome = ("error", "adapter", f"elm327: 0x{request_id:X} needs 29-bit ids or extended addressing, "
                                                 "which this transport does not offer")
            return
        if not self._reconnect():
            self._outcome = ("error", "can_send", f"elm327: the link at {self._url} is down")
            return
        try:
            self._set(f"{request_id:03X}", f"{response_id:03X}")
            self._write(request.hex().upper().encode() + b"\r")
        except BusError as exc:
            self._outcome = ("error", "can_send", str(exc))

    def feed(self, frame: Frame) -> None:
        """Nothing to do: the dongle hands over whole replies."""

    def poll(self) -> tuple[str, ...] | tuple[str, bytes] | None:
        """The outcome once the dongle answered (its prompt), else None (never blocks)."""
        if self._active is None:
            return None
        if self._outcome is None:
            self._pump()
            if _PROMPT in self._buffer:
                self._outcome = self._answer(self._take_answer())
            elif time.monotonic() > self._deadline:
                self._dropped(TimeoutError("no prompt"))
                self._outcome = ("timeout", f"elm327: no answer from the dongle to a request on "
                                            f"0x{self._active[0]:03X}")
        outcome, self._outcome = self._outcome, None
        if outcome is not None:
            self._active = None
        return outcome

    def _answer(self, lines: list[str]) -> tuple[str, ...] | tuple[str, bytes]:
        """The outcome of a request from the dongle's lines."""
        assert self._active is not None
        request_id, response_id = self._active
        errors = [line for line in lines if line in _SEND_ERRORS or line in _ADAPTER_ERRORS]
        if "NO DATA" in lines:
            return ("timeout", f"no reply on 0x{response_id:03X} to a request on 0x{request_id:03X} (NO DATA)")
        if errors:
            kind = "can_send" if errors[0] in _SEND_ERRORS else "adapter"
            return ("error", kind, f"elm327: {errors[0]} (request on 0x{request_id:03X})")
        frames: list[Frame] = []
        now = time.time()
        for line in lines:
            if line in _INFO:
                continue
            frame = _frame(line, now)
            if frame is None or frame.can_id != response_id:
                return ("error", "adapter", f"elm327: unexpected line {line[:40]!r} in the reply on "
                                            f"0x{response_id:03X}")
            frames.append(frame)
        return _reassemble(request_id, response_id, frames)

    def close(self) -> None:
        """Drop the request in flight and close the link."""
        self._active = None
        self._close_link()


def _frame(line: str, ts: float) -> Frame | None:
    """One line in headers-on format (``7EC 10 3E 62 01 01 FF F7 E7``) as a frame, else None."""
    if not _LINE.fullmatch(line):
        return None
    parts = line.split()
    return Frame(ts, int(parts[0], 16), bytes(int(p, 16) for p in parts[1:]))


def _reassemble(request_id: int, response_id: int, frames: list[Frame]) -> tuple[str, ...] | tuple[str, bytes]:
    """The ISO-TP message in ``frames`` (can-isotp in listen mode: it checks, it sends nothing)."""
    if not frames:
        return ("timeout", f"no reply on 0x{response_id:03X} to a request on 0x{request_id:03X}")
    rx: deque[isotp.CanMessage] = deque(isotp.CanMessage(arbitration_id=f.can_id, data=f.data) for f in frames)
    errors: list[Exception] = []

    def rxfn(timeout: float = 0.0) -> isotp.CanMessage | None:
        return rx.popleft() if rx else None

    stack = isotp.TransportLayer(
        rxfn=rxfn, txfn=lambda msg: None,
        address=isotp.Address(isotp.AddressingMode.Normal_11bits, txid=request_id, rxid=response_id),
        error_handler=errors.append, params={"listen_mode": True, "rx_consecutive_frame_timeout": 5000})
    messages: list[bytes] = []
    while rx:
        stack.process()
        while stack.available():
            message = stack.recv()
            if message is not None:
                messages.append(bytes(message))
    if errors:
        return ("error", _KINDS.get(type(errors[0]), "isotp_error"), f"0x{response_id:03X}: {errors[0]}")
    pending = [m for m in messages if len(m) >= 3 and m[0] == 0x7F and m[2] == 0x78]
    replies = [m for m in messages if m not in pending]  # "response pending" comes before the real one
    if len(replies) > 1:
        return ("error", "adapter", f"0x{response_id:03X}: {len(replies)} replies to one request")
    if replies:
        return ("ok", replies[0])
    if pending:
        return ("timeout", f"no reply on 0x{response_id:03X} after {len(pending)} 'response pending'")
    return ("error", "isotp_incomplete", f"0x{response_id:03X}: the reply stopped short of its length")
