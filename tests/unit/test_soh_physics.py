"""The physics estimator on synthetic days of driving and charging with known truth: capacity, current
sensor gain and offset, SoC anchor noise and 0.1 % quantisation, temperature."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from gateway.core.soh import SohEstimator
from tests.fakes import FixedSegmentModel


def drive_and_charge(est: SohEstimator, *, capacity_ah: float, days: int, gain: float, offset_a: float,
                     seed: int, temp_c: float = 20.0, charge_a: float = 16.0, t0: float = 1.7e9) -> None:
    """Each day: a drive from ~90 % down to ~30 % at a varying current, a rest, a charge back to ~90 %."""
    rng = random.Random(seed)
    soc, t = 90.0, t0

    def run(seconds: float, amps_at: object) -> None:
        nonlocal soc, t
        for k in range(int(seconds)):
            true_a = amps_at(k)  # type: ignore[operator]
            soc += true_a / 3600.0 / capacity_ah * 100.0
            t += 1.0
            measured = (1 + gain) * true_a + offset_a + rng.gauss(0, 0.5)
            est.on_current(t, measured, 360.0 + 0.1 * true_a)
            if k % 10 == 0:
                est.on_temperature(temp_c)
                est.on_soc(t, round(soc + rng.gauss(0, 0.15), 1))

    for _ in range(days):
        depth = rng.uniform(40, 60) / 100 * capacity_ah * 3600  # Ah-seconds to drive
        mean_a = rng.uniform(20, 45)
        run(depth / mean_a, lambda k, m=mean_a: -m * (1 + 0.6 * ((k // 30) % 3 - 1)))
        est.end_session()
        t += 3600 * 3
        need = (90.0 - soc) / 100 * capacity_ah * 3600
        run(need / charge_a, lambda k: charge_a)
        est.end_session()
        t += 3600 * 12


@pytest.mark.parametrize(("true_pct", "gain", "offset_a", "seed"), [
    (85.0, 0.0, 0.0, 1), (72.0, 0.005, 0.4, 2), (93.0, -0.008, -0.6, 3), (61.0, 0.0, 0.8, 4),
])
def test_capacity_soh_within_a_point_and_the_interval_covers_it(true_pct: float, gain: float, offset_a: float,
                                                                seed: int) -> None:
    rated = 79.0
    est = SohEstimator(rated_ah=rated)
    drive_and_charge(est, capacity_ah=rated * true_pct / 100, days=5, gain=gain, offset_a=offset_a, seed=seed)
    got = est.estimate()
    assert got is not None and est.details()["segments"] >= 8
    # gain error is indistinguishable from capacity: the estimate carries it, the interval must cover truth
    assert abs(got["est_pct"] - true_pct * (1 + gain)) < 1.0, got
    assert got["lo_pct"] <= true_pct <= got["hi_pct"], got
    assert abs(est.details()["current_offset_a"] - offset_a) < 0.25  # the sensor offset is estimated, not ignored


def test_no_estimate_without_evidence_and_short_segments_are_rejected() -> None:
    est = SohEstimator(rated_ah=79.0)
    assert est.estimate() is None
    t = 0.0
    for k in range(600):  # 10 minutes, SoC 70 -> 66 %: too little SoC swing to say anything
        t += 1
        est.on_current(t, -20.0, 360.0)
        est.on_soc(t, 70.0 - k * 4 / 600)
    est.end_session()
    assert est.estimate() is None and est.rejected["short"] == 1


def test_a_gap_in_the_current_samples_breaks_the_segment() -> None:
    est = SohEstimator(rated_ah=60.0)
    t, soc = 0.0, 90.0
    for k in range(1800):  # 25 % in all, 12.5 % on each side of the gap: only a segment across it is long enough
        t += 1 if k != 900 else 60  # the adapter lost a minute of frames half way
        soc -= 30 / 3600 / 60 * 100
        est.on_current(t, -30.0, 360.0)
        est.on_soc(t, round(soc, 1))
    est.end_session()
    assert est.estimate() is None and est.rejected["short"] >= 1


def test_cold_segments_are_not_used() -> None:
    est = SohEstimator(rated_ah=79.0)
    drive_and_charge(est, capacity_ah=60.0, days=2, gain=0, offset_a=0, seed=5, temp_c=-5.0)
    assert est.estimate() is None and est.rejected["temperature"] >= 4


def test_state_round_trips_and_keeps_learning_across_sessions() -> None:
    est = SohEstimator(rated_ah=79.0)
    drive_and_charge(est, capacity_ah=66.0, days=2, gain=0, offset_a=0.2, seed=6)
    first = est.estimate()
    again = SohEstimator(rated_ah=79.0, state=est.state)  # what the state database hands back at start
    assert again.estimate() == first
    drive_and_charge(again, capacity_ah=66.0, days=3, gain=0, offset_a=0.2, seed=7, t0=1.8e9)
    later = again.estimate()
    assert first is not None and later is not None and again.details()["segments"] > 4
    assert later["hi_pct"] - later["lo_pct"] < first["hi_pct"] - first["lo_pct"]


def test_resistance_from_current_steps() -> None:
    est = SohEstimator(rated_ah=79.0)
    t = 0.0
    for k in range(200):  # 0.1 s frames, current stepping between -10 A and -60 A every second
        t += 0.1
        amps = -10.0 if (k // 10) % 2 else -60.0
        est.on_current(t, amps, 360.0 + 0.085 * amps)  # 85 mOhm pack
    drive_and_charge(est, capacity_ah=66.0, days=1, gain=0, offset_a=0, seed=8)
    got = est.estimate()
    assert got is not None and got["r_mohm"] == pytest.approx(85.0, abs=2.0)


def test_soh_survives_batch_encoding() -> None:
    from gateway.core.passport import build_batch, expand_batch
    from gateway.model import ChainPosition

    soh = {"est_pct": 84.37, "lo_pct": 83.1, "hi_pct": 85.64, "method": "coulomb-kf/1", "model": "physics-1"}
    rows = [(1000.0, {"soc_pct": 70.0}), (1001.0, {"soc_pct": 69.9, "soh": soh})]
    payload = build_batch(rows, device_id="gw", chain=ChainPosition().header(), sw="t", bat=None)
    back = expand_batch(payload)
    assert "soh" not in back[0]["m"] and back[1]["m"]["soh"] == soh


def rest_anchored_days(est: SohEstimator, *, capacity_ah: float, days: int = 8, seed: int = 11) -> None:
    """A vehicle with no BMS SoC: it wakes up rested (an OCV anchor), drives down or charges, sleeps 8 h."""
    assert est.ocv is not None
    table = est.ocv

    def ocv(soc: float) -> float:  # the inverse of the table: what a rested cell reads
        for (s0, v0), (s1, v1) in itertools.pairwise(table):
            if soc <= s1:
                return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)
        return table[-1][1]

    rng = random.Random(seed)
    soc, t = 90.0, 1.7e9
    for day in range(days):
        est.on_temperature(21.0)
        est.on_current(t, 0.3, 96 * ocv(soc) + rng.gauss(0, 0.3))  # wakes up rested: an OCV anchor
        amps = -rng.uniform(20, 40) if day % 2 == 0 else 16.0
        target = rng.uniform(25, 40) if amps < 0 else 90.0
        while (soc > target) if amps < 0 else (soc < target):
            t += 1.0
            soc += amps / 3600 / capacity_ah * 100
            est.on_current(t, amps + 0.2, 96 * ocv(soc) + amps * 0.1)
        t += 8 * 3600  # asleep overnight


def test_without_a_bms_soc_rest_voltages_give_the_anchors() -> None:
    from gateway.core.soh import OCV_CELL_V

    capacity, rated = 55.0, 66.0  # 83.3 %
    est = SohEstimator(rated_ah=rated, ocv=OCV_CELL_V["lmo-leaf"], cells_series=96)
    rest_anchored_days(est, capacity_ah=capacity)
    got = est.estimate()
    assert got is not None, est.rejected
    assert abs(got["est_pct"] - 100 * capacity / rated) < 2.5, got
    assert got["lo_pct"] <= 100 * capacity / rated <= got["hi_pct"]
    assert got["hi_pct"] - got["lo_pct"] > 2.0  # OCV anchors are coarser than the BMS SoC
    assert got["model"] == "physics-1" and "learned" not in est.details()


def test_the_segment_model_corrects_each_rest_anchored_segment_and_sets_its_noise() -> None:
    from gateway.core.soh import OCV_CELL_V

    capacity, rated = 55.0, 66.0
    plain = SohEstimator(rated_ah=rated, ocv=OCV_CELL_V["lmo-leaf"])
    rest_anchored_days(plain, capacity_ah=capacity)
    model = FixedSegmentModel(mu_pct=5.0, sigma_pct=0.5)
    loads: list[int] = []
    est = SohEstimator(rated_ah=rated, ocv=OCV_CELL_V["lmo-leaf"], model=lambda: loads.append(1) or model)
    rest_anchored_days(est, capacity_ah=capacity)
    a, b = plain.estimate(), est.estimate()
    assert a is not None and b is not None
    assert loads == [1]  # loaded once, at the first rest-anchored segment
    assert len(model.calls) == est.state["n"] == plain.state["n"] >= 5
    # every segment's capacity scaled by exp(5 %): the estimate follows
    assert b["est_pct"] == pytest.approx(a["est_pct"] * math.exp(0.05), abs=0.3)
    assert b["hi_pct"] - b["lo_pct"] < (a["hi_pct"] - a["lo_pct"]) / 2  # 0.5 % per segment, not 2 pp per anchor
    assert b["model"] == "physics-1+fixed-test"
    assert est.details()["learned"] == {"model": "fixed-test", "segments": len(model.calls), "shared_sigma_pct": 0.0}
    for f in model.calls:  # the features, in the order the model was trained on
        soc1, soc2, slope1, slope2, temp1, temp2, rest1, rest2, ratio = f
        assert 0 <= soc1 <= 100 and 0 <= soc2 <= 100 and abs(soc2 - soc1) >= 15
        assert 4.0 <= slope1 <= 26.0 and 4.0 <= slope2 <= 26.0  # mV per pp of the lmo-leaf table
        assert temp1 == temp2 == 21.0 and rest1 == rest2 == pytest.approx(math.log(8.0), abs=0.01)
        assert ratio == pytest.approx(capacity / rated, abs=0.05)  # this segment's own counted capacity


def test_the_share_of_the_error_a_vehicle_keeps_does_not_average_out() -> None:
    from gateway.core.soh import OCV_CELL_V

    width = {}
    for shared in (0.0, 0.75):
        est = SohEstimator(rated_ah=66.0, ocv=OCV_CELL_V["lmo-leaf"],
                           model=lambda shared=shared: FixedSegmentModel(mu_pct=0.0, sigma_pct=4.0, shared=shared))
        rest_anchored_days(est, capacity_ah=55.0, days=30)
        got = est.estimate()
        assert got is not None and est.state["n"] >= 20
        width[shared] = (got["hi_pct"] - got["lo_pct"]) / 2 / 1.2816 / got["est_pct"] * 100  # sigma, % of estimate
        if shared:
            assert est.details()["learned"]["shared_sigma_pct"] == pytest.approx(math.sqrt(0.75) * 4.0, abs=0.01)
    # independent: 4 % / sqrt(n) and the gain floor; shared: at least sqrt(0.75) * 4 % whatever n is
    assert width[0.0] < 1.5 and width[0.75] >= math.sqrt(0.75) * 4.0


def test_rest_anchors_in_the_cold_are_not_used() -> None:
    from gateway.core.soh import OCV_CELL_V

    def load() -> None:
        raise AssertionError("loaded")

    est = SohEstimator(rated_ah=66.0, ocv=OCV_CELL_V["lmo-leaf"], model=load)
    est.on_temperature(-8.0)
    est.on_current(0.0, 0.0, 96 * 4.0)
    est.on_current(7200.0, 0.0, 96 * 4.0)  # rested at 80 %
    for i in range(1, 3601):
        est.on_current(7200.0 + i, -30.0, 96 * 3.8)
    est.on_current(7200.0 + 3600 + 7200, 0.0, 96 * 3.7)  # rested at 30 %: 50 pp, but at -8 degC
    assert est.estimate() is None and est.rejected["temperature"] == 1 and est.model is load


def test_a_segment_model_that_answers_nonsense_is_not_used() -> None:
    from gateway.core.soh import OCV_CELL_V

    est = SohEstimator(rated_ah=66.0, ocv=OCV_CELL_V["lmo-leaf"],
                       model=lambda: FixedSegmentModel(mu_pct=float("nan"), sigma_pct=1.0))
    rest_anchored_days(est, capacity_ah=55.0)
    got = est.estimate()
    assert got is not None and got["model"] == "physics-1"
    assert est.rejected["model-output"] == est.state["n"] >= 5
    assert abs(got["est_pct"] - 100 * 55 / 66) < 2.5


def test_the_segment_model_is_never_loaded_when_the_vehicle_gives_its_soc() -> None:
    from gateway.core.soh import OCV_CELL_V

    def load() -> None:
        raise AssertionError("loaded")

    est = SohEstimator(rated_ah=79.0, ocv=OCV_CELL_V["nmc-gr"], model=load)
    drive_and_charge(est, capacity_ah=60.0, days=3, gain=0, offset_a=0, seed=5)
    assert est.estimate() is not None and est.model is load


def test_a_bms_soc_takes_precedence_over_rest_voltages() -> None:
    from gateway.core.soh import OCV_CELL_V

    est = SohEstimator(rated_ah=79.0, ocv=OCV_CELL_V["nmc-gr"])
    est.on_soc(0.0, 50.0)
    est.on_current(1.0, 0.0, 370.0)
    est.on_current(10_000.0, 0.0, 390.0)  # a rest voltage, but the vehicle gives its SoC
    assert est._rest_anchor is None


@pytest.mark.parametrize("state", [
    {"x": [0.0, 0.0], "p": [[1, 0], [0, 1]], "n": 1, "t": None},
    {"x": [60.0], "p": [[1, 0], [0, 1]], "n": 1, "t": None},
    {"x": [60.0, 0.1], "p": "oops", "n": 1, "t": None},
    {"x": [60.0, 0.1], "p": [[1, 0], [0, 1]], "n": -1, "t": None},
    {"x": [60.0, float("nan")], "p": [[1, 0], [0, 1]], "n": 3, "t": 5.0},
    {"unexpected": True},
    {"x": [60.0, 0.1], "p": [[1, 0], [0, 1]], "n": 1, "t": None, "ml": "rest-anchor-1"},
    {"x": [60.0, 0.1], "p": [[1, 0], [0, 1]], "n": 1, "t": None, "ml": {"name": "m", "segments": 1, "floor": -1}},
])
def test_a_damaged_stored_state_starts_over_instead_of_crashing(state: dict[str, object]) -> None:
    est = SohEstimator(rated_ah=79.0, state=state)
    assert est.estimate() is None and est.rejected["state-reset"] == 1
    drive_and_charge(est, capacity_ah=60.0, days=1, gain=0, offset_a=0, seed=12)
    assert est.estimate() is not None
