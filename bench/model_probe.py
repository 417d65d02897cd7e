"""Time the shipped SoH model through gateway/adapters/tflite.py on whatever Python runs this (the host's,
or an arm64 Python under qemu: bench/arm64_model.sh). Prints machine, runtime, time per call, agreement
with the manifest's reference outputs."""

from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.adapters.tflite import TfliteSegmentModel

model = TfliteSegmentModel()
ref = model.manifest["reference"]
worst = max(max(abs(mu - r[0]), abs(math.log(sigma) - r[1]))
            for x, r in zip(ref["inputs"], ref["outputs"], strict=True) for mu, sigma in [model.predict(x)])
x = ref["inputs"][0]
for _ in range(50):
    model.predict(x)
n = 2000
t0 = time.perf_counter()
for _ in range(n):
    model.predict(x)
per_call = (time.perf_counter() - t0) / n
runtime = "tflite_runtime" if "tflite_runtime" in sys.modules else "ai_edge_litert"
print(f"{platform.machine()} Python {platform.python_version()} {runtime}: {per_call * 1e6:.1f} us per call "
      f"(mean of {n}), largest difference from the reference outputs {worst:.1e}")
