#!/bin/bash
# Resolve the image's package list (stage-gateway/00-packages/00-packages) for arm64 against Debian
# bookworm, without root, docker or an arm64 machine: apt with a private state directory and
# `install --simulate`. Every package and its whole dependency closure must exist for arm64.
# (The Raspberry Pi OS archive adds kernel and firmware packages on top; our list needs only Debian.)
#
#   image/check-packages.sh            # uses http://deb.debian.org/debian (MIRROR= to change)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mirror=${MIRROR:-http://deb.debian.org/debian}
keyring=${KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
work=${WORK:-$(mktemp -d)}
list=${LIST:-$here/stage-gateway/00-packages/00-packages}

mkdir -p "$work/etc/apt/apt.conf.d" "$work/etc/apt/preferences.d" "$work/etc/apt/sources.list.d" \
         "$work/var/lib/apt/lists/partial" "$work/var/cache/apt/archives/partial" "$work/var/lib/dpkg"
: > "$work/var/lib/dpkg/status"
cat > "$work/etc/apt/sources.list" <<SOURCES
deb [arch=arm64 signed-by=$keyring] $mirror bookworm main
deb [arch=arm64 signed-by=$keyring] $mirror bookworm-updates main
SOURCES
opts=(-o "Dir=$work" -o "Dir::State::status=$work/var/lib/dpkg/status" -o "APT::Architecture=arm64"
      -o "APT::Architectures::=arm64" -o "Dir::Etc::trusted=/dev/null" -o "Dir::Etc::trustedparts=/dev/null"
      -o "Debug::NoLocking=1" -o "APT::Install-Recommends=0" -o "APT::Sandbox::User=$(id -un)")

echo "apt update (bookworm arm64, $mirror)" >&2
apt-get "${opts[@]}" -qq update
mapfile -t packages < <(grep -v '^\s*\(#\|$\)' "$list" | tr -s ' ' '\n' | grep -v '^$')
echo "resolving ${#packages[@]} packages: ${packages[*]}" >&2
apt-get "${opts[@]}" --simulate install "${packages[@]}" > "$work/simulate.txt"
count=$(grep -c '^Inst ' "$work/simulate.txt")
foreign=$(grep '^Inst ' "$work/simulate.txt" | grep -v -e '\[arm64\]' -e '\[all\]' || true)
if [ -n "$foreign" ]; then
  echo "error: resolved for another architecture: $foreign" >&2
  exit 1
fi
echo "ok: ${#packages[@]} packages resolve to $count arm64/all packages in bookworm" >&2
