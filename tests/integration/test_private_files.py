"""What the gateway keeps on disk is private whatever the umask of the shell it was started from: the key
and its directory, the state database with its WAL, the epoch, the health record (issue: "modes
regardless of umask"). Real files, real SQLite, the real CLI."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.health import HealthFile
from gateway.adapters.sqlite_outbox import SqliteOutbox
from gateway.model import OutgoingMessage


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # a shell's usual umask: new files 0644, new directories 0755
    yield
    os.umask(old)


def test_keygen_makes_a_private_directory_and_key(tmp_path: Path) -> None:
    key = tmp_path / "var" / "lib" / "battery-gateway" / "device-key.pem"
    out = subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(key)], capture_output=True,
                         text=True, timeout=60, preexec_fn=lambda: os.umask(0o022))
    assert out.returncode == 0, out.stderr
    assert mode(key.parent) == 0o700 and mode(key) == 0o600


def test_keygen_refuses_a_directory_planted_as_a_link(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "elsewhere")
    out = subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(tmp_path / "state" / "k.pem")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "symbolic link" in out.stderr and "Traceback" not in out.stderr
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_state_database_wal_and_epoch_are_0600(tmp_path: Path, loose_umask: None) -> None:
    store = SqliteOutbox(tmp_path / "state")
    chain, counters = store.load()
    message = OutgoingMessage("reading", b"x", False, "reading", 1, 1, {"ts": 1})
    store.put(message, chain=chain.after(b"x"), counters=counters)
    files = {p.name: mode(p) for p in (tmp_path / "state").iterdir() if p.name != "lock"}
    store.close()
    assert mode(tmp_path / "state") == 0o700
    assert {"state.db", "state.db-wal", "epoch"} <= set(files), files
    assert set(files.values()) == {0o600}, files


def test_the_health_record_makes_its_directory_on_a_first_start(tmp_path: Path, loose_umask: None,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a first start outside systemd: nothing made the state directory yet
    with caplog.at_level(logging.ERROR):
        health = HealthFile(str(tmp_path / "state"), "1.0")
        health.mark("bus")
    # THEN no error, a private directory and a private record
    assert caplog.records == []
    assert mode(tmp_path / "state") == 0o700 and mode(tmp_path / "state" / "health.json") == 0o600
