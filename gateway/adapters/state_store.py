"""Chain position and counters in ``state_dir/state.json``, written atomically (temp file, fsync, rename).

Invariant: ``load`` either returns the state exactly as last saved, or starts a new epoch and says so:
a corrupt or missing file after the device has published before means counters were lost, so
``ep`` goes up by one (the last epoch is also kept in ``epoch`` beside it) and ``seq`` restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..battery import Counters
from ..errors import StateError
from ..signing import Chain

__all__ = ["JsonStateStore"]

log = logging.getLogger(__name__)

_VERSION = 1


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class JsonStateStore:
    """Implements ``StateStore`` on a directory."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "state.json"
        self.epoch_path = self.dir / "epoch"
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"device.state_dir: cannot create {self.dir}: {exc.strerror}") from exc
        self.new_epoch_reason = ""
        self._lock = self._take_lock()
        self._saved_epoch = self._last_epoch()

    def _take_lock(self) -> int:
        # Two processes on one state_dir could hand out the same (ep, seq) twice: refuse the second.
        path = self.dir / "lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"device.state_dir: cannot create {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateError(f"device.state_dir: {self.dir} is in use by another battery-gateway process "
                             "(stop the daemon first: systemctl stop battery-gateway)") from None
        return fd

    def close(self) -> None:
        """Release the directory lock (also released when the process ends)."""
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    def load(self) -> tuple[Chain, Counters]:
        """The saved state, or a new epoch (with ``new_epoch_reason`` set) when it was lost."""
        try:
            raw: Any = json.loads(self.path.read_bytes())
            if raw.get("version") != _VERSION:
                raise ValueError(f"unknown version {raw.get('version')!r}")
            chain = Chain(int(raw["ep"]), int(raw["seq"]), bytes.fromhex(raw["prev"]))
            if chain.ep < 1 or chain.seq < 0 or len(chain.prev) != 32:
                raise ValueError("chain position out of range")
            return chain, Counters.from_dict(raw["counters"])
        except FileNotFoundError:
            last = self._last_epoch()
            if last is None:
                return Chain(), Counters()  # first start of this device
            self.new_epoch_reason = f"{self.path} is missing"
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            last = self._last_epoch() or 1
            self.new_epoch_reason = f"{self.path} is unreadable ({exc})"
            with contextlib.suppress(OSError):  # keep the corrupt file for inspection when we can
                os.replace(self.path, self.path.with_suffix(".corrupt"))
        chain = Chain(ep=(last or 1) + 1)
        log.error("state lost: %s; starting epoch %d, counters restart from zero", self.new_epoch_reason, chain.ep)
        self._save_epoch(chain.ep)
        return chain, Counters()

    def _last_epoch(self) -> int | None:
        try:
            return int(self.epoch_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _save_epoch(self, ep: int) -> None:
        try:
            _write_atomic(self.epoch_path, f"{ep}\n".encode())
            self._saved_epoch = ep
        except OSError as exc:
            raise StateError(f"device.state_dir: cannot write {self.epoch_path}: {exc.strerror}") from exc

    def save(self, chain: Chain, counters: Counters) -> None:
        """Persist atomically.

        Raises:
            StateError: disk full, read-only file system, or permissions.
        """
        if self._saved_epoch != chain.ep:
            self._save_epoch(chain.ep)
        body = {"version": _VERSION, "ep": chain.ep, "seq": chain.seq, "prev": chain.prev.hex(),
                "counters": counters.to_dict()}
        try:
            _write_atomic(self.path, json.dumps(body, separators=(",", ":")).encode())
        except OSError as exc:
            raise StateError(f"device.state_dir: cannot write {self.path}: {exc.strerror}") from exc
