"""Frame -> canonical battery values, through the profile's DBC files (cantools) and frame checks.

Owns: the CRC-8 check, invalid-marker and range rejection, multiplexer conditions and lookups.
Invariant: every value returned is inside ``FIELDS[field]``'s range; anything else raises
``DecodeError`` (whole frame bad) or is counted in ``Decoder.counts`` (one value dropped).
No I/O: the cantools databases are loaded by the caller.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError
from ..model import FIELDS, Frame
from .profile import Profile, SignalMap

__all__ = ["Decoder", "crc8"]


@functools.cache
def _crc8_table(poly: int) -> bytes:
    table = bytearray(256)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table[i] = crc
    return bytes(table)


def _crc8(table: bytes, init: int, data: bytes) -> int:
    crc = init
    for byte in data:
        crc = table[crc ^ byte]
    return crc


def crc8(data: bytes, *, poly: int = 0x85, init: int = 0x00) -> int:
    """CRC-8, MSB first, no reflection, no final XOR (the Leaf LBC's frame CRC with poly 0x85)."""
    return _crc8(_crc8_table(poly), init, data)


@dataclass(frozen=True, slots=True)
class _Target:
    signal: str
    field: str
    scale: float
    offset: float
    invalid_raw: frozenset[int]
    when: tuple[tuple[str, int], ...]
    lookup: dict[int, float]
    lo: float
    hi: float


@dataclass(frozen=True, slots=True)
class _Plan:
    message: Any  # cantools Message
    length: int
    crc: bool
    targets: tuple[_Target, ...]


class Decoder:
    """Decodes the frames a profile names. Not thread-safe; one per pipeline."""

    def __init__(self, profile: Profile, databases: list[Any]) -> None:
        """Build a decode plan per frame id.

        Raises:
            ValueError: the profile names a frame or signal that none of the databases defines.
        """
        self.profile = profile
        self.counts: Counter[str] = Counter()
        messages = {m.frame_id: m for db in databases for m in db.messages}
        by_frame: dict[int, list[SignalMap]] = {}
        for sm in profile.signals:
            by_frame.setdefault(sm.frame_id, []).append(sm)
        self._plans: dict[int, _Plan] = {}
        for frame_id, maps in by_frame.items():
            msg = messages.get(frame_id)
            if msg is None:
                raise ValueError(f"profile {profile.name}: frame 0x{frame_id:03X} is in no DBC file")
            targets = []
            for sm in maps:
                try:
                    sig = msg.get_signal_by_name(sm.signal)
                except KeyError:
                    raise ValueError(f"profile {profile.name}: frame 0x{frame_id:03X} has no signal "
                                     f"{sm.signal!r}") from None
                spec = FIELDS[sm.field]
                targets.append(_Target(sm.signal, sm.field, float(sig.scale), float(sig.offset),
                                       sm.invalid_raw, sm.when, dict(sm.lookup), spec.lo, spec.hi))
            self._plans[frame_id] = _Plan(msg, msg.length, frame_id in profile.crc8_frames, tuple(targets))
        self._crc_table = _crc8_table(profile.crc8_poly)

    @property
    def frame_ids(self) -> frozenset[int]:
        """The ids this decoder accepts (the bus filters)."""
        return frozenset(self._plans)

    def decode(self, frame: Frame) -> list[tuple[str, float]]:
        """Decode one frame into (field, value) pairs.

        Raises:
            DecodeError: unknown id, short frame, CRC mismatch, or a frame cantools cannot unpack.
        """
        plan = self._plans.get(frame.can_id)
        if plan is None or frame.is_extended:
            raise DecodeError(f"frame 0x{frame.can_id:X}: not in profile {self.profile.name}",
                              frame_id=frame.can_id, kind="unknown_id")
        data = frame.data
        if len(data) < plan.length:
            raise DecodeError(f"frame 0x{frame.can_id:03X}: {len(data)} bytes, expected {plan.length}",
                              frame_id=frame.can_id, kind="length")
        if plan.crc:
            crc = _crc8(self._crc_table, self.profile.crc8_init, data[:7])
            if crc != data[7]:
                raise DecodeError(f"frame 0x{frame.can_id:03X}: CRC 0x{data[7]:02X}, computed 0x{crc:02X}",
                                  frame_id=frame.can_id, kind="crc")
        try:
            raw = plan.message.decode(data[: plan.length], decode_choices=False, scaling=False)
        except Exception as exc:  # cantools raises DecodeError, KeyError (bad mux), ValueError
            # A multiplexer value the DBC does not define carries nothing we map: not a bad frame.
            kind = "unknown_mux" if "multiplexer" in str(exc) else "unpack"
            raise DecodeError(f"frame 0x{frame.can_id:03X}: cannot unpack: {exc}",
                              frame_id=frame.can_id, kind=kind) from exc
        out: list[tuple[str, float]] = []
        for t in plan.targets:
            value = raw.get(t.signal)
            if value is None:  # another multiplexer branch
                continue
            if value in t.invalid_raw:
                self.counts["invalid_marker"] += 1
                continue
            if t.when and any(raw.get(k) != v for k, v in t.when):
                continue
            phys = t.lookup.get(value) if t.lookup else value * t.scale + t.offset
            if phys is None or not t.lo <= phys <= t.hi:
                self.counts["out_of_range"] += 1
                continue
            out.append((t.field, round(float(phys), 6)))  # 0.1 * 553 -> 55.3, not 55.300000000000004
        return out
