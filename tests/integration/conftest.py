"""Fixtures of the integration tests: the daemon rig, a subscriber (tests/rig.py has the helpers) and a PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.sim.broker import LocalBroker
from gateway.sim.fleetstack import LocalPostgres, find_postgres_bin
from tests.rig import Rig, Subscriber, new_rig


@pytest.fixture
def rig(tmp_path: Path, broker: LocalBroker) -> Rig:
    return new_rig(tmp_path, broker.port)


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
