"""A vehicle's history imported from another tool's log (core/imported.py) and how the SoH estimator
merges it with its own (core/soh.py): weekly, idempotent, the device's own points first, always marked."""

from __future__ import annotations

import pytest

from gateway.core.imported import WEEK_S, import_rows
from gateway.core.soh import SohEstimator
from gateway.model import LogRow

T0 = 1_600_000_000.0
DAY = 86_400.0


def row(t: float, cap: float | None, soh: float | None = 90.0) -> LogRow:
    return LogRow(t=t, capacity_ah=cap, soh_pct=soh, hx_pct=80.0, soc_pct=60.0, temp_c=15.0, vin="SJNFAAZE0U6064208")


def test_one_point_a_week_the_last_reading_of_it_and_a_summary() -> None:
    state: dict[str, object] = {}
    rows = [row(T0 + h * 3600, 70.0 - h / 1000) for h in range(0, 24 * 21, 6)]  # three weeks, every 6 h
    record = import_rows(state, rows, source="leafspy", file="Log_1.csv", vin_hash="ab")
    points = state["imported"]["points"]  # type: ignore[index]
    assert len(points) == len({int(r.t // WEEK_S) for r in rows}) == record["points_added"]
    last_of_first_week = max((r for r in rows if int(r.t // WEEK_S) == int(rows[0].t // WEEK_S)), key=lambda r: r.t)
    assert points[0] == [last_of_first_week.t, round(last_of_first_week.capacity_ah or 0, 4)]
    assert record["capacity_ah"] == [70.0, round(rows[-1].capacity_ah or 0, 2)] and record["rows"] == len(rows)
    assert record["soc_mean_pct"] == 60.0 and record["temp_mean_c"] == 15.0 and record["vin_hash"] == "ab"


def test_importing_the_same_log_twice_adds_nothing() -> None:
    state: dict[str, object] = {}
    rows = [row(T0 + d * DAY, 70.0) for d in range(30)]
    import_rows(state, rows, source="leafspy", file="a.csv", vin_hash=None)
    again = import_rows(state, rows, source="leafspy", file="a.csv", vin_hash=None)
    assert again["points_added"] == 0 and len(state["imported"]["logs"]) == 1  # type: ignore[index]


def test_a_log_without_capacity_readings_is_refused() -> None:
    with pytest.raises(ValueError, match="no row has a capacity"):
        import_rows({}, [row(T0, None)], source="leafspy", file="a.csv", vin_hash=None)


def test_imported_points_count_only_for_their_vehicle_and_only_before_the_devices_own() -> None:
    est = SohEstimator(rated_ah=79.0)
    est.state["hist"] = [[T0 + 400 * DAY, 70.0]]
    import_rows(est.state, [row(T0 + d * DAY, 79.0 - d / 50) for d in range(0, 420, 7)], source="leafspy",
                file="Log_U6064208_1.csv", vin_hash="ab")
    history = est.history(79.0, "ab")
    assert history[0] == (0.0, 100.0) and history[-1][1] == pytest.approx(100 * 70.0 / 79.0)
    sources = est.history_sources("ab")
    assert sources["device"] == 1 and sources["imported-log"] == len(history) - 1
    assert all(t < 396.5 for t, _ in history[:-1])  # nothing from the device's own time
    assert sources["logs"] == [{"source": "leafspy", "rows": 60, "from": T0, "to": T0 + 413 * DAY}]  # no file name
    for other in (None, "cd"):  # a car whose VIN was not read, or another car
        assert est.history(79.0, other) == [(0.0, pytest.approx(100 * 70.0 / 79.0))]
        assert est.history_sources(other)["imported-log"] == 0
    est.state["hist"].insert(0, [T0 + 200 * DAY, 74.0])  # the device's own points span 200 days: its own only
    assert est.history_sources("ab") == {"device": 2, "imported-log": 0, "logs": []}


def test_an_imported_history_may_make_the_fade_faster_never_slower() -> None:
    from gateway.app.wiring import load_prior
    from gateway.core.forecast import REFERENCE, forecast

    prior = load_prior()
    slow = [(0.0, 90.0), (700.0, 89.9)]  # a doctored log: almost no fade in two years
    fast = [(0.0, 95.0), (700.0, 85.0)]
    kwargs = {"soh_pct": 85.0, "soh_sigma_pct": 2.0}
    plain = forecast(prior, "lmo-leaf", REFERENCE, **kwargs)["rate_factor"]
    assert forecast(prior, "lmo-leaf", REFERENCE, history=slow, **kwargs)["rate_factor"]["median"] < plain["median"]
    clamped = forecast(prior, "lmo-leaf", REFERENCE, history=slow, history_may_slow=False, **kwargs)["rate_factor"]
    assert clamped == plain and clamped["from_history"] is False
    faster = forecast(prior, "lmo-leaf", REFERENCE, history=fast, history_may_slow=False, **kwargs)["rate_factor"]
    assert faster["median"] > plain["median"] and faster["from_history"] is True


def test_a_damaged_imported_table_goes_alone() -> None:
    est = SohEstimator(rated_ah=79.0, state={"x": [70.0, 0.0], "p": [[1, 0], [0, 1]], "n": 1, "t": None,
                                             "imported": {"points": [["yesterday", 70.0]], "logs": []}})
    assert "imported" not in est.state and est.state["n"] == 1 and est.rejected["imported-reset"] == 1
    for junk in ([], None, "x", {"points": None, "logs": []}):
        est = SohEstimator(rated_ah=79.0, state={"imported": junk})
        assert "imported" not in est.state and est.rejected["imported-reset"] == 1


def test_a_history_imported_before_the_first_drive_survives_the_next_start() -> None:
    state: dict[str, object] = {}
    import_rows(state, [row(T0, 70.0)], source="leafspy", file="a.csv", vin_hash="ab")
    est = SohEstimator(rated_ah=79.0, state=state)
    assert est.rejected["state-reset"] == 0 and est.history_sources("ab")["imported-log"] == 1 and "x" in est.state


def test_a_logs_temperature_and_soc_stand_in_for_missing_counters_only_to_make_the_outlook_worse() -> None:
    from gateway.app.wiring import load_prior, load_profile
    from gateway.core.battery import BatteryTracker
    from gateway.core.config import parse_config
    from gateway.core.outlook import build_outlook

    rule = parse_config({}, sections=("warranty",)).warranty
    profile, _ = load_profile("leaf-aze0")

    def outlook(temp: float, soc: float, vin: str = "ab") -> dict[str, object]:
        tracker = BatteryTracker(profile)
        tracker.texts["vin_hash"] = vin
        tracker.update(T0, [("bms_soh_pct", 85.0), ("capacity_ah", 67.0)])  # minutes of own counters
        hot = [LogRow(t=T0 - d * DAY, capacity_ah=70.0, soh_pct=None, hx_pct=None, soc_pct=soc, temp_c=temp,
                      vin="V") for d in range(30)]
        import_rows(tracker.soh.state, hot, source="leafspy", file="a.csv", vin_hash="ab")
        result = build_outlook(tracker, prior=load_prior(), chemistry=profile.chemistry, rule=rule, now=T0 + 60)
        assert result is not None
        return result["forecast"]["usage"]  # type: ignore[no-any-return]

    prior = load_prior()

    def end(temp: float, soc: float) -> float:  # capacity the prior leaves at its last year
        return prior.curve(profile.chemistry, temp_c=temp, soc_mean=soc / 100, dod_per_day=0.3)[-1]

    warm = outlook(31.0, 85.0)
    assert warm["source"] == "imported-log" and warm["temp_c"] == 31.0  # hotter ages faster in every table
    # a fuller log is taken only where this chemistry's table says fuller ages faster
    assert warm["soc_mean_pct"] == (85.0 if end(31.0, 85.0) < end(31.0, 60.0) else 60.0)
    cool = outlook(5.0, 30.0)  # a cooler log buys nothing: the reference vehicle's temperature stands
    assert cool["source"] == "imported-log" and cool["temp_c"] == 20.0
    for temp, soc in ((31.0, 85.0), (5.0, 30.0), (31.0, 10.0), (20.0, 95.0)):  # never a kinder outlook
        used = outlook(temp, soc)
        assert end(used["temp_c"], used["soc_mean_pct"]) <= end(20.0, 60.0)
    other = outlook(31.0, 85.0, vin="cd")  # another car's log: the reference vehicle
    assert other["source"] == "reference" and other["temp_c"] == 20.0


def test_imported_usage_is_refused_when_its_values_are_out_of_range() -> None:
    est = SohEstimator(rated_ah=79.0)
    import_rows(est.state, [row(T0, 70.0)], source="leafspy", file="a.csv", vin_hash="ab")
    assert est.imported_usage("ab") == (15.0, 60.0) and est.imported_usage("cd") is None
    log = est.state["imported"]["logs"][0]
    for key, value in (("temp_mean_c", 400.0), ("rows", True), ("rows", 10**307), ("rows", 10**400)):
        saved = log[key]
        log[key] = value  # a doctored state file: no value, never an overflow or an infinity
        assert est.imported_usage("ab") is None, (key, value)
        log[key] = saved
