"""Decoding of Leaf battery ECU frames through the project's own DBC files and profile checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.adapters.files import BUILTIN_PROFILES
from gateway.app.wiring import load_profile
from gateway.core.decoding import Decoder, crc8
from gateway.errors import DecodeError
from gateway.model import FIELDS, Frame
from gateway.sim.battery import LeafBattery, encode_1db, encode_5bc, encode_5c0, encode_55b, encode_59e

# Frames quoted in leaf_formulas.md / the capture README (facts, a few bytes each).
E_PLUS_1DB = bytes.fromhex("EEC0C3EA00F7619B")
E_PLUS_55B = bytes.fromhex("E9C00000E1401214")
E_PLUS_5BC = bytes.fromhex("A4C0E564B6002000")
E_PLUS_59E = bytes.fromhex("0000229FA00000BE")
ZE0_5BC = bytes.fromhex("1BC3262B6745401E")


def decoder(profile: str) -> Decoder:
    p, dbs = load_profile(profile)
    return Decoder(p, dbs)


def values(d: Decoder, can_id: int, data: bytes) -> dict[str, float]:
    return dict(d.decode(Frame(0.0, can_id, data)))


def test_crc8_poly_0x85_matches_real_frames() -> None:
    # GIVEN real 0x1DB and 0x55B frames from an e+ capture WHEN the CRC of d[0..6] is computed
    # THEN it equals d[7]
    assert crc8(E_PLUS_1DB[:7]) == E_PLUS_1DB[7]
    assert crc8(E_PLUS_55B[:7]) == E_PLUS_55B[7]


def test_real_e_plus_frames_decode_to_documented_values() -> None:
    d = decoder("leaf-ze1")
    v = values(d, 0x1DB, E_PLUS_1DB)
    assert v["pack_a"] == -69.0  # discharging is negative: raw two's complement, not unsigned
    assert v["pack_v"] == 391.5
    assert values(d, 0x55B, E_PLUS_55B)["soc_pct"] == 93.5
    v = values(d, 0x5BC, E_PLUS_5BC)
    assert v == {"gids": 659.0, "bms_soh_pct": 91.0}
    v = values(d, 0x59E, E_PLUS_59E)
    assert v["full_energy_kwh"] == 55.3 and v["dash_soc_pct"] == 95.0


def test_ze0_5bc_gives_soh_51_and_six_capacity_bars() -> None:
    v = values(decoder("leaf-ze0"), 0x5BC, ZE0_5BC)
    assert v["bms_soh_pct"] == 51.0
    assert v["capacity_bars"] == 6.0
    assert v["gids"] == 111.0


def test_bad_crc_drops_the_whole_frame() -> None:
    d = decoder("leaf-ze1")
    broken = E_PLUS_1DB[:7] + bytes([E_PLUS_1DB[7] ^ 1])
    with pytest.raises(DecodeError) as err:
        d.decode(Frame(0.0, 0x1DB, broken))
    assert err.value.kind == "crc" and err.value.frame_id == 0x1DB
    assert "0x1DB" in str(err.value)


def test_invalid_markers_are_left_out_not_decoded() -> None:
    d = decoder("leaf-ze1")
    # 0x3FF current and voltage are the start-up "invalid" markers: 511.5 A must never appear
    frame = encode_1db(0.0, 0.0, counter=0, current_raw=0x3FF, voltage_raw=0x3FF)
    v = values(d, 0x1DB, frame)
    assert "pack_a" not in v and "pack_v" not in v
    assert "soc_pct" not in values(d, 0x55B, encode_55b(None))
    # SOH 0 means "not known yet", GIDs 1023 means invalid
    v = values(d, 0x5BC, encode_5bc(1023, 0, generation="ze1", bars=12, capacity_bars=False))
    assert v == {}
    assert d.counts["invalid_marker"] >= 4


def test_max_gids_flag_switches_gids_to_full_capacity() -> None:
    d = decoder("leaf-aze0")
    v = values(d, 0x5BC, encode_5bc(502, 93, generation="aze0", bars=12, capacity_bars=True, max_gids_flag=True))
    assert v["gids_full"] == 502.0 and "gids" not in v
    assert v["capacity_bars"] == 12.0


def test_short_frame_and_unknown_id_are_decode_errors() -> None:
    d = decoder("leaf-ze1")
    with pytest.raises(DecodeError) as err:
        d.decode(Frame(0.0, 0x1DB, b"\x00\x01"))
    assert err.value.kind == "length"
    with pytest.raises(DecodeError) as err:
        d.decode(Frame(0.0, 0x123, bytes(8)))
    assert err.value.kind == "unknown_id"


def test_frame_ids_are_the_profiles_broadcast_frames() -> None:
    assert decoder("leaf-ze0").frame_ids == {0x1DB, 0x1DC, 0x55B, 0x5BC, 0x5C0}
    assert decoder("leaf-aze0").frame_ids == {0x1DB, 0x1DC, 0x55B, 0x5BC, 0x5C0, 0x59E}
    assert decoder("leaf-ze1").frame_ids == {0x1DB, 0x1DC, 0x55B, 0x5BC, 0x59E}


@settings(max_examples=60, deadline=None)
@given(amps=st.floats(-500, 500), volts=st.floats(200, 500), soc=st.floats(0, 100),
       soh=st.integers(1, 100), temp=st.floats(-30, 60))
def test_simulator_encodings_round_trip_through_the_dbc_files(amps: float, volts: float, soc: float,
                                                               soh: int, temp: float) -> None:
    # The simulator encodes from leaf_formulas.md by hand; the decoder uses dbc/: they must agree.
    d = decoder("leaf-aze0")
    v = values(d, 0x1DB, encode_1db(amps, volts, counter=1))
    assert v["pack_a"] == pytest.approx(amps, abs=0.2501)
    assert v["pack_v"] == pytest.approx(volts, abs=0.2501)
    assert values(d, 0x55B, encode_55b(soc))["soc_pct"] == pytest.approx(soc, abs=0.0501)
    assert values(d, 0x5BC, encode_5bc(300, soh, generation="aze0", bars=5, capacity_bars=False))[
        "bms_soh_pct"] == soh
    assert values(d, 0x5C0, encode_5c0(1, temp))["temp_c_max"] == pytest.approx(temp, abs=0.2501)
    full = 1 + soc / 3  # raw 0 is the invalid marker
    assert values(d, 0x59E, encode_59e(full, generation="aze0"))["full_energy_kwh"] == pytest.approx(full, abs=0.0501)


@pytest.mark.parametrize("generation,profile", [("ze0", "leaf-ze0"), ("aze0", "leaf-aze0"), ("ze1", "leaf-ze1")])
def test_simulated_battery_decodes_without_errors(generation: str, profile: str) -> None:
    d = decoder(profile)
    battery = LeafBattery(generation=generation, soh_pct=77, soc_pct=55.0)
    seen: dict[str, float] = {}
    for frame in battery.frames(2.0):
        seen.update(d.decode(frame))
    assert seen["bms_soh_pct"] == 77.0
    assert seen["soc_pct"] == pytest.approx(55.0, abs=0.2)
    assert not {k for k in d.counts if k != "invalid_marker"}


@settings(max_examples=400, deadline=None)
@given(profile=st.sampled_from(BUILTIN_PROFILES), can_id=st.sampled_from([0x1DB, 0x1DC, 0x55B, 0x5BC, 0x5C0,
                                                                         0x59E, 0x7BB, 0x000, 0x7FF]),
       data=st.binary(min_size=0, max_size=64), fix_crc=st.booleans())
def test_random_frames_never_crash_and_never_leave_range(profile: str, can_id: int, data: bytes,
                                                         fix_crc: bool) -> None:
    d = DECODERS[profile]
    if fix_crc and len(data) >= 8:
        data = data[:7] + bytes([crc8(data[:7])]) + data[8:]
    try:
        out = d.decode(Frame(0.0, can_id, data))
    except DecodeError:
        return
    for name, value in out:
        spec = FIELDS[name]
        assert spec.lo <= value <= spec.hi, (name, value)


DECODERS = {p: decoder(p) for p in BUILTIN_PROFILES}
