"""Signed commands from the backend: ``battery-gateway command`` signs them, the daemon takes them in.

Every command (``cmd/ota``, ``cmd/passport``) is a COSE_Sign1 signed by the backend key
(``ota.command_key``) and checked by ``core/commands.check_command``: this device, the time window,
newer than the last one of its name. The last accepted ``ts`` per command is kept in the state
directory, so a recorded command is refused also after a restart. An accepted ``cmd/ota`` rewrites
``{state_dir}/ota-command.json``, which the ``battery-gateway-update.path`` unit watches (the daemon itself
has no right to install anything); an accepted ``cmd/passport`` asks the pipeline for a passport. A
command the broker kept as retained never gets here (``adapters/mqtt`` drops it).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..adapters.fs import write_atomic
from ..adapters.keystore import load_private_key, load_public_key
from ..core.commands import COMMANDS, check_command
from ..core.config import Config
from ..core.signing import Signer, verify_envelope
from ..errors import EnvelopeError

__all__ = ["CommandIntake", "sign_command"]

log = logging.getLogger(__name__)


def sign_command(key_file: str, *, device_id: str, command: str) -> bytes:
    """A backend-signed command envelope (``cmd/<command>``) for ``device_id``, stamped now.

    Raises:
        ConfigError: the key file is missing, too open or not a P-256 key.
    """
    payload = {"v": 1, "kind": "command", "cmd": command, "dev": device_id, "ts": round(time.time() * 1000)}
    return Signer(load_private_key(key_file, what="command --key")).sign(payload)


def _last_ts(path: Path) -> dict[str, int]:
    try:
        raw = json.loads(path.read_text())
        return {k: v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)}
    except (OSError, ValueError, AttributeError):
        return {}


class CommandIntake:
    """The daemon's side of the signed commands: verify, check, remember."""

    def __init__(self, config: Config) -> None:
        """Raises:
            ConfigError: ``ota.command_key`` is set but unreadable.
        """
        self._key = load_public_key(config.ota.command_key, what="ota.command_key") if config.ota.command_key else None
        self._device_id = config.device.id
        state = Path(config.device.state_dir)
        self._ota_path, self._seen_path = state / "ota-command.json", state / "commands.json"
        self._last = {**_last_ts(self._seen_path), "ota": _last_ts(self._ota_path).get("ts", 0)}
        self.ignored = 0
        self._logged_at: dict[str, float] = {}

    def accept(self, name: str, envelope: bytes, *, now_ms: int) -> bool:
        """True when ``cmd/<name>`` is to be acted on; anything else is logged and ignored."""
        if name not in COMMANDS:
            raise ValueError(f"not a command: {name!r}")
        if self._key is None:
            return self._ignore(name, "no ota.command_key configured (commands must be signed by the backend)")
        try:
            payload = verify_envelope(envelope, self._key)
        except EnvelopeError as exc:
            return self._ignore(name, str(exc))
        problem = check_command(payload, command=name, device_id=self._device_id, now_ms=now_ms,
                                last_ts_ms=self._last.get(name, 0))
        if problem:
            return self._ignore(name, problem)
        try:
            self._remember(name, payload["ts"])
        except OSError as exc:
            log.error("cmd/%s not acted on: %s cannot be written (%s)", name, self._seen_path.parent, exc.strerror)
            return False
        log.info("cmd/%s accepted", name)
        return True

    def _ignore(self, name: str, why: str) -> bool:
        """Count it; log at most once a minute per command (a flood of forgeries cannot fill the journal)."""
        self.ignored += 1
        now = time.monotonic()
        if now - self._logged_at.get(name, -60.0) >= 60.0:
            self._logged_at[name] = now
            log.warning("cmd/%s ignored: %s (%d commands ignored so far)", name, why, self.ignored)
        return False

    def _remember(self, name: str, ts: int) -> None:
        if name == "ota":  # the update request itself: battery-gateway-update.path starts the updater
            write_atomic(self._ota_path, json.dumps({"ts": ts}).encode())
        else:
            others = {k: v for k, v in self._last.items() if k != "ota"}
            write_atomic(self._seen_path, json.dumps({**others, name: ts}).encode())
        self._last[name] = ts
