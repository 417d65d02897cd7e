"""The profile format's extensions: fields derived from two the BMS sends (Tesla's energy-based SoH, through real
cantools encoding and decoding of the project's DBC file), pack-level cells in series, layouts known only up to
their last field, extended addressing; and the checks that refuse each one malformed, naming it."""

from __future__ import annotations

import re

import pytest

from gateway.app.wiring import load_profile
from gateway.core.battery import BatteryTracker
from gateway.core.decoding import Decoder
from gateway.core.profile import parse_profile
from gateway.errors import ConfigError
from gateway.model import Frame

PROFILE, DBS = load_profile("tesla-model3-y")
DECODER = Decoder(PROFILE, DBS)


def frame(ts: float, name: str, **signals: float) -> Frame:
    for db in DBS:
        try:
            msg = db.get_message_by_name(name)
        except KeyError:
            continue
        return Frame(ts, msg.frame_id, msg.encode({s.name: signals.get(s.name, 0) for s in msg.signals}))
    raise KeyError(name)


def test_soh_is_the_nominal_full_pack_energy_over_the_energy_when_new() -> None:
    tracker = BatteryTracker(PROFILE)
    tracker.update(1.0, DECODER.decode(frame(1.0, "BMS_Soc_292", BMS_SocAvg=61.3, BMS_BeginningOfLifeEnergy=78.0)))
    assert "bms_soh_pct" not in tracker.values  # the full-pack energy is not known yet
    tracker.update(2.0, DECODER.decode(frame(2.0, "BMS_EnergyStatus_352", BMS_NominalFullPackEnergy=70.2)))
    assert tracker.values["bms_soh_pct"] == 90.0 and tracker.values["soc_pct"] == 61.3
    tracker.update(3.0, DECODER.decode(frame(3.0, "BMS_EnergyStatus_352", BMS_NominalFullPackEnergy=69.4)))
    assert tracker.values["bms_soh_pct"] == 88.97  # follows either input
    tracker.update(4.0, DECODER.decode(frame(4.0, "BMS_EnergyStatus_352", BMS_NominalFullPackEnergy=85.0)))
    assert tracker.values["bms_soh_pct"] == 88.97  # 109 % is no SoH: the last plausible one stays
    assert tracker.pack()[0].energy_kwh == 78.0  # the rated pack follows the BMS's own energies
    assert PROFILE.field_sources()["bms_soh_pct"] == \
        "100 x full_energy_kwh / bol_energy_kwh (0x352 BMS_NominalFullPackEnergy; 0x292 BMS_BeginningOfLifeEnergy)"


def test_a_zero_energy_when_new_is_no_value_and_divides_nothing() -> None:
    tracker = BatteryTracker(PROFILE)
    tracker.update(1.0, DECODER.decode(frame(1.0, "BMS_Soc_292", BMS_SocAvg=50.0, BMS_BeginningOfLifeEnergy=0)))
    tracker.update(2.0, DECODER.decode(frame(2.0, "BMS_EnergyStatus_352", BMS_NominalFullPackEnergy=70.2)))
    assert "bol_energy_kwh" not in tracker.values and "bms_soh_pct" not in tracker.values


@pytest.mark.parametrize("derive,culprit", [
    ({"field": "bms_soh_pct", "ratio": ["full_energy_kwh"]}, "derive[0]"),
    ({"field": "bms_soh_pct", "ratio": ["full_energy_kwh", "nope"]}, "derive[0]"),
    ({"field": "bms_soh_pct", "ratio": ["bms_soh_pct", "full_energy_kwh"]}, "derive[0]"),
    ({"field": "bms_soh_pct", "ratio": ["full_energy_kwh", "bol_energy_kwh"], "scale": 0}, "derive[0]"),
    ({"field": "bms_soh_pct", "ratio": ["full_energy_kwh", "bol_energy_kwh"], "unit": "%"}, "derive[0]"),
])
def test_a_bad_derive_is_refused_naming_it(derive: dict[str, object], culprit: str) -> None:
    doc = {"name": "x", "dbc": ["a.dbc"], "signal": [{"frame": 1, "signal": "S", "field": "soc_pct"}],
           "pack": [{"energy_kwh": 10, "capacity_ah": 30}], "derive": [derive]}
    with pytest.raises(ConfigError, match=re.escape(culprit)):
        parse_profile(doc)


def poll_doc(**poll: object) -> dict[str, object]:
    base = {"name": "p", "request_id": 0x6F1, "response_id": 0x607, "request": [0x22, 0xDD, 0x68],
            "every_s": {"awake": 5}, "layout": [{"length": 2, "fields": [{"name": "pack_v", "at": 0, "size": 2}]}]}
    return {"name": "x", "pack": [{"energy_kwh": 10, "capacity_ah": 30}], "poll": [{**base, **poll}]}


@pytest.mark.parametrize("poll,culprit", [
    ({"ext_address": [0x07]}, "poll[0].ext_address"),
    ({"ext_address": [0x07, 256]}, "poll[0].ext_address"),
    ({"ext_address": [0x07, 0xF1], "request": [0x22, 1, 2, 3, 4, 5, 6]}, "poll[0].request: at most 6 bytes"),
    ({"layout": [{"length": 2, "at_least": "yes", "fields": []}]}, "poll[0].layout[0].at_least"),
    ({"layout": [{"length": 2, "fields": [{"name": "pack_v", "at": 1, "size": 2}]}]},
     "poll[0].layout[0].fields[0]: bytes up to 2 are outside the 2-byte payload"),
    ({"layout": [{"length": 7, "fields": [{"name": "cells_v", "kind": "array", "at": 0, "size": 2, "count": 4,
                                            "stride": 2}]}]},
     "poll[0].layout[0].fields[0]: bytes up to 7 are outside"),
])
def test_a_bad_poll_addressing_or_layout_is_refused_naming_it(poll: dict[str, object], culprit: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(culprit)):
        parse_profile(poll_doc(**poll))


def test_a_layout_known_up_to_its_last_field_takes_longer_replies_but_an_exact_one_first() -> None:
    from gateway.core.polls import decode_reply

    doc = poll_doc(request=[0x21, 0x01], layout=[
        {"length": 2, "at_least": True, "fields": [{"name": "pack_v", "at": 0, "size": 2, "scale": 0.1}]},
        {"length": 4, "fields": [{"name": "soc_pct", "at": 3, "size": 1}]}])
    spec = parse_profile(doc).polls[0]
    assert dict(decode_reply(spec, bytes.fromhex("6101 0E35")).values) == {"pack_v": 363.7}
    assert dict(decode_reply(spec, bytes.fromhex("6101 0E35 AABB CC")).values) == {"pack_v": 363.7}
    assert dict(decode_reply(spec, bytes.fromhex("6101 0E35 AA40")).values) == {"soc_pct": 64.0}  # exact wins
    with pytest.raises(Exception, match="matches no layout"):
        decode_reply(spec, bytes.fromhex("6101 0E"))


def test_a_pack_with_its_own_cells_in_series_sets_the_overcharge_limit() -> None:
    meb, _ = load_profile("vw-meb")
    default = BatteryTracker(meb)
    assert default.cells_series() == 108
    configured = BatteryTracker(meb, rated_capacity_ah=234.0)  # the 77 kWh pack: 96 in series
    assert configured.pack()[0].energy_kwh == 77.0 and configured.cells_series() == 96
    for tracker in (default, configured):
        tracker.update(1.0, [("pack_v", 440.0)])  # 4.07 V per cell on 108, 4.58 V on 96
    assert default.counters.overcharge_events == 0 and configured.counters.overcharge_events == 1


def test_a_new_pack_a_little_above_its_energy_when_new_is_100_pct_and_stale_inputs_derive_nothing() -> None:
    tracker = BatteryTracker(PROFILE)
    tracker.update(1.0, DECODER.decode(frame(1.0, "BMS_Soc_292", BMS_SocAvg=90.0, BMS_BeginningOfLifeEnergy=78.0)))
    tracker.update(2.0, DECODER.decode(frame(2.0, "BMS_EnergyStatus_352", BMS_NominalFullPackEnergy=78.5)))
    assert tracker.values["bms_soh_pct"] == 100.0  # 100.6 %: within 5 % above, the end of the range
    # an energy when new from long ago is not divided into a fresh full-pack energy
    tracker.update(100.0, DECODER.decode(frame(100.0, "BMS_EnergyStatus_352", BMS_NominalFullPackEnergy=60.0)))
    assert tracker.values["bms_soh_pct"] == 100.0


def test_a_derived_field_is_calculated_not_bms_reported_in_the_provenance() -> None:
    from gateway.core.passport import build_passport

    tracker = BatteryTracker(PROFILE)
    for t, name, signals in ((1.0, "BMS_Soc_292", {"BMS_SocAvg": 61.3, "BMS_BeginningOfLifeEnergy": 78.0}),
                             (1.1, "BMS_EnergyStatus_352", {"BMS_NominalFullPackEnergy": 70.2}),
                             (1.2, "BMS_HvBattAmpVolt_132", {"BMS_PackVoltage": 370.0, "BMS_SmoothCurrent": -20.0}),
                             (1.3, "BMS_Thermal_312",
                              {"BMS_MinPackTemperature": 20.0, "BMS_MaxPackTemperature": 24.0})):
        tracker.update(t, DECODER.decode(frame(t, name, **signals)))
    prov = build_passport(tracker, now=2.0, device_id="d", chain={"ep": 1, "seq": 1, "prev": bytes(32)}, sw="t",
                          signals=PROFILE.field_sources())["prov"]
    assert prov["ext.bms_soh_pct"]["src"] == "calculated" and prov["StateOfCharge"]["src"] == "bms-reported"


def test_a_field_derived_from_a_derived_one_is_refused() -> None:
    doc = {"name": "x", "dbc": ["a.dbc"], "signal": [{"frame": 1, "signal": "S", "field": "soc_pct"}],
           "pack": [{"energy_kwh": 10, "capacity_ah": 30}],
           "derive": [{"field": "bms_soh_pct", "ratio": ["full_energy_kwh", "bol_energy_kwh"]},
                      {"field": "full_energy_kwh", "ratio": ["bms_soh_pct", "bol_energy_kwh"]}]}
    with pytest.raises(ConfigError, match=re.escape("derive[0]: bms_soh_pct from a derived field")):
        parse_profile(doc)


def test_an_expected_zero_checks_nothing_and_is_refused() -> None:
    doc = {"name": "x", "dbc": ["a.dbc"], "signal": [{"frame": 1, "signal": "S", "field": "soc_pct"}],
           "pack": [{"energy_kwh": 10, "capacity_ah": 30}],
           "validation": {"capture": [{"file": "a/b.log", "expect": {"pack_a": 0.0, "soc_pct": 50.0}}]}}
    with pytest.raises(ConfigError, match=re.escape("validation.capture[0].expect.pack_a: 0 checks nothing")):
        parse_profile(doc)


def test_a_profile_from_a_file_carries_no_claim_of_ours(tmp_path: object) -> None:
    import shutil
    from pathlib import Path

    from gateway.adapters.files import builtin_dbc_dir
    from gateway.core.profile import USER_PROFILE

    here = Path(str(tmp_path))
    source = Path(__file__).resolve().parents[2] / "gateway" / "profiles" / "leaf-ze1.toml"
    shutil.copy(source, here / "leaf-ze1.toml")  # the built-in file, claims and all, under the same name
    shutil.copy(source.parent / "leaf_lbc_polls.toml", here)
    for dbc in ("leaf_lbc_common.dbc", "leaf_lbc_ze1.dbc"):
        shutil.copy(builtin_dbc_dir() / dbc, here)
    profile, _ = load_profile(str(here / "leaf-ze1.toml"))
    assert profile.name == "leaf-ze1" and not profile.builtin and profile.captures == ()
    assert profile.validation == profile.validation_of("bms_soh_pct") == USER_PROFILE
    assert load_profile("leaf-ze1")[0].validation.startswith("checked against real capture")
