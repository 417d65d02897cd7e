"""Passive ISO-TP reassembly: rebuild the diagnostic replies someone else's tester asked for, from the
frames seen on the bus (normal addressing, 11- or 29-bit ids; extended addressing on the ids ``ext`` names: their
frames start with the tester's address, and frames for another address are not part of the reply). Used by
``replay``; the daemon polls actively through can-isotp instead.

Invariant: strict. A message is handed out only when its single or first frame announced a length and
consecutive frames arrived with sequence numbers 1, 2, ... 15, 0, 1 ... without a gap, duplicate or
pause over ``max_gap_s``, until that length. Anything else raises ``DecodeError`` (kind
``isotp_sequence``, ``isotp_length``, ``isotp_unexpected``, ``isotp_timeout``) and drops the message:
a duplicated or missing frame gives no value, never a garbage Hx. A message still short of its length
when the input ends (a capture cut off mid-reply) is handed back by ``finish`` as an error of kind
``isotp_incomplete``, so it is counted like any other broken reply. Streams are keyed by CAN id only,
so the same reply seen twice on two buses counts as duplicated frames. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import DecodeError
from ..model import Frame

__all__ = ["PassiveIsoTp"]


@dataclass
class _Partial:
    length: int
    data: bytearray = field(default_factory=bytearray)
    next_sn: int = 1
    last_ts: float = 0.0


class PassiveIsoTp:
    """Reassembles messages on a set of CAN ids."""

    def __init__(self, ids: frozenset[int], *, max_gap_s: float = 1.0, ext: Mapping[int, int] | None = None) -> None:
        self.ids = ids
        self.max_gap_s = max_gap_s
        self._ext = dict(ext or {})  # CAN id -> the address byte its reply frames start with
        self._partial: dict[int, _Partial] = {}

    def feed(self, frame: Frame) -> bytes | None:
        """Take one frame of a watched id; return a complete message, or None while one is in progress.

        Raises:
            DecodeError: the frame broke a message in progress, or is malformed.
        """
        data, cid = frame.data, frame.can_id
        full = 8
        if cid in self._ext:  # extended addressing: the first byte says for whom
            if not data or data[0] != self._ext[cid]:
                return None
            data, full = data[1:], 7
        if not data:
            raise DecodeError(f"0x{cid:03X}: empty ISO-TP frame", frame_id=cid, kind="isotp_length")
        pci = data[0] >> 4
        if pci == 0:  # single frame
            self._abort(cid)
            n = data[0] & 0x0F
            if not 1 <= n <= len(data) - 1:
                raise DecodeError(f"0x{cid:03X}: single frame announces {n} bytes in {len(data)}", frame_id=cid,
                                  kind="isotp_length")
            return bytes(data[1:1 + n])
        if pci == 1:  # first frame
            broken = self._partial.pop(cid, None)
            length = (data[0] & 0x0F) << 8 | (data[1] if len(data) > 1 else 0)
            if length < full or len(data) < full:
                raise DecodeError(f"0x{cid:03X}: first frame with length {length}", frame_id=cid,
                                  kind="isotp_length")
            self._partial[cid] = _Partial(length, bytearray(data[2:full]), 1, frame.ts)
            if broken is not None:
                raise DecodeError(f"0x{cid:03X}: new first frame before the last message was complete",
                                  frame_id=cid, kind="isotp_sequence")
            return None
        if pci == 2:  # consecutive frame
            part = self._partial.get(cid)
            if part is None:
                raise DecodeError(f"0x{cid:03X}: consecutive frame without a first frame", frame_id=cid,
                                  kind="isotp_unexpected")
            sn = data[0] & 0x0F
            if sn != part.next_sn:
                self._abort(cid)
                raise DecodeError(f"0x{cid:03X}: consecutive frame {sn}, expected {part.next_sn} "
                                  "(missing or duplicated frame)", frame_id=cid, kind="isotp_sequence")
            if frame.ts - part.last_ts > self.max_gap_s:
                self._abort(cid)
                raise DecodeError(f"0x{cid:03X}: {frame.ts - part.last_ts:.1f} s between frames", frame_id=cid,
                                  kind="isotp_timeout")
            part.data += data[1:]
            part.next_sn = (sn + 1) & 0x0F
            part.last_ts = frame.ts
            if len(part.data) >= part.length:
                del self._partial[cid]
                return bytes(part.data[:part.length])
            return None
        return None  # flow control (3x) and anything else: not part of a reply

    def finish(self) -> list[DecodeError]:
        """End of input: every message still in progress, as an ``isotp_incomplete`` error; forgets them.

        Returns:
            One error per CAN id whose message stopped short of the length its first frame announced.
        """
        errors = [DecodeError(f"0x{cid:03X}: input ended {len(part.data)} of {part.length} bytes into a message",
                              frame_id=cid, kind="isotp_incomplete") for cid, part in sorted(self._partial.items())]
        self._partial.clear()
        return errors

    def _abort(self, cid: int) -> None:
        self._partial.pop(cid, None)
