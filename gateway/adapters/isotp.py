"""can-isotp -> ``DiagClient``: one diagnostic request at a time over ISO-TP (normal 11-bit addressing).

The main loop owns the bus: it hands every frame on a response id to ``feed`` and calls ``poll``
often; can-isotp's ``TransportLayer`` runs in its single-threaded mode (``process()``), so there is no
extra thread and frames never race. Requests are padded to 8 bytes; our flow control is
``30 00 00`` (no block limit, no separation time), as LeafSpy and OVMS send it.

Outcomes: ``("ok", reply)``, ``("error", kind, message)`` with kind ``isotp_sequence`` (missing,
duplicated or out-of-order consecutive frame), ``isotp_unexpected``, ``isotp_error``, or
``("timeout", "no reply ...")``. Errors abort the reception: a broken reply gives no value.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import isotp

from ..model import Frame

__all__ = ["DiagOutcome", "IsoTpDiagClient"]

log = logging.getLogger(__name__)
logging.getLogger("isotp").setLevel(logging.ERROR)  # we count and report protocol errors ourselves

DiagOutcome = tuple[str, ...] | tuple[str, bytes]

_KINDS: dict[type[Exception], str] = {
    isotp.WrongSequenceNumberError: "isotp_sequence", isotp.UnexpectedConsecutiveFrameError: "isotp_unexpected",
    isotp.ConsecutiveFrameTimeoutError: "isotp_timeout", isotp.InvalidCanDataError: "isotp_length"}


class IsoTpDiagClient:
    """Implements ``DiagClient``; ``send`` puts one CAN frame (id, data) on the bus."""

    def __init__(self, send: Callable[[int, bytes], None], *, padding: int = 0x00) -> None:
        self._send = send
        self._padding = padding
        self._stacks: dict[tuple[int, int], isotp.TransportLayer] = {}
        self._rx: deque[isotp.CanMessage] = deque()
        self._active: tuple[int, int] | None = None
        self._deadline = 0.0
        self._error: tuple[str, str] | None = None

    @property
    def busy(self) -> bool:
        """A request is in flight."""
        return self._active is not None

    def _stack(self, request_id: int, response_id: int) -> isotp.TransportLayer:
        key = (request_id, response_id)
        if key not in self._stacks:
            self._stacks[key] = isotp.TransportLayer(
                rxfn=self._rxfn, txfn=self._txfn, error_handler=self._on_error,
                address=isotp.Address(isotp.AddressingMode.Normal_11bits, txid=request_id, rxid=response_id),
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

    def start(self, request_id: int, response_id: int, request: bytes, *, timeout_s: float) -> None:
        """Send one request; its outcome comes from ``poll``.

        Raises:
            RuntimeError: a request is still in flight (the ECU serves one at a time).
        """
        if self._active is not None:
            raise RuntimeError("a diagnostic request is already in flight")
        self._rx.clear()
        stack = self._stack(request_id, response_id)
        stack.reset()
        self._active, self._error = (request_id, response_id), None
        self._deadline = time.monotonic() + timeout_s
        stack.send(request)
        stack.process()

    def feed(self, frame: Frame) -> None:
        """A frame seen on a response id. Ignored unless a request to that ECU is in flight."""
        if self._active is not None and frame.can_id == self._active[1]:
            self._rx.append(isotp.CanMessage(arbitration_id=frame.can_id, data=frame.data))

    def poll(self) -> DiagOutcome | None:
        """Drive the transport; return the outcome once the request is done, else None."""
        if self._active is None:
            return None
        stack = self._stacks[self._active]
        stack.process()
        outcome: DiagOutcome | None = None
        if self._error is not None:
            outcome = ("error", *self._error)
        elif stack.available():
            reply = stack.recv()
            if reply is not None and len(reply) >= 3 and reply[0] == 0x7F and reply[2] == 0x78:
                self._deadline = time.monotonic() + 5.0  # NRC 0x78 "response pending": the real one follows
                return None
            outcome = ("ok", bytes(reply)) if reply is not None else None
        elif time.monotonic() > self._deadline:
            outcome = ("timeout", f"no reply on 0x{self._active[1]:03X} to a request on 0x{self._active[0]:03X}")
        if outcome is not None:
            stack.reset()
            self._active = None
        return outcome
