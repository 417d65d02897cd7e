"""sd_notify without libsystemd: READY=1, WATCHDOG=1, STOPPING=1, STATUS=... on $NOTIFY_SOCKET.

A no-op when the daemon does not run under systemd (no ``NOTIFY_SOCKET``). The environment is read
once, by ``SystemdNotifier.from_environment``, which only ``app`` calls.
"""

from __future__ import annotations

import os
import socket

__all__ = ["SystemdNotifier"]


class SystemdNotifier:
    """Sends state lines to systemd's notify socket."""

    def __init__(self, address: str | None, watchdog_usec: str | None = None) -> None:
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        try:
            self.watchdog_s = int(watchdog_usec or 0) / 1e6  # WatchdogSec=, 0 when there is none
        except ValueError:
            self.watchdog_s = 0.0

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        return cls(os.environ.get("NOTIFY_SOCKET"), os.environ.get("WATCHDOG_USEC"))

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, state: str) -> None:
        """Send ``state`` (e.g. ``READY=1``); errors are ignored, as in sd_notify(3)."""
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self._address)
                s.sendall(state.encode())
        except OSError:
            pass
