"""The gateway's own capacity-based State of Health, from the vehicle's own current and SoC.

Physics first: the charge that flowed between two SoC anchors, divided by the SoC difference, is the
capacity. One *segment* runs from an anchor to the SoC extremum before the SoC turns back (a drive, or
a charge), and is used only if it is long enough (``min_delta_soc_pct``), has no gap in the current
samples, stays within the temperature range, and the SoC follows the counted charge (not "noisy").

Across segments and sessions, a two-state Kalman filter estimates ``[capacity_ah, offset_a]``: the
counted charge is ``capacity * dSoC + offset * duration`` plus noise from the SoC anchors. The current
sensor's offset is therefore estimated, not ignored (charging and driving segments see it with opposite
signs relative to dSoC). Its gain error cannot be told apart from capacity and is systematic, so it is
added to the interval as a floor that no number of segments averages away. Between segments the
capacity may drift (random walk per day). Resistance from current steps (dV/dI) is a second signal.

Where the vehicle gives no SoC, anchors come from rested voltages through an OCV table. A small learned
model (``SegmentModel``, the TensorFlow Lite file of tools/train_soh_model.py) then corrects each such
segment's capacity and gives its uncertainty from the segment's features; without it, a fixed error
per anchor is assumed.

Pure: samples in, estimates out. The filter state is a plain dict persisted with the counters.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..model import SegmentModel

__all__ = ["OCV_CELL_V", "SohEstimator", "SohSettings", "ocv_slope", "soc_from_ocv"]

METHOD = "coulomb-kf/1"  # docs/soh.md: coulomb counting between BMS SoC anchors, Kalman filter with offset
MODEL = "physics-1"

# Open-circuit voltage of one cell against SoC (%), for vehicles that give no SoC: anchors from rest
# voltages. Typical curves of the chemistries (LMO-NMC blend of the 24/30 kWh Leaf, NMC of the 40/62 kWh);
# +/-2 pp SoC is assumed for an anchor taken from them.
OCV_CELL_V: dict[str, tuple[tuple[float, float], ...]] = {
    "lmo-leaf": ((0, 3.30), (10, 3.55), (20, 3.64), (30, 3.70), (40, 3.76), (50, 3.83), (60, 3.90),
                 (70, 3.97), (80, 4.04), (90, 4.10), (100, 4.17)),
    "nmc-gr": ((0, 3.30), (10, 3.50), (20, 3.59), (30, 3.64), (40, 3.69), (50, 3.75), (60, 3.84),
               (70, 3.93), (80, 4.01), (90, 4.09), (100, 4.18)),
}


def soc_from_ocv(table: tuple[tuple[float, float], ...], cell_v: float) -> float:
    """SoC (%) at a rested cell voltage, by linear interpolation of the OCV table (clamped)."""
    if cell_v <= table[0][1]:
        return table[0][0]
    for (s0, v0), (s1, v1) in itertools.pairwise(table):
        if cell_v <= v1:
            return s0 + (s1 - s0) * (cell_v - v0) / (v1 - v0)
    return table[-1][0]


def ocv_slope(table: tuple[tuple[float, float], ...], cell_v: float) -> float:
    """The table's slope (mV per pp SoC) in the interval ``soc_from_ocv`` reads ``cell_v`` from."""
    pairs = list(itertools.pairwise(table))
    (s0, v0), (s1, v1) = next((pair for pair in pairs if cell_v <= pair[1][1]), pairs[-1])
    return 1000.0 * (v1 - v0) / (s1 - s0)


@dataclass(frozen=True, slots=True)
class SohSettings:
    """Segment acceptance and the error model (1-sigma values)."""

    min_delta_soc_pct: float = 15.0
    reversal_pct: float = 1.5           # SoC turning back this far from its extremum ends a segment
    max_gap_s: float = 5.0              # a hole in the current samples longer than this breaks a segment
    temp_min_c: float = 5.0
    temp_max_c: float = 45.0
    soc_sigma_pct: float = 0.4          # error of one BMS SoC anchor
    gain_sigma: float = 0.01            # current sensor gain error, systematic
    offset_prior_a: float = 0.5         # prior on the current sensor offset
    fade_pct_per_sqrt_day: float = 0.05  # capacity random walk between segments, % of rated
    noisy_pct: float = 1.5              # rms distance of the SoC samples from the counted-charge line
    interval_z: float = 1.2816          # two-sided 80 % interval
    rest_s: float = 1800.0              # asleep this long: the first voltage after is a rest (OCV) voltage
    rest_max_a: float = 2.0
    ocv_sigma_pct: float = 2.0          # error of one SoC anchor read from the OCV table (without the model)
    rest_max_h: float = 24.0            # longer rests are as good as this (the model's training range)
    step_min_a: float = 20.0            # a current step at least this big gives a resistance sample
    step_max_dt_s: float = 0.25


@dataclass(slots=True)
class _Fit:
    """Running sums for the least-squares line SoC = a + c * ah over a segment's samples."""

    n: int = 0
    sa: float = 0.0
    ss: float = 0.0
    saa: float = 0.0
    sas: float = 0.0
    sss: float = 0.0

    def add(self, ah: float, soc: float) -> None:
        self.n += 1
        self.sa += ah
        self.ss += soc
        self.saa += ah * ah
        self.sas += ah * soc
        self.sss += soc * soc

    def minus(self, other: _Fit) -> _Fit:
        return _Fit(self.n - other.n, self.sa - other.sa, self.ss - other.ss, self.saa - other.saa,
                    self.sas - other.sas, self.sss - other.sss)

    def line(self) -> tuple[float, float, float] | None:
        """(intercept, slope, residual rms), or None when the samples do not span any charge."""
        if self.n < 3:
            return None
        sxx = self.saa - self.sa * self.sa / self.n
        if sxx <= 1e-12:
            return None
        slope = (self.sas - self.sa * self.ss / self.n) / sxx
        intercept = (self.ss - slope * self.sa) / self.n
        syy = self.sss - self.ss * self.ss / self.n
        sse = max(0.0, syy - slope * (self.sas - self.sa * self.ss / self.n))
        return intercept, slope, math.sqrt(sse / self.n)


@dataclass(slots=True)
class _Point:
    t: float
    soc: float
    ah: float  # counted charge since the estimator started (+ = into the pack)


@dataclass(slots=True)
class _Segment:
    anchor: _Point
    extremum: _Point
    fit: _Fit = field(default_factory=_Fit)
    fit_at_extremum: _Fit = field(default_factory=_Fit)
    temp_ok: bool = True


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _valid(s: dict[str, Any]) -> bool:
    num = _finite
    try:
        if "x" not in s:  # no estimate yet, perhaps a history imported before the first drive
            return set(s) <= {"imported"}
        return (len(s["x"]) == 2 and all(map(num, s["x"])) and s["x"][0] > 0
                and len(s["p"]) == 2 and all(len(r) == 2 and all(map(num, r)) for r in s["p"])
                and isinstance(s["n"], int) and s["n"] >= 0 and (s["t"] is None or num(s["t"]))
                and all(len(h) == 2 and num(h[0]) and num(h[1]) for h in s.get("hist", []))
                and ("ml" not in s or (isinstance(s["ml"]["name"], str) and isinstance(s["ml"]["segments"], int)
                                       and num(s["ml"]["floor"]) and s["ml"]["floor"] >= 0)))
    except (KeyError, TypeError):
        return False


def _valid_imported(record: Any) -> bool:
    num = _finite
    return (isinstance(record, dict) and isinstance(record.get("points"), list) and isinstance(record.get("logs"), list)
            and all(isinstance(p, list) and len(p) == 2 and num(p[0]) and num(p[1]) and p[1] > 0
                    for p in record["points"])
            and all(isinstance(log, dict) for log in record["logs"]))


@dataclass
class SohEstimator:
    """Feed samples in time order; ``estimate()`` says what the evidence supports so far."""

    rated_ah: float
    settings: SohSettings = field(default_factory=SohSettings)
    state: dict[str, Any] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    ocv: tuple[tuple[float, float], ...] | None = None  # OCV table: used only while no BMS SoC is seen
    cells_series: int = 96
    model: Callable[[], SegmentModel | None] | None = None  # loaded at the first rest-anchored segment

    def __post_init__(self) -> None:
        s = self.state
        if "imported" in s and not _valid_imported(s["imported"]):  # only the imported history goes
            del s["imported"]
            self.rejected["imported-reset"] += 1
        if s and not _valid(s):  # a damaged or foreign record: start over rather than crash or mislead
            s.clear()
            self.rejected["state-reset"] += 1
        if "x" not in s:  # no evidence yet: capacity = rated, with a wide prior
            s.update(x=[self.rated_ah, 0.0], n=0, t=None, r_mohm=None,
                     p=[[(0.3 * self.rated_ah) ** 2, 0.0], [0.0, self.settings.offset_prior_a ** 2]])
        self._seg: _Segment | None = None
        self._ah = 0.0
        self._last_i: tuple[float, float, float | None] | None = None  # (t, amps, volts)
        self._soc_seen = False
        self._r: list[float] = []
        self._secs = 0.0  # seconds of current samples (not asleep): the offset acts only then
        self._rest_anchor: tuple[float, ...] | None = None  # t, soc, ah, secs, slope, temp, rest_h
        self._temp: float | None = None
        self._model: SegmentModel | None = None

    # -- samples ---------------------------------------------------------------------------------
    def on_current(self, t: float, amps: float, volts: float | None) -> None:
        prev = self._last_i
        self._last_i = (t, amps, volts)
        if prev is None:
            return
        dt = t - prev[0]
        if dt <= 0:
            return
        if dt > self.settings.max_gap_s:
            self._break("gap")
            if self.ocv is not None and not self._soc_seen and dt >= self.settings.rest_s and volts is not None \
                    and abs(amps) <= self.settings.rest_max_a:
                self._ocv_anchor(t, volts, dt)
            return
        self._ah += prev[1] * dt / 3600.0
        self._secs += dt
        if dt <= self.settings.step_max_dt_s and volts is not None and prev[2] is not None and \
                abs(amps - prev[1]) >= self.settings.step_min_a:
            self._r.append((volts - prev[2]) / (amps - prev[1]))

    def on_temperature(self, temp_c: float) -> None:
        self._temp = temp_c
        if self._seg is not None and not self.settings.temp_min_c <= temp_c <= self.settings.temp_max_c:
            self._seg.temp_ok = False

    def _ocv_anchor(self, t: float, pack_v: float, rest_s: float) -> None:
        """After a rest (asleep, no current): an SoC anchor from the rested voltage; a segment runs from
        the previous rest anchor, the sleep between counting as zero current."""
        assert self.ocv is not None
        cell_v = pack_v / self.cells_series
        soc = soc_from_ocv(self.ocv, cell_v)
        here = (t, soc, self._ah, self._secs, ocv_slope(self.ocv, cell_v),
                25.0 if self._temp is None else self._temp, min(rest_s / 3600.0, self.settings.rest_max_h))
        prev, self._rest_anchor = self._rest_anchor, here
        if prev is None:
            return
        d_soc, d_ah = soc - prev[1], self._ah - prev[2]
        if abs(d_soc) < self.settings.min_delta_soc_pct:
            self.rejected["short"] += 1
            return
        if not all(self.settings.temp_min_c <= temp <= self.settings.temp_max_c for temp in (prev[5], here[5])):
            self.rejected["temperature"] += 1  # as for BMS SoC segments; also the model's range
            return
        h0, r = d_soc / 100.0, 2 * (self.state["x"][0] * self.settings.ocv_sigma_pct / 100.0) ** 2
        model = self._segment_model()
        if model is not None and d_ah * d_soc > 0:
            mu, sigma = model.predict([prev[1], soc, prev[4], here[4], prev[5], here[5], math.log(prev[6]),
                                       math.log(here[6]), d_ah / h0 / self.rated_ah])
            if math.isfinite(mu) and math.isfinite(sigma) and abs(mu) < 50.0 and 0.0 < sigma < 50.0:
                h0 *= math.exp(-mu / 100.0)  # the SoC change the model believes, given the counted charge
                r = (1.0 - model.shared) * (self.state["x"][0] * h0 * sigma / 100.0) ** 2
                # the shared part is kept out of the filter and added to the interval (estimate())
                ml = self.state.setdefault("ml", {"name": model.name, "segments": 0, "floor": 0.0})
                n = ml["segments"] + 1
                ml.update(name=model.name, segments=n,
                          floor=ml["floor"] + (model.shared * (sigma / 100.0) ** 2 - ml["floor"]) / n)
            else:
                self.rejected["model-output"] += 1
        self._update(h0, (self._secs - prev[3]) / 3600.0, d_ah, t, r_ah2=r)

    def _segment_model(self) -> SegmentModel | None:
        if self.model is not None:  # load once, at the first use
            self._model, self.model = self.model(), None
        return self._model

    def on_soc(self, t: float, soc_pct: float) -> None:
        self._soc_seen = True
        here = _Point(t, soc_pct, self._ah)
        seg = self._seg
        if seg is None or self._last_i is None or t - self._last_i[0] > self.settings.max_gap_s:
            self._seg = _Segment(here, here)
            return
        start, ext = seg.anchor, seg.extremum
        seg.fit.add(here.ah - start.ah, soc_pct)
        if ext.soc == start.soc or (soc_pct - ext.soc) * (ext.soc - start.soc) > 0:
            if soc_pct != ext.soc:  # the first move sets the direction; further along it extends
                seg.extremum = here
                seg.fit_at_extremum = replace(seg.fit)
        elif abs(soc_pct - ext.soc) >= self.settings.reversal_pct:  # turned back: the segment ends there
            self._close(seg)
            following = _Segment(ext, here)
            after = seg.fit.minus(seg.fit_at_extremum)  # the samples since the extremum, re-based on it
            shift = ext.ah - start.ah
            following.fit = _Fit(after.n, after.sa - after.n * shift, after.ss,
                                 after.saa - 2 * shift * after.sa + after.n * shift * shift,
                                 after.sas - shift * after.ss, after.sss)
            self._seg = following

    def end_session(self) -> None:
        """The car went to sleep (or the capture ended): use the open segment if it qualifies."""
        self._break(None)

    # -- the filter ------------------------------------------------------------------------------
    def _break(self, reason: str | None) -> None:
        if self._seg is not None:
            self._close(self._seg, reason)
        self._seg = None

    def _close(self, seg: _Segment, broken: str | None = None) -> None:
        s = self.settings
        a, b = seg.anchor, seg.extremum
        if abs(b.soc - a.soc) < s.min_delta_soc_pct:
            if broken is not None or abs(b.soc - a.soc) >= 2 * s.reversal_pct:
                self.rejected["short"] += 1
            return
        if not seg.temp_ok:
            self.rejected["temperature"] += 1
            return
        line = seg.fit_at_extremum.line()
        if line is None or line[2] > s.noisy_pct:
            self.rejected["noisy"] += 1
            return
        # The SoC change along the fitted line, not between two single noisy readings (the extremum of
        # noisy samples is biased outwards).
        d_ah = b.ah - a.ah
        d_soc = line[1] * d_ah
        self._update(d_soc / 100.0, (b.t - a.t) / 3600.0, d_ah, b.t)

    def _update(self, h0: float, h1: float, z: float, t: float, *, r_ah2: float | None = None) -> None:
        """One segment: ``z`` Ah counted = capacity * ``h0`` (SoC change) + offset * ``h1`` (hours), with
        noise variance ``r_ah2`` (Ah^2; default: two BMS SoC anchors)."""
        st, s = self.state, self.settings
        x, p = st["x"], st["p"]
        if st["t"] is not None:  # the capacity may have faded since the last segment
            days = max(0.0, (t - st["t"]) / 86400.0)
            p[0][0] += (s.fade_pct_per_sqrt_day / 100.0 * self.rated_ah) ** 2 * days
        r = r_ah2 if r_ah2 is not None else 2 * (x[0] * s.soc_sigma_pct / 100.0) ** 2  # two anchors
        ph = [p[0][0] * h0 + p[0][1] * h1, p[1][0] * h0 + p[1][1] * h1]
        var = h0 * ph[0] + h1 * ph[1] + r
        k = [ph[0] / var, ph[1] / var]
        innovation = z - (h0 * x[0] + h1 * x[1])
        st["x"] = [x[0] + k[0] * innovation, x[1] + k[1] * innovation]
        st["p"] = [[p[i][j] - k[i] * ph[j] for j in range(2)] for i in range(2)]
        st["n"] += 1
        st["t"] = t
        hist = st.setdefault("hist", [])  # [t, capacity_ah] at most weekly: the forecast's own history
        if not hist or t - hist[-1][0] >= 7 * 86400:
            hist.append([t, round(st["x"][0], 3)])
            del hist[:-200]

    # -- output ----------------------------------------------------------------------------------
    def estimate(self, rated_ah: float | None = None) -> dict[str, Any] | None:
        """``{est_pct, lo_pct, hi_pct, method, model, segments[, r_mohm]}``, or None without evidence."""
        st = self.state
        if self._r:
            st["r_mohm"] = round(statistics.median(self._r[-51:]) * 1000.0, 1)
        if st["n"] == 0:
            return None
        rated = rated_ah or self.rated_ah
        cap = st["x"][0]
        shared = st["ml"]["floor"] if "ml" in st else 0.0  # rest-anchored errors common to this vehicle
        sigma = math.sqrt(max(st["p"][0][0], 0.0) + (self.settings.gain_sigma * cap) ** 2 + shared * cap**2)
        half = self.settings.interval_z * sigma
        out: dict[str, Any] = {"est_pct": round(100.0 * cap / rated, 2),
                               "lo_pct": round(100.0 * (cap - half) / rated, 2),
                               "hi_pct": round(100.0 * (cap + half) / rated, 2),
                               "method": METHOD, "model": MODEL + (f"+{st['ml']['name']}" if "ml" in st else "")}
        if st.get("r_mohm") is not None:
            out["r_mohm"] = st["r_mohm"]
        return out

    def _merged(self, vin_hash: str | None) -> list[tuple[float, float, bool]]:
        """(t, capacity Ah, imported?) of the device's own weekly history and the points imported from
        other tools' logs (``import-log``), oldest first.

        Imported points count only for the vehicle whose logs they came from (``vin_hash``, read from the
        car now), only before the device's own first point, and not at all once the device's own points
        span 180 days: the device's measurements always win, and a log cannot stand in for them.
        """
        own = [(t, cap, False) for t, cap in self.state.get("hist", [])]
        if own and own[-1][0] - own[0][0] >= 180 * 86400:
            return own
        record = self.state.get("imported", {})
        logs = record.get("logs", [])
        if vin_hash is None or not logs or any(log.get("vin_hash") != vin_hash for log in logs):
            return own
        first_own = own[0][0] if own else math.inf
        imported = [(t, cap, True) for t, cap in record.get("points", []) if t < first_own - 3.5 * 86400]
        return sorted(own + imported)

    def history(self, rated_ah: float, vin_hash: str | None = None) -> list[tuple[float, float]]:
        """(days since the first entry, SoH %) at most weekly, oldest first; imported points as ``_merged``
        admits them for the vehicle ``vin_hash``."""
        hist = self._merged(vin_hash)
        return [((t - hist[0][0]) / 86400.0, 100.0 * cap / rated_ah) for t, cap, _ in hist]

    def imported_usage(self, vin_hash: str | None) -> tuple[float, float] | None:
        """(mean pack temperature degC, mean SoC %) of the imported logs of the vehicle read now (the rows'
        weighted means), or None: no log, a log of another vehicle, or values out of their range."""
        logs = self.state.get("imported", {}).get("logs", [])
        if vin_hash is None or not logs or any(log.get("vin_hash") != vin_hash for log in logs):
            return None
        means = []
        for key, lo, hi in (("temp_mean_c", -40.0, 85.0), ("soc_mean_pct", 0.0, 100.0)):
            pairs = [(log[key], log.get("rows")) for log in logs if log.get(key) is not None]
            if not pairs or not all(_finite(v) and lo <= v <= hi and type(n) is int and 0 < n <= 10**9
                                    for v, n in pairs):  # a doctored state: no bool rows, no overflow
                return None
            means.append(sum(v * n for v, n in pairs) / sum(n for _, n in pairs))
        return means[0], means[1]

    def history_sources(self, vin_hash: str | None = None) -> dict[str, Any]:
        """Where ``history`` comes from, for the forecast's provenance: how many points this device
        measured, how many came from imported logs (their source, rows and dates; never the file name,
        which LeafSpy makes from the VIN)."""
        merged = self._merged(vin_hash)
        imported = sum(1 for *_, is_imported in merged if is_imported)
        logs = self.state.get("imported", {}).get("logs", []) if imported else []
        return {"device": len(merged) - imported, "imported-log": imported,
                "logs": [{k: log.get(k) for k in ("source", "rows", "from", "to")} for log in logs]}

    def details(self) -> dict[str, Any]:
        """What the estimate rests on, for the passport's provenance."""
        st = self.state
        out = {"capacity_ah": round(st["x"][0], 3), "segments": st["n"], "current_offset_a": round(st["x"][1], 3),
               "rejected_segments": dict(self.rejected), "gain_sigma": self.settings.gain_sigma, "interval": "80 %"}
        if "ml" in st:
            ml = st["ml"]
            out["learned"] = {"model": ml["name"], "segments": ml["segments"],
                              "shared_sigma_pct": round(100 * math.sqrt(ml["floor"]), 2)}
        return out
