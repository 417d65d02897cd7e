"""Mutated captures of every supported format: ``replay`` exits 0 or 2, never a traceback, never a hang.

Each format's capture (a real one from ../shared/can-data cut to its first lines, or one written by
python-can's own writer from real frames) is mutated 20 ways by a seeded generator: bit flips,
truncation, deleted, inserted and duplicated spans, words set to 0xFFFFFFFF, hostile timestamps (inf,
nan, 1e400, 400 digits), a 70 KiB line, a cut header, CR line ends, invalid UTF-8, shuffled lines.
Every mutated file goes through the CLI's ``main`` in this process (280 runs in seconds), and one per
format through a real ``python -m gateway replay``, which must print exactly the same. Exit 2 prints
exactly one stderr line naming the file and the cause; exit 0 prints only the gateway's own lines
(no library's warning).

The seed is printed and named in every failure; ``MUTATION_SEED=n`` repeats another one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import can
import pytest

from gateway.app import cli
from tests.conftest import capture_path

pytestmark = pytest.mark.captures

SEED = int(os.environ.get("MUTATION_SEED", "7081"))
PER_FORMAT = 20
HEAD_LINES = 300
HOSTILE_TS = ("inf", "-inf", "nan", "1e400", "9" * 400, "-" + "9" * 400, "9" * 25, "1" * 5000)
QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # hidden outside tests


@dataclass(frozen=True)
class Base:
    """A format's unmutated capture: where it comes from and where a frame line keeps its timestamp."""

    name: str
    suffix: str
    profile: str
    source: str | None  # a real capture in ../shared/can-data; None: written by python-can here
    ts: str | None = None  # regex with a ``ts`` group; None for binary formats
    ours: bool = True  # parsed by the gateway itself (else by python-can's reader)


BASES = [
    Base("candump-l", ".log", "leaf-aze0", "derived-candump/AZE0w40kWhv2.48.log.candump.log", r"^\((?P<ts>[^)]*)\)"),
    Base("candump-text", ".txt", "leaf-ze1", "dalathegreat-EV-CANlogs/62kWh-Battery-only-EVcan.txt", r"^(?P<ts>)\s"),
    Base("crtd", ".crtd", "leaf-aze0", "dalathegreat-EV-CANlogs/env200-2015-with-40kWh-normal-charge-"
         "coldbattery-nocooling-nobridge.crtd", r"^(?P<ts>\S+) \dR11 "),
    Base("gvret-text", ".txt", "leaf-ze0", "damienmaguire-LeafLogs/leaf_on_wotind_off.txt", r"^(?P<ts>\S+) R11 "),
    Base("gvret-csv", ".csv", "leaf-ze0", "damienmaguire-LeafLogs/pumpbrake5timesinpark.csv", r"^(?P<ts>-?\d+),"),
    Base("gvret-csv-nodir", ".csv", "kia-eniro-64",
         "projectgus-hyundai-kona-ev-can-logs/221210-1-2021-dcan-car-scanner-elm327.csv", r"^(?P<ts>-?\d+),"),
    Base("parserflags", ".log", "leaf-aze0", "dalathegreat-EV-CANlogs/AZE0w40kWhv2.48.log",
         r"^(?:[^\t]*\t){4}(?P<ts>\d+)\t"),
    Base("canhacker-trc", ".trc", "leaf-ze1", "field-captures/santafe-phev-canhacker-trc/"
         "Hyundai phev battery+emulator only on bench.trc", r"^(?P<ts>\d+,\d+)\t"),
    Base("asc", ".asc", "kia-eniro-64", "field-captures/kona64-bms-diag-asc/Main Relay (+) On.asc",
         r"^\s*(?P<ts>\d+\.\d+) ", ours=False),
    Base("python-can-csv", ".csv", "leaf-aze0", None, r"^(?P<ts>[^,]+),0x", ours=False),
    Base("pcan-trc", ".trc", "leaf-aze0", None, r"^\s*\d+\s+(?P<ts>\S+) DT ", ours=False),
    Base("blf", ".blf", "leaf-aze0", None, ours=False),
    Base("mf4", ".mf4", "leaf-aze0", None, ours=False),
    Base("sqlite", ".db", "leaf-aze0", None, ours=False),
]


FRAMES = "derived-candump/AZE0w40kWhv2.48.log.candump.log"  # real frames for the binary formats
FAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
MF4_WRITER = """
import sys, can
with can.LogReader(sys.argv[1]) as reader, can.Logger(sys.argv[2]) as logger:
    for _, message in zip(range(int(sys.argv[3])), reader):
        logger(message)
"""


def write_base(base: Base, directory: Path) -> bytes:
    """The unmutated capture's bytes: a real capture's first lines, or python-can's writer on real frames.

    The same bytes every time: python-can's TRC writer names the file's path (replaced by its name), and
    its MF4 writer stores times relative to its clock, so it runs under libfaketime's frozen clock.
    """
    if base.source is not None:
        return b"".join(capture_path(base.source).read_bytes().splitlines(keepends=True)[:HEAD_LINES])
    frames, path = capture_path(FRAMES), directory / f"base{base.suffix}"
    if base.name == "mf4":
        if FAKETIME is None:
            pytest.skip("Debian's libfaketime is not installed (make setup installs it): the MF4 would differ")
        env = {**os.environ, "LD_PRELOAD": str(FAKETIME), "FAKETIME": "2023-11-14 22:13:20"}
        subprocess.run([sys.executable, "-c", MF4_WRITER, str(frames), str(path), str(HEAD_LINES)], env=env,
                       check=True, timeout=60)
        return path.read_bytes()
    with can.LogReader(str(frames)) as reader, can.Logger(str(path)) as logger:
        for _, message in zip(range(HEAD_LINES), reader, strict=False):
            logger(message)
    return path.read_bytes().replace(str(path).encode(), path.name.encode())


# --- mutations: (bytes, random, base) -> bytes ------------------------------------------------------

def flip_bits(data: bytearray, rng: random.Random, base: Base) -> bytes:
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def flip_header_bits(data: bytearray, rng: random.Random, base: Base) -> bytes:
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(min(len(data), 256))] ^= 1 << rng.randrange(8)
    return bytes(data)


def truncate(data: bytearray, rng: random.Random, base: Base) -> bytes:
    return bytes(data[:rng.randrange(1, len(data))])


def delete_span(data: bytearray, rng: random.Random, base: Base) -> bytes:
    start = rng.randrange(len(data))
    del data[start:start + rng.randint(1, 256)]
    return bytes(data)


def insert_garbage(data: bytearray, rng: random.Random, base: Base) -> bytes:
    at = rng.randrange(len(data))
    data[at:at] = rng.randbytes(rng.randint(1, 64))
    return bytes(data)


def duplicate_span(data: bytearray, rng: random.Random, base: Base) -> bytes:
    start = rng.randrange(len(data))
    span = data[start:start + rng.randint(1, 512)]
    at = rng.randrange(len(data))
    data[at:at] = span
    return bytes(data)


def max_words(data: bytearray, rng: random.Random, base: Base) -> bytes:
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(0, max(1, len(data) - 4), 4)
        data[at:at + 4] = b"\xff\xff\xff\xff"
    return bytes(data)


def zero_span(data: bytearray, rng: random.Random, base: Base) -> bytes:
    start, n = rng.randrange(len(data)), rng.randint(1, 512)
    data[start:start + n] = bytes(len(data[start:start + n]))
    return bytes(data)


def hostile_timestamps(data: bytearray, rng: random.Random, base: Base) -> bytes:
    assert base.ts is not None
    lines = bytes(data).decode("latin-1").splitlines(keepends=True)
    pattern = re.compile(base.ts)
    candidates = [i for i, line in enumerate(lines) if pattern.search(line)]
    # battery frames where there are (candump -l skips other ids before it reads their timestamp)
    candidates = [i for i in candidates if "1DB" in lines[i].upper()] or candidates
    for n, i in enumerate(rng.sample(candidates, min(5, len(candidates)))):
        value = HOSTILE_TS[(n + rng.randrange(len(HOSTILE_TS))) % len(HOSTILE_TS)]
        match = pattern.search(lines[i])
        assert match is not None
        if base.name == "candump-text":  # no timestamp column: give it one
            value = f"({value}) "
        lines[i] = lines[i][:match.start("ts")] + value + lines[i][match.end("ts"):]
    return "".join(lines).encode("latin-1")


def long_line(data: bytearray, rng: random.Random, base: Base) -> bytes:
    lines = bytes(data).splitlines(keepends=True)
    lines.insert(rng.randrange(1, len(lines)), b"7" * (70 * 1024) + b"\n")
    return b"".join(lines)


def cut_header(data: bytearray, rng: random.Random, base: Base) -> bytes:
    return b"".join(bytes(data).splitlines(keepends=True)[rng.randint(1, 3):])


def cr_line_ends(data: bytearray, rng: random.Random, base: Base) -> bytes:
    return b"\r".join(bytes(data).splitlines()) + b"\r"


def invalid_utf8(data: bytearray, rng: random.Random, base: Base) -> bytes:
    at = rng.randrange(len(data))
    data[at:at] = b"\xff\xfe\x00\xc3(" * rng.randint(1, 40)
    return bytes(data)


def shuffle_lines(data: bytearray, rng: random.Random, base: Base) -> bytes:
    lines = bytes(data).splitlines(keepends=True)
    start = rng.randrange(len(lines))
    window = lines[start:start + 20]
    rng.shuffle(window)
    lines[start:start + 20] = window
    return b"".join(lines)


def one_line(data: bytearray, rng: random.Random, base: Base) -> bytes:
    return b" ".join(bytes(data).splitlines())


Mutation = Callable[[bytearray, random.Random, Base], bytes]
BYTES: list[Mutation] = [flip_bits, flip_header_bits, truncate, delete_span, insert_garbage, duplicate_span,
                         max_words, zero_span]
TEXT: list[Mutation] = [hostile_timestamps, long_line, cut_header, cr_line_ends, invalid_utf8, shuffle_lines,
                        one_line, flip_bits, truncate, delete_span, insert_garbage, duplicate_span]


def mutants(base: Base, data: bytes, directory: Path, seed: int = SEED) -> Iterator[tuple[Path, str]]:
    """PER_FORMAT mutated copies of ``data``: every mutation of the format's list in turn, seeded."""
    rng = random.Random(f"{seed}:{base.name}")
    kinds = TEXT if base.ts is not None else BYTES
    for i in range(PER_FORMAT):
        mutate = kinds[i % len(kinds)]
        path = directory / f"{base.name}-{i:02d}-{mutate.__name__}{base.suffix}"
        path.write_bytes(mutate(bytearray(data), rng, base))
        yield path, mutate.__name__


# --- running replay ------------------------------------------------------------------------------

@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM raises in the running replay."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"replay still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def in_process(capfd: pytest.CaptureFixture[str]) -> Iterator[Callable[[Path, str], tuple[int, str, str]]]:
    """``battery-gateway replay`` through the CLI's ``main`` here; python warnings count as stderr lines."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # main() configures the root logger; give pytest's back
    # Handlers libraries made at import time (asammdf has one) hold the stderr of that moment: point them at
    # this test's stderr, as they would print on a real process's.
    loggers = [lg for lg in root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    own = {h: h.stream for lg in loggers for h in lg.handlers if type(h) is logging.StreamHandler}

    def run(path: Path, profile: str) -> tuple[int, str, str]:
        for handler in own:
            handler.stream = sys.stderr  # not setStream: it flushes the stream of a finished test
        with deadline(20), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rc = cli.main(["replay", str(path), "--profile", profile])
        out, err = capfd.readouterr()
        shown = [w for w in caught if not issubclass(w.category, QUIET_WARNINGS)]
        return rc, out, err + "".join(f"{w.category.__name__}: {w.message}\n" for w in shown)

    try:
        yield run
    finally:
        root.handlers[:], root.level = handlers, level
        for handler, stream in own.items():
            handler.stream = stream


def check(rc: int, err: str, path: Path, what: str) -> None:
    """Exit 2: one line, ``error: <file>[:line]: <cause>``. Exit 0: the gateway's own lines, the summary too."""
    assert "Traceback" not in err, what
    lines = err.splitlines()
    if rc == 2:
        assert len(lines) == 1, what
        assert re.fullmatch(rf"error: {re.escape(str(path))}(:\d+)?: \S.{{5,}}", lines[0]), what
    else:
        assert rc == 0, what
        assert all(line.startswith(("replay: ", "WARNING gateway.")) for line in lines), what
        assert any(line.startswith(f"replay: {path} (") for line in lines), what


def unreadable(err: str) -> int:
    match = re.search(r"(\d+) unreadable lines", err)
    return int(match.group(1)) if match else -1


@pytest.mark.parametrize("base", BASES, ids=[b.name for b in BASES])
def test_mutated_capture_exits_0_or_2_with_one_line_naming_file_and_cause(
        base: Base, tmp_path: Path, in_process: Callable[[Path, str], tuple[int, str, str]]) -> None:
    print(f"mutation seed {SEED} (MUTATION_SEED={SEED} repeats it)")
    # GIVEN the format's capture, replayed cleanly
    original = tmp_path / f"original{base.suffix}"
    original.write_bytes(write_base(base, tmp_path))
    rc, _, err = in_process(original, base.profile)
    assert rc == 0 and unreadable(err) == 0, err
    results: dict[Path, tuple[int, str, str]] = {}
    for path, kind in mutants(base, original.read_bytes(), tmp_path):
        # WHEN a mutated copy is replayed
        rc, out, err = in_process(path, base.profile)
        results[path] = (rc, out, err)
        what = f"seed {SEED}, {path.name}: exit {rc}, stderr:\n{err}"
        # THEN exit 0 or 2, one line naming the file and the cause on 2, no traceback ever
        check(rc, err, path, what)
        if kind == "long_line":
            assert rc == 2 and "longer than 64 KiB" in err, what
        if kind == "hostile_timestamps" and base.ours:
            assert rc == 0 and unreadable(err) >= 1, what
        if kind == "cr_line_ends" and base.ours:
            assert rc == 0, what
    # AND a real process prints the same as main() did, for one of them (a failing one if any)
    path = next((p for p, r in results.items() if r[0] == 2), next(iter(results)))
    real = subprocess.run([sys.executable, "-m", "gateway", "replay", str(path), "--profile", base.profile],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (real.returncode, real.stdout, real.stderr) == results[path], f"seed {SEED}, {path.name}"


def test_an_mf4_that_kills_asammdf_is_one_error_line_not_a_dead_process(tmp_path: Path) -> None:
    # GIVEN the MF4 whose flipped bits make asammdf 8.1 segfault in numpy (seed 18, mutation 8)
    mf4 = next(b for b in BASES if b.name == "mf4")
    path, _ = list(mutants(mf4, write_base(mf4, tmp_path), tmp_path, seed=18))[8]
    # WHEN replayed by a real process THEN exit 2 and one line naming the file (the crash happened in a child)
    out = subprocess.run([sys.executable, "-m", "gateway", "replay", str(path)], capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    check(out.returncode, out.stderr, path, f"{path.name}: exit {out.returncode}, stderr:\n{out.stderr}")
    assert out.returncode == 2


def test_the_mutations_are_the_same_for_the_same_seed(tmp_path: Path) -> None:
    data = io.BytesIO()
    data.write(b"(1700000000.000000) can0 1DB#EEC0C3EA00F7619B\n" * 50)
    first = [p.read_bytes() for p, _ in mutants(BASES[0], data.getvalue(), tmp_path)]
    second = [p.read_bytes() for p, _ in mutants(BASES[0], data.getvalue(), tmp_path)]
    assert first == second and len(set(first)) > PER_FORMAT // 2
