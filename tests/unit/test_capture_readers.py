"""Capture readers: every format, garbage lines skipped and counted, a broken file one clear error, never a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.adapters.capture_files import CaptureStats, read_capture
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
    # CANHacker: CR line ends, seconds with a decimal comma, two columns not interpreted, an ASCII view
    "canhacker-trc": "@ TEXT @ 3 @ 64 @ 0 @ 2 @ 20 @ 00:00:00.020 @\r# $LocalTime=10:51:34.569\r"
                     f"55,038000\t2\t00000004\t1DB\t8\t{SPACED}\t00000000\t        \t\r"
                     "55,048000\t2\t00000004\t55B\t8\tE9 C0 00 00 E1 40 12 14\t00000000\t  @     \t\r",
}
OWN = {"candump-l": "candump-l", "candump-text": "candump-text", "crtd": "crtd", "gvret-text": "crtd",
       "gvret-csv": "gvret-csv", "gvret-csv-nodir": "gvret-csv", "parserflags": "parserflags",
       "canhacker-trc": "canhacker-trc"}  # sample -> the format it is detected as


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_format_gives_the_two_frames(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.txt"
    path.write_text(SAMPLES[name])
    stats = CaptureStats()
    frames = list(read_capture(path, stats=stats))
    assert [f.can_id for f in frames] == [0x1DB, 0x55B]
    assert frames[0].data == bytes.fromhex(FRAME)
    assert frames[1].ts >= frames[0].ts
    assert stats.bad_lines == 0 and stats.format == OWN[name]


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


PYTHON_CAN = {"asc": "asc", "blf": "blf", "trc": "pcan-trc", "csv": "python-can-csv", "mf4": "mf4", "db": "sqlite",
              "log": "candump-l"}


def write_with_python_can(path: Path, ids: tuple[int, ...] = (0x1DB, 0x7FF, 0x55B)) -> None:
    with can.Logger(str(path)) as logger:
        for i, can_id in enumerate(ids):
            logger(can.Message(timestamp=1700000000.0 + i, arbitration_id=can_id, data=bytes.fromhex(FRAME),
                               is_extended_id=False, channel=0))


@pytest.mark.parametrize("suffix", sorted(PYTHON_CAN))
def test_python_can_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    # GIVEN a file written by python-can's own writer for that format
    path = tmp_path / f"x.{suffix}"
    write_with_python_can(path)
    # WHEN the gateway reads it, keeping two ids THEN the frames come back in order, the third filtered
    stats = CaptureStats()
    frames = list(read_capture(path, want=frozenset({0x1DB, 0x55B}), stats=stats))
    assert stats.format == PYTHON_CAN[suffix]
    assert [(f.can_id, f.data) for f in frames] == [(0x1DB, bytes.fromhex(FRAME)), (0x55B, bytes.fromhex(FRAME))]
    assert stats.skipped == 1


@pytest.mark.parametrize("suffix", sorted(PYTHON_CAN))
def test_the_content_names_the_format_whatever_the_name(tmp_path: Path, suffix: str) -> None:
    # GIVEN python-can's file renamed to something without a suffix
    written = tmp_path / f"x.{suffix}"
    write_with_python_can(written)
    path = written.rename(tmp_path / "capture")
    # WHEN read THEN its content names the format
    stats = CaptureStats()
    assert len(list(read_capture(path, stats=stats))) == 3
    assert stats.format == PYTHON_CAN[suffix]


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
    with pytest.raises(CaptureError, match="is a directory"):
        list(read_capture(tmp_path))
    (tmp_path / "empty.log").write_text("\n\n")
    with pytest.raises(CaptureError, match="empty"):
        list(read_capture(tmp_path / "empty.log"))


HOSTILE_TS = ["inf", "-inf", "nan", "1e400", "9" * 400, "-" + "9" * 400, "99999999999", "-99999999999"]


@pytest.mark.parametrize("ts", HOSTILE_TS, ids=["inf", "-inf", "nan", "1e400", "400 digits", "-400 digits",
                                               "1e11", "-1e11"])
def test_a_timestamp_that_is_no_time_is_a_bad_line_not_a_crash(tmp_path: Path, ts: str) -> None:
    # GIVEN each own format with its second frame's timestamp replaced (units: s, s, s, µs, ms, s)
    scaled = {"crtd": ts, "candump-l": ts, "canhacker-trc": ts.replace(".", ","),
              "gvret-csv": ts + "000000" if ts.lstrip("-").isdigit() else ts,
              "parserflags": ts + "000" if ts.lstrip("-").isdigit() else ts}
    lines = {"candump-l": f"({scaled['candump-l']}) can0 55B#E9C00000E1401214\n",
             "crtd": f"{scaled['crtd']} 2R11 55B e9 c0 00 00 e1 40 12 14\n",
             "gvret-csv": f"{scaled['gvret-csv']},0000055B,false,Rx,0,8,E9,C0,00,00,E1,40,12,14,\r\n",
             "parserflags": f"1\t0\t1\tRX\t{scaled['parserflags']}\t\t0x0000055b\t8\t0xe9 c0 00 00 e1 40 12 14\t\n",
             "canhacker-trc": f"{scaled['canhacker-trc']}\t2\t00000004\t55B\t8\tE9 C0 00 00 E1 40 12 14\t\t\t\r"}
    for name, bad in lines.items():
        head = SAMPLES[name].splitlines(keepends=True)
        path = tmp_path / f"{name}.txt"
        path.write_text("".join(head[:-1]) + bad)
        # WHEN read THEN that line is counted as unreadable, the first frame stays
        stats = CaptureStats()
        assert [f.can_id for f in read_capture(path, stats=stats)] == [0x1DB], name
        assert stats.bad_lines == 1 and f"{path}:{len(head)}: skipped" in stats.first_bad, (name, stats.first_bad)
    # AND a negative timestamp within the range (a SavvyCAN origin) is still a time
    path = tmp_path / "neg.log"
    path.write_text("(-1725172529.967471) can0 1DB#EEC0C3EA00F7619B\n")
    assert [f.ts for f in read_capture(path)] == [-1725172529.967471]


@pytest.mark.parametrize("name", ["candump-l", "crtd", "asc"])
def test_a_line_longer_than_64_kib_is_a_broken_file_named_by_line(tmp_path: Path, name: str) -> None:
    # GIVEN a capture whose third line is 100 KiB of digits (text parsed here, or by python-can's ASC reader)
    if name == "asc":
        write_with_python_can(tmp_path / "x.asc")
        head = (tmp_path / "x.asc").read_text().splitlines(keepends=True)
    else:
        head = SAMPLES[name].splitlines(keepends=True)
    path = tmp_path / f"x-{name}.txt"
    path.write_text("".join(head[:2]) + "7" * (100 * 1024) + "\n" + "".join(head[2:]))
    # WHEN read THEN CaptureError names the file and line 3, not an endless read
    with pytest.raises(CaptureError, match=r"x-.*\.txt:3: line longer than 64 KiB"):
        list(read_capture(path))
    # AND a long line that is not too long is only a bad line
    path.write_text("".join(head[:2]) + "7" * (60 * 1024) + "\n" + "".join(head[2:]))
    stats = CaptureStats()
    if name != "asc":
        assert len(list(read_capture(path, stats=stats))) == 2 and stats.bad_lines == 1


def test_python_can_reader_failures_are_capture_errors_naming_the_format(tmp_path: Path) -> None:
    # GIVEN a BLF whose compressed container is damaged
    path = tmp_path / "x.blf"
    write_with_python_can(path, ids=tuple(range(0x100, 0x180)))
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    # WHEN read THEN one CaptureError names the file, the format and the library's message, chained
    with pytest.raises(CaptureError, match=r"x\.blf: Vector BLF: python-can's reader stopped after 0 messages: "
                                           r"zlib\.error: Error -3") as caught:
        list(read_capture(path))
    assert caught.value.__cause__ is not None
    # AND a .db that is no database says so
    path = tmp_path / "x.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(200))
    with pytest.raises(CaptureError, match=r"x\.db: python-can SQLite: .*sqlite3\.DatabaseError"):
        list(read_capture(path))


def test_python_can_warnings_are_counted_bad_lines_not_log_lines(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a PCAN TRC with a line python-can cannot split into columns (it logs a warning and goes on)
    path = tmp_path / "x.trc"
    write_with_python_can(path)
    path.write_text(path.read_text() + "      3\n")
    # WHEN read THEN the warning is a counted bad line and nothing reaches the log at WARNING
    stats = CaptureStats()
    with caplog.at_level(logging.WARNING):
        assert len(list(read_capture(path, stats=stats))) == 3
    assert stats.bad_lines == 1 and "can.io.trc" in stats.first_bad
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_gvret_csv_without_its_header_is_still_gvret(tmp_path: Path) -> None:
    for name in ("gvret-csv", "gvret-csv-nodir"):
        path = tmp_path / f"{name}.csv"
        path.write_text("".join(SAMPLES[name].splitlines(keepends=True)[1:]))
        stats = CaptureStats()
        assert [f.can_id for f in read_capture(path, stats=stats)] == [0x1DB, 0x55B], name
        assert stats.format == "gvret-csv" and stats.bad_lines == 0


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
