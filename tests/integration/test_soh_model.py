"""The shipped TensorFlow Lite SoH model through the real runtime (tflite_runtime on Python 3.11,
ai_edge_litert on 3.12+), as the device runs it."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from gateway.adapters import tflite
from gateway.adapters.tflite import TfliteSegmentModel, load_segment_model
from gateway.core.soh import OCV_CELL_V, SohEstimator
from tests.unit.test_soh_physics import rest_anchored_days

DATA = Path(tflite.__file__).resolve().parents[1] / "data"
MANIFEST = json.loads((DATA / "soh_model.json").read_text())
HOLDOUT = Path(__file__).resolve().parents[2] / "bench" / "data" / "soh_rest_holdout.npz"


def test_the_committed_file_is_what_the_manifest_says_the_training_script_wrote() -> None:
    blob = (DATA / MANIFEST["file"]).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == MANIFEST["sha256"] and len(blob) == MANIFEST["bytes"]
    assert len(blob) <= 50 * 1024
    trained = MANIFEST["trained"]
    for what in ("tensorflow", "pybamm", "numpy", "fade", "python", "settings", "parameter_sets"):
        assert trained[what], what
    assert "blast-lite" in trained["fade"]
    assert MANIFEST["inputs"] == ["soc1_pct", "soc2_pct", "slope1_mv_per_pct", "slope2_mv_per_pct", "temp1_c",
                                  "temp2_c", "ln_rest1_h", "ln_rest2_h", "cap_ratio"]  # gateway/soh.py's order


def test_the_device_runtime_gives_what_tensorflow_gave_at_training_time() -> None:
    model = load_segment_model()
    assert model is not None and model.name == f"rest-anchor-1@{MANIFEST['sha256'][:12]}"
    ref = MANIFEST["reference"]
    for x, (mu, log_sigma) in zip(ref["inputs"], ref["outputs"], strict=True):
        got_mu, got_sigma = model.predict(x)
        assert got_mu == pytest.approx(mu, abs=1e-3) and math.log(got_sigma) == pytest.approx(log_sigma, abs=1e-3)


def test_on_held_out_cells_it_beats_the_fixed_table_error_and_its_interval_is_honest() -> None:
    """In-distribution held-out cells (new PyBaMM cells, never trained on): lower error than the table
    alone and an 80 % interval that covers about 80 % (bench/soh_eval.py prints every split)."""
    model = load_segment_model()
    assert model is not None
    rows = np.load(HOLDOUT)["vehicle"]
    x, label = rows[:, :9], rows[:, 9]
    pred = np.array([model.predict(r) for r in x])
    err = label - pred[:, 0]
    assert np.mean(np.abs(err)) < np.mean(np.abs(label))
    assert 0.70 <= np.mean(np.abs(err) <= 1.2816 * pred[:, 1]) <= 0.90


def test_the_estimator_uses_it_for_rest_anchored_segments_and_says_so() -> None:
    est = SohEstimator(rated_ah=66.0, ocv=OCV_CELL_V["lmo-leaf"], model=load_segment_model)
    rest_anchored_days(est, capacity_ah=55.0)
    got = est.estimate()
    assert got is not None
    assert got["model"] == f"physics-1+rest-anchor-1@{MANIFEST['sha256'][:12]}"
    assert est.details()["learned"]["segments"] == est.state["n"] >= 5
    assert 60.0 < got["lo_pct"] < got["est_pct"] < got["hi_pct"] < 110.0


def test_a_file_that_is_not_the_manifests_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "soh_model.tflite"
    blob = bytearray((DATA / MANIFEST["file"]).read_bytes())
    blob[-100] ^= 0xFF
    bad.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"soh_model\.tflite: SHA-256 .* is not the"):
        TfliteSegmentModel(model_path=bad)


def test_without_a_runtime_the_gateway_logs_one_line_and_stays_physics_only(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def no_runtime(blob: bytes) -> None:
        raise ImportError("No module named 'tflite_runtime'")

    monkeypatch.setattr(tflite, "_interpreter", no_runtime)
    with caplog.at_level(logging.WARNING):
        assert load_segment_model() is None
    assert [r.getMessage() for r in caplog.records] == [
        "SoH model not used, physics only: no TensorFlow Lite runtime "
        "(pip install tflite-runtime on Python 3.11, ai-edge-litert on 3.12+)"]
    est = SohEstimator(rated_ah=66.0, ocv=OCV_CELL_V["lmo-leaf"], model=load_segment_model)
    rest_anchored_days(est, capacity_ah=55.0)
    got = est.estimate()
    assert got is not None and got["model"] == "physics-1"
