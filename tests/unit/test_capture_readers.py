"""Capture readers: every community format, garbage lines skipped and counted, never a crash."""

from __future__ import annotations

from pathlib import Path

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.adapters.capture_files import CaptureStats, detect_format, read_capture
from gateway.errors import CaptureError

FRAME = "EEC0C3EA00F7619B"
SPACED = " ".join(FRAME[i:i + 2] for i in range(0, 16, 2))
SAMPLES = {
    "candump-l": f"(1700000000.100000) can0 1DB#{FRAME}\n(1700000000.110000) can0 55B#E9C00000E1401214\n",
    "candump-text": f"  can0  1DB   [8]  {SPACED}\n  can0  55B   [8]  E9 C0 00 00 E1 40 12 14\n",
    "crtd": "1632426775.935928 CXX OVMS CRTD\n1632426775.935928 CVR 3.0\n"
            f"1632426782.100000 1R11 1DB {SPACED.lower()}\n1632426782.5 1CEV Event vehicle.charge.pilot.on\n"
            "1632426782.600000 2R11 55B e9 c0 00 00 e1 40 12 14\n",
    "gvret-text": "511.794004 CXX GVRET-PC Reverse Engineering Tool Output V115\n"
                  f"511.794004 R11 000001DB {SPACED} \n511.80 R11 0000055B E9 C0 00 00 E1 40 12 14 \n",
    "gvret-csv": "Time Stamp,ID,Extended,Dir,Bus,LEN,D1,D2,D3,D4,D5,D6,D7,D8\r\n"
                 f"-1725172529967471,000001DB,false,Rx,0,8,{SPACED.replace(' ', ',')},\r\n"
                 "-1725172529957471,0000055B,false,Rx,0,8,E9,C0,00,00,E1,40,12,14,\r\n",
    "gvret-csv-nodir": "Time Stamp,ID,Extended,Bus,LEN,D1,D2,D3,D4,D5,D6,D7,D8\r\n"
                       f"7254438300,000001DB,false,1,8,{SPACED.replace(' ', ',')}\r\n"
                       "7254444400,0000055B,false,1,8,E9,C0,00,00,E1,40,12,14\r\n",
    "parserflags": "ParserFlags\tCh\tCounter\tT/R\tTime\tFlags\tCAN ID\tLen\tData\tParser Name\tdefault\n"
                   f"1\t0\t1\tRX\t48659511\t\t0x000001db\t8\t0x{SPACED.lower()} \tDefault Parser\t\n"
                   "1\t0\t1\tRX\t48659521\t\t0x0000055b\t8\t0xe9 c0 00 00 e1 40 12 14 \tDefault Parser\t\n",
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_format_gives_the_two_frames(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.txt"
    path.write_text(SAMPLES[name])
    stats = CaptureStats()
    frames = list(read_capture(path, stats=stats))
    assert [f.can_id for f in frames] == [0x1DB, 0x55B]
    assert frames[0].data == bytes.fromhex(FRAME)
    assert frames[1].ts >= frames[0].ts
    assert stats.bad_lines == 0


def test_crtd_keeps_bus_numbers_and_skips_event_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.crtd"
    path.write_text(SAMPLES["crtd"])
    stats = CaptureStats()
    frames = list(read_capture(path, stats=stats))
    assert [f.bus for f in frames] == [1, 2]
    assert stats.events == 3


def test_gvret_negative_timestamps_count_up(tmp_path: Path) -> None:
    # SavvyCAN exports in ../shared count up from a large negative origin: keep the sign
    path = tmp_path / "x.csv"
    path.write_text(SAMPLES["gvret-csv"])
    frames = list(read_capture(path))
    assert frames[0].ts == pytest.approx(-1725172529.967471)
    assert frames[1].ts - frames[0].ts == pytest.approx(0.01, abs=1e-6)


def test_want_filters_ids_before_anything_else(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text(SAMPLES["candump-l"])
    stats = CaptureStats()
    assert [f.can_id for f in read_capture(path, want=frozenset({0x55B}), stats=stats)] == [0x55B]
    assert stats.skipped == 1


@pytest.mark.parametrize("suffix", ["asc", "blf", "trc", "csv", "mf4", "log"])
def test_python_can_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    # GIVEN a file written by python-can's own writer for that format
    path = tmp_path / f"x.{suffix}"
    with can.Logger(str(path)) as logger:
        for i, can_id in enumerate((0x1DB, 0x7FF, 0x55B)):
            logger(can.Message(timestamp=1700000000.0 + i, arbitration_id=can_id, data=bytes.fromhex(FRAME),
                               is_extended_id=False, channel=0))
    # WHEN the gateway reads it, keeping two ids THEN the frames come back in order, the third filtered
    stats = CaptureStats()
    frames = list(read_capture(path, want=frozenset({0x1DB, 0x55B}), stats=stats))
    assert detect_format(path) == ("candump-l" if suffix == "log" else "python-can")
    assert [(f.can_id, f.data) for f in frames] == [(0x1DB, bytes.fromhex(FRAME)), (0x55B, bytes.fromhex(FRAME))]
    assert stats.skipped == 1


def test_bad_lines_are_counted_and_named(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text(SAMPLES["candump-l"] + "(1700000000.2) can0 1DB#ZZZZ\n(170000) can0 1DB#0\nrubbish\n")
    stats = CaptureStats()
    assert len(list(read_capture(path, stats=stats))) == 2
    assert stats.bad_lines == 3
    assert f"{path}:3" in stats.first_bad


def test_unknown_format_and_missing_file_are_capture_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_text("hello world\nthis is not a capture\n")
    with pytest.raises(CaptureError, match="unknown capture format"):
        list(read_capture(path))
    with pytest.raises(CaptureError, match="cannot read"):
        list(read_capture(tmp_path / "nope.log"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SAMPLES)), junk=st.lists(st.text(max_size=80), max_size=8),
       cut=st.integers(0, 400), raw=st.binary(max_size=200))
def test_garbage_and_truncation_never_crash(tmp_path: Path, name: str, junk: list[str], cut: int,
                                            raw: bytes) -> None:
    text = SAMPLES[name]
    lines = text.splitlines(keepends=True)
    body = "".join(lines[:2] + [j.replace("\n", " ") + "\n" for j in junk] + lines[2:])[:cut + 40]
    path = tmp_path / f"fuzz-{name}.txt"
    path.write_bytes(body.encode() + raw)
    try:
        frames = list(read_capture(path))
    except CaptureError:
        return  # the whole file is unrecognisable: one clear error
    for f in frames:
        assert 0 <= f.can_id <= 0x1FFFFFFF and len(f.data) <= 64
