"""The certificate page's languages are data files (gateway/data/lang): each complete, each worded from
the numbers, so a Japanese or German page has no English sentence left in it."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest

from gateway.adapters.files import certificate_languages, read_package_json
from gateway.app.wiring import load_language
from gateway.core.certificate_html import language_from_table, render_certificate
from gateway.errors import ConfigError

ENGLISH_SENTENCES = ("reference vehicle", "BMS capacity", "present SoH", "lowers the", "temperature", "cycling",
                     "DC fast charging", "detected", "Prior:", "cycles/day", "not answered", "as configured",
                     "Battery health certificate", "December", "rated")


def payload() -> dict[str, Any]:
    usage = {"temp_c": 31.5, "soc_mean_pct": 82.0, "full_cycles_per_day": 0.45, "fast_charge_share": 0.4,
             "days_observed": 40.0, "basis": "this vehicle's counters"}
    factors = [{"factor": "temperature", "key": "temp_c", "value": "32 degC", "effect_pp": -2.14},
               {"factor": "DC fast charging", "key": "fast_share", "value": "40 % of charge", "effect_pp": -1.2},
               {"factor": "state of charge", "key": "soc_mean", "value": "82 % mean", "effect_pp": -0.3},
               {"factor": "cycling", "key": "dod_per_day", "value": "0.45 cycles/day", "effect_pp": -0.1}]
    return {
        "dev": "gw-bay-1", "sw": "battery-gateway/t", "ep": 1, "seq": 7, "ts": 1_796_315_755_761, "bat": "S1",
        "m": {"bms_soh_pct": 88.0, "capacity_ah": 154.88, "capacity_soh_pct": 88.0, "soc_pct": 70.5},
        "identity": {"vehicle": "Nissan Leaf ZE1 (2018+, 40/62 kWh)", "generation": "ze1", "vin_hash": "ab",
                     "rated_energy_kwh": 62.0, "rated_capacity_ah": 176.0, "rated_source": "detected",
                     "profile": "leaf-ze1", "checked_against": ["EV-CANeplus2.log"]},
        "prov": {"m.bms_soh_pct": {"signal": "0x5BC LB_Capacity_Deterioration_Rate"}},
        "polls": {"lbc-group-01": "ok", "vcm-vin": "timeout"},
        "forecast": {"prior": "blast-lite 1.1.1", "chemistry": "nmc-gr", "usage": usage, "factors": factors,
                     "present": {"soh_pct": 88.0, "sigma_pct": 2.0, "method": "capacity-ratio",
                                 "basis": "BMS capacity 154.9 Ah / 176 Ah rated (single reading, +/-2 pp)"},
                     "horizons": {"+1y": {"p10": 84.42, "p50": 87.03, "p90": 89.44},
                                  "+3y": {"p10": 82.27, "p50": 85.29, "p90": 88.01}}},
        "warranty": {"decision": "decline", "probability": 0.62, "horizon_years": 3.0, "threshold_pct": 85.0,
                     "min_probability": 0.9, "reasons": ["English reasons the page must not copy"],
                     "drivers": ["temp_c", "fast_share"]},
    }


def visible(page: str) -> str:
    body = page[page.index("<body>"):]
    body = re.sub(r"<details>.*?</details>", "", body, flags=re.S)  # the QR text for pasting
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def render(lang: str) -> str:
    return render_certificate(payload(), language=load_language(lang), key_id_hex="ab", digest_hex="cd",
                              qr_text="BP1:X")


def test_every_language_file_is_complete_and_the_cli_offers_it() -> None:
    assert {"en", "ja", "de"} <= set(certificate_languages())
    for code in certificate_languages():
        assert load_language(code).code == code


def test_japanese_says_every_sentence_in_japanese_with_its_own_dates() -> None:
    text = visible(render("ja"))
    assert [s for s in ENGLISH_SENTENCES if s in text] == []
    assert "2026年12月3日 16:35 UTC" in text and "バッテリーECUから検出" in text
    assert "BMS容量 154.9 Ah ÷ 定格 176 Ah(1回の読み取り、±2 ポイント)" in text
    assert "温度(32 °C): -2.1 ポイント" in text and " pp" not in text
    assert "温度(32 °C)により3年後の中央値が 2.1 ポイント低下" in text
    assert "急速充電(充電量の 40 %)により" in text and "2 件中 1 件応答 · 応答なし:  vcm-vin" in text
    assert "English reasons the page must not copy" not in text
    assert "実車のCANログ EV-CANeplus2.log で検証済みの解読" in text
    assert "バッテリーECUの報告値 (0x5BC LB_Capacity_Deterioration_Rate)" in text


def test_the_page_says_how_sure_the_profile_is_with_the_profiles_own_signal() -> None:
    doc = payload()
    doc["identity"] = {**doc["identity"], "profile": "kona-64", "checked_against": []}
    doc["prov"] = {"m.bms_soh_pct": {"signal": "0x7E4 22 01 05 (bms-did-0105)"}}
    for lang, words in (("en", "decoding from documentation only"), ("ja", "文書のみに基づく解読")):
        text = visible(render_certificate(doc, language=load_language(lang), key_id_hex="ab", digest_hex="cd",
                                          qr_text="BP1:X"))
        assert words in text and "0x7E4 22 01 05 (bms-did-0105)" in text
        assert "0x5BC" not in text and "検証済み" not in text and "checked against real" not in text


def test_german_is_a_data_file_with_decimal_commas() -> None:
    page = render("de")
    text = visible(page)
    assert '<html lang="de">' in page and "Batteriezustandszertifikat" in text
    assert "3. Dezember 2026, 16:35 UTC" in text and "85,3 %" in text and "0,62" in text
    assert "Temperatur (32 °C) senkt den Median in 3 Jahren um 2,1 Prozentpunkte" in text
    assert "ABGELEHNT" in text and [s for s in ENGLISH_SENTENCES if s in text] == []


def test_english_words_the_same_reasons_from_the_numbers() -> None:
    text = visible(render("en"))
    assert "P(SoH ≥ 85 % at +3 y) = 0.62 < 0.9" in text
    assert "temperature (32 °C) lowers the +3 y median by 2.1 pp" in text and "3 December 2026, 16:35 UTC" in text


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda s: s.pop("scan"), "key 'scan' is missing"),
    (lambda s: s.update(extra="x"), "key 'extra' is not in the English file"),
    (lambda s: s.update(cells_m="{n} Zellen"), "key 'cells_m': placeholders ['n'], English has"),
])
def test_a_language_file_that_lacks_a_key_or_a_placeholder_is_refused_naming_it(edit: Any, needle: str) -> None:
    english = read_package_json("lang/en.json", what="en")
    table = json.loads(json.dumps(read_package_json("lang/de.json", what="de")))
    edit(table["strings"])
    with pytest.raises(ValueError, match=re.escape(needle)):
        language_from_table("de", table, english)


def test_an_unknown_language_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="language 'xx': choose de, en, ja"):
        load_language("xx")


def test_usage_from_an_imported_log_is_named_as_such_in_every_language() -> None:
    doc = payload()
    doc["forecast"]["usage"] = {**doc["forecast"]["usage"], "days_observed": 0.0, "source": "imported-log"}
    for lang, words in (("en", "an imported log's temperature and SoC"), ("ja", "取り込んだログの温度とSoC"),
                        ("de", "Temperatur und SoC eines importierten Protokolls")):
        text = visible(render_certificate(doc, language=load_language(lang), key_id_hex="ab", digest_hex="cd",
                                          qr_text="BP1:X"))
        assert words in text
