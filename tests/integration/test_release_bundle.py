"""tools/make_bundle.py, which builds what the TUF repository serves and the image installs: the same
checkout gives the same bytes (so the TUF hash is reproducible), and the bundle is what the updater
unpacks (release.json + wheels/ with this version's wheel and every dependency)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from gateway import __version__

REPO = Path(__file__).resolve().parents[2]


def _build(out: Path) -> dict[str, object]:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1764460800"}
    done = subprocess.run([sys.executable, str(REPO / "tools" / "make_bundle.py"), "--platform", "native",
                           "--counter", "7", "--hardware-id", "rpi4-mcp2515", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.slow
def test_bundle_is_reproducible_and_complete(tmp_path: Path) -> None:
    first, second = _build(tmp_path / "a"), _build(tmp_path / "b")
    assert first["sha256"] == second["sha256"] and first["length"] == second["length"]
    path = Path(str(first["file"]))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first["sha256"]
    assert first["custom"] == {"version": __version__, "release_counter": 7, "hardware_ids": ["rpi4-mcp2515"]}
    with tarfile.open(path) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("release.json").read())  # type: ignore[union-attr]
    assert meta == {"version": __version__}
    wheels = {n.split("/", 1)[1].split("-", 1)[0].lower() for n in names if n.startswith("wheels/")}
    assert {"battery_gateway", "tuf", "cantools", "paho_mqtt", "cryptography", "can_isotp"} <= wheels
