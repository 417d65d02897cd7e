"""Passive reassembly (``replay``) of poll replies with 29-bit ids (Zoe ZE50, VW MEB) and with BMW's extended
addressing (i3): a candump log of a tester's exchange with the simulated ECU, read back by python-can."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.adapters.capture_files import CaptureStats
from gateway.app.replay import replay_capture
from gateway.app.wiring import load_profile
from gateway.core.config import parse_config
from gateway.sim.battery import SimPack
from gateway.sim.ecu import segment
from gateway.sim.profile_bms import ProfileBms

CONFIG = parse_config({}, sections=("vehicle", "publish"))


def exchange_log(profile_name: str, path: Path, *, foreign: bool = False) -> ProfileBms:
    """Every poll of the profile asked once, as a candump -l log; ``foreign``: with extended addressing, each
    reply frame is also sent once more addressed to another tester (0xF4), which must be ignored."""
    profile, databases = load_profile(profile_name)
    pack = profile.packs[0]
    bms = ProfileBms(profile, databases, SimPack(rated_kwh=pack.energy_kwh, rated_ah=pack.capacity_ah, soh_pct=87,
                                                 soc_pct=58.0, cells=profile.cells_series), clock=lambda: 0.0)
    lines, t = [], 1_700_000_000.0

    def put(can_id: int, data: bytes) -> None:
        nonlocal t
        t += 0.002
        ident = f"{can_id:08X}" if can_id > 0x7FF else f"{can_id:03X}"
        lines.append(f"({t:.6f}) can0 {ident}#{data.hex().upper()}")

    for spec in profile.polls:
        ext = spec.ext_address
        request = segment(spec.request, address=ext[0] if ext else None)[0]
        put(spec.request_id, request)
        replies = bms.on_frame(spec.request_id, request)
        flow = (bytes([ext[0]]) if ext else b"") + bytes([0x30, 0, 0]).ljust(8 - bool(ext), b"\x00")
        if replies and replies[0][1][1 if ext else 0] >> 4 == 1:
            replies += bms.on_frame(spec.request_id, flow)
        for can_id, data in replies:
            if foreign and ext:
                put(can_id, bytes([0xF4]) + data[1:])  # the same bytes for another tester
            put(can_id, data)
    path.write_text("\n".join(lines) + "\n")
    return bms


@pytest.mark.parametrize("name", ["renault-zoe-ze50", "vw-meb", "bmw-i3"])
def test_replies_with_29_bit_ids_or_extended_addressing_are_reassembled(name: str, tmp_path: Path) -> None:
    bms = exchange_log(name, tmp_path / "x.log", foreign=True)
    run = replay_capture(str(tmp_path / "x.log"), config=CONFIG, profile=name, bus=None, stats=CaptureStats())
    for _ in run.messages:
        pass
    got, want = run.parts.tracker.values, bms.values()
    profile = load_profile(name)[0]
    steps = {f.name: abs(f.scale) for p in profile.polls for lay in p.layouts for f in lay.fields}
    for field, step in steps.items():  # each to its own resolution
        assert got[field] == pytest.approx(want[field], abs=step / 2 + 1e-9), field
    assert sum(v for k, v in run.counts().items() if k.startswith("isotp")) == 0
    assert run.counts()["diag_unknown"] == 0
