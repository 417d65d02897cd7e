"""A simulated Nissan Leaf battery ECU (LBC): the broadcast frames 0x1DB, 0x1DC, 0x55B, 0x5BC, 0x5C0 and
0x59E with their CRCs and counters, from a small battery model. Used by ``demo`` and the tests.

The encoders are written from ``leaf_formulas.md`` byte by byte, independently of the DBC files in
``dbc/``, so a test that runs simulator -> decoder checks the DBC files too. Pure: ``frames`` yields
``Frame`` values for a time span; ``sim/ecu.py`` puts them on a bus.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..core.decoding import crc8
from ..model import Frame

__all__ = ["LeafBattery", "SimPack", "encode_1db", "encode_1dc", "encode_5bc", "encode_5c0", "encode_55b", "encode_59e"]

_BARS_TO_CODE = {12: 15, 11: 13, 10: 12, 9: 11, 8: 10, 7: 8, 6: 7, 5: 6, 4: 5, 3: 3, 2: 2, 1: 1, 0: 0}


def _with_crc(d: bytearray) -> bytes:
    d[7] = crc8(bytes(d[:7]))
    return bytes(d)


def encode_1db(current_a: float, voltage_v: float, *, counter: int, main_relay: bool = True,
               full_charge: bool = False, current_raw: int | None = None, voltage_raw: int | None = None) -> bytes:
    """0x1DB: 11-bit signed current (0.5 A, + = charging), 10-bit voltage (0.5 V), flags, counter, CRC."""
    i = (round(current_a / 0.5) if current_raw is None else current_raw) & 0x7FF
    v = (round(voltage_v / 0.5) if voltage_raw is None else voltage_raw) & 0x3FF
    d = bytearray(8)
    d[0], d[1] = i >> 3, (i & 7) << 5
    d[2], d[3] = v >> 2, (v & 3) << 6 | int(main_relay) << 5 | int(full_charge) << 4 | 1 << 3
    d[6] = counter & 3
    return _with_crc(d)


def encode_1dc(discharge_kw: float, charge_kw: float, max_charger_kw: float) -> bytes:
    """0x1DC: power limits, 0.25 kW / 0.25 kW / 0.1 kW - 10, CRC."""
    dis, chg, mx = round(discharge_kw * 4), round(charge_kw * 4), round((max_charger_kw + 10) * 10)
    d = bytearray(8)
    d[0], d[1] = dis >> 2 & 0xFF, (dis & 3) << 6 | chg >> 4 & 0x3F
    d[2], d[3] = (chg & 0xF) << 4 | mx >> 6 & 0xF, (mx & 0x3F) << 2
    return _with_crc(d)


def encode_55b(soc_pct: float | None) -> bytes:
    """0x55B: LBC SOC, 0.1 %, 0x3FF = invalid, CRC."""
    raw = 0x3FF if soc_pct is None else round(soc_pct * 10)
    d = bytearray(8)
    d[0], d[1] = raw >> 2, (raw & 3) << 6
    return _with_crc(d)


def encode_5bc(gids: int, soh_pct: int, *, generation: str, bars: int, capacity_bars: bool,
               max_gids_flag: bool = False, avg_temp_c: float = 20.0) -> bytes:
    """0x5BC: GIDs, SOH (d[4] >> 1), bars with their mux bit, max-GIDs flag, ZE0 average temperature."""
    d = bytearray(8)
    d[0], d[1] = gids >> 2 & 0xFF, (gids & 3) << 6
    if generation == "ze0":
        d[2] = bars & 0x0F
        d[3] = round(avg_temp_c + 40) & 0xFF
    else:
        d[2] = _BARS_TO_CODE[bars] << 4
        d[5] = 0x10 if max_gids_flag else 0
    d[4] = (soh_pct & 0x7F) << 1 | int(capacity_bars)
    return bytes(d)


def encode_5c0(mux: int, temp_c: float) -> bytes:
    """0x5C0 (ZE0/AZE0): mux in d[0] >> 6 (1 max, 2 avg, 3 min), temperature d[2] / 2 - 40."""
    d = bytearray(8)
    d[0], d[2] = mux << 6, round((temp_c + 40) * 2) & 0xFF
    return bytes(d)


def encode_59e(full_kwh: float, *, generation: str, dash_soc_pct: float = 0.0) -> bytes:
    """0x59E: full capacity for QC, 100 Wh/bit (9 bits on AZE0, 10 on ZE1); ZE1 dash SOC in d[7] / 2."""
    raw = round(full_kwh * 10)
    d = bytearray(8)
    d[2] = raw >> 4 & (0x3F if generation == "ze1" else 0x1F)
    d[3] = (raw & 0xF) << 4
    if generation == "ze1":
        d[7] = round(dash_soc_pct * 2) & 0xFF
    return bytes(d)


def _drive(t: float) -> float:
    return -25.0 - 20.0 * math.sin(t / 3.0)


@dataclass
class SimPack:
    """A pack with a simple model: Coulomb-counted SOC, linear OCV, 0.1 ohm internal resistance."""

    rated_kwh: float = 30.0
    rated_ah: float = 79.0
    soh_pct: int = 85
    soc_pct: float = 70.0
    temp_c: float = 22.0
    temp_spread_c: float = 3.0
    current: Callable[[float], float] = field(default=_drive)  # amps at t seconds, + = charging
    cells: int = 96
    resistance_ohm: float = 0.1
    tick_s: float = 0.01     # time step of frames(); longer ticks make long synthetic captures small

    def voltage(self, amps: float) -> float:
        """Terminal voltage: OCV(SOC) + I * R."""
        return self.cells * (3.45 + 0.0075 * self.soc_pct) + amps * self.resistance_ohm

    @property
    def full_kwh(self) -> float:
        return self.rated_kwh * self.soh_pct / 100.0

    def step(self, t: float) -> float:
        """The current at ``t`` seconds, with the SoC advanced by one tick of it."""
        amps = self.current(t)
        capacity_ah = self.rated_ah * self.soh_pct / 100.0
        self.soc_pct = min(100.0, max(0.0, self.soc_pct + amps * self.tick_s / 3600.0 / capacity_ah * 100.0))
        return amps


@dataclass
class LeafBattery(SimPack):
    """A Leaf pack (``SimPack``) and the frames its LBC broadcasts (0x1DB every ``tick_s``, 10 ms)."""

    generation: str = "aze0"  # ze0 | aze0 | ze1
    wh_per_gid: float = 80.0
    gids_zero_soc_pct: float = 8.0  # the real LBC's GIDs reach 0 at about 8 % SoC (leaf-*.toml gids_zero_soc_pct)
    report_soh: bool = True  # False: the BMS SOH field says "no value" (0), as some packs do

    def bars(self) -> int:
        return max(0, min(12, round((self.soh_pct - 30) / 70 * 12)))

    def gids(self, gids_full: int) -> int:
        """Remaining GIDs at the present SoC: 0 at ``gids_zero_soc_pct``, ``gids_full`` at 100 %."""
        zero = self.gids_zero_soc_pct
        return round(gids_full * max(0.0, self.soc_pct - zero) / (100.0 - zero))

    def frames(self, duration_s: float, *, start_ts: float = 0.0) -> Iterator[Frame]:
        """Every frame the LBC sends in ``duration_s``, with timestamps from ``start_ts`` (``tick_s`` apart)."""
        ticks = round(duration_s / self.tick_s)
        for k in range(ticks):
            t = k * self.tick_s
            ts = start_ts + t
            amps = self.step(t)
            yield Frame(ts, 0x1DB, encode_1db(amps, self.voltage(amps), counter=k))
            yield Frame(ts, 0x1DC, encode_1dc(80.0, 40.0, 6.6))
            if k % 10 == 0:
                yield Frame(ts, 0x55B, encode_55b(self.soc_pct))
                gids_full = round(self.full_kwh * 1000 / self.wh_per_gid)
                max_flag = self.generation != "ze0" and k % 100 == 50
                gids = gids_full if max_flag else self.gids(gids_full)
                yield Frame(ts, 0x5BC, encode_5bc(gids, self.soh_pct if self.report_soh else 0,
                                                  generation=self.generation,
                                                  bars=self.bars(), capacity_bars=k % 20 == 0,
                                                  max_gids_flag=max_flag, avg_temp_c=self.temp_c))
            if k % 50 == 0:
                if self.generation != "ze1":
                    mux = (k // 50) % 3 + 1
                    temp = {1: self.temp_c + self.temp_spread_c, 2: self.temp_c,
                            3: self.temp_c - self.temp_spread_c}[mux]
                    yield Frame(ts, 0x5C0, encode_5c0(mux, temp))
                if self.generation != "ze0":
                    yield Frame(ts, 0x59E, encode_59e(self.full_kwh, generation=self.generation,
                                                      dash_soc_pct=self.soc_pct))
