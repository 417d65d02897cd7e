#!/usr/bin/env python3
"""``make vm-test``: the production path in a virtual machine built from Debian's packages.

    sudo .venv/bin/python tools/vm/vmtest.py                # amd64: build (base cached), boot, run, report
    sudo .venv/bin/python tools/vm/vmtest.py --arch arm64   # the Pi's release and architecture
    sudo .venv/bin/python tools/vm/vmtest.py --keep         # keep build/vm/run-<arch>/ (disks, logs)

1. Base (cached by content in ``build/vm/base-<arch>-<hash>/``): ``mmdebstrap`` bookworm minbase with
   systemd, udev, iproute2, can-utils, python3, mosquitto, Debian's kernel (vcan, can-raw, can-isotp as
   modules) and an initramfs made by the image's own initramfs-tools (arm64 through qemu-user).
2. The release, installed the way ``image/`` installs it: on amd64 this checkout's bundle
   (``tests/tufrepo.build_bundle``, version 1.0.0, counter 1), on arm64 the one ``make bundle`` builds
   (aarch64 wheels); the stage's ``00-run.sh`` with ``ROOTFS_DIR`` pointing at the VM's root (units,
   networkd/udev files, first-boot script, TUF root, command key) and ``01-run-chroot.sh`` in a chroot
   (releases/<version>, ``current``, units enabled). The VM-only parts: a vcan ``.netdev`` standing in for
   the CAN HAT, mosquitto on 127.0.0.1, the test runner (``tools/vm/guest``) and, on amd64, a TUF
   repository with release 1.1.0 (good) and 1.2.0 (crash-loops).
3. A second disk stands in for the boot partition (vfat, label BOOTFS): ``battery-gateway.toml``.
4. ``qemu-system-* -accel tcg`` boots it; the runner's scenarios print ``VMTEST RESULT name
   PASS|FAIL seconds detail`` on the serial console, which this script reports as they come and writes
   to ``results.xml`` (JUnit). Exit 1 when a scenario failed or the VM did not finish.

Needs root (mmdebstrap, chroot, file ownership in the image) and Debian's mmdebstrap, qemu-system-x86,
e2fsprogs, dosfstools and mtools (``make vm-tools``; arm64 also qemu-system-arm, qemu-user-static and
arch-test: ``make vm-tools-arm64``). docs/testing.md: what runs where.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.tufrepo import TufRepo, build_bundle, build_wheelhouse  # noqa: E402 - after the path set-up

GUEST = Path(__file__).resolve().parent / "guest"
STAGE = ROOT / "image" / "stage-gateway"
MIRROR = "http://deb.debian.org/debian"
VM_PACKAGES = ["systemd", "systemd-sysv", "udev", "dbus", "iproute2", "kmod", "procps", "adduser",
               "mosquitto", "mosquitto-clients", "initramfs-tools"]
TARGET = "battery-gateway/stable.tar"
RELEASES = (("1.0.0", 1, None), ("1.1.0", 2, None), ("1.2.0", 3, "soh_prior.json"))  # version, counter, damage


ALL = ("boot", "networkd-brings-up-can0", "first-boot-provisions-once", "daemon-on-socketcan",
       "sigkill-restart-same-epoch", "watchdog-restarts-a-hung-loop", "isotp-kernel-and-user-space",
       "ota-update-under-systemd", "ota-crash-loop-rolled-back-never-retried", "soh-model-on-device",
       "security-of-every-service")


@dataclass(frozen=True)
class Arch:
    debian: str  # the Debian architecture of the VM
    kernel: str  # its kernel package (the cloud kernels have no CAN)
    qemu: tuple[str, ...]  # qemu-system binary and machine
    console: str
    hardware_id: str  # in build.env, as the image writes it
    boots: tuple[tuple[str, ...], ...]  # the runner's scenarios, boot by boot
    config_at: int  # the boot before which the config is put on the boot partition


ARCHES = {
    # Two boots, as a device is provisioned: the first without a config on the boot partition (key and CSR
    # only), the second with it (and systemd handing the state directory to root for the first-boot unit).
    "amd64": Arch("amd64", "linux-image-amd64", ("qemu-system-x86_64",), "ttyS0", "vm-x86_64",
                  boots=(("first-boot-without-config",), ALL), config_at=1),
    # The Pi's architecture, once: the release a Pi gets (`make bundle`, aarch64 wheels with tflite-runtime
    # and numpy) on Debian bookworm arm64. No OTA here: the amd64 run covers it with the same code.
    "arm64": Arch("arm64", "linux-image-arm64", ("qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72"),
                  "ttyAMA0", "rpi-arm64",
                  boots=(("boot", "networkd-brings-up-can0", "first-boot-provisions-once", "daemon-on-socketcan",
                          "soh-model-on-device", "security-of-every-service"),), config_at=0),
}


def say(line: str) -> None:
    print(f"vm-test: {line}", flush=True)


def run(*argv: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], check=True, text=True, **kw)  # type: ignore[call-overload,no-any-return]


def packages(arch: Arch) -> list[str]:
    image = (STAGE / "00-packages" / "00-packages").read_text().split()
    return sorted(set(image) | set(VM_PACKAGES) | {arch.kernel})


def base(cache: Path, arch: Arch) -> Path:
    """The Debian root file system and its kernel, built once per content of the package list."""
    key = hashlib.sha256(json.dumps([packages(arch), MIRROR, "bookworm", arch.debian, 1]).encode()).hexdigest()[:16]
    out = cache / f"base-{arch.debian}-{key}"
    if (out / "done").exists():
        say(f"base {out.name} cached")
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    say(f"building base {out.name} with mmdebstrap (bookworm {arch.debian}, {len(packages(arch))} packages)")
    t0 = time.monotonic()
    done = subprocess.run(["mmdebstrap", "--mode=root", "--variant=minbase", f"--architectures={arch.debian}",
                           f"--include={','.join(packages(arch))}", "bookworm", str(out / "base.tar"), MIRROR],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"vm-test: mmdebstrap exited {done.returncode}: {done.stderr.strip()[-600:]}")
    with tarfile.open(out / "base.tar") as tar:
        for member in tar.getmembers():
            if member.name.startswith(("./boot/vmlinuz-", "./boot/initrd.img-")):
                kind = "vmlinuz" if "vmlinuz" in member.name else "initrd.img"
                (out / kind).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    (out / "done").write_text(f"{time.monotonic() - t0:.0f} s\n")
    return out


def releases(work: Path) -> bytes:
    """Bundles of this checkout at the three versions and a TUF repository in two states (the OTA
    scenarios); returns the first bundle, the one the image installs."""
    wheelhouse = build_wheelhouse(work / "wheelhouse")
    bundles = {}
    for version, _, damaged in RELEASES:
        say(f"bundle {version}" + (f" (with a damaged {damaged}: crash-loops)" if damaged else ""))
        bundles[version] = build_bundle(wheelhouse, work, version=version, damaged_data=damaged)
    repo = TufRepo(work / "tuf")
    for (version, counter, _), state in zip(RELEASES[1:], ("a", "b"), strict=True):
        repo.add_release(TARGET, bundles[version], version=version, counter=counter,
                         hardware_ids=(ARCHES["amd64"].hardware_id,))
        shutil.copytree(repo.dir, work / "repo" / state)
    (work / "tuf-root.json").write_bytes(repo.root_bytes())
    return bundles[RELEASES[0][0]]


def pi_release(work: Path) -> bytes:
    """The Pi's release as ``make bundle`` builds it (aarch64 wheels), and a TUF root for the image."""
    say("bundle for the Pi: tools/make_bundle.py --platform aarch64 (as make bundle)")
    run(sys.executable, ROOT / "tools" / "make_bundle.py", "--platform", "aarch64", "--counter", "1",
        "--out", work / "pi", stdout=subprocess.DEVNULL)
    (work / "tuf-root.json").write_bytes(TufRepo(work / "tuf").root_bytes())
    return next((work / "pi").glob("battery-gateway-*-aarch64.tar")).read_bytes()


def stage_files(work: Path, bundle: bytes, arch: Arch) -> Path:
    """The image stage's files/ directory as image/build.sh fills it."""
    files = work / "stage" / "files"
    shutil.copytree(STAGE / "01-gateway" / "files", files)
    (files / "bundle.tar").write_bytes(bundle)
    shutil.copy(work / "tuf-root.json", files / "tuf-root.json")
    for unit in (ROOT / "systemd").iterdir():
        shutil.copy(unit, files / unit.name)
    run(sys.executable, "-m", "gateway", "keygen", "--key", work / "backend-command.pem", stdout=subprocess.PIPE)
    public = run(sys.executable, "-c", "import sys; from gateway.adapters.keystore import load_private_key, "
                 "public_pem; print(public_pem(load_private_key(sys.argv[1], what='key')), end='')",
                 work / "backend-command.pem", stdout=subprocess.PIPE).stdout
    (files / "command-key.pub").write_text(public)
    (files / "build.env").write_text(f"RELEASE_COUNTER=1\nHARDWARE_ID={arch.hardware_id}\nCAN_HAT=mcp2515-16mhz\n")
    return files


def rootfs(work: Path, base_dir: Path, bundle: bytes, arch: Arch) -> Path:
    """The VM's root file system: the base, the release as image/ installs it, the VM-only parts."""
    root = work / "root"
    root.mkdir()
    run("tar", "--numeric-owner", "-xpf", base_dir / "base.tar", "-C", root)  # the guest's ids, not the host's
    (root / "boot" / "firmware").mkdir(parents=True, exist_ok=True)
    files = stage_files(work, bundle, arch)
    env = {**os.environ, "ROOTFS_DIR": str(root)}
    run("bash", STAGE / "01-gateway" / "00-run.sh", cwd=files.parent, env=env)
    mounted: list[Path] = []
    try:
        for fs, where in (("proc", "proc"), ("sysfs", "sys")):
            run("mount", "-t", fs, fs, root / where)
            mounted.append(root / where)
        shutil.copy(STAGE / "01-gateway" / "01-run-chroot.sh", root / "run-chroot.sh")
        run("chroot", root, "bash", "/run-chroot.sh")
    finally:
        for where in reversed(mounted):  # lazily: detached at once, so removing the root never reaches the host's
            subprocess.run(["umount", "--lazy", str(where)], check=False)
        (root / "run-chroot.sh").unlink(missing_ok=True)
    guest(work, root, arch)
    return root


def guest(work: Path, root: Path, arch: Arch) -> None:
    """What only the VM has: vcan for the HAT, the fstab, the test runner and its payload."""
    (root / "etc" / "fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n"
                                        "LABEL=BOOTFS /boot/firmware vfat defaults,umask=0077 0 2\n")
    (root / "etc" / "hostname").write_text("gateway-vm\n")
    (root / "var" / "log" / "journal").mkdir(parents=True, exist_ok=True)  # kept for a post-mortem (--keep)
    run("chroot", root, "passwd", "-d", "root", stdout=subprocess.DEVNULL)
    for name in ("10-can0.netdev", "20-uplink.network"):
        shutil.copy(GUEST / name, root / "etc" / "systemd" / "network" / name)
    payload = root / "opt" / "vmtest"
    shutil.copytree(GUEST, payload)
    if (work / "repo").exists():
        shutil.copytree(work / "repo", payload / "repo")
    (payload / "scenarios").write_text("".join(" ".join(names) + "\n" for names in arch.boots))  # a line a boot
    shutil.copy(work / "backend-command.pem", payload / "backend-command.pem")
    shutil.copy(GUEST / "vmtest.service", root / "etc" / "systemd" / "system" / "vmtest.service")
    # The timer's first check (10 min after boot, within the hour) must not start the updater in the middle
    # of the OTA scenarios: they assert that the .path unit did. The timer itself stays as shipped otherwise.
    timer = root / "etc" / "systemd" / "system" / "battery-gateway-update.timer.d"
    timer.mkdir(exist_ok=True)
    (timer / "vmtest.conf").write_text("[Timer]\nOnBootSec=\nOnBootSec=6h\n")
    run("chroot", root, "systemctl", "enable", "vmtest.service", stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


def disks(work: Path, root: Path) -> tuple[Path, Path]:
    rootfs_img, boot_img = work / "rootfs.ext4", work / "bootfs.img"
    run("mke2fs", "-q", "-t", "ext4", "-d", root, "-F", rootfs_img, "4G")
    run("mkfs.vfat", "-n", "BOOTFS", "-C", boot_img, str(64 * 1024), stdout=subprocess.DEVNULL)
    return rootfs_img, boot_img


def put_config(work: Path, boot_img: Path, arch: Arch) -> None:
    """The fleet's config on the boot partition, as a technician copies it there."""
    config = work / "battery-gateway.toml"
    config.write_text((GUEST / "battery-gateway.toml").read_text().replace("@HARDWARE_ID@", arch.hardware_id))
    run("mcopy", "-o", "-i", boot_img, config, "::battery-gateway.toml")


Results = dict[str, tuple[bool, str, str]]  # scenario -> (passed, seconds, detail)
RESULT = re.compile(r"VMTEST RESULT (\S+) (PASS|FAIL) (\d+) ?(.*)")


def boot(work: Path, base_dir: Path, rootfs_img: Path, boot_img: Path, arch: Arch, results: Results, *,
         timeout_s: float) -> bool:
    """Boot once, report every VMTEST line as it comes into ``results``; True when the runner finished."""
    console = work / "console.log"
    console.unlink(missing_ok=True)
    argv = [*arch.qemu, "-accel", "tcg", "-m", "2048", "-smp", "2", "-display", "none",
            "-no-reboot", "-serial", f"file:{console}", "-monitor", "none",
            # an uplink like the device's Wi-Fi or cellular, without a way out (restrict=on)
            "-nic", "user,restrict=on,model=virtio-net-pci",
            "-kernel", str(base_dir / "vmlinuz"), "-initrd", str(base_dir / "initrd.img"),
            "-append", f"root=/dev/vda rw console={arch.console} quiet systemd.show_status=0",
            "-drive", f"file={rootfs_img},if=virtio,format=raw",
            "-drive", f"file={boot_img},if=virtio,format=raw"]
    t0 = time.monotonic()
    with (work / "qemu.log").open("ab") as qemu_log:
        vm = subprocess.Popen(argv, stdout=qemu_log, stderr=qemu_log)
    seen, ended = 0, False
    try:
        while vm.poll() is None and time.monotonic() - t0 < timeout_s and not ended:
            time.sleep(1)
            text = console.read_bytes().decode(errors="replace") if console.exists() else ""
            lines = text.split("\n")[:-1]  # complete lines only
            for line in lines[seen:]:
                if "VMTEST " in line:
                    report = line[line.index("VMTEST "):].strip()
                    print(f"  {report}", flush=True)
                    if found := RESULT.match(report):
                        name, verdict, seconds, detail = found.groups()
                        results[name] = (verdict == "PASS", seconds, detail)
                    ended = ended or report == "VMTEST END"
            seen = len(lines)
        if ended:
            with contextlib.suppress(subprocess.TimeoutExpired):
                vm.wait(120)  # the runner powers the VM off
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
    if not ended and console.exists():
        print(console.read_bytes().decode(errors="replace")[-4000:], file=sys.stderr)
    return ended


def junit(path: Path, arch: Arch, results: Results) -> None:
    """Every planned scenario as a JUnit report (CI systems show it as test results); one that never
    reported (the VM hung, the runner died) is an error."""
    planned = [name for names in arch.boots for name in names]
    suite = ET.Element("testsuite", name=f"vm-test-{arch.debian}", tests=str(len(planned)),
                       failures=str(sum(1 for ok, _, _ in results.values() if not ok)),
                       errors=str(sum(1 for name in planned if name not in results)))
    for name in planned:
        ok, seconds, detail = results.get(name, (False, "0", ""))
        case = ET.SubElement(suite, "testcase", classname=f"vm.{arch.debian}", name=name, time=seconds)
        if name not in results:
            ET.SubElement(case, "error", message="never reported: see console.log")
        elif ok:
            ET.SubElement(case, "system-out").text = detail
        else:
            ET.SubElement(case, "failure", message=detail[:200]).text = detail
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHES), default="amd64",
                   help="amd64: every scenario; arm64: the Pi's release and architecture (make vm-test-arm64)")
    p.add_argument("--cache", type=Path, default=ROOT / "build" / "vm", help="where the base is kept")
    p.add_argument("--keep", action="store_true", help="keep the run directory (disks, console log)")
    p.add_argument("--timeout", type=float, default=2400, help="seconds the VM may run (default 2400)")
    args = p.parse_args()
    arch = ARCHES[args.arch]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a cancelled CI job: qemu killed, mounts undone
    if os.geteuid() != 0:
        print("vm-test: needs root (mmdebstrap, chroot): sudo make vm-test", file=sys.stderr)
        return 2
    tools = [arch.qemu[0], "mmdebstrap", "mke2fs", "mkfs.vfat", "mcopy"]
    if arch.debian == "arm64":
        tools.append("qemu-aarch64-static")  # mmdebstrap and the chroot run arm64 programs through binfmt_misc
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        print(f"vm-test: missing {', '.join(missing)} (make vm-tools installs them)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    base_dir = base(args.cache, arch)
    work = args.cache / f"run-{arch.debian}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        bundle = releases(work) if arch.debian == "amd64" else pi_release(work)
        say("installing the release into the root file system the way image/ does")
        root = rootfs(work, base_dir, bundle, arch)
        rootfs_img, boot_img = disks(work, root)
        shutil.rmtree(root)
        say(f"disks ready after {time.monotonic() - t0:.0f} s")
        results: Results = {}
        t_vm = time.monotonic()
        for n, names in enumerate(arch.boots, 1):
            if n - 1 == arch.config_at:
                put_config(work, boot_img, arch)
            say(f"boot {n} of {len(arch.boots)} (TCG), {len(names)} scenarios, "
                + ("the config on the boot partition" if n - 1 >= arch.config_at else "no config yet"))
            budget = args.timeout - (time.monotonic() - t_vm)
            if not boot(work, base_dir, rootfs_img, boot_img, arch, results, timeout_s=budget):
                break
        junit(work / "results.xml", arch, results)
        planned = [name for names in arch.boots for name in names]
        passed = sum(1 for name in planned if results.get(name, (False,))[0])
        say(f"{len(planned)} scenarios: {passed} passed, {len(planned) - passed} failed or never ran; "
            f"{time.monotonic() - t_vm:.0f} s in the VM; {work / 'results.xml'}")
        code = 0 if passed == len(planned) else 1
    finally:
        if not args.keep:
            for leftover in ("root", "rootfs.ext4", "wheelhouse", "stage"):
                path = work / leftover
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists():
                    path.unlink()
    say(f"vm-test ({arch.debian}) took {time.monotonic() - t0:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
