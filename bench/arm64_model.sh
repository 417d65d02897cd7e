#!/bin/bash
# The SoH model on the Raspberry Pi's software, without a Pi: Debian bookworm's arm64 Python 3.11 (the
# Python of Raspberry Pi OS bookworm) and the aarch64 wheels of tflite-runtime and numpy that a release
# bundle carries, run under qemu-aarch64 user emulation: the same bytes as on the Pi give the same numbers,
# and the time per call is an estimate of the Pi's (emulation on a fast x86 core is roughly as fast as a
# Cortex-A72; not a measurement on a Pi). Needs qemu-user-static (Debian) and Debian's and PyPI's archives.
#
#   bench/arm64_model.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=${WORK:-$(mktemp -d)}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
command -v qemu-aarch64-static >/dev/null || { echo "needs qemu-user-static (apt-get install qemu-user-static)" >&2; exit 2; }

mkdir -p "$work/apt/etc/apt/apt.conf.d" "$work/apt/etc/apt/preferences.d" "$work/apt/etc/apt/sources.list.d" \
         "$work/apt/var/lib/apt/lists/partial" "$work/apt/var/cache/apt/archives/partial" "$work/apt/var/lib/dpkg" \
         "$work/root" "$work/site" "$work/wheels"
: > "$work/apt/var/lib/dpkg/status"
echo "deb [arch=arm64 signed-by=$keyring] ${MIRROR:-http://deb.debian.org/debian} bookworm main" \
  > "$work/apt/etc/apt/sources.list"
opts=(-o "Dir=$work/apt" -o "Dir::State::status=$work/apt/var/lib/dpkg/status" -o "APT::Architecture=arm64"
      -o "APT::Architectures::=arm64" -o "Dir::Etc::trusted=/dev/null" -o "Dir::Etc::trustedparts=/dev/null"
      -o "Debug::NoLocking=1" -o "APT::Install-Recommends=0" -o "APT::Sandbox::User=$(id -un)")
echo "fetching Debian bookworm arm64 python3.11 into $work/root" >&2
apt-get "${opts[@]}" -qq update
apt-get "${opts[@]}" -y -qq --download-only install python3.11 libstdc++6 >/dev/null
for deb in "$work"/apt/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$work/root"; done

echo "fetching the aarch64 wheels a release bundle carries" >&2
python3 -m pip download --quiet --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_34_aarch64 \
  -d "$work/wheels" 'tflite-runtime==2.14.0' 'numpy<2'
for whl in "$work"/wheels/*.whl; do python3 -m zipfile -e "$whl" "$work/site"; done

echo "host (this machine's Python and runtime):" >&2
"${PYTHON:-python3}" "$here/model_probe.py"
echo "arm64 under qemu (estimate for the Pi):" >&2
qemu-aarch64-static -L "$work/root" -E "PYTHONPATH=$work/site" "$work/root/usr/bin/python3.11" "$here/model_probe.py"
