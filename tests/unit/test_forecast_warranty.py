"""The forecast against the BLAST-Lite prior shipped in the package, and the warranty rule on top."""

from __future__ import annotations

import itertools

import pytest

from gateway.app.wiring import load_prior
from gateway.core.config import WarrantyConfig
from gateway.core.forecast import Usage, forecast, warranty

PRIOR = load_prior()
MILD = Usage(temp_c=15.0, soc_mean=0.6, dod_per_day=0.3, fast_share=0.0, days=365)
HOT = Usage(temp_c=33.0, soc_mean=0.8, dod_per_day=0.6, fast_share=0.5, days=365)


def _p50(fc: dict[str, object], h: str) -> float:
    return fc["horizons"][h]["p50"]  # type: ignore[index,no-any-return]


def test_prior_records_its_generator_and_covers_both_chemistries() -> None:
    assert PRIOR.generator.startswith("blast-lite ")
    for chem in ("lmo-leaf", "nmc-gr"):
        curve = PRIOR.curve(chem, temp_c=25, soc_mean=0.6, dod_per_day=0.5)
        assert curve[0] == pytest.approx(1.0, abs=0.01) and all(a >= b for a, b in itertools.pairwise(curve))


@pytest.mark.parametrize("chem", ["lmo-leaf", "nmc-gr"])
def test_quantiles_are_ordered_and_fall_with_time(chem: str) -> None:
    fc = forecast(PRIOR, chem, MILD, soh_pct=85.0, soh_sigma_pct=1.0)
    last = 85.0 + 3
    for h in ("+1y", "+3y", "+5y"):
        q = fc["horizons"][h]
        assert q["p10"] < q["p50"] < q["p90"] <= last
        last = q["p90"]
    assert _p50(fc, "+1y") > _p50(fc, "+3y") > _p50(fc, "+5y")


def test_heat_cycling_and_fast_charging_age_a_leaf_faster_and_are_named() -> None:
    mild = forecast(PRIOR, "lmo-leaf", MILD, soh_pct=85.0, soh_sigma_pct=1.0)
    hot = forecast(PRIOR, "lmo-leaf", HOT, soh_pct=85.0, soh_sigma_pct=1.0)
    assert _p50(hot, "+3y") < _p50(mild, "+3y") - 3
    names = [f["factor"] for f in hot["factors"]]
    assert names[0] == "temperature" and hot["factors"][0]["effect_pp"] < -2  # the biggest driver comes first


def test_a_wider_present_interval_widens_the_forecast() -> None:
    narrow = forecast(PRIOR, "nmc-gr", MILD, soh_pct=90.0, soh_sigma_pct=0.5)["horizons"]["+1y"]
    wide = forecast(PRIOR, "nmc-gr", MILD, soh_pct=90.0, soh_sigma_pct=3.0)["horizons"]["+1y"]
    assert wide["p90"] - wide["p10"] > narrow["p90"] - narrow["p10"] + 2


def test_own_history_pulls_the_fade_rate_towards_what_the_car_did() -> None:
    slow = [(0.0, 90.0), (200.0, 89.9), (400.0, 89.8)]   # 0.1 pp a year
    fast = [(0.0, 90.0), (200.0, 87.0), (400.0, 84.0)]   # 5.5 pp a year
    p = {h: forecast(PRIOR, "lmo-leaf", MILD, soh_pct=84.0, soh_sigma_pct=0.5, history=hist)
         for h, hist in (("slow", slow), ("fast", fast))}
    assert p["slow"]["rate_factor"]["from_history"] and p["fast"]["rate_factor"]["from_history"]
    assert _p50(p["fast"], "+3y") < _p50(p["slow"], "+3y") - 3


def test_forecast_is_deterministic_for_the_same_inputs() -> None:
    a = forecast(PRIOR, "lmo-leaf", HOT, soh_pct=80.0, soh_sigma_pct=1.5)
    b = forecast(PRIOR, "lmo-leaf", HOT, soh_pct=80.0, soh_sigma_pct=1.5)
    assert a["horizons"] == b["horizons"]  # the certificate is signed: the same battery gives the same page


@pytest.mark.parametrize(("soh", "usage", "decision"), [(92.0, MILD, "accept"), (72.0, HOT, "decline")])
def test_warranty_decision_with_its_reasons(soh: float, usage: Usage, decision: str) -> None:
    rule = WarrantyConfig(threshold_pct=70.0, horizon_years=3.0, min_probability=0.9)
    fc = forecast(PRIOR, "lmo-leaf", usage, soh_pct=soh, soh_sigma_pct=1.0, extra_horizons=(3.0,))
    w = warranty(fc, rule, basis="test")
    assert w["decision"] == decision
    assert w["reasons"][0].startswith("P(SoH >= 70 % at +3 y) = ")
    if decision == "decline":
        assert any("temperature" in r for r in w["reasons"])


def test_the_rule_threshold_moves_the_decision() -> None:
    fc = forecast(PRIOR, "nmc-gr", MILD, soh_pct=82.0, soh_sigma_pct=1.0, extra_horizons=(3.0,))
    def rule(threshold_pct: float) -> WarrantyConfig:
        return WarrantyConfig(threshold_pct=threshold_pct, horizon_years=3.0, min_probability=0.9)

    assert warranty(fc, rule(70.0), basis="")["decision"] == "accept"
    assert warranty(fc, rule(81.0), basis="")["decision"] == "decline"
