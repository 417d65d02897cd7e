"""Each profile's validation status holds: every real capture it names replays to the values it states, and
every real capture of a vehicle in ../shared/can-data is named by that vehicle's profile.

A profile that names no capture says "from documentation only" (docs/profiles.md, the passport's
provenance and the certificate carry the status).
"""

from __future__ import annotations

import pytest

from gateway.adapters.capture_files import CaptureStats
from gateway.app.replay import replay_capture
from gateway.app.wiring import load_profile
from gateway.core.config import parse_config
from gateway.core.profile import DOCUMENTATION_ONLY
from tests.conftest import REPO, capture_path

pytestmark = pytest.mark.captures

PROFILES = sorted(p.stem for p in (REPO / "gateway" / "profiles").glob("*.toml")
                  if not p.stem.startswith("leaf_lbc"))
# Every real capture of a vehicle's battery ECU in ../shared/can-data, by the profiles that may read it
# (README section 2 and field-captures/). Not listed: QC-CAN (CHAdeMO, no battery ECU frames), the Taycan and
# Santa Fe PHEV (no profile), the LeafSpy CSV (decoded values: import-log), the ZE1 start-up logs that never
# see a whole battery state, the e-NV200 start-up crtd (corrupted on purpose: test_replay_real_captures), and the
# three Kona captures: the bench ASC files hold only tester-present and a relay command, the Car Scanner CSV
# only OBD-II scans (no 22 01 0x request to the BMS).
VEHICLE_CAPTURES = {
    "leaf": ["dalathegreat-EV-CANlogs/ZE0w24kWhstock.log", "damienmaguire-LeafLogs/leaf_on_wotind_off.txt",
             "damienmaguire-LeafLogs/pumpbrake5timesinpark.csv",
             "field-captures/leaf-ze0-30kwh-upgrade/ZE0w30kWhv2.48.log",
             "dalathegreat-EV-CANlogs/AZE0w40kWhv2.48.log", "dalathegreat-EV-CANlogs/ME0_40kWh_IGN.log",
             "dalathegreat-EV-CANlogs/env200-2015-with-40kWh-normal-charge-coldbattery-nocooling-nobridge.crtd",
             "dalathegreat-EV-CANlogs/EV-CANeplus2.log", "dalathegreat-EV-CANlogs/EV-CANeplus3.log",
             "dalathegreat-EV-CANlogs/62kWh-Battery-only-EVcan.txt",
             "dalathegreat-EV-CANlogs/EV_can-bus_from_62_ZE1_QCcharging.txt"],
    "kia-eniro": ["dalathegreat-EV-CANlogs/37501-Q4151+BatteryEmulator.csv"],
}
CHECKS = [(name, check) for name in PROFILES for check in load_profile(name)[0].captures]
CONFIG = parse_config({}, sections=("vehicle", "publish"))


def decimals(value: float) -> int:
    text = repr(value)
    return 0 if text.endswith(".0") else len(text.split(".")[1])


@pytest.mark.parametrize("profile,check", CHECKS, ids=[f"{p}:{c.name}" for p, c in CHECKS])
def test_every_named_capture_replays_to_the_stated_values(profile: str, check: object) -> None:
    run = replay_capture(str(capture_path(check.file)), config=CONFIG, profile=profile, bus=None,  # type: ignore[attr-defined]
                         stats=CaptureStats())
    for _ in run.messages:
        pass
    got = run.parts.tracker.values
    for field, want in check.expect:  # type: ignore[attr-defined]
        assert field in got, f"{check.name}: {field} never decoded"  # type: ignore[attr-defined]
        assert round(got[field], decimals(want)) == want, f"{check.name}: {field} {got[field]} != {want}"  # type: ignore[attr-defined]


@pytest.mark.parametrize("vehicle", sorted(VEHICLE_CAPTURES))
def test_every_real_capture_of_a_vehicle_is_named_by_its_profiles(vehicle: str) -> None:
    named = {c.file for name in PROFILES if name.startswith(vehicle) for c in load_profile(name)[0].captures}
    assert set(VEHICLE_CAPTURES[vehicle]) <= named
    assert all(capture_path(f).is_file() for f in named)


def test_a_profile_without_captures_says_documentation_only_for_every_field() -> None:
    checked = [n for n in PROFILES if load_profile(n)[0].captures]
    assert {"leaf-ze0", "leaf-aze0", "leaf-ze1"} <= set(checked)
    ze1 = load_profile("leaf-ze1")[0]
    assert ze1.validation_of("hx_pct") == "checked against real capture EV-CANeplus2.log, EV-CANeplus3.log"
    assert ze1.validation_of("lbc_soh_pct") == DOCUMENTATION_ONLY  # group 0x61: no public capture
    assert ze1.validation.startswith("checked against real capture EV-CANeplus2.log")


def test_the_passport_says_per_value_how_sure_the_profile_is() -> None:
    run = replay_capture(str(capture_path("dalathegreat-EV-CANlogs/EV-CANeplus2.log")), config=CONFIG,
                         profile="leaf-ze1", bus=None, stats=CaptureStats())
    passport = [m.body for m in run.messages if m.body["kind"] == "passport"][-1]
    prov, ext = passport["prov"], passport["ext"]
    assert prov["ext.bms_soh_pct"]["validation"] == \
        "checked against real capture EV-CANeplus2.log, EV-CANeplus3.log, 62kWh-Battery-only-EVcan.txt, " \
        "EV_can-bus_from_62_ZE1_QCcharging.txt"
    assert prov["StateOfCharge"]["validation"] == "checked against real capture 62kWh-Battery-only-EVcan.txt"
    assert prov["TemperatureInformation"]["validation"] == DOCUMENTATION_ONLY  # no capture states a temperature
    assert ext["profile"]["name"] == "leaf-ze1" and ext["profile"]["validation"].startswith("checked against")
    assert "validation" not in prov["NumberOfFullCycles"]  # counted on the device: no profile decoding


# Profiles written from a published DBC (documentation): our DBC decodes every bit the same, except where it
# says so (a sign turned to + = charging, mV to V). Own signal -> (published signal, factor).
PUBLISHED = {
    "tesla_model3_bms.dbc": ("joshwardell-model3dbc/Model3CAN.dbc", {
        "BMS_PackVoltage": ("BattVoltage132", 1), "BMS_SmoothCurrent": ("SmoothBattCurrent132", 1),
        "BMS_SocMin": ("SOCmin292", 1), "BMS_SocUi": ("SOCUI292", 1), "BMS_SocMax": ("SOCmax292", 1),
        "BMS_SocAvg": ("SOCave292", 1), "BMS_BeginningOfLifeEnergy": ("BattBeginningOfLifeEnergy292", 1),
        "BMS_MinPackTemperature": ("BMSminPackTemperature", 1), "BMS_MaxPackTemperature": ("BMSmaxPackTemperature", 1),
        "BMS_CellMinMaxMux": ("BattCellMultiplexer332", 1), "BMS_BrickVoltageMax": ("BattCellBrickVoltageMax332", 1),
        "BMS_BrickVoltageMin": ("BattCellBrickVoltageMin332", 1),
        "BMS_NominalFullPackEnergy": ("BMS_nominalFullPackEnergy", 1),
        "BMS_NominalEnergyRemaining": ("BMS_nominalEnergyRemaining", 1)}),
    "foxbms2_pack.dbc": ("foxBMS-foxbms-2/foxbms.dbc", {
        "MinimumCellTemperature": ("MinimumCellTemperature", 1),
        "MaximumCellTemperature": ("MaximumCellTemperature", 1),
        "MaximumCellVoltage": ("MaximumCellVoltage", 0.001), "MinimumCellVoltage": ("MinimumCellVoltage", 0.001),
        "BatteryVoltage": ("BatteryVoltage", 1), "Current": ("Current", -1), "MinimumSoc": ("MinimumSoc", 1),
        "MaximumSoc": ("MaximumSoc", 1), "Soh": ("Soh", 1), "Energy": ("Energy", 1)}),
}


@pytest.mark.parametrize("own", sorted(PUBLISHED))
def test_a_dbc_written_from_a_published_one_decodes_every_bit_alike(own: str) -> None:
    import random

    import cantools

    published, names = PUBLISHED[own]
    ours = cantools.database.load_file(str(REPO / "dbc" / own), strict=True)
    theirs = cantools.database.load_file(str(capture_path(published)), strict=False)
    rng = random.Random(7)
    for msg in ours.messages:
        assert {s.name for s in msg.signals} <= set(names), f"{msg.name}: a signal without its published twin"
        for _ in range(200):
            data = bytearray(rng.randbytes(msg.length))
            if msg.is_multiplexed():  # the mux values our DBC defines
                data[0] = (data[0] & ~3) | 1
            got = ours.decode_message(msg.frame_id, bytes(data))
            want = theirs.decode_message(msg.frame_id, bytes(data), decode_choices=False)
            for name, value in got.items():
                other, factor = names[name]
                assert value == pytest.approx(want[other] * factor, abs=1e-9), (msg.name, name)
