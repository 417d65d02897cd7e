"""Release directories, the atomic ``current`` symlink and the updater's state file -> ``ReleaseStore``.

Layout (``ota.releases_dir``, ``/opt/battery-gateway`` on the image)::

    releases/<version>/          a virtual environment with that release installed, plus bundle/
    releases/<version>/.complete written last: a directory without it is a half install and is redone
    current -> releases/<version>   switched with rename(2), so it is always one whole release

A release bundle is a tar archive holding ``release.json`` (``{"version": ...}``) and ``wheels/`` (the
gateway wheel and every dependency, built for the device). It installs with pip from those wheels only
(``--no-index``): nothing is fetched from anywhere else. The updater's state (``ota.dir/state.json``),
the ``.complete`` marker and bundles are written with ``fs.write_atomic``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UpdateError
from ..model import OtaState, Probation
from .fs import replace_symlink, safe_dir, write_atomic

__all__ = ["STATUS_FILE", "ReleaseDirs", "read_status", "write_bundle"]

log = logging.getLogger(__name__)

_PIP_TIMEOUT_S = 900  # a Pi Zero 2 installing cryptography from a wheel takes about a minute
STATUS_FILE = "ota-status.json"  # the updater's latest notice, which the daemon publishes on {base}/ota
_MAX_STATUS_BYTES = 16384


def read_status(releases_dir: str) -> tuple[tuple[int, int], bytes] | None:
    """The updater's latest notice and a stamp that changes when it is rewritten, or None when there is
    none (or it is not a small regular file)."""
    path = Path(releases_dir) / STATUS_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_STATUS_BYTES:
            return None
        return (st.st_mtime_ns, st.st_ino), f.read(_MAX_STATUS_BYTES)


class ReleaseDirs:
    """The release tree under ``root`` and the updater state under ``state_dir``."""

    def __init__(self, root: str, state_dir: str, *, python: str) -> None:
        self.root = Path(root)
        self.releases = self.root / "releases"
        self.state_dir = Path(state_dir)
        self.python = python

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the updater lock: never two updates at once.

        Raises:
            UpdateError: (kind ``busy``) another update holds it.
        """
        safe_dir(self.state_dir)
        with (self.state_dir / "lock").open("a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UpdateError(f"another update is running (lock {self.state_dir / 'lock'})", kind="busy") \
                    from None
            yield

    def current(self) -> str | None:
        try:
            return os.readlink(self.root / "current").rstrip("/").rsplit("/", 1)[-1]
        except OSError:
            return None

    def install(self, bundle: str, version: str) -> None:
        """Unpack ``bundle`` into ``releases/<version>`` and pip-install it there from its own wheels.

        Raises:
            UpdateError: kind ``install``; the half-made directory is removed.
        """
        target = self.releases / version
        if (target / ".complete").exists():
            log.info("release %s already installed", version)
            return
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        try:
            self._unpack(bundle, target / "bundle", version)
            self._run([self.python, "-m", "venv", str(target)], "create the virtual environment")
            self._run([str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
                       "--disable-pip-version-check", "--find-links", str(target / "bundle" / "wheels"),
                       f"battery-gateway=={version}"], "install the wheels")
            out = self._run([str(target / "bin" / "battery-gateway"), "--version"], "start the new release")
            if version not in out:
                raise UpdateError(f"release {version}: the installed program says {out.strip()!r}", kind="install")
        except UpdateError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        write_atomic(target / ".complete", f"{version}\n".encode(), mode=0o644)
        log.info("release %s installed in %s", version, target)

    @staticmethod
    def _unpack(bundle: str, dest: Path, version: str) -> None:
        try:
            with tarfile.open(bundle) as tar:
                members = tar.getmembers()
                for m in members:  # our own check: Python 3.11.2 (Raspberry Pi OS bookworm) has no filter=
                    parts = Path(m.name).parts
                    if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in parts:
                        raise ValueError(f"member {m.name!r} is not a plain file inside the bundle")
                    m.mode = 0o755 if m.isdir() else 0o644
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(dest, members=members, filter="data")
                else:  # Python < 3.11.4, e.g. 3.11.2 on Raspberry Pi OS bookworm: members checked above
                    tar.extractall(dest, members=members)
            meta = json.loads((dest / "release.json").read_text())
        except (OSError, tarfile.TarError, ValueError) as exc:
            raise UpdateError(f"release {version}: bundle {bundle} cannot be unpacked: {exc}", kind="install") \
                from exc
        if not isinstance(meta, dict) or meta.get("version") != version:
            raise UpdateError(f"release {version}: bundle release.json says {meta!r}", kind="install")

    @staticmethod
    def _run(argv: list[str], what: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpdateError(f"cannot {what}: {exc}", kind="install") from exc
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise UpdateError(f"cannot {what}: exit {done.returncode}: {last}", kind="install")
        return done.stdout

    def switch(self, version: str) -> None:
        """Point ``current`` at ``releases/<version>`` in one rename."""
        if not (self.releases / version / ".complete").exists():
            raise RuntimeError(f"switch to {version}, which is not installed")
        replace_symlink(self.root / "current", Path("releases") / version)
        log.info("current release is now %s", version)

    def prune(self, keep: set[str]) -> None:
        """Remove every release directory but ``keep`` and the current one."""
        keep = keep | {self.current() or ""}
        for d in self.releases.iterdir() if self.releases.exists() else ():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
                log.info("removed old release %s", d.name)

    def write_status(self, body: dict[str, Any]) -> None:
        """Leave the latest notice for the daemon, which publishes it (the device has one MQTT identity and
        one connection: docs/ota.md). Best effort: the journal and ``state.json`` have it too."""
        try:
            write_atomic(self.root / STATUS_FILE, json.dumps(body, separators=(",", ":")).encode(), mode=0o644)
        except OSError as exc:
            log.warning("ota notice not written to %s: %s", self.root / STATUS_FILE, exc.strerror)

    def load_state(self) -> OtaState:
        path = self.state_dir / "state.json"
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
            p = raw.get("probation")
            return OtaState(counter=int(raw.get("counter", 0)),
                            probation=Probation(**p) if p else None,
                            rolled_back=tuple(raw.get("rolled_back", ())))
        except FileNotFoundError:
            return OtaState()
        except (OSError, ValueError, TypeError) as exc:
            # the counter is what blocks downgrades: refuse to guess it
            raise UpdateError(f"{path}: unreadable updater state ({exc}); restore it or remove it on purpose",
                              kind="refused") from exc

    def save_state(self, state: OtaState) -> None:
        p = state.probation
        raw = {"counter": state.counter, "rolled_back": list(state.rolled_back),
               "probation": None if p is None else {"version": p.version, "previous": p.previous,
                                                    "counter": p.counter, "deadline_ms": p.deadline_ms}}
        safe_dir(self.state_dir)
        write_atomic(self.state_dir / "state.json", json.dumps(raw).encode())


def write_bundle(out: Path, *, version: str, wheels: list[Path], mtime: int = 0) -> None:
    """Write a release bundle the same way every time: sorted members, fixed owner and ``mtime``
    (``SOURCE_DATE_EPOCH``), so the same wheels give the same bytes and the same TUF hash."""
    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), mtime, 0o644
        tar.addfile(info, io.BytesIO(data))

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "release.json", json.dumps({"version": version}, sort_keys=True).encode())
        for whl in sorted(wheels, key=lambda p: p.name):
            add(tar, f"wheels/{whl.name}", whl.read_bytes())
    write_atomic(out, buffer.getvalue(), mode=0o644)
