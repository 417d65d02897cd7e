"""Poll reply decoding (layouts by length, NRC, arrays, text) and strict passive ISO-TP reassembly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app.wiring import load_profile
from gateway.core.isotp_passive import PassiveIsoTp
from gateway.core.polls import decode_reply
from gateway.errors import DecodeError, UdsNegativeResponse
from gateway.model import Frame
from gateway.sim.ecu import segment

ZE1 = load_profile("leaf-ze1")[0]
SPECS = {p.name: p for p in ZE1.polls}

# leaf_formulas.md §4: the e+ group-1 exchange, reassembled (61 01 + 51 payload bytes)
E_PLUS_GROUP_01 = bytes.fromhex(
    "6101FFFA2400" "0289FFF95242FF" "FA3E5F06FE4650" "913A3287038A00" "00CEA7227B000E" "42070018BFEE80"
    "000180000000FF" "F9524201AEFFFF")[:53]


def reassemble(frames: list[bytes], can_id: int = 0x7BB) -> list[bytes]:
    p = PassiveIsoTp(frozenset({can_id}))
    out = []
    for i, data in enumerate(frames):
        msg = p.feed(Frame(i * 0.01, can_id, data))
        if msg is not None:
            out.append(msg)
    return out


def test_documented_e_plus_group_01_gives_hx_and_ahr() -> None:
    got = decode_reply(SPECS["lbc-group-01"], E_PLUS_GROUP_01)
    values = dict(got.values)
    assert values["hx_pct"] == pytest.approx(86.20, abs=0.005)
    assert values["capacity_ah"] == 162.1998
    assert got.generation == "ze1"


def test_ze0_group_01_uses_its_own_offsets() -> None:
    payload = bytearray(39)
    payload[24:32] = bytes.fromhex("005C269A000ECF81")
    payload[32:39] = bytes.fromhex("0009D7B0800001")
    values = dict(decode_reply(SPECS["lbc-group-01"], b"\x61\x01" + bytes(payload)).values)
    assert values == {"hx_pct": 98.82, "capacity_ah": 64.504}  # leaf_formulas.md rounds it to 64.50


def test_a_length_without_layout_gives_no_value() -> None:
    # ZE1 right after wake-up answers with 42 bytes in another layout: never read it with wrong offsets
    with pytest.raises(DecodeError) as err:
        decode_reply(SPECS["lbc-group-01"], b"\x61\x01" + bytes(42))
    assert err.value.kind == "layout"


def test_negative_response_carries_the_nrc() -> None:
    with pytest.raises(UdsNegativeResponse) as err:
        decode_reply(SPECS["lbc-group-01"], bytes.fromhex("7F2112"))
    assert err.value.nrc == 0x12 and err.value.kind == "nrc"


def test_cells_temperatures_serial_part_number_and_lbc_soh() -> None:
    cells = b"".join((3700 + i).to_bytes(2, "big") for i in range(96)) + bytes.fromhex("9C409C40")
    got = decode_reply(SPECS["lbc-group-02-cells"], b"\x61\x02" + cells)
    assert len(got.arrays["cells_v"]) == 96 and dict(got.values) == {"cell_v_min": 3.7, "cell_v_max": 3.795}
    temps = bytes.fromhex("01F215" "01FC14" "FFFF00" "01FB11") + bytes(17)  # slot 2 absent (0xFFFF)
    got = decode_reply(SPECS["lbc-group-04-temperatures"], b"\x61\x04" + temps)
    assert got.arrays["temps_c"] == [21.0, 20.0, 17.0]
    serial = decode_reply(SPECS["lbc-group-84-serial"], b"\x61\x84" + b"230UK1192E001482 \xa0" + bytes(2))
    assert serial.texts["bat"] == "230UK1192E001482"
    part = decode_reply(SPECS["lbc-group-83-part-number"], b"\x61\x83" + b"3NK2ARB" + bytes(17))
    assert part.texts["part_number"] == "3NK2ARB"
    soh = bytearray(329)
    soh[2:4] = (9134).to_bytes(2, "big")
    assert dict(decode_reply(SPECS["lbc-group-61-soh"], b"\x61\x61" + bytes(soh)).values) == {"lbc_soh_pct": 91.34}


def test_passive_reassembly_of_the_documented_exchange() -> None:
    assert reassemble(segment(E_PLUS_GROUP_01)) == [E_PLUS_GROUP_01]


def test_a_duplicated_consecutive_frame_drops_the_message() -> None:
    frames = segment(E_PLUS_GROUP_01)
    with pytest.raises(DecodeError) as err:
        reassemble([*frames[:3], frames[2], *frames[3:]])
    assert err.value.kind == "isotp_sequence"


def test_a_missing_consecutive_frame_drops_the_message() -> None:
    frames = segment(E_PLUS_GROUP_01)
    with pytest.raises(DecodeError) as err:
        reassemble(frames[:3] + frames[4:])
    assert err.value.kind == "isotp_sequence"


def test_sequence_numbers_wrap_for_the_198_byte_cell_reply() -> None:
    message = b"\x61\x02" + bytes(range(196))
    frames = segment(message)
    assert [f[0] for f in frames][15:18] == [0x2F, 0x20, 0x21]
    assert reassemble(frames) == [message]


def test_a_pause_between_frames_drops_the_message() -> None:
    p = PassiveIsoTp(frozenset({0x7BB}), max_gap_s=1.0)
    frames = segment(E_PLUS_GROUP_01)
    p.feed(Frame(0.0, 0x7BB, frames[0]))
    with pytest.raises(DecodeError) as err:
        p.feed(Frame(5.0, 0x7BB, frames[1]))
    assert err.value.kind == "isotp_timeout"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=8), max_size=40))
def test_random_frames_never_crash_reassembly_or_decoding(frames: list[bytes]) -> None:
    p = PassiveIsoTp(frozenset({0x7BB}))
    for i, data in enumerate(frames):
        try:
            msg = p.feed(Frame(i * 0.01, 0x7BB, data))
        except DecodeError:
            continue
        if msg is None:
            continue
        for spec in ZE1.polls:
            try:
                got = decode_reply(spec, msg)
            except DecodeError:
                continue
            for name, value in got.values:
                assert name not in ("hx_pct",) or 0 <= value <= 150


def test_the_capture_clock_never_runs_backwards_or_away() -> None:
    from gateway.services.replay import CaptureClock

    clock = CaptureClock()
    times = [clock(ts) for ts in (100.0, 99.5, 50.0, 101.0, 9.9e9, -9.9e9, 9.9e9, -9.9e9, 102.0, 86400.0 * 3)]
    assert times == sorted(times)  # non-decreasing
    assert max(times) < 101.0 + 86400.0 * 3 + 2.0  # hostile +-9.9e9 steps did not move it by years
    assert times[1] == 100.0 and clock.rebased >= 4
