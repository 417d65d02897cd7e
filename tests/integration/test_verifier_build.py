"""The committed verifier page is exactly what ``make verifier`` builds from verifier/src and the npm
libraries package-lock.json pins: no hand edits, no drift, and a reproducible build."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("node") is None or not (ROOT / "verifier" / "node_modules").is_dir(),
                    reason="Node.js or the verifier's npm libraries are missing (make setup runs npm ci)")
def test_the_committed_page_is_the_reproducible_build(tmp_path: Path) -> None:
    for n in (1, 2):
        done = subprocess.run(["node", str(ROOT / "verifier" / "build.mjs"), str(tmp_path / f"page{n}.html")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    built = (tmp_path / "page1.html").read_bytes()
    assert built == (tmp_path / "page2.html").read_bytes()
    assert built == (ROOT / "gateway" / "data" / "verifier.html").read_bytes(), "run `make verifier` and commit"
