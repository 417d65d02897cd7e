"""A real TUF repository for the OTA tests, built with python-tuf's own repository tooling
(``tuf.repository.Repository`` + the Metadata API, ECDSA keys from securesystemslib), published into a
directory and served over HTTP on 127.0.0.1 by a small server that understands ``Range`` and can cut a
download short once. Also: release bundles built from this checkout at any version, and a supervisor
that restarts the daemon like ``Restart=`` in the systemd unit does.
"""

from __future__ import annotations

import copy
import hashlib
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from gateway.adapters.releases import write_bundle

ROOT = Path(__file__).resolve().parents[1]
ROLES = (Root.type, Timestamp.type, Snapshot.type, Targets.type)


class TufRepo(Repository):
    """Top-level roles only, consistent snapshots, one ECDSA key per role."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        (directory / "metadata").mkdir(parents=True)
        (directory / "targets").mkdir()
        self.signers: dict[str, list[CryptoSigner]] = {r: [CryptoSigner.generate_ecdsa()] for r in ROLES}
        self.expiry: dict[str, timedelta] = {r: timedelta(days=30) for r in ROLES}
        self._md: dict[str, Metadata[Any]] = {}
        root = Root(consistent_snapshot=True)
        for role in ROLES:
            root.add_key(self.signers[role][0].public_key, role)
        self._md[Root.type] = Metadata(root)
        self._md[Timestamp.type] = Metadata(Timestamp())
        self._md[Snapshot.type] = Metadata(Snapshot())
        self._md[Targets.type] = Metadata(Targets())
        for role in ROLES:  # version 1 of each, signed and written
            self._md[role].signed.version = 0
            self.close(role, self._md[role])

    # -- Repository ------------------------------------------------------------------------------
    def open(self, role: str) -> Metadata[Any]:
        return copy.deepcopy(self._md[role])

    def close(self, role: str, md: Metadata[Any]) -> None:
        md.signed.version += 1
        md.signed.expires = datetime.now(UTC).replace(microsecond=0) + self.expiry[role]
        md.signatures.clear()
        for signer in self.signers[role]:
            md.sign(signer, append=True)
        self._md[role] = md
        data = md.to_bytes(JSONSerializer())
        meta = self.dir / "metadata"
        if role == Timestamp.type:
            (meta / "timestamp.json").write_bytes(data)
        else:
            (meta / f"{md.signed.version}.{role}.json").write_bytes(data)
        if role == Root.type:
            (meta / "root.json").write_bytes(data)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {"targets.json": MetaFile(self._md[Targets.type].signed.version)}

    @property
    def snapshot_info(self) -> MetaFile:
        return MetaFile(self._md[Snapshot.type].signed.version)

    # -- what a release manager does --------------------------------------------------------------
    def root_bytes(self) -> bytes:
        return (self.dir / "metadata" / "1.root.json").read_bytes()

    def add_release(self, path: str, data: bytes, *, version: str, counter: int,
                    hardware_ids: tuple[str, ...] = ("test-hw",)) -> None:
        """Publish ``data`` as target ``path`` with our custom metadata, then snapshot + timestamp."""
        info = TargetFile.from_data(path, data, ["sha256"])
        info.unrecognized_fields["custom"] = {"version": version, "release_counter": counter,
                                              "hardware_ids": list(hardware_ids)}
        digest = hashlib.sha256(data).hexdigest()
        dirname, _, name = path.rpartition("/")
        dest = self.dir / "targets" / dirname / f"{digest}.{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        with self.edit_targets() as targets:
            targets.targets[path] = info
        self.publish()

    def publish(self) -> None:
        self.do_snapshot(force=True)
        self.do_timestamp(force=True)

    def target_file(self, path: str) -> Path:
        info = self._md[Targets.type].signed.targets[path]
        dirname, _, name = path.rpartition("/")
        return self.dir / "targets" / dirname / f"{info.hashes['sha256']}.{name}"

    def rotate(self, role: str) -> None:
        """Replace ``role``'s key. The new root is signed by the old and the new root keys (the client
        checks both), then the role is re-signed with its new key and snapshot + timestamp follow."""
        old, new = self.signers[role], [CryptoSigner.generate_ecdsa()]
        if role == Root.type:
            self.signers[role] = old + new
        with self.edit_root() as root:
            for s in old:
                root.revoke_key(s.public_key.keyid, role)
            root.add_key(new[0].public_key, role)
        self.signers[role] = new
        if role == Targets.type:
            with self.edit_targets():
                pass
        if role != Root.type:
            self.publish()

    def sign_with(self, role: str, signers: list[CryptoSigner]) -> None:
        """A new version of ``role`` signed by ``signers`` (an attacker's key, a revoked key)."""
        saved = self.signers[role]
        self.signers[role] = signers
        try:
            with self.edit(role):
                pass
        finally:
            self.signers[role] = saved
        self.publish()


class _Handler(BaseHTTPRequestHandler):
    server: RepoServer

    def do_GET(self) -> None:
        rel = self.path.split("?", 1)[0].lstrip("/")
        self.server.requests.append((rel, self.headers.get("Range")))
        path = self.server.root / rel
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-", rng)):
            start = int(m.group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cut_once.pop(rel.rsplit("/", 1)[-1].split(".", 1)[-1], None)
        if cut is not None:  # a flaky cellular link: the connection dies part-way
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        if rel.startswith("targets/"):
            self.server.target_bytes_sent += len(body)
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RepoServer(ThreadingHTTPServer):
    """Serves ``root`` on 127.0.0.1; ``cut_once[name] = n`` drops the next download of ``name`` after n bytes."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.cut_once: dict[str, int] = {}
        self.target_bytes_sent = 0
        self._thread = threading.Thread(target=self.serve_forever, name="tuf-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


def build_wheelhouse(dest: Path) -> Path:
    """This checkout's wheel and every dependency's wheel (pip's cache makes this quick)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                    "--wheel-dir", str(dest), str(ROOT)], check=True, capture_output=True)
    return dest


def build_bundle(wheelhouse: Path, work: Path, *, version: str, damaged_data: str | None = None) -> bytes:
    """A release bundle (tar: release.json + wheels/) of this checkout at ``version``.

    ``damaged_data`` names a file of ``gateway/data`` that the release ships truncated: a broken release
    of the real program, which fails at start the way a badly built release would.
    """
    src = work / f"src-{version}"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                ".pytest_cache", ".mypy_cache", ".ruff_cache",
                                                                "bench", "tests", "docs"))
    init = src / "gateway" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
    if damaged_data is not None:
        data = src / "gateway" / "data" / damaged_data
        data.write_bytes(data.read_bytes()[:100])
    wheels = work / f"wheels-{version}"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--wheel-dir", str(wheels), str(src)], check=True, capture_output=True)
    deps = [w for w in wheelhouse.glob("*.whl") if not w.name.startswith("battery_gateway-")]
    write_bundle(work / f"bundle-{version}.tar", version=version, wheels=deps + list(wheels.glob("*.whl")))
    return (work / f"bundle-{version}.tar").read_bytes()


_STUB = """import sys, time

def main():
    if "--version" in sys.argv:
        print("battery-gateway {version}")
        return 0
    time.sleep(3600)  # a release that starts and then never gets anywhere
    return 1
"""


def build_hanging_bundle(work: Path, *, version: str) -> bytes:
    """A release bundle whose ``battery-gateway`` installs and answers ``--version``, and whose ``run``
    hangs: a stand-in for a release that never becomes healthy (it is not the gateway's code at all)."""
    src = work / f"stub-{version}"
    (src / "bgw_stub").mkdir(parents=True)
    (src / "bgw_stub" / "__init__.py").write_text(_STUB.format(version=version))
    (src / "pyproject.toml").write_text(f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"
[project]
name = "battery-gateway"
version = "{version}"
[project.scripts]
battery-gateway = "bgw_stub:main"
[tool.setuptools]
packages = ["bgw_stub"]
""")
    wheels = work / f"stub-wheels-{version}"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--wheel-dir", str(wheels), str(src)], check=True, capture_output=True)
    write_bundle(work / f"bundle-{version}.tar", version=version, wheels=list(wheels.glob("*.whl")))
    return (work / f"bundle-{version}.tar").read_bytes()


def base_release(releases_dir: Path, version: str = "0.0.1") -> None:
    """The release the device runs before the update: this checkout, through a launcher script."""
    d = releases_dir / "releases" / version / "bin"
    d.mkdir(parents=True)
    launcher = d / "battery-gateway"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gateway "$@"\n')
    launcher.chmod(0o755)
    (d.parent / ".complete").write_text(version)
    (releases_dir / "current").symlink_to(Path("releases") / version)


class Supervisor:
    """Runs ``{releases}/current/bin/battery-gateway run`` like systemd with ``Restart=always``; the
    updater's ``restart_command`` touches ``restart_flag``."""

    def __init__(self, releases_dir: Path, config: Path, log: Path) -> None:
        self.releases_dir, self.config, self.log = releases_dir, config, log
        self.restart_flag = releases_dir.parent / "restart-requested"
        self.started: list[str] = []  # the release each start ran
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.started.append(Path(self.releases_dir / "current").resolve().name)
            with self.log.open("ab") as log:
                proc = subprocess.Popen([str(self.releases_dir / "current" / "bin" / "battery-gateway"), "run",
                                         "--config", str(self.config)], stdout=log, stderr=log)
            while proc.poll() is None and not self._stop.is_set() and not self.restart_flag.exists():
                time.sleep(0.1)
            self.restart_flag.unlink(missing_ok=True)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                self._stop.wait(0.5)  # RestartSec

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
