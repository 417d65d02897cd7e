"""The simulated Leaf battery ECU's diagnostic side: answers ISO-TP polls on 0x79B -> 0x7BB (and the
VCM's VIN on 0x797 -> 0x79A) from the ``LeafBattery`` model, with faults a test can switch on.

Written from ``leaf_formulas.md`` §2 and ISO 15765-2, independently of can-isotp (which the gateway
uses), so a test of gateway <-> simulator checks both. ``run_ecu`` sends the broadcast frames and
answers requests on one bus, in real time.

Faults per group (``LbcResponder.faults[group] = kind``): ``nrc`` (``7F 21 12``), ``silent``,
``drop`` (consecutive frame 2 never sent), ``dup`` (consecutive frame 2 sent twice), ``short`` (one
byte less than the generation's layout), ``once-silent`` (silent the first time only), ``pending``
(``7F 21 78`` "response pending" before the reply).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ..model import Frame
from .battery import LeafBattery

__all__ = ["REQUEST_IDS", "Broadcaster", "EcuBus", "LbcResponder", "Responder", "run_ecu", "segment"]

REQUEST_IDS = frozenset({0x79B, 0x797})  # the LBC's and the VCM's request ids: the ECU bus's filters

_GROUP1_LENGTH = {"ze0": 39, "aze0": 41, "ze1": 51}
_TEMP_LENGTH = {"ze0": 14, "aze0": 14, "ze1": 29}


@dataclass
class LbcResponder:
    """Answers the LBC's group requests and the VCM's VIN request. Not thread-safe."""

    battery: LeafBattery
    hx_pct: float = 85.0
    ahr: float | None = None
    serial: str = "230UK1192E001482"
    part_number: str = "3NK2ARB"
    vin: str = "SJNFAAZE1U0012345"
    cell_spread_mv: int = 12
    faults: dict[int, str] = field(default_factory=dict)
    requests: list[int] = field(default_factory=list)  # groups asked for, in order
    overlaps: int = 0  # requests that arrived while a reply was still being sent (the real LBC drops them)
    _pending: list[bytes] = field(default_factory=list)
    _pending_id: int = 0

    # -- payloads ---------------------------------------------------------------------------------
    def _group(self, group: int) -> bytes:
        b, gen = self.battery, self.battery.generation
        if group == 0x01:
            p = bytearray(_GROUP1_LENGTH[gen])
            ahr = self.ahr if self.ahr is not None else b.rated_ah * b.soh_pct / 100
            hx_at, soc_at, ahr_at, hx_scale = (28, 31, 35, 102.4) if gen == "ze1" else (26, 29, 33, 100.0)
            p[hx_at:hx_at + 2] = round(self.hx_pct * hx_scale).to_bytes(2, "big")
            p[soc_at:soc_at + 3] = round(b.soc_pct * 10000).to_bytes(3, "big")
            p[ahr_at:ahr_at + 3] = round(ahr * 10000).to_bytes(3, "big")
            return bytes(p)
        if group == 0x02:
            base = round(b.voltage(0.0) / b.cells * 1000)
            cells = [base + (i * 7919) % (2 * self.cell_spread_mv + 1) - self.cell_spread_mv for i in range(96)]
            pack = round(b.voltage(0.0) * 100)
            return b"".join(c.to_bytes(2, "big") for c in cells) + pack.to_bytes(2, "big") + pack.to_bytes(2, "big")
        if group == 0x04:
            p = bytearray(_TEMP_LENGTH[gen])
            for i, t in enumerate((b.temp_c + 1, b.temp_c, None, b.temp_c - 1)):
                if t is None:
                    p[3 * i:3 * i + 3] = b"\xff\xff\x00"  # 2013+ packs: sensor slot 2 absent
                else:
                    p[3 * i:3 * i + 2] = round(710 - t / 0.102).to_bytes(2, "big")
                    p[3 * i + 2] = round(t) & 0xFF
            return bytes(p)
        if group == 0x06:  # 2 cells balancing: ZE1 one bit per cell + 12 bytes 0xFF, else 4 per byte (8421)
            if gen == "ze1":
                return bytes([0x80, 0x00, 0x01] + [0] * 9 + [0xFF] * 12)
            return bytes([0x01, 0x00, 0x08] + [0] * 21)
        if group == 0x61 and gen == "ze1":
            p = bytearray(329)
            p[2:4] = round(b.soh_pct * 100).to_bytes(2, "big")
            return bytes(p)
        if group == 0x84:
            return self.serial.encode().ljust(18, b" ")[:18] + b"\xa0\x00"
        if group == 0x83:
            return self.part_number.encode()[:7].ljust(24, b"\x00")
        raise KeyError(group)

    # -- ISO-TP ---------------------------------------------------------------------------------
    def on_frame(self, can_id: int, data: bytes) -> list[tuple[int, bytes]]:
        """Frames to send in answer to one received frame (a request or a flow control)."""
        if can_id not in (0x79B, 0x797) or not data:
            return []
        if data[0] >> 4 == 3:  # flow control: release the consecutive frames
            frames, self._pending = self._pending, []
            return [(self._pending_id, f) for f in frames]
        if data[0] >> 4 != 0 or len(data) < 3 or data[1] != 0x21:
            return []
        group = data[2]
        if self._pending:
            self.overlaps += 1
        reply_id = 0x7BB if can_id == 0x79B else 0x79A
        fault = ""
        if can_id == 0x797:
            if group != 0x81:
                return []
            message = b"\x61\x81" + self.vin.encode() + b"\x00\x00"
        else:
            self.requests.append(group)
            fault = self.faults.get(group, "")
            if fault == "once-silent":
                del self.faults[group]
                return []
            if fault == "silent":
                return []
            if fault == "nrc":
                return [(reply_id, bytes([0x03, 0x7F, 0x21, 0x12, 0, 0, 0, 0]))]
            try:
                payload = self._group(group)
            except KeyError:
                return [(reply_id, bytes([0x03, 0x7F, 0x21, 0x31, 0, 0, 0, 0]))]  # request out of range
            message = b"\x61" + bytes([group]) + (payload[:-1] if fault == "short" else payload)
        frames = segment(message)
        first = [(reply_id, bytes([0x03, 0x7F, 0x21, 0x78, 0, 0, 0, 0]))] if fault == "pending" else []
        if len(frames) == 1:
            return [*first, (reply_id, frames[0])]
        cfs = frames[1:]
        if fault == "drop" and len(cfs) > 2:
            cfs = cfs[:1] + cfs[2:]
        elif fault == "dup" and len(cfs) > 2:
            cfs = cfs[:2] + cfs[1:]
        self._pending, self._pending_id = cfs, reply_id
        return [*first, (reply_id, frames[0])]


def segment(message: bytes, *, address: int | None = None) -> list[bytes]:
    """Split a message into ISO-TP frames (single, or first + consecutive), padded with 00 to 8 bytes; with
    extended addressing, each frame starts with ``address``."""
    head = b"" if address is None else bytes([address])
    room = 7 - len(head)  # data bytes after the PCI byte
    if len(message) <= room:
        return [head + bytes([len(message)]) + message.ljust(room, b"\x00")]
    frames = [head + bytes([0x10 | len(message) >> 8, len(message) & 0xFF]) + message[:room - 1]]
    rest, sn = message[room - 1:], 1
    while rest:
        frames.append(head + bytes([0x20 | sn]) + rest[:room].ljust(room, b"\x00"))
        rest, sn = rest[room:], (sn + 1) & 0x0F
    return frames


class Broadcaster(Protocol):
    """What sends the broadcast frames: ``LeafBattery`` or ``ProfileBms``."""

    def frames(self, duration_s: float) -> Iterator[Frame]: ...


class Responder(Protocol):
    """What answers diagnostic requests: ``LbcResponder`` or ``ProfileBms``."""

    def on_frame(self, can_id: int, data: bytes) -> list[tuple[int, bytes]]: ...


class EcuBus(Protocol):
    """The bus the simulated ECU sits on (``adapters.can_bus.PythonCanBus`` listening to the request ids)."""

    def recv(self, timeout_s: float) -> Frame | None: ...

    def send(self, can_id: int, data: bytes) -> None: ...


def run_ecu(battery: Broadcaster, bus: EcuBus, *, duration_s: float, stop: Callable[[], bool],
            responder: Responder | None = None, broadcast: bool = True) -> int:
    """Broadcast the battery's frames in real time and answer diagnostic requests. Returns frames sent."""
    start = time.time()
    frames = iter(battery.frames(duration_s)) if broadcast else iter(())
    upcoming = next(frames, None)
    sent = 0
    end = start + duration_s
    while not stop() and time.time() < end:
        wait = 0.05 if upcoming is None else max(0.0, start + upcoming.ts - time.time())
        frame = bus.recv(min(wait, 0.05)) if wait > 0 else None
        if frame is not None and responder is not None:
            for can_id, data in responder.on_frame(frame.can_id, frame.data):
                bus.send(can_id, data)
                sent += 1
        while upcoming is not None and start + upcoming.ts <= time.time():
            bus.send(upcoming.can_id, upcoming.data)
            sent += 1
            upcoming = next(frames, None)
    return sent
