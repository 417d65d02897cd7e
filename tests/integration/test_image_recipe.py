"""The Raspberry Pi image recipe, as far as a machine without docker or an arm64 board can check it: the
pi-gen stage's layout, shellcheck of every script, and the first-boot provisioning script run for real
against a temporary boot partition and state directory. (`make image-check` resolves the package list
for arm64 against Debian; the image itself is built with image/build.sh.)"""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.adapters.keystore import load_private_key
from gateway.app.wiring import load_config

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "image"
STAGE = IMAGE / "stage-gateway"
FILES = STAGE / "01-gateway" / "files"
SCRIPTS = [IMAGE / "build.sh", IMAGE / "check-packages.sh", STAGE / "prerun.sh", STAGE / "01-gateway" / "00-run.sh",
           STAGE / "01-gateway" / "01-run-chroot.sh", FILES / "battery-gateway-firstboot"]


def test_stage_layout_installs_every_unit_overlay_and_the_release() -> None:
    for script in SCRIPTS:
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
    assert (STAGE / "EXPORT_IMAGE").exists(), "the stage must export an image"
    packages = (STAGE / "00-packages" / "00-packages").read_text().split()
    assert {"python3", "python3-venv", "can-utils"} <= set(packages)
    host = (STAGE / "01-gateway" / "00-run.sh").read_text()
    for unit in sorted((REPO / "systemd").iterdir()):
        assert unit.name in host, f"00-run.sh does not install systemd/{unit.name}"
    assert "dtoverlay=mcp2515-can0,oscillator=16000000,interrupt=25" in host
    assert "dtoverlay=mcp251xfd,spi0-0,interrupt=25" in host and "dtparam=spi=on" in host
    assert "boot/firmware/config.txt" in host  # bookworm moved config.txt here
    chroot = (STAGE / "01-gateway" / "01-run-chroot.sh").read_text()
    assert '--no-index' in chroot and 'ln -sfn "releases/${version}" "${root}/current"' in chroot
    assert "battery-gateway-update.timer" in chroot and "/var/lib/battery-gateway-ota/state.json" in chroot
    config = (IMAGE / "config").read_text()
    assert 'RELEASE="bookworm"' in config and 'ARCH="arm64"' in config
    build = (IMAGE / "build.sh").read_text()
    assert "PI_GEN_REF" in build and "SOURCE_DATE_EPOCH" in build and "tools/make_bundle.py" in build


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (make setup installs it)")
def test_every_script_passes_shellcheck() -> None:
    scripts = SCRIPTS + sorted(p for p in REPO.rglob("*.sh") if ".venv" not in p.parts and p not in SCRIPTS)
    out = subprocess.run(["shellcheck", "--severity=style", *map(str, scripts)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def _firstboot(tmp: Path, owner: str | None = None) -> subprocess.CompletedProcess[str]:
    gateway = tmp / "battery-gateway"
    gateway.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gateway "$@"\n')
    gateway.chmod(0o755)
    env = {**os.environ, "BOOT_DIR": str(tmp / "boot"), "STATE_DIR": str(tmp / "state"), "ETC_DIR": str(tmp / "etc"),
           "PROVISION_DIR": str(tmp / "provision"), "GATEWAY": str(gateway), "OWNER": owner or getpass.getuser()}
    return subprocess.run([str(FILES / "battery-gateway-firstboot")], env=env, capture_output=True, text=True,
                          timeout=60)


def _boot_config(tmp: Path, text: str | None = None) -> None:
    """The shipped template (or ``text``) on the boot partition, its /var/lib and /etc paths moved to ``tmp``."""
    (tmp / "boot").mkdir(exist_ok=True)
    (tmp / "etc").mkdir(exist_ok=True)
    (tmp / "etc" / "tuf-root.json").write_text('{"signed": {}, "signatures": []}')  # shipped in the image
    template = text if text is not None else (FILES / "battery-gateway.toml").read_text()
    moved = template.replace("/var/lib/battery-gateway", str(tmp / "state"))
    (tmp / "boot" / "battery-gateway.toml").write_text(moved + f'trusted_root = "{tmp / "etc" / "tuf-root.json"}"\n'
                                                       if "[ota]" in moved and "trusted_root" not in moved else moved)


def _fleet_ca_answers(tmp: Path, device: str) -> None:
    """What the fleet CA sends back for the CSR: the device certificate and the CA, on the boot partition."""
    from tests.pki import FleetPki

    pki = FleetPki(tmp / "ca")
    csr = x509.load_pem_x509_csr((tmp / "boot" / "battery-gateway" / f"{device}.csr").read_bytes())
    cert = pki.sign_csr(csr)
    (tmp / "boot" / "battery-gateway" / f"{device}.crt").write_bytes(cert)
    shutil.copy(pki.ca_file, tmp / "boot" / "battery-gateway" / "ca.crt")


def _device_id(tmp: Path) -> str:
    return next(line.split(": ")[1] for line in (tmp / "state" / "device.txt").read_text().splitlines()
                if line.startswith("device id: "))


def test_first_boot_makes_key_and_csr_then_provisions_with_the_certificates_and_config(tmp_path: Path) -> None:
    _boot_config(tmp_path)
    # GIVEN a new device's first boot: key and CSR made, the config waits for the certificates it names
    first = _firstboot(tmp_path)
    assert first.returncode == 0, first.stderr
    state = tmp_path / "state"
    assert (state / "device-key.pem").stat().st_mode & 0o077 == 0
    assert (state / "tls-key.pem").stat().st_mode & 0o077 == 0
    device = _device_id(tmp_path)
    out = tmp_path / "boot" / "battery-gateway"
    csr = x509.load_pem_x509_csr((out / f"{device}.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device
    assert csr.public_key() == load_private_key(state / "tls-key.pem").public_key()
    assert "BEGIN CERTIFICATE REQUEST" in first.stdout, "the CSR is printed on the console"
    assert "BEGIN PUBLIC KEY" in (out / f"{device}.pub").read_text()
    assert "mqtt.cert_file" in first.stderr and "not applied" in first.stderr and "not provisioned yet" in first.stdout
    assert not (tmp_path / "etc" / "gateway.toml").exists()
    # WHEN the CA's answer is on the boot partition at the next boot
    key_before, csr_before = (state / "device-key.pem").read_bytes(), (out / f"{device}.csr").read_bytes()
    _fleet_ca_answers(tmp_path, device)
    second = _firstboot(tmp_path)
    # THEN certificates (never world-readable) and config are installed, and that is recorded
    assert second.returncode == 0, second.stderr
    assert (state / "device-key.pem").read_bytes() == key_before, "the device identity never changes"
    assert (out / f"{device}.csr").read_bytes() == csr_before
    assert (state / f"{device}.crt").stat().st_mode & 0o077 == 0 and (state / "ca.crt").exists()
    config = load_config(tmp_path / "etc" / "gateway.toml")
    assert config.device.id == device and config.mqtt.cert_file.endswith(f"{device}.crt")
    assert (tmp_path / "boot" / "battery-gateway.toml.applied").exists()
    assert (tmp_path / "provision" / "provisioned").exists() and "provisioned" in second.stdout


def test_a_device_id_that_is_not_keygens_is_never_used_as_a_name_or_in_sed(tmp_path: Path) -> None:
    # GIVEN an unprovisioned device whose device.txt was rewritten between boots (the service user owns the
    # state directory then) to smuggle sed commands and a path into the root script
    _boot_config(tmp_path)
    assert _firstboot(tmp_path).returncode == 0
    planted = tmp_path / "pwned"
    for bad in [f"gw-1/e touch {planted}", "../../etc/x", "gw-0000000g", "gw-00000000\ndevice id: gw-11111111"]:
        (tmp_path / "state" / "device.txt").write_text(f"device id: {bad}\n")
        # WHEN it boots again THEN it stops before using the id, saying why
        out = _firstboot(tmp_path)
        assert out.returncode == 1 and "names no device id (gw- and 8 hex digits)" in out.stderr, out.stderr
        assert not planted.exists() and not (tmp_path / "etc" / "gateway.toml").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="hands files to another user: needs root, as on the device")
def test_what_the_daemon_reads_belongs_to_the_service_user_after_every_boot(tmp_path: Path) -> None:
    service = pwd.getpwnam("nobody")
    _boot_config(tmp_path)
    assert _firstboot(tmp_path, owner="nobody").returncode == 0  # GIVEN boot 1: keys and CSR, no certificates
    state = tmp_path / "state"
    _fleet_ca_answers(tmp_path, _device_id(tmp_path))
    # WHEN boot 2 starts the unit: systemd's StateDirectory= hands the directory and its files to root
    for path in [state, *state.iterdir()]:
        os.chown(path, 0, 0, follow_symlinks=False)
    second = _firstboot(tmp_path, owner="nobody")
    # THEN the daemon's user owns its directory, keys and certificates again (the daemon's own unit leaves a
    # directory it already owns alone), and nothing else was handed over
    assert second.returncode == 0 and "provisioned" in second.stdout, second.stderr
    daemon_reads = {"device-key.pem", "tls-key.pem", f"{_device_id(tmp_path)}.crt", "ca.crt"}
    assert {p.name for p in state.iterdir() if p.stat().st_uid == service.pw_uid} == daemon_reads
    assert state.stat().st_uid == service.pw_uid and stat.S_IMODE(state.stat().st_mode) & 0o077 == 0


def test_once_provisioned_the_boot_partition_is_never_read_again(tmp_path: Path) -> None:
    _boot_config(tmp_path)
    _firstboot(tmp_path)
    device = _device_id(tmp_path)
    _fleet_ca_answers(tmp_path, device)
    assert _firstboot(tmp_path).returncode == 0
    installed = (tmp_path / "etc" / "gateway.toml").read_bytes()
    ca = (tmp_path / "state" / "ca.crt").read_bytes()
    # GIVEN someone with the SD card: a config with their own trust root, update server and restart command,
    # and their own CA
    evil = (tmp_path / "etc" / "gateway.toml").read_text().replace("updates.fleet.example", "evil.example") + \
        '\n[ota]\nrestart_command = "sh -c \'id > /tmp/owned\'"\n'
    (tmp_path / "boot" / "battery-gateway.toml").write_text(evil)
    (tmp_path / "boot" / "battery-gateway" / "ca.crt").write_text("their CA\n")
    # WHEN the device boots again THEN nothing of it is taken
    again = _firstboot(tmp_path)
    assert again.returncode == 0 and "is not read" in again.stdout
    assert (tmp_path / "etc" / "gateway.toml").read_bytes() == installed
    assert (tmp_path / "state" / "ca.crt").read_bytes() == ca
    assert (tmp_path / "boot" / "battery-gateway.toml").exists()  # left where it was, untouched
    unit = (REPO / "systemd" / "battery-gateway-firstboot.service").read_text()
    assert "ConditionPathExists=!/var/lib/battery-gateway-provision/provisioned" in unit  # systemd skips it too


def test_first_boot_rejects_a_bad_config_on_the_boot_partition_and_keeps_it(tmp_path: Path) -> None:
    _boot_config(tmp_path, '[device]\nid = "@DEVICE_ID@"\n[mqtt]\nport = "x"\n')
    run = _firstboot(tmp_path)
    assert run.returncode == 0, run.stderr  # the key and CSR are still made; the config waits for a fix
    assert "mqtt.port" in run.stderr and "not applied" in run.stderr
    assert not (tmp_path / "etc" / "gateway.toml").exists()
    assert (tmp_path / "boot" / "battery-gateway.toml").exists()
    assert list((tmp_path / "boot" / "battery-gateway").glob("*.csr"))
    assert not (tmp_path / "provision" / "provisioned").exists()
