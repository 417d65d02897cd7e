"""``replay`` on hostile sources, as a real process: pipes, FIFOs, devices, standard input, endless lines.

A FIFO without a writer exits 2 at once; a device behind a capture's name is refused; an endless line
on a stream ends with exit 2 in bounded memory; ``replay -``, ``replay /dev/stdin`` and a process
substitution read a pipe once and lose nothing (the first 16 KiB detection looks at included); the
progress line on a terminal counts bytes read, so no file is read twice for a total.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import can
import pytest

from tests.conftest import capture_path

pytestmark = pytest.mark.captures

CAPTURE = "dalathegreat-EV-CANlogs/AZE0w40kWhv2.48.log"  # 380 KB ParserFlags: far more than a pipe's buffer
PROFILE = ["--profile", "leaf-aze0"]
REPLAY = [sys.executable, "-m", "gateway", "replay"]


def replay(*args: str, stdin: Any = subprocess.DEVNULL, data: bytes | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``battery-gateway replay ARGS`` as a process; ``data`` is written to its standard input, a pipe."""
    if data is not None:
        return subprocess.run([*REPLAY, *args], input=data.decode(), capture_output=True, text=True, timeout=timeout)
    return subprocess.run([*REPLAY, *args], stdin=stdin, capture_output=True, text=True, timeout=timeout)


def one_error_line(out: subprocess.CompletedProcess[str], name: str, cause: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert re.fullmatch(rf"error: {re.escape(name)}(:\d+)?: .*{cause}.*\n", out.stderr), out.stderr


def payloads(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The JSON payloads without ``prev``: each run signs with its own throw-away key."""
    assert out.returncode == 0, out.stderr
    return [{k: v for k, v in json.loads(line).items() if k != "prev"} for line in out.stdout.splitlines()]


def summary(out: subprocess.CompletedProcess[str], name: str) -> str:
    line = next(line for line in out.stderr.splitlines() if line.startswith("replay: ") and "battery frames" in line)
    assert line.startswith(f"replay: {name} ("), line
    return line.removeprefix(f"replay: {name} ")


@pytest.fixture(scope="module")
def from_file() -> tuple[subprocess.CompletedProcess[str], str]:
    path = str(capture_path(CAPTURE))
    return replay(path, *PROFILE, "--json"), path


def test_fifo_without_a_writer_exits_2_at_once(tmp_path: Path) -> None:
    # GIVEN a FIFO nobody writes to, named like a capture
    fifo = tmp_path / "drive.log"
    os.mkfifo(fifo)
    # WHEN replayed THEN it reads as empty: exit 2, one line (the timeout is the hang)
    one_error_line(replay(str(fifo), timeout=30), str(fifo), "empty")


def test_dev_zero_behind_a_log_name_is_refused(tmp_path: Path) -> None:
    # GIVEN /dev/zero (endless, no newline) and /dev/urandom (endless garbage) behind capture names
    for device in ("/dev/zero", "/dev/urandom"):
        link = tmp_path / f"{Path(device).name}.log"
        link.symlink_to(device)
        # WHEN replayed THEN refused as a device, one line
        one_error_line(replay(str(link), timeout=30), str(link), "is a device, not a capture file")


def test_standard_input_may_be_a_device_when_named_as_such() -> None:
    # GIVEN /dev/null as standard input WHEN replay /dev/stdin or - THEN it is read (and empty), not refused
    with open(os.devnull, "rb") as null:
        one_error_line(replay("/dev/stdin", stdin=null), "/dev/stdin", "empty")
    with open(os.devnull, "rb") as null:
        one_error_line(replay("-", stdin=null), "<stdin>", "empty")


def test_a_blf_length_field_below_its_header_does_not_swallow_the_rest(tmp_path: Path) -> None:
    # GIVEN a BLF whose file-header size is smaller than the header itself (python-can then asks its stream
    # for a negative size: "everything"), followed by 8 MB that arrive through a pipe
    blf = tmp_path / "drive.blf"
    with can.BLFWriter(str(blf)) as writer:
        writer.on_message_received(can.Message(arbitration_id=0x1DB, data=bytes(8), timestamp=1.0))
    data = bytearray(blf.read_bytes())
    data[4:8] = (10).to_bytes(4, "little")  # header size 10: less than the 72 bytes of its own fields
    blf.write_bytes(bytes(data) + os.urandom(1 << 23))
    # WHEN replayed from a pipe THEN one line naming the broken field, not the whole stream in memory
    with blf.open("rb") as source:
        cat = subprocess.Popen(["cat"], stdin=source, stdout=subprocess.PIPE)
        assert cat.stdout is not None
        out = replay("-", stdin=cat.stdout)
        cat.stdout.close()
        cat.wait(timeout=30)
    one_error_line(out, "<stdin>", "broken length field")


def test_an_endless_line_on_a_stream_exits_2_in_bounded_memory(tmp_path: Path) -> None:
    # GIVEN a real capture's first lines, then /dev/zero for ever, through a FIFO named .log
    head = tmp_path / "head.log"
    head.write_bytes(b"".join(capture_path(CAPTURE).read_bytes().splitlines(keepends=True)[:50]))
    fifo = tmp_path / "endless.log"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", 'cat "$1" /dev/zero > "$2"', "sh", str(head), str(fifo)],
                              stderr=subprocess.DEVNULL)
    err = tmp_path / "stderr"
    with err.open("w") as err_file:
        reader = subprocess.Popen([*REPLAY, str(fifo), *PROFILE], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=err_file)
        # WHEN replay reads it THEN exit 2 on line 51, one line, and the process stayed small
        _, status, usage = os.wait4(reader.pid, 0)
        reader.returncode = os.waitstatus_to_exitcode(status)
    writer.wait(timeout=30)  # SIGPIPE once the reader is gone
    out = subprocess.CompletedProcess(reader.args, reader.returncode, "", err.read_text())
    one_error_line(out, str(fifo), "line longer than 64 KiB")
    assert f"{fifo}:51:" in out.stderr
    assert usage.ru_maxrss < 400 * 1024, f"max RSS {usage.ru_maxrss} KiB"  # ~110 MiB is the interpreter


def test_replay_dash_reads_the_capture_from_a_pipe_like_the_file(
        from_file: tuple[subprocess.CompletedProcess[str], str]) -> None:
    file_run, path = from_file
    # WHEN the same capture comes through a pipe on standard input
    piped = replay("-", *PROFILE, "--json", data=Path(path).read_bytes())
    # THEN the payloads and the counts are the file's
    assert payloads(piped) == payloads(file_run) and payloads(piped)
    assert summary(piped, "<stdin>") == summary(file_run, path)


def test_dev_stdin_and_a_process_substitution_lose_nothing(
        tmp_path: Path, from_file: tuple[subprocess.CompletedProcess[str], str]) -> None:
    file_run, path = from_file
    # GIVEN the capture through /dev/stdin from a pipe
    stdin_run = replay("/dev/stdin", *PROFILE, "--json", data=Path(path).read_bytes())
    assert payloads(stdin_run) == payloads(file_run)
    assert summary(stdin_run, "/dev/stdin") == summary(file_run, path)
    # AND gzip'ed, through bash's <(zcat ...), the case that lost its first 8 KiB
    gz = tmp_path / "capture.log.gz"
    gz.write_bytes(gzip.compress(Path(path).read_bytes()))
    command = f'exec "$0" -m gateway replay <(gzip -dc "$1") {" ".join(PROFILE)} --json'
    out = subprocess.run(["bash", "-c", command, sys.executable, str(gz)], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    name = re.search(r"replay: (/dev/fd/\d+|/proc/self/fd/\d+) \(", out.stderr)
    assert name is not None, out.stderr
    assert payloads(out) == payloads(file_run)
    assert summary(out, name.group(1)) == summary(file_run, path)


@pytest.mark.parametrize("suffix,label", [(".db", "python-can SQLite"), (".mf4", "ASAM MF4")])
def test_a_seeking_format_on_a_pipe_is_refused_naming_the_format(tmp_path: Path, suffix: str, label: str) -> None:
    # GIVEN python-can's own .db / MF4 file
    path = tmp_path / f"x{suffix}"
    with can.Logger(str(path)) as logger:
        logger(can.Message(timestamp=1700000000.0, arbitration_id=0x1DB, data=bytes(8), is_extended_id=False))
    # WHEN it comes through a pipe THEN one line says the format needs its path
    out = subprocess.run([*REPLAY, "-"], input=path.read_bytes(), capture_output=True, timeout=60)
    text = subprocess.CompletedProcess(out.args, out.returncode, "", out.stderr.decode())
    one_error_line(text, "<stdin>", f"{label} is read by seeking: give the file's path")


def on_a_terminal(*args: str, stdin: Any, timeout_s: float = 60) -> tuple[int, str]:
    """Run replay with stderr on a pseudo-terminal (progress is shown on terminals only); return what it showed."""
    master, slave = os.openpty()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen([*REPLAY, *args], stdin=stdin, stdout=null, stderr=slave)
    os.close(slave)
    shown, deadline = b"", time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the process is gone and closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), shown.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_progress_counts_the_bytes_read_of_a_file_and_never_reads_twice() -> None:
    # GIVEN a 2.5 MB capture WHEN replayed with stderr on a terminal
    path = capture_path("derived-candump/ZE0w24kWhstock.log.candump.log")
    rc, shown = on_a_terminal(str(path), "--profile", "leaf-ze0", stdin=subprocess.DEVNULL)
    # THEN a progress line in MB of the file's size, then the summary
    assert rc == 0, shown
    assert re.search(r"replay: [\d.]+ of 2\.5 MB \(\d+ %\)", shown), shown
    assert "59,966 lines" in shown and "Traceback" not in shown
    # AND through a pipe, whose size nobody knows, no progress and nothing lost
    with path.open("rb") as source:
        cat = subprocess.Popen(["cat"], stdin=source, stdout=subprocess.PIPE)
        assert cat.stdout is not None
        rc, shown = on_a_terminal("-", "--profile", "leaf-ze0", stdin=cat.stdout)
        cat.stdout.close()
        cat.wait(timeout=30)
    assert rc == 0 and " MB (" not in shown and "59,966 lines" in shown, shown
