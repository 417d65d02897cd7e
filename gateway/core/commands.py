"""The backend's signed commands to a device (``{prefix}/{device}/cmd/<name>``): which exist, and when a
payload whose signature already verified may be acted on.

Pure. A command is ``{"v": 1, "kind": "command", "cmd": <name>, "dev": <device id>, "ts": <ms>}``. It
must be for this device, dated within ``COMMAND_MAX_AGE_S`` before the device clock and at most
``COMMAND_MAX_SKEW_S`` after it (clocks differ a little; a command from far in the future would block
every fresh one as "replayed" until its time came), and newer than the last command of the same name
accepted, so a recorded command cannot be replayed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["COMMANDS", "COMMAND_MAX_AGE_S", "COMMAND_MAX_SKEW_S", "check_command"]

COMMANDS = ("ota", "passport")
COMMAND_MAX_AGE_S = 600.0
COMMAND_MAX_SKEW_S = 60.0


def check_command(payload: Mapping[str, Any], *, command: str, device_id: str, now_ms: int,
                  last_ts_ms: int) -> str | None:
    """Why ``payload`` must not be acted on as ``cmd/<command>``, or None to accept it."""
    if payload.get("kind") != "command" or payload.get("cmd") != command:
        return f"not a {command} command (kind {payload.get('kind')!r}, cmd {payload.get('cmd')!r})"
    if payload.get("dev") != device_id:
        return f"for device {payload.get('dev')!r}, not {device_id!r}"
    ts = payload.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int):
        return f"ts must be integer milliseconds, got {ts!r}"
    if ts - now_ms > COMMAND_MAX_SKEW_S * 1000:
        return (f"ts {ts} is {(ts - now_ms) / 1000:.0f} s ahead of the device clock "
                f"(at most {COMMAND_MAX_SKEW_S:.0f} s are accepted)")
    if now_ms - ts > COMMAND_MAX_AGE_S * 1000:
        return f"ts {ts} is {(now_ms - ts) / 1000:.0f} s old (commands are valid for {COMMAND_MAX_AGE_S:.0f} s)"
    if ts <= last_ts_ms:
        return f"replayed: ts {ts} is not newer than the last accepted command ({last_ts_ms})"
    return None
