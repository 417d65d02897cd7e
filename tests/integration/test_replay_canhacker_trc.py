"""A real CANHacker ``.trc`` (not PCAN's: ``@ TEXT @`` header, CR line ends, decimal commas) is read, all of it."""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise

import pytest

from gateway.adapters.capture_files import CaptureStats, read_capture
from tests.conftest import capture_path

pytestmark = pytest.mark.captures

SANTA_FE = "field-captures/santafe-phev-canhacker-trc/Hyundai phev battery+emulator only on bench.trc"


def test_every_frame_the_header_announces_is_read_with_its_time_id_and_data() -> None:
    # GIVEN the Santa Fe PHEV bench trace, whose header "@ TEXT @ 3 @ 64 @ 0 @ 930 @ ..." counts its frames
    path = capture_path(SANTA_FE)
    announced = int(path.read_bytes().split(b"\r", 1)[0].split(b"@")[5])
    # WHEN read
    stats = CaptureStats()
    frames = list(read_capture(path, stats=stats))
    # THEN all of them, in order, nothing unreadable; header and "# $LocalTime" lines are events
    assert stats.format == "canhacker-trc"
    assert len(frames) == announced == 930
    assert stats.bad_lines == 0 and stats.events == 2
    first, last = frames[0], frames[-1]
    assert (first.ts, first.can_id, first.data) == (55.038, 0x1FF, bytes.fromhex("0100000000000000"))
    assert (last.ts, last.can_id, last.data) == (56.631, 0x523, bytes.fromhex("6000600000000000"))
    assert all(b.ts >= a.ts for a, b in pairwise(frames))
    assert not any(f.is_extended for f in frames) and {f.can_id for f in frames} >= {0x1FF, 0x200, 0x2A1, 0x2F0}


def test_replay_cli_names_the_format_and_exits_0() -> None:
    path = capture_path(SANTA_FE)
    out = subprocess.run([sys.executable, "-m", "gateway", "replay", str(path)], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert f"replay: {path} (canhacker-trc): 932 lines, 0 battery frames, 0 unreadable lines" in out.stderr
