"""Every built-in profile's passport path end to end: the profile's simulated car (``simulate --profile``) on
udp_multicast -> the daemon, a real process -> a real mosquitto -> ``battery-gateway verify``.

The simulated car speaks through the profile's own DBC files and poll layouts, so this proves that each
profile's data reach a complete, schema-valid, signed passport that names how sure the profile is. That the
profile decodes the real car right is test_profile_validation.py's job (real captures).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from gateway.adapters.files import BUILTIN_PROFILES
from gateway.app.wiring import load_profile
from gateway.sim.demo import sim_car
from tests.conftest import SCHEMA
from tests.rig import Car, Rig, Subscriber, count, signed, start_daemon, stop_daemon

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.mark.parametrize("name", BUILTIN_PROFILES)
def test_the_profiles_car_gives_a_signed_complete_passport(name: str, rig: Rig, sub: Subscriber,
                                                          tmp_path: Path) -> None:
    profile, databases = load_profile(name)
    rig.config.write_text(rig.config.read_text().replace('profile = "leaf-aze0"', f'profile = "{name}"'))
    car = Car(rig, sim_car(profile, databases, soh_pct=88, soc_pct=64.0), duration_s=90)
    daemon = start_daemon(rig)
    try:
        got = sub.collect(count("passport", 1), 60)
    finally:
        code = stop_daemon(daemon)
        car.close()
    assert code == 0, (rig.tmp / "daemon.log").read_text()[-3000:]
    messages = signed(rig, got)
    passports = [b for b, _ in messages if b["kind"] == "passport"]
    assert passports, f"{name}: no passport; daemon log:\n{(rig.tmp / 'daemon.log').read_text()[-3000:]}"
    passport = passports[0]
    doc, prov, ext = passport["doc"], passport["prov"], passport["ext"]
    if SCHEMA.is_file():
        jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert doc["StateOfCharge"]["StateOfChargeValue"] == pytest.approx(64.0, abs=1.0)
    assert 15.0 <= doc["TemperatureInformation"]["MeasuredTemp"] <= 25.0  # the pack model: 22 +/- 3 degC
    if "bms_soh_pct" in ext:
        assert ext["bms_soh_pct"] == pytest.approx(88.0, abs=0.1)
    assert ext["profile"] == {"name": name, "validation": profile.validation}
    assert prov["StateOfCharge"]["validation"] == profile.validation_of("soc_pct")
    assert prov["StateOfCharge"]["signal"] == profile.field_sources()["soc_pct"]

    envelope = tmp_path / "passport.cose"
    envelope.write_bytes(next(e for b, e in messages if b["kind"] == "passport"))
    out = subprocess.run([sys.executable, "-m", "gateway", "verify", "--pubkey", str(rig.tmp / "key.pem"),
                          str(envelope)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "passport" in out.stdout, out.stdout + out.stderr
