"""The daemon's health record, ``{state_dir}/health.json``, which the updater reads during probation.

The daemon writes it (``fs.write_atomic``) when it starts and whenever a milestone is reached:
CAN bus open, broker connected, first reading acknowledged by the broker. ``starts`` counts the starts
of the same release in a row, so a release that crash-loops is visible without systemd's help. A
record that cannot be written (read-only or full disk) is logged once and otherwise ignored: health
is for the updater, never a reason to stop reading the battery.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..model import Health
from .fs import safe_dir, write_atomic

__all__ = ["HealthFile", "read_health"]

log = logging.getLogger(__name__)

_NAME = "health.json"


def read_health(state_dir: str) -> Health | None:
    """The daemon's latest record, or None when there is none (or it is unreadable)."""
    try:
        raw = json.loads((Path(state_dir) / _NAME).read_text())
        return Health(sw=str(raw["sw"]), starts=int(raw["starts"]), bus=raw["bus"] is True,
                      broker=raw["broker"] is True, acked=raw["acked"] is True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


class HealthFile:
    """Writes the record for the running release ``version``."""

    def __init__(self, state_dir: str, version: str) -> None:
        self._path = Path(state_dir) / _NAME
        with contextlib.suppress(OSError):  # a directory that cannot be used is reported by the first write
            safe_dir(state_dir)
        previous = read_health(state_dir)
        starts = previous.starts + 1 if previous is not None and previous.sw == version else 1
        self._body: dict[str, Any] = {"sw": version, "pid": os.getpid(), "starts": starts,
                                      "bus": False, "broker": False, "acked": False}
        self._failed = False
        self._write()

    def mark(self, milestone: str) -> None:
        """Record ``bus``, ``broker`` or ``acked`` (once; later calls cost a dict lookup)."""
        if not self._body[milestone]:
            self._body[milestone] = True
            self._write()

    def _write(self) -> None:
        try:
            write_atomic(self._path, json.dumps(self._body).encode())  # the updater (root) reads it
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.error("cannot write %s (%s): an update on probation will not see this release as healthy",
                          self._path, exc.strerror)
