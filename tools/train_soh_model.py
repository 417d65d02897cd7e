#!/usr/bin/env python3
"""Train the rest-anchor SoH model, ``gateway/data/soh_model.tflite``, offline and reproducibly.

    python3.12 -m venv .venv-train && .venv-train/bin/pip install -e '.[train]'
    .venv-train/bin/python tools/train_soh_model.py            # ~18 min on 2 cores
    .venv-train/bin/python tools/train_soh_model.py --dry-run  # is the committed model what this makes?

What the model does (docs/soh.md): on a vehicle that gives no SoC, the estimator reads SoC anchors
from rested voltages through a fresh cell's 25 degC OCV table and counts the charge between them. That
capacity is biased where the table no longer fits the cell: degradation modes (loss of lithium and of
active material) slide the electrodes against each other and reshape the OCV-vs-SoC curve, the OCV
shifts with temperature, a short rest has not relaxed, and an 11-point table is coarse. The model
takes the segment's features (both table SoCs, the table's slope there, the temperatures, the rest
lengths, the segment's own capacity ratio) and returns the log-ratio of true to counted capacity and
its standard deviation. The estimator applies the correction and uses the deviation as the segment's
noise in its Kalman filter.

Labelled data:
- NREL's BLAST-Lite gives the fade: the capacity trajectories of its LMO (Leaf) and NMC cell models over
  a grid of temperature, SoC and depth of discharge (gateway/data/soh_prior.json, written by
  tools/soh_prior.py), one sampled at a random age for each cell.
- PyBaMM simulates the sessions: a cell of a published parameter set aged to that capacity by
  degradation modes (loss of lithium inventory; loss of active material in each electrode, random
  shares; slower particle diffusion), at rest at a random SoC and ambient temperature, discharged
  (a drive), rested 8 h, charged, rested 8 h. The device would wake up after 0.5 to 8 h of rest;
  every such rest voltage is an anchor. The label comes from the exact charge counted and the aged
  cell's true capacity (electrode SoH).
- The device's measurement is applied afterwards (``measure``): a typical-curve table off by a per-cell
  offset and tilt, the Leaf's 0.5 V pack-voltage steps with 1 mV noise, temperature noise.

Held out (never trained on, printed and kept in the manifest and in bench/data for ``bench/soh_eval``):
new cells of the training distribution; a chemistry (Mohtat2020, NMC532); a generator family (DFN
instead of SPMe); a cold (0-10 degC) and a hot (35-45 degC) climate. Training covers 10-35 degC.

Writes ``gateway/data/soh_model.tflite``, ``gateway/data/soh_model.json`` (features, versions,
SHA-256, reference outputs, held-out figures) and ``bench/data/soh_rest_holdout.npz``. Nothing here
is a runtime dependency of the gateway; the device only reads the .tflite file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gateway.core.soh import SohSettings, ocv_slope, soc_from_ocv  # noqa: E402 - the device's own table reading

MODEL_OUT = ROOT / "gateway" / "data" / "soh_model.tflite"
MANIFEST_OUT = ROOT / "gateway" / "data" / "soh_model.json"
HOLDOUT_OUT = ROOT / "bench" / "data" / "soh_rest_holdout.npz"
PRIOR = ROOT / "gateway" / "data" / "soh_prior.json"

FEATURES = ["soc1_pct", "soc2_pct", "slope1_mv_per_pct", "slope2_mv_per_pct", "temp1_c", "temp2_c",
            "ln_rest1_h", "ln_rest2_h", "cap_ratio"]
TRAIN_SETS = ["Chen2020", "ORegan2022", "Ecker2015", "NCA_Kim2011", "Marquis2019", "Ai2020"]
HELD_CHEMISTRY = "Mohtat2020"
REST_H = [0.5, 1.0, 2.0, 4.0, 8.0]   # the device takes the first voltage after >= 30 min asleep
FIRST_REST_H = 24.0                   # the session starts from a long rest (equilibrium)
PACK_LSB_V, CELLS = 0.5, 96           # Leaf 0x1DB: 0.5 V per bit over 96 cells in series
MIN_DSOC = SohSettings().min_delta_soc_pct  # the estimator uses no shorter segment
SPLITS = {  # name: (count, model, parameter sets, temperature range degC)
    "train": (900, "SPMe", TRAIN_SETS, (10.0, 35.0)),
    "vehicle": (150, "SPMe", TRAIN_SETS, (10.0, 35.0)),
    "chemistry": (150, "SPMe", [HELD_CHEMISTRY], (10.0, 35.0)),
    "family": (100, "DFN", TRAIN_SETS, (10.0, 35.0)),
    "cold": (100, "SPMe", TRAIN_SETS, (0.0, 10.0)),
    "hot": (100, "SPMe", TRAIN_SETS, (35.0, 45.0)),
}


# -- fade from BLAST-Lite ------------------------------------------------------------------------
def fade_trajectories() -> list[tuple[np.ndarray, np.ndarray]]:
    """(years, relative capacity) of NREL's BLAST-Lite cell models (LMO Leaf, NMC) over 12 years of daily
    use, for every temperature, mean SoC and depth of discharge of ``gateway/data/soh_prior.json`` --
    the table tools/soh_prior.py made with BLAST-Lite (which needs numpy < 2, PyBaMM >= 2: two venvs)."""
    prior = json.loads(PRIOR.read_text())
    years = np.asarray(prior["axes"]["years"], dtype=float)
    return [(years, np.asarray(q, dtype=float)) for grid in prior["q"].values()
            for by_soc in grid for by_dod in by_soc for q in by_dod]


# -- sessions from PyBaMM ------------------------------------------------------------------------
def _scaled(value, factor):
    if callable(value):
        return lambda *args: factor * value(*args)
    return value * factor


def _esoh(pv, lp, q_n: float, q_p: float, q_li: float) -> dict[str, float]:
    import pybamm

    sol = pybamm.lithium_ion.ElectrodeSOHSolver(pv, lp).solve({"Q_n": q_n, "Q_p": q_p, "Q_Li": q_li})
    return {k: float(sol[k]) for k in ("x_0", "x_100", "y_0", "y_100", "Q")}


def _ocv(pv, lp, x: float, y: float, temp_k: float) -> float:
    import pybamm

    t = pybamm.Scalar(temp_k)
    return float(pv.evaluate(lp.p.prim.U(pybamm.Scalar(y), t)) - pv.evaluate(lp.n.prim.U(pybamm.Scalar(x), t)))


def table_soc(table: np.ndarray, v: float) -> tuple[float, float]:
    """SoC (%) read from an 11-point OCV table and the table's slope there (mV per pp), by the device's
    own functions, so the features are exactly what the estimator computes."""
    pairs = tuple((10.0 * i, float(volts)) for i, volts in enumerate(table))
    return soc_from_ocv(pairs, v), ocv_slope(pairs, v)


def simulate(task: tuple[int, str, str, tuple[float, float], float, int]) -> list[list[float]] | str:
    """One cell, one session: raw rows (see VA..TABLE below). A string when PyBaMM fails."""
    import pybamm

    index, model_name, set_name, temps, soh_target, seed = task
    rng = np.random.default_rng(seed)
    pybamm.set_logging_level("ERROR")
    try:
        fresh = pybamm.ParameterValues(set_name)
        lp = pybamm.LithiumIonParameters()
        q_n0, q_p0 = fresh.evaluate(lp.n.Q_init), fresh.evaluate(lp.p.Q_init)
        q_li0 = fresh.evaluate(lp.Q_Li_particles_init)
        new = _esoh(fresh, lp, q_n0, q_p0, q_li0)
        table = np.array([_ocv(fresh, lp, new["x_0"] + s * (new["x_100"] - new["x_0"]),
                               new["y_0"] - s * (new["y_0"] - new["y_100"]), 298.15) for s in np.linspace(0, 1, 11)])
        # Degradation modes: loss of active material (random shares), then loss of lithium to the target.
        fade = 1.0 - soh_target
        lam_n, lam_p = rng.uniform(0, 0.8) * fade, rng.uniform(0, 0.8) * fade
        aged = fresh.copy()
        for side, lam in (("Negative", lam_n), ("Positive", lam_p)):
            key = f"{side} electrode active material volume fraction"
            aged[key] = _scaled(fresh[key], 1.0 - lam)
        key = "Negative particle diffusivity [m2.s-1]"
        aged[key] = _scaled(fresh[key], rng.uniform(0.3, 1.0))
        q_n, q_p = q_n0 * (1 - lam_n), q_p0 * (1 - lam_p)
        lo, hi = 0.0, min(0.6, 1.5 * fade + 0.02)
        for _ in range(7):  # bisection: loss of lithium that gives the target capacity
            lli = (lo + hi) / 2
            got = _esoh(aged, lp, q_n, q_p, q_li0 * (1 - lli))["Q"] / new["Q"]
            lo, hi = (lli, hi) if got > soh_target else (lo, lli)
        cell = _esoh(aged, lp, q_n, q_p, q_li0 * (1 - (lo + hi) / 2))
        q_true = cell["Q"]

        temp_c = rng.uniform(*temps)
        s0 = rng.uniform(0.55, 0.95)
        s1 = s0 - rng.uniform(0.18, min(0.7, s0 - 0.08))
        s2 = min(0.97, s1 + rng.uniform(0.18, 0.85 - s1 + 0.1))
        x, y = cell["x_0"] + s0 * (cell["x_100"] - cell["x_0"]), cell["y_0"] - s0 * (cell["y_0"] - cell["y_100"])
        c_n, c_p = (aged.evaluate(lp.n.prim.c_max), aged.evaluate(lp.p.prim.c_max))
        aged["Initial concentration in negative electrode [mol.m-3]"] = x * c_n
        aged["Initial concentration in positive electrode [mol.m-3]"] = y * c_p
        aged["Ambient temperature [K]"] = aged["Initial temperature [K]"] = 273.15 + temp_c
        nominal = fresh["Nominal cell capacity [A.h]"]
        c_dis, c_chg = rng.uniform(0.15, 1.0), rng.choice([rng.uniform(0.1, 0.4), rng.uniform(0.5, 1.2)])
        v_min, v_max = fresh["Lower voltage cut-off [V]"], fresh["Upper voltage cut-off [V]"]
        minutes_dis = (s0 - s1) * q_true / (c_dis * nominal) * 60
        minutes_chg = (s2 - s1) * q_true / (c_chg * nominal) * 60
        experiment = pybamm.Experiment([
            f"Discharge at {c_dis * nominal:.4f} A for {minutes_dis:.2f} minutes or until {v_min} V",
            "Rest for 8 hours (1 minute period)",
            f"Charge at {c_chg * nominal:.4f} A for {minutes_chg:.2f} minutes or until {v_max} V",
            "Rest for 8 hours (1 minute period)",
        ], temperature=273.15 + temp_c)
        model = getattr(pybamm.lithium_ion, model_name)()
        sol = pybamm.Simulation(model, parameter_values=aged, experiment=experiment).solve()
        steps = [step for cycle in sol.cycles for step in cycle.steps]
        if len(steps) < 4:
            return f"{set_name}#{index}: stopped early ({len(steps)} steps)"
        v_start = _ocv(aged, lp, x, y, 273.15 + temp_c)
    except Exception as exc:  # PyBaMM's solver failures are data points lost, not a reason to stop
        return f"{set_name}#{index}: {type(exc).__name__}: {exc}"[:200]

    def anchors(step) -> list[tuple[float, float, float]]:  # (rest h, V, Ah discharged)
        t = step["Time [s]"].entries - step["Time [s]"].entries[0]
        v, q = step["Voltage [V]"].entries, step["Discharge capacity [A.h]"].entries
        return [(h, float(np.interp(h * 3600, t, v)), float(q[-1])) for h in REST_H]

    rest1, rest2 = anchors(steps[1]), anchors(steps[3])
    rows: list[list[float]] = []
    for a_list, b_list in (([(FIRST_REST_H, v_start, 0.0)], rest1), (rest1, rest2)):
        for ra, va, qa in a_list:
            for rb, vb, qb in b_list:  # qa - qb: the charge into the pack between the anchors
                rows.append([va, vb, temp_c, ra, rb, qa - qb, q_true, new["Q"], float(index), *table])
    return rows


# Raw columns: the physics of one segment, before the device measures it.
VA, VB, TEMP, RA, RB, AH, Q_TRUE, Q_NEW, CELL = range(9)
TABLE = slice(9, 20)
TABLE_MISMATCH_MV = 5.0  # the device's table is a typical curve: offset and tilt, 1 sigma each
AUGMENT = 3
HIDDEN, L2 = 8, 1e-4  # chosen by validation NLL on kept-aside training cells (docs/soh.md)


def measure(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What the device sees of each raw segment: its OCV table (the cell's new 25 degC curve, off by a
    random offset and tilt, the same for all segments of a cell), the Leaf's 0.5 V pack-voltage steps with
    1 mV noise, temperatures +/-0.5 degC. Rows of FEATURES + [label, cell]; segments the device would not
    use (under 15 pp) are left out."""
    out = []
    socs = np.linspace(0.0, 1.0, 11)
    mismatch = {cell: (rng.normal(0, TABLE_MISMATCH_MV) + rng.normal(0, TABLE_MISMATCH_MV) * (2 * socs - 1)) / 1000
                for cell in np.unique(raw[:, CELL])}
    for r in raw:
        table = r[TABLE] + mismatch[r[CELL]]
        if np.any(np.diff(table) <= 0):
            continue

        def read(v: float, table: np.ndarray = table) -> tuple[float, float]:
            pack = round((v + rng.normal(0, 0.001)) * CELLS / PACK_LSB_V) * PACK_LSB_V
            return table_soc(table, pack / CELLS)

        (soc_a, slope_a), (soc_b, slope_b) = read(r[VA]), read(r[VB])
        if abs(soc_b - soc_a) < MIN_DSOC or r[AH] * (soc_b - soc_a) <= 0:
            continue
        cap_table = r[AH] / ((soc_b - soc_a) / 100.0)
        out.append([soc_a, soc_b, slope_a, slope_b, r[TEMP] + rng.normal(0, 0.5), r[TEMP] + rng.normal(0, 0.5),
                    math.log(r[RA]), math.log(r[RB]), cap_table / r[Q_NEW],
                    100.0 * math.log(r[Q_TRUE] / cap_table), r[CELL]])  # the label in percent
    return np.asarray(out, dtype=np.float64)


def generate(split: str, count: int, model: str, sets: list[str], temps: tuple[float, float],
             fades: list[tuple[np.ndarray, np.ndarray]], seed: int, workers: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tasks = []
    for i in range(count):
        years, q = fades[rng.integers(len(fades))]
        soh = float(np.clip(np.interp(rng.uniform(0, 12), years, q), 0.6, 1.0))
        tasks.append((i, model, sets[i % len(sets)], temps, soh, int(rng.integers(2**31))))
    rows, failures, started = [], 0, time.monotonic()
    with ProcessPoolExecutor(workers) as pool:
        for n, result in enumerate(pool.map(simulate, tasks, chunksize=4), 1):
            if isinstance(result, str):
                failures += 1
                print(f"  {split}: skipped {result}", file=sys.stderr)
            else:
                rows.extend(result)
            if n % 50 == 0 or n == count:
                print(f"  {split}: {n}/{count} cells, {len(rows)} segments, {failures} failed, "
                      f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    return np.asarray(rows, dtype=np.float64)


# -- training ------------------------------------------------------------------------------------
def train(rows: np.ndarray, seed: int, epochs: int, hidden: int = HIDDEN, l2: float = L2):
    """Gaussian negative log-likelihood; early stopping on 15 % of the training *cells* (a cell's segments
    are alike, so a split by rows would let the model stop on cells it is fitting)."""
    import tensorflow as tf

    nf = len(FEATURES)
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    cells = np.unique(rows[:, nf + 1])
    val_cells = np.random.default_rng(seed).choice(cells, size=max(1, len(cells) * 15 // 100), replace=False)
    val = np.isin(rows[:, nf + 1], val_cells)
    x, y = rows[:, :nf].astype(np.float32), rows[:, nf : nf + 1].astype(np.float32)
    norm = tf.keras.layers.Normalization()
    norm.adapt(x[~val])
    reg = tf.keras.regularizers.l2(l2)
    inputs = tf.keras.Input(shape=(nf,), dtype=tf.float32, name="features")
    h = norm(inputs)
    h = tf.keras.layers.Dense(hidden, activation="tanh", kernel_regularizer=reg)(h)
    h = tf.keras.layers.Dense(hidden, activation="tanh", kernel_regularizer=reg)(h)
    out = tf.keras.layers.Dense(2, name="mu_logsigma")(h)
    model = tf.keras.Model(inputs, out)

    def nll(target, pred):
        mu, log_sigma = pred[:, 0], pred[:, 1]
        return tf.reduce_mean(log_sigma + 0.5 * tf.square((target[:, 0] - mu) / tf.exp(log_sigma)))

    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss=nll)
    history = model.fit(x[~val], y[~val], epochs=epochs, batch_size=256, validation_data=(x[val], y[val]), shuffle=True,
              verbose=0, callbacks=[tf.keras.callbacks.ReduceLROnPlateau(patience=10, factor=0.5),
                                    tf.keras.callbacks.EarlyStopping(patience=25, restore_best_weights=True)])
    val_nll = float(min(history.history["val_loss"]))
    print(f"hidden {hidden}, l2 {l2}: {len(history.history['val_loss'])} epochs, validation NLL {val_nll:.4f} "
          f"on {len(val_cells)} training cells kept aside", file=sys.stderr)
    return model, val_nll, val_cells


def shared_share(blob: bytes, raw: np.ndarray, rng: np.random.Generator) -> float:
    """The share of a segment's error variance common to all segments of a vehicle (its table's mismatch,
    its own degradation): the correlation of the standardised errors of a cell's drive and its charge,
    on training cells kept aside. The estimator keeps that share out of the averaging (docs/soh.md)."""
    nf = len(FEATURES)
    rows = measure(raw, rng)
    pred = run_tflite(blob, rows[:, :nf])
    z = (rows[:, nf] - pred[:, 0]) / np.exp(pred[:, 1])
    first = rows[:, 6] > math.log(20)  # the drive, from the long rest before the session
    pairs = [(z[i], z[j]) for i in np.flatnonzero(first) for j in np.flatnonzero(~first)
             if rows[j, nf + 1] == rows[i, nf + 1] and rows[j, 6] == rows[i, 7]]
    a = np.asarray(pairs)
    rho = float(np.corrcoef(a[:, 0], a[:, 1])[0, 1])
    print(f"errors shared by the segments of a vehicle: correlation {rho:.3f} over {len(a)} drive/charge pairs",
          file=sys.stderr)
    return round(max(0.0, rho), 3)


def to_tflite(model) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()  # float32, no quantisation


def run_tflite(blob: bytes, x: np.ndarray) -> np.ndarray:
    """Through LiteRT (ai-edge-litert, the device's runtime on Python >= 3.12), as the device runs it."""
    from ai_edge_litert import interpreter as tfl

    interp = tfl.Interpreter(model_content=blob, num_threads=1,
                             experimental_op_resolver_type=tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    out = []
    for row in x.astype(np.float32):
        interp.set_tensor(i, row.reshape(1, -1))
        interp.invoke()
        out.append(interp.get_tensor(o)[0].copy())
    return np.asarray(out)


def scores(label: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    """Capacity error in percent, per segment, and the 80 % interval's coverage."""
    err = label - mu
    return {"segments": len(label), "mae_pct": round(float(np.mean(np.abs(err))), 3),
            "rmse_pct": round(float(np.sqrt(np.mean(err**2))), 3),
            "p90_pct": round(float(np.percentile(np.abs(err), 90)), 3),
            "bias_pct": round(float(np.mean(err)), 3),
            "cover80": round(float(np.mean(np.abs(err) <= 1.2816 * sigma)), 3)}


def baseline_sigma(x: np.ndarray) -> np.ndarray:
    """The table alone: the estimator's fixed error per anchor (``ocv_sigma_pct``) as a relative capacity error."""
    return 100.0 * math.sqrt(2) * SohSettings().ocv_sigma_pct / np.abs(x[:, 1] - x[:, 0])


def _version(*names: str) -> str:
    from importlib.metadata import PackageNotFoundError

    for name in names:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            pass
    return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the cells per split (0.05 for a smoke run)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--seed", type=int, default=20261130)
    ap.add_argument("--hidden", type=int, default=HIDDEN, help="units in each of the two hidden layers")
    ap.add_argument("--l2", type=float, default=L2, help="weight decay")
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "soh_model_data.npz",
                    help="generated data is kept here and reused when the settings match")
    ap.add_argument("--dry-run", action="store_true",
                    help="train and report, write nothing into the repo; says whether the model is the committed one")
    args = ap.parse_args()
    if sys.version_info < (3, 12):  # PyBaMM needs numpy >= 2, the gateway's Python 3.11 runtime numpy < 2
        sys.exit("train_soh_model.py: needs Python >= 3.12: python3.12 -m venv .venv-train && "
                 ".venv-train/bin/pip install -e '.[train]'")
    for module in ("pybamm", "tensorflow", "ai_edge_litert"):
        if importlib.util.find_spec(module) is None:
            sys.exit(f"train_soh_model.py: {module} is not installed: pip install -e '.[train]' (Python >= 3.12)")

    splits = {k: [v[0], v[1], v[2], list(v[3])] for k, v in SPLITS.items()}
    settings = {"scale": args.scale, "seed": args.seed, "pybamm": version("pybamm"), "splits": splits}
    data: dict[str, np.ndarray] = {}
    if args.cache.exists():
        cached = np.load(args.cache, allow_pickle=False)
        if json.loads(str(cached["settings"])) == settings:
            data = {k: cached[k] for k in SPLITS}
            print(f"using generated data from {args.cache}", file=sys.stderr)
    if not data:
        fades = fade_trajectories()
        for n, (split, (count, model, sets, temps)) in enumerate(SPLITS.items()):
            data[split] = generate(split, max(4, round(count * args.scale)), model, sets, temps, fades,
                                   args.seed + 1000 * n, args.workers)
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.cache, settings=json.dumps(settings), **data)

    nf = len(FEATURES)
    rng = np.random.default_rng(args.seed)
    # Each simulated segment is measured AUGMENT times for training (other table mismatch, noise, steps).
    measured = {split: np.concatenate([measure(raw, rng) for _ in range(AUGMENT if split == "train" else 1)])
                for split, raw in data.items()}
    tr = measured["train"]
    model, val_nll, val_cells = train(tr, args.seed, args.epochs, args.hidden, args.l2)
    blob = to_tflite(model)
    shared = shared_share(blob, data["train"][np.isin(data["train"][:, CELL], val_cells)], rng)
    report: dict[str, dict[str, object]] = {}
    print(f"\n{'split':10} {'cells':>5} {'segments':>8}  {'table MAE':>9} {'cover':>6}  {'model MAE':>9} {'bias':>6} "
          f"{'cover':>6}")
    for split, rows in measured.items():
        x, label = rows[:, :nf], rows[:, nf]
        pred = run_tflite(blob, x)
        base = scores(label, np.zeros_like(label), baseline_sigma(x))
        mine = scores(label, pred[:, 0], np.exp(pred[:, 1]))
        cells = len(np.unique(data[split][:, CELL]))
        report[split] = {"cells": cells, "table": base, "model": mine}
        print(f"{split:10} {cells:5d} {mine['segments']:8d}  {base['mae_pct']:9.2f} {base['cover80']:6.0%}  "
              f"{mine['mae_pct']:9.2f} {mine['bias_pct']:+6.2f} {mine['cover80']:6.0%}")

    reference = measured["vehicle"][:8, :nf].astype(np.float32)
    manifest = {
        "name": "rest-anchor-1",
        "file": MODEL_OUT.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "inputs": FEATURES,
        "shared_error_share": shared,
        "outputs": ["mu_pct: 100*ln(true capacity / counted capacity)", "ln_sigma_pct: ln of its std deviation"],
        "trained": {"python": platform.python_version(), "tensorflow": _version("tensorflow", "tensorflow-cpu"),
                    "pybamm": version("pybamm"), "numpy": version("numpy"),
                    "fade": json.loads(PRIOR.read_text())["generator"] + " (gateway/data/soh_prior.json)",
                    "settings": settings, "epochs": args.epochs, "hidden": args.hidden, "l2": args.l2,
                    "validation_nll": round(val_nll, 4), "train_segments": len(tr),
                    "measurement": f"table mismatch {TABLE_MISMATCH_MV} mV offset + tilt (1 sigma), pack voltage "
                                   f"{PACK_LSB_V} V steps over {CELLS} cells + 1 mV noise, temperature +/-0.5 degC, "
                                   f"{AUGMENT} draws per training segment",
                    "parameter_sets": TRAIN_SETS, "held_out_chemistry": HELD_CHEMISTRY},
        "held_out": {k: v for k, v in report.items() if k != "train"},
        "reference": {"inputs": reference.round(5).tolist(),
                      "outputs": run_tflite(blob, reference.round(5)).round(5).tolist()},
    }
    if args.dry_run:  # e.g. to check that the committed model is what this script makes
        committed = hashlib.sha256(MODEL_OUT.read_bytes()).hexdigest() if MODEL_OUT.exists() else "none"
        print(f"sha256 {manifest['sha256']} ({'the same as' if committed == manifest['sha256'] else 'not'} "
              f"the committed {MODEL_OUT.name}); nothing written")
        return 0
    MODEL_OUT.write_bytes(blob)
    MANIFEST_OUT.write_text(json.dumps(manifest, indent=1) + "\n")
    HOLDOUT_OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(HOLDOUT_OUT, features=np.asarray(FEATURES),
                        **{k: v.astype(np.float32) for k, v in measured.items() if k != "train"})
    print(f"wrote {MODEL_OUT} ({len(blob)} bytes, sha256 {manifest['sha256'][:16]}), {MANIFEST_OUT}, {HOLDOUT_OUT}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
