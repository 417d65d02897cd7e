"""The one-line summaries of `replay` (without --json) and `demo` never fail on a partial payload."""

from __future__ import annotations

import itertools

from gateway.core.summary import describe

FIELDS = {"soc_pct": 70.0, "pack_v": 380.0, "pack_a": -20.0, "bms_soh_pct": 85.0, "temp_c_min": 19.0,
          "temp_c_avg": 21.0, "temp_c_max": 25.0, "soh": {"est_pct": 84.2, "lo_pct": 83.0, "hi_pct": 85.4}}


def test_every_subset_of_reading_fields_gives_a_line() -> None:
    for n in range(len(FIELDS) + 1):
        for keys in itertools.combinations(FIELDS, n):
            line = describe({"kind": "reading", "m": {k: FIELDS[k] for k in keys}})
            assert isinstance(line, str)
    assert "25 degC" in describe({"kind": "reading", "m": {"temp_c_max": 25.0}})
    assert "SoH 84.2 % (83.0..85.4)" in describe({"kind": "reading", "m": {"soh": FIELDS["soh"]}})


def test_passport_without_a_bms_soh_shows_the_gateway_estimate_and_the_warranty() -> None:
    body = {"kind": "passport",
            "doc": {"StateOfCharge": {"StateOfChargeValue": 70}, "NumberOfFullCycles": {"NumberOfFullCyclesValue": 3},
                    "EnergyThroughput": {"EnergyThroughputValue": 1.5}},
            "ext": {"reason": "key-off", "rated_energy_kwh": 30, "rated_source": "config", "soh": FIELDS["soh"],
                    "warranty": {"decision": "accept", "probability": 0.97}}}
    line = describe(body)
    assert "BMS SOH" not in line and "SoH 84.2 %" in line and "warranty accept (p 0.97)" in line


def test_certificate_page_shows_the_gateway_estimate_with_its_interval() -> None:
    from gateway.core.certificate_html import render_certificate

    payload = {"m": {"soh": FIELDS["soh"], "soc_pct": 70.0}, "dev": "gw", "sw": "t", "ep": 1, "seq": 1,
               "ts": 1.7e12, "bat": None, "identity": {"vehicle": "Leaf", "rated_energy_kwh": 30.0,
                                                        "rated_capacity_ah": 79.0, "rated_source": "config"}}
    from gateway.app.wiring import load_language

    for lang, label in (("en", "gateway estimate"), ("ja", "ゲートウェイ推定値")):
        page = render_certificate(payload, language=load_language(lang), key_id_hex="ab", digest_hex="cd",
                                  qr_text="BP1:X")
        assert label in page and "84.2 %" in page and "83.0-85.4" in page
