"""The SoH model's runtime: the float32 TensorFlow Lite file shipped in ``gateway/data``.

``tflite_runtime`` (Google's interpreter-only wheel, 2.14, needs numpy < 2) on Python 3.11 -- Raspberry
Pi OS bookworm's Python -- and ``ai_edge_litert`` (its successor) on 3.12 and later. The file is checked
against the SHA-256 in ``soh_model.json`` (written by tools/train_soh_model.py) before it is loaded.

``load_segment_model`` never raises: without a runtime, or with a damaged file, it logs one line naming
the cause and returns None, and the estimator stays physics-only (its ``model`` field says so).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["TfliteSegmentModel", "load_segment_model"]

log = logging.getLogger(__name__)

_DATA = resources.files("gateway") / "data"


def _interpreter(blob: bytes) -> Any:
    try:
        from tflite_runtime import interpreter as tfl  # Python 3.11 (numpy < 2)
    except ImportError:
        from ai_edge_litert import interpreter as tfl  # Python >= 3.12
    # The built-in kernels only: the XNNPACK delegate gains nothing on a 2-layer MLP and costs memory.
    return tfl.Interpreter(model_content=blob, num_threads=1,
                           experimental_op_resolver_type=tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


class TfliteSegmentModel:
    """One call per rest-anchored segment: features in, (mu_pct, sigma_pct) out (docs/soh.md)."""

    def __init__(self, model_path: Path | None = None, manifest_path: Path | None = None) -> None:
        """Raises:
            ValueError: the file does not match its manifest, or its shape is not the manifest's.
            OSError: a file cannot be read.
            ImportError: no TensorFlow Lite runtime is installed.
        """
        manifest_file = manifest_path or Path(str(_DATA / "soh_model.json"))
        manifest = json.loads(manifest_file.read_text())
        path = model_path or manifest_file.with_name(manifest["file"])
        blob = path.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != manifest["sha256"]:
            raise ValueError(f"{path}: SHA-256 {digest[:16]}... is not the {manifest['sha256'][:16]}... "
                             f"of {manifest_file.name}")
        import numpy as np

        self._np = np
        self.manifest = manifest
        self.name = f"{manifest['name']}@{digest[:12]}"
        self.features: list[str] = list(manifest["inputs"])
        self.shared = float(manifest["shared_error_share"])
        self._interp = _interpreter(blob)
        self._interp.allocate_tensors()
        inp, out = self._interp.get_input_details()[0], self._interp.get_output_details()[0]
        if list(inp["shape"]) != [1, len(self.features)] or list(out["shape"]) != [1, 2]:
            raise ValueError(f"{path}: tensor shapes {list(inp['shape'])} -> {list(out['shape'])}, "
                             f"expected [1, {len(self.features)}] -> [1, 2]")
        self._in, self._out = inp["index"], out["index"]

    def predict(self, features: Sequence[float]) -> tuple[float, float]:
        """(mu_pct, sigma_pct): 100 * ln(true / counted capacity) and its standard deviation."""
        x = self._np.asarray(features, dtype=self._np.float32).reshape(1, len(self.features))
        self._interp.set_tensor(self._in, x)
        self._interp.invoke()
        mu, log_sigma = (float(v) for v in self._interp.get_tensor(self._out)[0])
        return mu, math.exp(min(log_sigma, 10.0))


def load_segment_model() -> TfliteSegmentModel | None:
    """The shipped model, or None (logged once, with the cause) when it cannot run here."""
    try:
        model = TfliteSegmentModel()
    except ImportError:
        log.warning("SoH model not used, physics only: no TensorFlow Lite runtime "
                    "(pip install tflite-runtime on Python 3.11, ai-edge-litert on 3.12+)")
    except (OSError, ValueError, KeyError) as exc:
        log.warning("SoH model not used, physics only: %s", exc)
    else:
        log.info("SoH model %s loaded (%d B)", model.name, model.manifest["bytes"])
        return model
    return None
