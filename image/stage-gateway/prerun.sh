#!/bin/bash -e
# pi-gen: start this stage from the previous stage's root file system.
# shellcheck disable=SC2154  # ROOTFS_DIR is set by pi-gen
if [ ! -d "${ROOTFS_DIR}" ]; then
  copy_previous
fi
