"""A throw-away mosquitto on 127.0.0.1 and a free port, for ``demo``, the benchmarks and the tests.

Not used by the product's processes. Needs Debian's ``mosquitto`` package (``make setup`` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..adapters.fs import write_atomic
from ..adapters.mqtt import port_open
from ..errors import PublishError

__all__ = ["LocalBroker", "find_mosquitto", "free_port"]


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """mosquitto in a temporary directory; extra config lines (TLS, ACL) may be added."""

    def __init__(self, *, port: int | None = None, extra_conf: str = "", anonymous: bool = True,
                 persistent: bool = False) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise PublishError("mosquitto not found: install Debian's mosquitto package (make setup does)")
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="bgw-broker-")
        self.dir = Path(self._dir.name)
        self.log_path = self.dir / "mosquitto.log"
        listener = f"listener {self.port} {self.host}\n"
        body = f"allow_anonymous {'true' if anonymous else 'false'}\n" if "allow_anonymous" not in extra_conf else ""
        # Started as root, mosquitto drops to the "mosquitto" user, which cannot read this private directory.
        user = "user root\n" if os.geteuid() == 0 else ""
        persistence = (f"persistence true\npersistence_location {self.dir}/\n" if persistent
                       else "persistence false\n")
        conf = f"{listener}{user}{body}{persistence}log_dest file {self.log_path}\nlog_type all\n{extra_conf}"
        write_atomic(self.dir / "mosquitto.conf", conf.encode(), mode=0o644)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> LocalBroker:
        """Start mosquitto and wait until it accepts connections.

        Raises:
            PublishError: it exited or did not listen in time (its log is in the message).
        """
        self.proc = subprocess.Popen([self.binary, "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise PublishError(f"mosquitto exited with {self.proc.returncode}: {err.strip()[:500]}")
            if port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise PublishError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s} s")

    def halt(self) -> None:
        """Terminate mosquitto but keep its directory (and its persistence file): ``start`` brings it back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def stop(self) -> None:
        """Terminate mosquitto (kill after 5 s) and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self._dir.cleanup()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
