#!/bin/bash
# Build the Raspberry Pi OS (bookworm, arm64) image with the gateway installed. See image/README.md.
#
#   RELEASE_COUNTER=1 TUF_ROOT=/secure/root.json image/build.sh
#
# Optional: CAN_HAT (mcp2515-16mhz, mcp2515-12mhz, mcp2515-8mhz, mcp251xfd), HARDWARE_ID (rpi-arm64),
# COMMAND_KEY (backend public key for cmd/ota), FIRST_USER_PASS (random if unset), PI_GEN_REF, WORK,
# BAY=1 (an inspection-bay image: adds image/bay-packages, the headless Chromium for certificate.pdf).
#
# Needs docker (pi-gen's build-docker.sh) or root with pi-gen's host packages (PI_GEN_DOCKER=0), and
# network access to GitHub (pi-gen), the Raspberry Pi OS archive and PyPI. Reproducible inputs: pi-gen
# at a pinned tag, the bundle built with SOURCE_DATE_EPOCH from the last commit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
work=${WORK:-$repo/build/image}
pi_gen_repo=${PI_GEN_REPO:-https://github.com/RPi-Distro/pi-gen.git}
pi_gen_ref=${PI_GEN_REF:-2024-11-19-raspios-bookworm-arm64}
tuf_root=${TUF_ROOT:-$here/tuf-root.json}
counter=${RELEASE_COUNTER:?set RELEASE_COUNTER, the release counter of the release in the image}
hardware_id=${HARDWARE_ID:-rpi-arm64}
can_hat=${CAN_HAT:-mcp2515-16mhz}
first_user_pass=${FIRST_USER_PASS:-$(head -c 18 /dev/urandom | base64)}

case "$can_hat" in
  mcp2515-16mhz|mcp2515-8mhz|mcp2515-12mhz|mcp251xfd) ;;
  *) echo "error: CAN_HAT=$can_hat: expected mcp2515-16mhz, mcp2515-8mhz, mcp2515-12mhz or mcp251xfd" >&2; exit 2 ;;
esac
if [ ! -f "$tuf_root" ]; then
  echo "error: TUF_ROOT $tuf_root not found: the image must ship your TUF repository's root.json (docs/ota.md)" >&2
  exit 2
fi

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}
export SOURCE_DATE_EPOCH
mkdir -p "$work"
if [ ! -d "$work/pi-gen" ]; then
  echo "fetching pi-gen $pi_gen_ref"
  git clone --quiet --depth 1 --branch "$pi_gen_ref" "$pi_gen_repo" "$work/pi-gen"
fi

echo "building the release bundle (arm64 wheels)"
python3 "$repo/tools/make_bundle.py" --platform aarch64 --counter "$counter" --hardware-id "$hardware_id" \
  --out "$work/bundle" > "$work/bundle/target.json"

stage="$work/pi-gen/stage-gateway"
rm -rf "$stage"
cp -r "$here/stage-gateway" "$stage"
if [ "${BAY:-0}" = 1 ]; then  # an inspection-bay image: certificate.pdf needs a headless Chromium
  grep -v '^\s*#' "$here/bay-packages" >> "$stage/00-packages/00-packages"
fi
files="$stage/01-gateway/files"
cp "$work"/bundle/battery-gateway-*-aarch64.tar "$files/bundle.tar"
cp "$tuf_root" "$files/tuf-root.json"
cp "$repo"/systemd/* "$files/"
if [ -n "${COMMAND_KEY:-}" ]; then  # the backend key that signs cmd/ota (optional)
  cp "$COMMAND_KEY" "$files/command-key.pub"
fi
printf 'RELEASE_COUNTER=%s\nHARDWARE_ID=%s\nCAN_HAT=%s\n' "$counter" "$hardware_id" "$can_hat" > "$files/build.env"

{ cat "$here/config"
  printf 'STAGE_LIST="stage0 stage1 stage2 %s"\n' "$stage"
  printf 'FIRST_USER_PASS=%q\n' "$first_user_pass"
} > "$work/pi-gen/config"

cd "$work/pi-gen"
if [ "${PI_GEN_DOCKER:-1}" = 1 ]; then
  ./build-docker.sh -c config
else
  ./build.sh -c config
fi
echo "image: $(ls "$work"/pi-gen/deploy/*.img.xz)"
echo "user technician, password: $first_user_pass (console only; ssh is off)"
