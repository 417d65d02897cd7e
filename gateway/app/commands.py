"""Signed commands from the backend: ``battery-gateway command`` signs them, the daemon takes them in.

``cmd/ota`` is a COSE_Sign1 signed by the backend key (``ota.command_key``). An accepted command
rewrites ``{state_dir}/ota-command.json`` (its ``ts``); the ``battery-gateway-update.path`` unit sees
the change and starts the updater (the daemon itself has no right to install anything). The same
``ts`` is the replay guard: a recorded command is refused, also after a restart. What makes a
command acceptable is ``services/ota.check_command``; this module only wires keys and files.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..adapters.fs import write_atomic
from ..adapters.keystore import load_private_key, load_public_key
from ..core.config import Config
from ..core.signing import Signer, verify_envelope
from ..errors import EnvelopeError
from ..services.ota import check_command

__all__ = ["OtaCommandIntake", "sign_command"]

log = logging.getLogger(__name__)


def sign_command(key_file: str, *, device_id: str, command: str) -> bytes:
    """A backend-signed command envelope (``cmd/<command>``) for ``device_id``, stamped now.

    Raises:
        ConfigError: the key file is missing, too open or not a P-256 key.
    """
    payload = {"v": 1, "kind": "command", "cmd": command, "dev": device_id, "ts": round(time.time() * 1000)}
    return Signer(load_private_key(key_file)).sign(payload)


class OtaCommandIntake:
    """The daemon's side of ``cmd/ota``: verify, check, and record the request for the updater."""

    def __init__(self, config: Config) -> None:
        """Raises:
            ConfigError: ``ota.command_key`` is set but unreadable.
        """
        self._key = load_public_key(config.ota.command_key) if config.ota.command_key else None
        self._device_id = config.device.id
        self._path = Path(config.device.state_dir) / "ota-command.json"
        try:
            self._last_ts = int(json.loads(self._path.read_text())["ts"])
        except (OSError, ValueError, KeyError, TypeError):
            self._last_ts = 0

    def handle(self, envelope: bytes, *, now_ms: int) -> None:
        """Take one ``cmd/ota`` payload; anything not acceptable is logged and ignored."""
        if self._key is None:
            log.warning("cmd/ota ignored: no ota.command_key configured")
            return
        try:
            payload = verify_envelope(envelope, self._key)
        except EnvelopeError as exc:
            log.warning("cmd/ota ignored: %s", exc)
            return
        problem = check_command(payload, device_id=self._device_id, now_ms=now_ms, last_ts_ms=self._last_ts)
        if problem:
            log.warning("cmd/ota ignored: %s", problem)
            return
        self._last_ts = payload["ts"]
        try:
            write_atomic(self._path, json.dumps({"ts": self._last_ts}).encode())
        except OSError as exc:
            log.error("cmd/ota accepted but %s cannot be written (%s): no update starts", self._path, exc.strerror)
            return
        log.info("cmd/ota accepted: update requested")
