"""SoH forecast at +1/+3/+5 years with P10/P50/P90, and the warranty decision built on it.

The prior is a table of relative capacity over 12 years from NREL's BLAST-Lite cell models, for a grid
of usage stress (mean temperature, mean SoC, daily depth of discharge; ``tools/soh_prior.py``). For a
vehicle, the table is interpolated at its own stress, taken from the counters the gateway keeps
(temperature and SoC histograms, charge throughput per day, DC fast-charge share). The vehicle's present
SoH places it on that curve (its *equivalent age*, so no registration date is needed), and the curve
is followed from there. The uncertainty combines the present estimate's interval with a lognormal
factor on the fade rate (the prior's spread between cells and vehicles), narrowed by the vehicle's own
SoH history when it spans long enough. DC fast charging is not in BLAST-Lite's Leaf model: it scales
the fade rate by ``1 + FAST_CHARGE_FACTOR * share`` (an assumption, stated in the output).

Pure: tables and numbers in, plain maps out; the random draws are seeded, so the same inputs give the
same forecast (and signature).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .config import WarrantyConfig

__all__ = ["CHEMISTRIES", "FAST_CHARGE_FACTOR", "Prior", "Usage", "forecast", "usage_from_counters",
           "warranty"]

CHEMISTRIES = ("lmo-leaf", "nmc-gr")  # the tables in gateway/data/soh_prior.json
FAST_CHARGE_FACTOR = 0.3     # fade-rate multiplier per unit DC fast-charge share (assumption, documented)
RATE_SIGMA_LN = 0.35         # spread of the fade rate around the prior curve (lognormal sigma)
MIN_DAYS = 7.0
_DRAWS = 2000


@dataclass(frozen=True, slots=True)
class Prior:
    """BLAST-Lite relative capacity ``q[chemistry][temp][soc][dod][year]`` on the ``axes`` grid."""

    temps: tuple[float, ...]
    socs: tuple[float, ...]
    dods: tuple[float, ...]
    years: tuple[float, ...]
    q: Mapping[str, Sequence[Sequence[Sequence[Sequence[float]]]]]
    generator: str

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Prior:
        a = doc["axes"]
        return cls(tuple(a["temp_c"]), tuple(a["soc_mean"]), tuple(a["dod_per_day"]), tuple(a["years"]),
                   doc["q"], str(doc["generator"]))

    def curve(self, chemistry: str, *, temp_c: float, soc_mean: float, dod_per_day: float) -> list[float]:
        """Relative capacity at each of ``years`` for this stress (trilinear, clamped to the grid)."""
        grid = self.q[chemistry]
        (i, fi), (j, fj), (k, fk) = (_locate(self.temps, temp_c), _locate(self.socs, soc_mean),
                                     _locate(self.dods, dod_per_day))
        out = []
        for y in range(len(self.years)):
            v = 0.0
            for di, wi in ((0, 1 - fi), (1, fi)):
                for dj, wj in ((0, 1 - fj), (1, fj)):
                    for dk, wk in ((0, 1 - fk), (1, fk)):
                        if wi * wj * wk:
                            v += wi * wj * wk * grid[i + di][j + dj][k + dk][y]
            out.append(v)
        return out


def _locate(axis: Sequence[float], x: float) -> tuple[int, float]:
    x = min(max(x, axis[0]), axis[-1])
    i = min(max(bisect.bisect_right(axis, x) - 1, 0), len(axis) - 2)
    return i, (x - axis[i]) / (axis[i + 1] - axis[i])


@dataclass(frozen=True, slots=True)
class Usage:
    """The vehicle's usage stress, from its counters."""

    temp_c: float
    soc_mean: float
    dod_per_day: float
    fast_share: float
    days: float
    source: str = ""  # "imported-log": temperature and SoC from another tool's log (``outlook``)


REFERENCE = Usage(temp_c=20.0, soc_mean=0.6, dod_per_day=0.3, fast_share=0.0, days=0.0)  # the factors' baseline


def usage_from_counters(counters: Any, *, rated_ah: float, soc_edges: Sequence[float],
                        temp_edges: Sequence[float], days: float) -> Usage:
    """Mean temperature and SoC from the histograms, cycling from the throughput over ``days``; the
    reference vehicle's usage until ``MIN_DAYS`` of counters exist (minutes at an inspection bay say
    nothing about how a car is used)."""
    if days < MIN_DAYS:
        return replace(REFERENCE, days=days)
    def mean(hist: Sequence[float], edges: Sequence[float], default: float) -> float:
        centers = [edges[0] - 5.0, *((a + b) / 2 for a, b in itertools.pairwise(edges)), edges[-1] + 5.0]
        total = sum(hist)
        return default if total <= 0 else sum(c * h for c, h in zip(centers, hist, strict=True)) / total

    throughput_ah = counters.ah_charged + counters.ah_discharged
    dod = throughput_ah / 2.0 / rated_ah / days if days >= 1.0 else REFERENCE.dod_per_day
    fast = counters.ah_charged_fast / counters.ah_charged if counters.ah_charged > 1.0 else 0.0
    return Usage(temp_c=mean(counters.temp_hist_min, temp_edges, REFERENCE.temp_c),
                 soc_mean=mean(counters.soc_hist_min, soc_edges, 100 * REFERENCE.soc_mean) / 100.0,
                 dod_per_day=dod, fast_share=fast, days=days)


def _loss(prior: Prior, chemistry: str, usage: Usage) -> list[float]:
    """The prior's capacity loss since new at each of its years, for this usage."""
    curve = prior.curve(chemistry, temp_c=usage.temp_c, soc_mean=usage.soc_mean, dod_per_day=usage.dod_per_day)
    return [max(0.0, curve[0] - q) for q in curve]


def _project(loss: list[float], years: Sequence[float], soh_now: float, rate: float, horizon: float) -> float:
    """SoH after ``horizon`` years for a vehicle at ``soh_now`` on the curve ``1 - rate * loss(t)``."""
    target = (1.0 - soh_now / 100.0) / rate  # the prior loss at the vehicle's equivalent age
    if target <= 0:
        t_eq = 0.0
    elif target >= loss[-1]:
        t_eq = years[-1]
    else:
        i = next(n for n in range(1, len(loss)) if loss[n] >= target)
        span = loss[i] - loss[i - 1]
        t_eq = years[i - 1] + (0.0 if span <= 0 else (target - loss[i - 1]) / span) * (years[i] - years[i - 1])
    # from the present value down by the prior's further loss (scaled by the rate factor)
    return max(0.0, soh_now - 100.0 * rate * (_loss_at(loss, years, t_eq + horizon) - _loss_at(loss, years, t_eq)))


def _loss_at(loss: list[float], years: Sequence[float], t: float) -> float:
    if t >= years[-1]:  # beyond the table: continue with the last year's slope
        return loss[-1] + (loss[-1] - loss[-2]) * (t - years[-1])
    i = min(int(t), len(loss) - 2)
    return loss[i] + (loss[i + 1] - loss[i]) * (t - years[i])


def forecast(prior: Prior, chemistry: str, usage: Usage, *, soh_pct: float, soh_sigma_pct: float,
             history: Sequence[tuple[float, float]] = (), horizons: Sequence[float] = (1.0, 3.0, 5.0),
             extra_horizons: Sequence[float] = (), history_may_slow: bool = True) -> dict[str, Any]:
    """P10/P50/P90 of SoH at each horizon, the draws behind them, and the factors that drive the fade.

    Args:
        soh_pct, soh_sigma_pct: the present SoH and its 1-sigma uncertainty.
        history: (days since the first estimate, SoH %) of this vehicle, oldest first.
        history_may_slow: False when the history includes points another tool logged (``import-log``):
            then it may make the fade faster than the prior says, never slower (a doctored log must not
            buy a better forecast).
    """
    loss = _loss(prior, chemistry, usage)
    mu = math.log(1.0 + FAST_CHARGE_FACTOR * usage.fast_share)
    sigma = RATE_SIGMA_LN
    observed = _observed_rate(loss, prior.years, history)
    applied = False
    if observed is not None:  # combine the prior with the vehicle's own fade, in log space
        mu_obs, sigma_obs = observed
        w = sigma_obs ** 2 / (sigma_obs ** 2 + sigma ** 2)
        combined = w * mu + (1 - w) * mu_obs
        if history_may_slow or combined >= mu:  # else the prior stands, its spread too
            mu, sigma = combined, math.sqrt(1.0 / (1.0 / sigma ** 2 + 1.0 / sigma_obs ** 2))
            applied = True
    rng = random.Random(f"{chemistry}|{soh_pct:.3f}|{soh_sigma_pct:.3f}|{usage}|{history}")
    draws = [(min(100.0, rng.gauss(soh_pct, soh_sigma_pct)), math.exp(rng.gauss(mu, sigma))) for _ in range(_DRAWS)]
    out: dict[str, Any] = {"method": "blast-lite-prior/1", "prior": prior.generator, "chemistry": chemistry,
                           "equivalent_age": "from the present SoH on the prior curve",
                           "usage": {"temp_c": round(usage.temp_c, 1),
                                     "soc_mean_pct": round(100 * usage.soc_mean, 1),
                                     "full_cycles_per_day": round(usage.dod_per_day, 3),
                                     "fast_charge_share": round(usage.fast_share, 3),
                                     "days_observed": round(usage.days, 1),
                                     "basis": "this vehicle's counters" if usage.days >= MIN_DAYS else
                                              "temperature and SoC of an imported log where the prior says they "
                                              "age the pack faster than the reference vehicle's; cycling of the "
                                              "reference vehicle"
                                              if usage.source == "imported-log" else
                                              f"reference vehicle (less than {MIN_DAYS:g} days of counters)",
                                     "source": usage.source or ("counters" if usage.days >= MIN_DAYS
                                                                else "reference")},
                           "rate_factor": {"median": round(math.exp(mu), 3), "sigma_ln": round(sigma, 3),
                                           "from_history": applied},
                           "horizons": {}}
    samples: dict[float, list[float]] = {}
    for h in (*horizons, *extra_horizons):
        values = sorted(_project(loss, prior.years, s, r, h) for s, r in draws)
        samples[h] = values
        if h in horizons:
            out["horizons"][f"+{h:g}y"] = {"p10": _q(values, 0.1), "p50": _q(values, 0.5), "p90": _q(values, 0.9)}
    out["factors"] = _factors(prior, chemistry, usage, soh_pct, horizons[len(horizons) // 2])
    out["_samples"] = samples  # for the warranty decision; not published
    return out


def _q(values: list[float], p: float) -> float:
    return round(values[min(len(values) - 1, int(p * len(values)))], 2)


def _observed_rate(loss: list[float], years: Sequence[float], history: Sequence[tuple[float, float]]
                   ) -> tuple[float, float] | None:
    """log(fade-rate factor) and its sigma from this vehicle's own SoH history (>= 180 days): the drop it
    showed against the drop the prior predicts from the same starting SoH over the same time."""
    if len(history) < 2 or history[-1][0] - history[0][0] < 180:
        return None
    (d0, s0), (d1, s1) = history[0], history[-1]
    predicted = max(0.05, s0 - _project(loss, years, s0, 1.0, (d1 - d0) / 365.0))
    seen = max(0.05, s0 - s1)
    sigma_drop = 1.0  # pp: two estimates of about 0.7 pp each
    return math.log(seen / predicted), max(0.1, sigma_drop / seen)


def _factors(prior: Prior, chemistry: str, usage: Usage, soh_pct: float, horizon: float) -> list[dict[str, Any]]:
    """How much each stress moves the P50 at ``horizon`` against a reference vehicle (20 degC, 60 % SoC,
    0.3 cycles/day, no fast charging), one factor at a time."""
    def p50(u: Usage) -> float:
        return _project(_loss(prior, chemistry, u), prior.years, soh_pct, 1.0 + FAST_CHARGE_FACTOR * u.fast_share,
                        horizon)

    base = p50(REFERENCE)
    factors = []
    for name, field_, value in (("temperature", "temp_c", f"{usage.temp_c:.0f} degC"),
                                ("state of charge", "soc_mean", f"{100 * usage.soc_mean:.0f} % mean"),
                                ("cycling", "dod_per_day", f"{usage.dod_per_day:.2f} cycles/day"),
                                ("DC fast charging", "fast_share", f"{100 * usage.fast_share:.0f} % of charge")):
        changed = replace(REFERENCE, **{field_: getattr(usage, field_)})
        factors.append({"factor": name, "key": field_, "value": value, "effect_pp": round(p50(changed) - base, 2)})
    return sorted(factors, key=lambda f: f["effect_pp"])


def warranty(outlook: dict[str, Any], rule: WarrantyConfig, *, basis: str) -> dict[str, Any]:
    """The decision: accept when P(SoH >= threshold at the horizon) reaches ``min_probability``."""
    values = outlook["_samples"][rule.horizon_years]
    probability = sum(1 for v in values if v >= rule.threshold_pct) / len(values)
    accept = probability >= rule.min_probability
    worst = [f for f in outlook["factors"] if f["effect_pp"] < -0.5][:2]
    reasons = [f"P(SoH >= {rule.threshold_pct:g} % at +{rule.horizon_years:g} y) = {probability:.2f} "
               f"{'>=' if accept else '<'} {rule.min_probability:g}",
               f"present SoH: {basis}"]
    reasons += [f"{f['factor']} ({f['value']}) lowers the +{rule.horizon_years:g} y median by "
                f"{-f['effect_pp']:.1f} pp" for f in worst]
    return {"decision": "accept" if accept else "decline", "probability": round(probability, 3),
            "horizon_years": rule.horizon_years, "threshold_pct": rule.threshold_pct,
            "min_probability": rule.min_probability, "reasons": reasons, "drivers": [f["key"] for f in worst]}
