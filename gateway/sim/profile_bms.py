"""A simulated battery ECU that speaks any vehicle profile: its broadcast frames encoded through the profile's
own DBC files (cantools) and its poll replies laid out as the profile's layouts say, from a ``SimPack``.

Used by ``simulate --profile`` and ``demo --profile`` and by the end-to-end test of every profile's passport
path (daemon -> broker -> verify). It proves that a profile's data reach a signed, complete passport; that the
profile decodes the real car right is what the real captures check (tests/integration/test_profile_validation.py).
The Leaf has its own simulator (``battery.py``, ``ecu.py``), written byte by byte from leaf_formulas.md.

The pack model advances with the broadcast frames (``frames`` is timed by its caller); a car that only
answers polls advances by ``clock`` when it is asked. Not thread-safe.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..core.decoding import crc8
from ..core.polls import ByteField, PollSpec
from ..core.profile import Profile, SignalMap
from ..model import Frame
from .battery import SimPack
from .ecu import segment

__all__ = ["ProfileBms"]


@dataclass
class ProfileBms:
    """The battery ECU of ``profile`` over ``pack``: broadcast frames every ``period_s`` and poll answers."""

    profile: Profile
    databases: list[Any]
    pack: SimPack
    serial: str = "SIM0000000001"
    vin: str = "SIMVIN00000000001"
    period_s: float = 0.1
    clock: Callable[[], float] = time.monotonic  # a polled-only car's time
    requests: list[bytes] = field(default_factory=list)  # requests answered, in order
    _amps: float = 0.0
    _t: float = 0.0  # the pack model's time, s
    _t0: float | None = None
    _pending: list[bytes] = field(default_factory=list)
    _pending_id: int = 0

    @property
    def request_ids(self) -> frozenset[int]:
        """The CAN ids the ECU listens on (the bus filters)."""
        return frozenset(p.request_id for p in self.profile.polls)

    def values(self) -> dict[str, float]:
        """What the BMS reports now, by canonical field."""
        p, amps = self.pack, self._amps
        volts = p.voltage(amps)
        cell = volts / p.cells
        return {
            "soc_pct": round(p.soc_pct, 2), "dash_soc_pct": round(p.soc_pct, 2), "pack_v": round(volts, 2),
            "pack_a": round(amps, 2), "bms_soh_pct": p.soh_pct, "lbc_soh_pct": p.soh_pct, "hx_pct": p.soh_pct,
            "temp_c_min": p.temp_c - p.temp_spread_c, "temp_c_max": p.temp_c + p.temp_spread_c,
            "temp_c_avg": p.temp_c, "cell_v_min": round(cell - 0.01, 3), "cell_v_max": round(cell + 0.01, 3),
            "full_energy_kwh": round(p.full_kwh, 1), "bol_energy_kwh": p.rated_kwh,
            "capacity_ah": round(p.rated_ah * p.soh_pct / 100.0, 2), "dis_limit_kw": 80.0, "chg_limit_kw": 40.0,
            "main_relay": 1.0, "balancing_cells": 0.0,
        }

    # -- broadcast --------------------------------------------------------------------------------
    def frames(self, duration_s: float, *, start_ts: float = 0.0) -> Iterator[Frame]:
        """Every broadcast frame of the profile once per ``period_s`` (one per multiplexer case)."""
        messages = {m.frame_id: m for db in self.databases for m in db.messages}
        by_frame: dict[int, list[SignalMap]] = {}
        for sm in self.profile.signals:
            by_frame.setdefault(sm.frame_id, []).append(sm)
        if not by_frame:
            return  # a car that only answers polls: nothing to send, and no ticks to run ahead of time
        step = self.period_s
        for k in range(round(duration_s / step)):
            self._advance(k * step)
            values = self.values()
            for frame_id, maps in sorted(by_frame.items()):
                for data in self._encode(messages[frame_id], maps, values):
                    yield Frame(start_ts + k * step, frame_id, data)

    def _advance(self, t: float) -> None:
        """Step the pack model to ``t`` seconds."""
        self.pack.tick_s = self.period_s
        while self._t <= t:
            self._amps = self.pack.step(self._t)
            self._t += self.period_s

    def _encode(self, message: Any, maps: list[SignalMap], values: dict[str, float]) -> Iterator[bytes]:
        """One frame per case: the profile's ``when`` conditions and the DBC multiplexer value a signal needs."""
        def case_of(sm: SignalMap) -> tuple[tuple[str, int], ...]:
            signal = message.get_signal_by_name(sm.signal)
            mux = ((signal.multiplexer_signal, signal.multiplexer_ids[0]),) if signal.multiplexer_ids else ()
            return tuple(sorted({*sm.when, *mux}))

        cases = sorted({case_of(sm) for sm in maps if case_of(sm)}) or [()]
        for case in cases:
            raw = {s.name: 0 for s in message.signals}
            raw.update(dict(case))
            for sm in maps:
                if case_of(sm) in ((), case) and sm.field in values:
                    raw[sm.signal] = _raw(message.get_signal_by_name(sm.signal), sm, values[sm.field])
            data = bytearray(message.encode(raw, scaling=False, strict=False, padding=False))
            if message.frame_id in self.profile.crc8_frames:
                data[7] = crc8(bytes(data[:7]), poly=self.profile.crc8_poly, init=self.profile.crc8_init)
            yield bytes(data)

    # -- polls --------------------------------------------------------------------------------------
    def on_frame(self, can_id: int, data: bytes) -> list[tuple[int, bytes]]:
        """Frames to send in answer to one received frame (a single-frame request or a flow control)."""
        if can_id not in self.request_ids or not data:
            return []
        ext = next((p.ext_address for p in self.profile.polls if p.request_id == can_id and p.ext_address), None)
        if ext is not None:  # extended addressing: the frame names the ECU it is for
            if data[0] != ext[0]:
                return []
            data = data[1:]
            if not data:
                return []
        if data[0] >> 4 == 3:
            frames, self._pending = self._pending, []
            return [(self._pending_id, f) for f in frames]
        size = data[0] & 0x0F
        if data[0] >> 4 != 0 or not 0 < size < len(data):
            return []
        request = bytes(data[1:1 + size])
        spec = next((p for p in self.profile.polls if p.request_id == can_id and p.request == request), None)
        if spec is None:
            reply_id = next(p.response_id for p in self.profile.polls if p.request_id == can_id)
            refusal = bytes([0x7F, request[0], 0x31])  # request out of range
            return [(reply_id, segment(refusal, address=ext[1] if ext else None)[0])]
        self.requests.append(request)
        if not self.profile.signals:  # no broadcast drives the pack model: the time since the first request does
            self._t0 = self.clock() if self._t0 is None else self._t0
            self._advance(self.clock() - self._t0)
        frames = segment(spec.positive_header + self.reply_payload(spec), address=ext[1] if ext else None)
        self._pending, self._pending_id = frames[1:], spec.response_id
        return [(spec.response_id, frames[0])]

    def reply_payload(self, spec: PollSpec) -> bytes:
        """The payload of the reply to ``spec`` now (after its positive-response header), by its first layout."""
        layout = spec.layouts[0]
        payload = bytearray(layout.length)
        if layout.filler is not None:
            payload[layout.filler.at:layout.filler.at + layout.filler.size] = \
                bytes([layout.filler.byte]) * layout.filler.size
        values = self.values()
        texts = {"bat": self.serial, "vin": self.vin, "part_number": "SIM-PART"}
        arrays = {"cells_v": [values["cell_v_min"], values["cell_v_max"]],
                  "temps_c": [values["temp_c_min"], values["temp_c_avg"], values["temp_c_max"]]}
        for f in layout.fields:
            if f.kind == "number" and f.name in values:
                _put(payload, f, f.at, values[f.name])
            elif f.kind == "bitcount" and f.name in values:  # the lowest bits under the mask, as many as the value
                bits = [1 << b for b in range(8) if f.mask >> b & 1][:round(values[f.name])]
                payload[f.at] |= sum(bits)
            elif f.kind == "text":
                payload[f.at:f.at + f.size] = texts[f.name].encode()[:f.size].ljust(f.size, b" ")
            elif f.kind == "array":
                for i in range(f.count):
                    _put(payload, f, f.at + i * f.stride, arrays[f.name][i % len(arrays[f.name])])
        return bytes(payload)


def _raw(signal: Any, sm: SignalMap, value: float) -> int:
    """The raw integer of a DBC signal for ``value`` (a ``lookup``'s key when the profile maps one)."""
    if sm.lookup:
        return min(sm.lookup, key=lambda kv: abs(kv[1] - value))[0]
    raw = round((value - float(signal.offset)) / float(signal.scale))
    bits = int(signal.length)
    lo, hi = (-(1 << bits - 1), (1 << bits - 1) - 1) if signal.is_signed else (0, (1 << bits) - 1)
    return max(lo, min(hi, raw))


def _put(payload: bytearray, f: ByteField, at: int, value: float) -> None:
    raw = round((value - f.offset) / f.scale)
    with contextlib.suppress(OverflowError):  # a value the field cannot hold leaves its bytes as they are
        payload[at:at + f.size] = raw.to_bytes(f.size, "big", signed=f.signed)
