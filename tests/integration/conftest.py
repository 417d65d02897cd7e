"""Fixtures of the integration tests: the daemon rig, a subscriber (tests/rig.py has the helpers) and a PostgreSQL."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.adapters.keystore import load_public_key
from gateway.sim.broker import LocalBroker
from gateway.sim.fleetstack import LocalPostgres, find_postgres_bin
from tests.rig import Rig, Subscriber, write_config


@pytest.fixture
def rig(tmp_path: Path, broker: LocalBroker) -> Rig:
    out = subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(tmp_path / "key.pem")],
                         capture_output=True, text=True, check=True)
    assert "BEGIN PUBLIC KEY" in out.stdout and "device id:" in out.stdout
    device = f"gw-test-{random.randint(0, 99999)}"
    can_port = random.randint(40000, 49999)
    config = write_config(tmp_path, device=device, mqtt_port=broker.port, can_port=can_port)
    return Rig(tmp_path, config, device, can_port, load_public_key(tmp_path / "key.pem"))


@pytest.fixture
def sub(rig: Rig, broker: LocalBroker) -> Iterator[Subscriber]:
    s = Subscriber(broker.port, rig.device)
    yield s
    s.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One throw-away PostgreSQL for the session's ingest tests (Debian's binaries, a free port)."""
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL not installed (make setup installs Debian's postgresql)")
    with LocalPostgres() as db:
        yield db


@pytest.fixture
def db(postgres: LocalPostgres) -> str:
    """An empty database for each test (the schema comes from the ingest's migration): its DSN."""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return postgres.dsn
