"""can-isotp -> ``DiagClient``: one diagnostic request at a time over ISO-TP (normal addressing with 11-bit or
29-bit ids, an id above 0x7FF being 29-bit; extended addressing, the ECU's address in each frame's first byte,
when a poll names one).

Two transports, one behaviour:

- ``KernelIsoTpDiagClient`` (SocketCAN on Linux): the kernel's ISO-TP sockets (``isotp.socket``, module
  ``can-isotp``) send the request, the flow control and time the frames; the main loop only asks the
  socket, without blocking, whether the reply is complete. A socket is bound for one request and closed
  with its outcome: the kernel answers every first frame on a bound socket's response id with flow
  control, and the gateway must not answer replies another tester asked for. ``open_diag_client`` picks
  it for the ``socketcan`` interface and falls back to the user-space stack when the kernel lacks the
  module.
- ``IsoTpDiagClient`` (every other interface): the main loop owns the bus, hands every frame on a
  response id to ``feed`` and calls ``poll`` often; can-isotp's ``TransportLayer`` runs in its
  single-threaded mode (``process()``), so there is no extra thread and frames never race. It only
  takes frames while its own request is in flight.

Requests are padded to 8 bytes; our flow control is ``30 00 00`` (no block limit, no separation time),
as LeafSpy and OVMS send it. A negative reply 0x78 ("response pending") extends the wait by 5 s, at
most ``MAX_PENDING`` times.

Outcomes: ``("ok", reply)``, ``("error", kind, message)`` with kind ``isotp_sequence`` (missing,
duplicated or out-of-order consecutive frame), ``isotp_unexpected``, ``isotp_length``, ``isotp_padding``,
``isotp_timeout`` (the reply stopped half way), ``isotp_error``, or ``can_send`` (the request or our
flow control could not be sent: no ACK, a full transmit queue, the interface down), or
``("timeout", message)``. A poll that failed is retried by its schedule; the daemon goes on.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import deque
from collections.abc import Callable

import isotp

from ..errors import BusError
from ..model import Frame

__all__ = ["DiagOutcome", "IsoTpDiagClient", "KernelIsoTpDiagClient", "open_diag_client"]

log = logging.getLogger(__name__)
logging.getLogger("isotp").setLevel(logging.ERROR)  # we count and report protocol errors ourselves

DiagOutcome = tuple[str, ...] | tuple[str, bytes]
MAX_PENDING = 10  # "response pending" replies accepted for one request (5 s each)

_KINDS: dict[type[Exception], str] = {
    isotp.WrongSequenceNumberError: "isotp_sequence", isotp.UnexpectedConsecutiveFrameError: "isotp_unexpected",
    isotp.ConsecutiveFrameTimeoutError: "isotp_timeout", isotp.InvalidCanDataError: "isotp_length"}


def _address(request_id: int, response_id: int, ext: tuple[int, int] | None) -> isotp.Address:
    """can-isotp's address: 29-bit when an id needs it; extended addressing when ``ext`` (target, source)."""
    wide = max(request_id, response_id) > 0x7FF
    if ext is None:
        mode = isotp.AddressingMode.Normal_29bits if wide else isotp.AddressingMode.Normal_11bits
        return isotp.Address(mode, txid=request_id, rxid=response_id)
    mode = isotp.AddressingMode.Extended_29bits if wide else isotp.AddressingMode.Extended_11bits
    return isotp.Address(mode, txid=request_id, rxid=response_id, target_address=ext[0], source_address=ext[1])


class _OneRequest:
    """What both transports share: one request in flight, the time its reply is due, and the "response
    pending" replies (NRC 0x78) that move that time on."""

    _active: tuple[int, int] | None = None
    _deadline = 0.0
    _pending = 0

    @property
    def busy(self) -> bool:
        """A request is in flight."""
        return self._active is not None

    def _pending_again(self, reply: bytes | bytearray | None) -> bool:
        """True when ``reply`` says "response pending" (at most ``MAX_PENDING`` times): the real one is due 5 s
        from now."""
        if reply is None or len(reply) < 3 or reply[0] != 0x7F or reply[2] != 0x78 or self._pending >= MAX_PENDING:
            return False
        self._pending += 1
        self._deadline = time.monotonic() + 5.0
        return True


class IsoTpDiagClient(_OneRequest):
    """Implements ``DiagClient``; ``send`` puts one CAN frame (id, data) on the bus."""

    def __init__(self, send: Callable[[int, bytes], None], *, padding: int = 0x00) -> None:
        self._send = send
        self._ext: tuple[int, int] | None = None
        self._padding = padding
        self._stacks: dict[tuple[int, int, tuple[int, int] | None], isotp.TransportLayer] = {}
        self._rx: deque[isotp.CanMessage] = deque()
        self._error: tuple[str, str] | None = None

    def _stack(self, request_id: int, response_id: int, ext: tuple[int, int] | None) -> isotp.TransportLayer:
        key = (request_id, response_id, ext)
        if key not in self._stacks:
            self._stacks[key] = isotp.TransportLayer(
                rxfn=self._rxfn, txfn=self._txfn, error_handler=self._on_error,
                address=_address(request_id, response_id, ext),
                params={"stmin": 0, "blocksize": 0, "tx_padding": self._padding, "tx_data_min_length": 8,
                        "rx_flowcontrol_timeout": 1000, "rx_consecutive_frame_timeout": 1000})
        return self._stacks[key]

    def _rxfn(self, timeout: float = 0.0) -> isotp.CanMessage | None:
        return self._rx.popleft() if self._rx else None

    def _txfn(self, msg: isotp.CanMessage) -> None:
        self._send(msg.arbitration_id, bytes(msg.data))

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, isotp.UnexpectedConsecutiveFrameError):
            return  # the tail of a reply we already gave up on: can-isotp ignores it, so do we
        if self._error is None and self._active is not None:
            self._error = (_KINDS.get(type(exc), "isotp_error"), str(exc))

    def close(self) -> None:
        """Nothing to release: the bus belongs to the caller."""

    def start(self, request_id: int, response_id: int, request: bytes, *, timeout_s: float,
              ext: tuple[int, int] | None = None) -> None:
        """Send one request; its outcome comes from ``poll``.

        Raises:
            RuntimeError: a request is still in flight (the ECU serves one at a time).
        """
        if self._active is not None:
            raise RuntimeError("a diagnostic request is already in flight")
        self._rx.clear()
        stack = self._stack(request_id, response_id, ext)
        stack.reset()
        self._active, self._error, self._pending = (request_id, response_id), None, 0
        self._ext = ext
        self._deadline = time.monotonic() + timeout_s
        stack.send(request)
        self._process(stack)

    def _process(self, stack: isotp.TransportLayer) -> None:
        try:
            stack.process()  # sends the request, and our flow control, through ``send``
        except BusError as exc:
            if self._error is None:
                self._error = ("can_send", str(exc))

    def feed(self, frame: Frame) -> None:
        """A frame seen on a response id. Ignored unless a request to that ECU is in flight."""
        if self._active is not None and frame.can_id == self._active[1]:
            self._rx.append(isotp.CanMessage(arbitration_id=frame.can_id, data=frame.data,
                                             extended_id=frame.can_id > 0x7FF))

    def poll(self) -> DiagOutcome | None:
        """Drive the transport; return the outcome once the request is done, else None."""
        if self._active is None:
            return None
        stack = self._stacks[(*self._active, self._ext)]
        self._process(stack)
        outcome: DiagOutcome | None = None
        if self._error is not None:
            outcome = ("error", *self._error)
        elif stack.available():
            reply = stack.recv()
            if self._pending_again(reply):
                return None
            outcome = ("ok", bytes(reply)) if reply is not None else None
        elif time.monotonic() > self._deadline:
            outcome = ("timeout", _no_reply(self._active, self._pending))
        if outcome is not None:
            stack.reset()
            self._active = None
        return outcome


# what the kernel reports on an ISO-TP socket when a transfer breaks (net/can/isotp.c)
_ERRNO_KINDS = {errno.EILSEQ: "isotp_sequence", errno.ETIMEDOUT: "isotp_timeout", errno.EBADMSG: "isotp_padding",
                errno.EMSGSIZE: "isotp_length", errno.ECOMM: "can_send"}


class KernelIsoTpDiagClient(_OneRequest):
    """Implements ``DiagClient`` with the Linux kernel's ISO-TP sockets: one per request, closed with its outcome.

    Frames never pass through the main loop: ``feed`` is a no-op, and ``poll`` reads the socket without
    blocking. The kernel answers the ECU's first frame with our flow control itself, at bus speed.
    """

    def __init__(self, channel: str, *, padding: int = 0x00) -> None:
        """Raises:
            BusError: the kernel has no ISO-TP sockets (module ``can-isotp`` missing) or no such interface.
        """
        self._channel, self._padding = channel, padding
        self._socket: isotp.socket | None = None
        self._failed: DiagOutcome | None = None
        self._bind(0x7DF, 0x7E8).close()  # fail now, not at the first poll, when the kernel cannot do it

    def _bind(self, request_id: int, response_id: int, ext: tuple[int, int] | None = None) -> isotp.socket:
        s: isotp.socket | None = None
        try:
            s = isotp.socket(timeout=None)
            s.set_opts(txpad=self._padding)
            s.set_fc_opts(bs=0, stmin=0)
            s.bind(self._channel, _address(request_id, response_id, ext))
            s.real_socket().setblocking(False)
        except (OSError, ValueError, NotImplementedError, AttributeError) as exc:  # AttributeError: no AF_CAN
            if s is not None:
                s.close()
            raise BusError(f"can: no kernel ISO-TP socket on {self._channel} ({exc})") from exc
        return s

    def start(self, request_id: int, response_id: int, request: bytes, *, timeout_s: float,
              ext: tuple[int, int] | None = None) -> None:
        """Send one request; its outcome (a refused send included) comes from ``poll``.

        Raises:
            RuntimeError: a request is still in flight (the ECU serves one at a time).
        """
        if self._active is not None:
            raise RuntimeError("a diagnostic request is already in flight")
        self._active, self._deadline, self._pending = (request_id, response_id), time.monotonic() + timeout_s, 0
        try:
            self._socket = self._bind(request_id, response_id, ext)
            self._socket.send(request)
        except (BusError, OSError) as exc:
            self._failed = ("error", "can_send", f"request on 0x{request_id:03X}: {exc}")

    def feed(self, frame: Frame) -> None:
        """Nothing to do: the kernel reassembles the reply."""

    def poll(self) -> DiagOutcome | None:
        """The outcome once the request is done, else None (never blocks)."""
        if self._active is None:
            return None
        outcome, self._failed = self._failed, None
        if outcome is None and self._socket is not None:
            try:
                reply = self._socket.recv()
            except BlockingIOError:
                if time.monotonic() > self._deadline:
                    outcome = ("timeout", _no_reply(self._active, self._pending))
            except OSError as exc:
                outcome = ("error", _ERRNO_KINDS.get(exc.errno or 0, "isotp_error"),
                           f"0x{self._active[1]:03X}: {exc.strerror or exc}")
            else:
                if self._pending_again(reply):
                    return None
                outcome = ("ok", bytes(reply))
        if outcome is not None:
            self.close()
        return outcome

    def close(self) -> None:
        """Drop the request in flight, if any, and its socket."""
        if self._socket is not None:
            self._socket.close()
        self._socket, self._active, self._failed = None, None, None


def _no_reply(ids: tuple[int, int], pending: int) -> str:
    after = f" after {pending} 'response pending'" if pending else ""
    return f"no reply on 0x{ids[1]:03X} to a request on 0x{ids[0]:03X}{after}"


def open_diag_client(interface: str, channel: str, send: Callable[[int, bytes], None]
                     ) -> IsoTpDiagClient | KernelIsoTpDiagClient:
    """The ISO-TP transport for a bus: the kernel's on ``socketcan``, the user-space stack elsewhere (and
    on a kernel without ``can-isotp``, said once in the log)."""
    if interface == "socketcan":
        try:
            return KernelIsoTpDiagClient(channel)
        except BusError as exc:
            log.warning("%s: polling through the user-space ISO-TP stack instead", exc)
    return IsoTpDiagClient(send)
