"""Poll layouts against real replies quoted in public sources (a few dozen bytes each, as facts): an ELM327 log
of an Ioniq 28, the 2015 Soul EV test vector of SoulEVSpy, and an ELM327 session with a BMW i3's battery ECU.
The e-Niro 64 is checked against a whole real capture (tests/integration/test_profile_validation.py)."""

from __future__ import annotations

import pytest

from gateway.app.wiring import load_profile
from gateway.core.polls import decode_reply
from gateway.errors import DecodeError

IONIQ_2101 = bytes.fromhex(
    "6101ffffffff73264826480300 0b0ddb12111212121112001 2b809b81300009200 00a72f0000a71300003cd600003aee00"
    "2089d00d01620000000003e8".replace(" ", ""))
IONIQ_2105 = bytes.fromhex(
    "6105ffffffff0000000000121212111212122648264800015011120 3e81c03e8577700310000000000000000 00".replace(" ", ""))
SOUL_2101 = bytes.fromhex(
    "6101ffffffff1523281ec8a3001e0cdd0e0d0e0d0d0d0c000fab34ab4306568400 0044d4000049f8000019b300001aea00"
    "09ec964501450000000003e8".replace(" ", ""))
SOUL_2105 = bytes.fromhex(
    "6105ffffffff00000000000d0d0e000000002328 1ec800015 00d0c00280700080613 00000000000000000000".replace(" ", ""))


def decode(profile: str, poll: str, reply: bytes) -> dict[str, float]:
    spec = next(p for p in load_profile(profile)[0].polls if p.name == poll)
    return dict(decode_reply(spec, reply).values)


def test_ioniq_28_reads_soc_voltage_current_temperatures_and_the_bms_soh() -> None:
    v = decode("hyundai-ioniq-28", "bms-21-01", IONIQ_2101)
    assert v == {"soc_pct": 57.5, "chg_limit_kw": 98.0, "dis_limit_kw": 98.0, "pack_a": -1.1, "pack_v": 354.7,
                 "temp_c_max": 18.0, "temp_c_min": 17.0, "cell_v_max": 3.68, "cell_v_min": 3.68,
                 "main_relay": 1.0}  # status 0x03: relay closed, in a car being driven (1.1 A out)
    assert decode("hyundai-ioniq-28", "bms-21-05-soh", IONIQ_2105) == {"bms_soh_pct": 100.0, "dash_soc_pct": 59.5}


def test_soul_ev_reads_the_same_layout_and_no_soh_from_its_deterioration_bytes() -> None:
    v = decode("kia-soul-ev-27", "bms-21-01", SOUL_2101)
    assert (v["soc_pct"], v["pack_v"], v["pack_a"], v["temp_c_max"], v["temp_c_min"]) == (10.5, 329.3, -3.0, 14.0, 13.0)
    assert v["cell_v_max"] == v["cell_v_min"] == 3.42 and v["main_relay"] == 1.0  # status 0xA3
    assert decode("kia-soul-ev-27", "bms-21-05", SOUL_2105) == {"dash_soc_pct": 9.5}  # 42 bytes (2015)
    assert decode("kia-soul-ev-27", "bms-21-05", SOUL_2105 + b"\x00") == {"dash_soc_pct": 9.5}  # 43 (2018)


def test_a_reply_of_another_length_gives_no_value() -> None:
    with pytest.raises(DecodeError, match="matches no layout"):
        decode("hyundai-ioniq-28", "bms-21-01", IONIQ_2101[:-1])


def test_bmw_i3_pack_voltage_from_a_real_reply_with_extended_addressing() -> None:
    # 607 F1 05 62 DD 68 99 BE: the SME (address 0x07) answers the tester (0xF1) in one single frame
    frame = bytes.fromhex("F1 05 62 DD 68 99 BE".replace(" ", ""))
    spec = next(p for p in load_profile("bmw-i3")[0].polls if p.name == "sme-dd68-voltage")
    assert spec.ext_address == (0x07, 0xF1) and frame[0] == spec.ext_address[1]
    reply = frame[2:2 + frame[1]]
    assert dict(decode_reply(spec, reply).values) == {"pack_v": 393.58}
