#!/bin/bash -e
# pi-gen, inside the image (arm64 under qemu): install the release from its own wheels, as the updater
# does (gateway/adapters/releases.py), seed the updater's release counter, enable the units.
root=/opt/battery-gateway
version=$(tar -xOf "${root}/bundle.tar" release.json | python3 -c 'import json, sys; print(json.load(sys.stdin)["version"])')
release="${root}/releases/${version}"

adduser --system --group --home /var/lib/battery-gateway --no-create-home battery-gateway
mkdir -p "${release}/bundle"
tar -xf "${root}/bundle.tar" -C "${release}/bundle"
python3 -m venv "${release}"
"${release}/bin/python" -m pip install --quiet --no-index --disable-pip-version-check \
  --find-links "${release}/bundle/wheels" "battery-gateway==${version}"
"${release}/bin/battery-gateway" --version
echo "${version}" > "${release}/.complete"
ln -sfn "releases/${version}" "${root}/current"
rm "${root}/bundle.tar"

install -d -m 0700 /var/lib/battery-gateway-ota
printf '{"counter": %s, "rolled_back": [], "probation": null}\n' "$(cat "${root}/release-counter")" \
  > /var/lib/battery-gateway-ota/state.json
rm "${root}/release-counter"

systemctl enable systemd-networkd.service battery-gateway-firstboot.service battery-gateway.service \
  battery-gateway-update.timer battery-gateway-update.path
