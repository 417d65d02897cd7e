#!/bin/bash -e
# pi-gen, on the build host: put the gateway's files into the image. files/ is filled by image/build.sh
# (bundle.tar, tuf-root.json, the systemd/ units, build.env); the rest is committed.
# shellcheck disable=SC2154  # ROOTFS_DIR is set by pi-gen
# shellcheck source=/dev/null
. files/build.env

install -d -m 0755 "${ROOTFS_DIR}/opt/battery-gateway/releases" "${ROOTFS_DIR}/etc/battery-gateway"
install -m 0644 files/bundle.tar "${ROOTFS_DIR}/opt/battery-gateway/bundle.tar"
install -m 0644 files/tuf-root.json "${ROOTFS_DIR}/etc/battery-gateway/tuf-root.json"
if [ -f files/command-key.pub ]; then
  install -m 0644 files/command-key.pub "${ROOTFS_DIR}/etc/battery-gateway/command-key.pub"
fi
printf '%s\n' "${RELEASE_COUNTER}" > "${ROOTFS_DIR}/opt/battery-gateway/release-counter"

for unit in battery-gateway.service battery-gateway-update.service battery-gateway-update.timer \
            battery-gateway-update.path battery-gateway-firstboot.service; do
  install -m 0644 "files/${unit}" "${ROOTFS_DIR}/etc/systemd/system/${unit}"
done
install -m 0644 files/80-can0.network "${ROOTFS_DIR}/etc/systemd/network/80-can0.network"
install -m 0644 files/70-can-names.rules "${ROOTFS_DIR}/etc/udev/rules.d/70-can-names.rules"
install -m 0755 files/battery-gateway-firstboot "${ROOTFS_DIR}/usr/local/sbin/battery-gateway-firstboot"

# The CAN HAT. The oscillator must match the crystal printed on the HAT (8, 12 or 16 MHz): a wrong value
# gives a wrong bitrate, and the symptom is silence or error frames, not an error message.
config="${ROOTFS_DIR}/boot/firmware/config.txt"
{
  echo ""
  echo "# battery-gateway: CAN HAT (${CAN_HAT})"
  echo "dtparam=spi=on"
  case "${CAN_HAT}" in
    mcp2515-16mhz) echo "dtoverlay=mcp2515-can0,oscillator=16000000,interrupt=25" ;;
    mcp2515-12mhz) echo "dtoverlay=mcp2515-can0,oscillator=12000000,interrupt=25" ;;
    mcp2515-8mhz)  echo "dtoverlay=mcp2515-can0,oscillator=8000000,interrupt=25" ;;
    mcp251xfd)     echo "dtoverlay=mcp251xfd,spi0-0,interrupt=25" ;;
  esac
} >> "${config}"
install -m 0644 files/battery-gateway.toml "${ROOTFS_DIR}/boot/firmware/battery-gateway.toml"
