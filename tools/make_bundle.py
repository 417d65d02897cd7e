#!/usr/bin/env python3
"""Build a release bundle for the device: this checkout's wheel plus every dependency's wheel.

    python tools/make_bundle.py --platform aarch64 --out build/
    python tools/make_bundle.py --platform native --out build/      # for this machine (tests, x86 boxes)

Writes ``build/battery-gateway-<version>-<platform>.tar`` (sorted members, fixed owner and mtime from
``SOURCE_DATE_EPOCH``: the same wheels give the same bytes) and prints its length, SHA-256 and the
``custom`` metadata to put on the TUF target (docs/ota.md, "Publishing a release"). Needs pip and
PyPI (or a mirror); the device never downloads anything but the bundle.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway import __version__  # noqa: E402 - after the path set-up
from gateway.adapters.releases import write_bundle  # noqa: E402

# Raspberry Pi OS bookworm: CPython 3.11, glibc 2.36 -> manylinux up to 2_36
AARCH64 = ["--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64",
           "--platform", "manylinux_2_34_aarch64", "--python-version", "3.11", "--implementation", "cp",
           "--only-binary=:all:"]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--platform", choices=("aarch64", "native"), default="aarch64")
    p.add_argument("--out", type=Path, default=ROOT / "build")
    p.add_argument("--hardware-id", action="append", default=[], metavar="ID",
                   help="hardware ids for the custom metadata (repeat; default rpi-arm64)")
    p.add_argument("--counter", type=int, required=True, help="release counter: above every earlier release")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(tmp)
        print(f"building battery-gateway {__version__} wheel", file=sys.stderr)
        pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(ROOT))
        own = next(wheels.glob("battery_gateway-*.whl"))
        print(f"collecting dependency wheels for {args.platform}", file=sys.stderr)
        if args.platform == "native":
            pip("wheel", "--wheel-dir", str(wheels), str(own))
        else:
            pip("download", *AARCH64, "--dest", str(wheels), str(own))
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / f"battery-gateway-{__version__}-{args.platform}.tar"
        write_bundle(out, version=__version__, wheels=sorted(wheels.glob("*.whl")),
                     mtime=int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    data = out.read_bytes()
    print(json.dumps({"file": str(out), "length": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "custom": {"version": __version__, "release_counter": args.counter,
                                 "hardware_ids": args.hardware_id or ["rpi-arm64"]}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
