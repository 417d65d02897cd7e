"""Shared fixtures: paths to ../shared, keys, a real mosquitto, and guards against leaked threads and daemons."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.sim.broker import LocalBroker
from tests.rig import kill_leftover_daemons

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CAN_DATA = SHARED / "can-data"
SCHEMA = (SHARED / "passport-models" / "admin-shell-io-smt-semantic-models"
          / "io.admin-shell.idta.batterypass.product_condition" / "1.0.1" / "gen"
          / "ProductConditionBattery-schema.json")


# Debian's libfaketime (make setup installs it), for tests that move the clock instead of waiting
FAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)


def capture_path(relative: str) -> Path:
    """A real capture from ../shared/can-data, or skip (with the reason) where ../shared is absent."""
    path = CAN_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} not present (../shared/can-data is needed for the real-capture tests)")
    return path


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


# One seed per session for every random generator of the tests (python's `random`, and hypothesis through
# its own --hypothesis-seed): printed in the header and again after the results (`make test` runs pytest -q,
# which has no header), and BGW_TEST_SEED=N repeats a run exactly.
SEED = int(os.environ.get("BGW_TEST_SEED") or random.SystemRandom().randrange(1 << 31))


@pytest.hookimpl(tryfirst=True)  # before hypothesis' own plugin reads the option
def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = SEED


def pytest_report_header() -> str:
    return f"random seed: {SEED} (repeat with BGW_TEST_SEED={SEED})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(pytest_report_header())


@pytest.fixture(autouse=True)
def seeded_random(request: pytest.FixtureRequest) -> None:
    """Each test's `random` starts from the session seed and the test's name: reproducible, and two tests
    (or two runs with different seeds, side by side) do not pick the same ports."""
    random.seed(f"{SEED}:{request.node.nodeid}")


@pytest.fixture(autouse=True)
def no_leaked_daemons() -> Iterator[None]:
    """Kill the daemons a test left running (they would run on for hours), and fail the test for it."""
    yield
    left = kill_leftover_daemons()
    if left:
        pytest.fail(f"test left daemons running (killed): pids {left}")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads behind (paho loops, python-can notifiers, simulators)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"test leaked threads: {[t.name for t in leaked]}")
