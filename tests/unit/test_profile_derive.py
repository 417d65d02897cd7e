"""Fields a profile derives from two the BMS sends (Tesla's energy-based SoH), through real cantools encoding
and decoding of the project's DBC file, and the checks on the ``[[derive]]`` key."""

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
    tracker.update(4.0, DECODER.decode(frame(4.0, "BMS_EnergyStatus_352", BMS_NominalFullPackEnergy=80.0)))
    assert tracker.values["bms_soh_pct"] == 88.97  # 102.6 % is no SoH: the last plausible one stays
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
