"""When a signed command (signature already verified) may be acted on: this device, a time window that
allows a little clock skew ahead and ten minutes behind, newer than the last accepted command."""

from __future__ import annotations

import pytest

from gateway.core.commands import COMMAND_MAX_SKEW_S, check_command

NOW = 1_700_000_000_000


def _cmd(**changes: object) -> dict[str, object]:
    return {"kind": "command", "cmd": "ota", "dev": "gw-1", "ts": NOW, **changes}


@pytest.mark.parametrize(("payload", "last", "why"), [
    (_cmd(), 0, None),
    (_cmd(ts=NOW + 30_000), 0, None),  # a backend clock 30 s ahead
    (_cmd(ts=NOW - 590_000), 0, None),
    (_cmd(dev="gw-2"), 0, "for device 'gw-2'"),
    (_cmd(cmd="reboot"), 0, "not a ota command"),
    (_cmd(cmd="passport"), 0, "not a ota command"),  # a signed passport command is not an update request
    (_cmd(ts=NOW - 601_000), 0, "s old"),
    (_cmd(ts=NOW + 590_000), 0, "ahead of the device clock"),
    (_cmd(ts="soon"), 0, "integer milliseconds"),
    (_cmd(), NOW, "replayed"),
])
def test_ota_command_checks(payload: dict[str, object], last: int, why: str | None) -> None:
    got = check_command(payload, command="ota", device_id="gw-1", now_ms=NOW, last_ts_ms=last)
    assert got is None if why is None else why in (got or "")


def test_a_command_from_the_future_cannot_block_fresh_ones() -> None:
    # GIVEN a command dated +590 s (a wrong or hostile clock) WHEN it arrives THEN it is refused ...
    assert check_command(_cmd(ts=NOW + 590_000), command="ota", device_id="gw-1", now_ms=NOW, last_ts_ms=0)
    # ... so it never becomes "the last accepted", and a fresh command a second later goes through
    assert check_command(_cmd(ts=NOW + 1000), command="ota", device_id="gw-1", now_ms=NOW + 1000,
                         last_ts_ms=0) is None
    # and even an accepted command at the edge of the skew blocks fresh ones for at most that long
    edge = NOW + int(COMMAND_MAX_SKEW_S * 1000)
    assert check_command(_cmd(ts=edge + 1), command="ota", device_id="gw-1", now_ms=NOW + 61_000,
                         last_ts_ms=edge) is None


def test_passport_commands_are_checked_the_same_way() -> None:
    ok = _cmd(cmd="passport")
    assert check_command(ok, command="passport", device_id="gw-1", now_ms=NOW, last_ts_ms=0) is None
    assert "replayed" in (check_command(ok, command="passport", device_id="gw-1", now_ms=NOW, last_ts_ms=NOW) or "")
