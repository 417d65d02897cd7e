"""The ingest's PostgreSQL store on a real PostgreSQL: migrations (twice, and two workers at once), one
transaction per batch, each (dev, ep, seq) once, conflicts kept as rejections, the latest passport per
battery, the chain state, ``ingest --check`` on gaps and breaks, and a database that goes away."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.adapters.postgres import PostgresStore
from gateway.core.chainverify import check_envelope
from gateway.core.signing import Signer
from gateway.errors import StoreError
from gateway.model import ChainPosition, Received
from gateway.sim.fleetstack import LocalPostgres

pytestmark = pytest.mark.slow


def envelopes(key: ec.EllipticCurvePrivateKey, kinds: list[str], *, dev: str = "gw-00000001",
              chain: ChainPosition | None = None) -> list[bytes]:
    chain, signer, out = chain or ChainPosition(), Signer(key), []
    for i, kind in enumerate(kinds):
        body: dict[str, Any] = {"v": 1, "kind": kind, "dev": dev, **chain.header(), "ts": 1_700_000_000_000 + i,
                                "sw": "t", "bat": "pack-1"}
        body.update({"m": {"soc_pct": 50.0 + i}} if kind == "reading" else {"doc": {"n": i}, "ext": {}})
        env = signer.sign(body)
        chain = chain.after(env)
        out.append(env)
    return out


def received(key: ec.EllipticCurvePrivateKey, envs: list[bytes], dev: str = "gw-00000001") -> list[Received]:
    out = []
    for env in envs:
        c = check_envelope(env, {dev: key.public_key()}.get)
        readings = ((c.seq, c.payload["ts"], c.payload["m"]),) if c.kind == "reading" else ()
        out.append(Received(f"bp/v1/{dev}/{'reading' if c.kind == 'reading' else c.kind}", env, c, dev=dev,
                            readings=readings))
    return out


def check(db: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "ingest", "--db", db, "--check"],
                          capture_output=True, text=True, timeout=60)


def test_migrations_apply_once_even_when_workers_start_together(db: str) -> None:
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(PostgresStore(db).migrate())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(map(len, results)) == [0, 0, 0, 1] and results  # one applied it, three found it applied
    assert PostgresStore(db).migrate() == []
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT version, name FROM schema_migrations").fetchall() == [(1, "0001_initial.sql")]


def test_a_batch_stored_twice_is_stored_once_and_a_conflict_is_a_rejection(
        db: str, key: ec.EllipticCurvePrivateKey) -> None:
    store = PostgresStore(db)
    store.migrate()
    batch = received(key, envelopes(key, ["reading", "reading", "passport", "reading"]))
    first = store.store(batch)
    again = store.store(batch + batch[:1])  # redelivered, and one twice within a batch
    assert (first.stored, first.duplicates, again.stored, again.duplicates) == (4, 0, 0, 5)
    forked = received(key, envelopes(key, ["reading"], chain=ChainPosition(1, 1, b"\x01" * 32)))  # another seq 2
    result = store.store(forked)
    assert result.rejected == 1 and "gw-00000001 ep 1 seq 2 overlaps sequence numbers stored from another" in \
        result.problems[0][1]
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (4,)
        assert conn.execute("SELECT seq, m->>'soc_pct' FROM readings ORDER BY seq").fetchall() == \
            [(1, "50.0"), (2, "51.0"), (4, "53.0")]
        assert conn.execute("SELECT battery, seq FROM passports").fetchall() == [("pack-1", 3)]
        assert conn.execute("SELECT received, max_seq FROM chain_state").fetchall() == [(4, 4)]
        assert conn.execute("SELECT count(*) FROM rejections").fetchone() == (1,)
    assert store.store(forked).rejected == 1  # the same rejection again is stored once
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM rejections").fetchone() == (1,)


def test_an_older_passport_does_not_replace_the_latest(db: str, key: ec.EllipticCurvePrivateKey) -> None:
    store = PostgresStore(db)
    store.migrate()
    older, newer = received(key, envelopes(key, ["passport", "passport"]))
    store.store([newer])
    store.store([older])  # arrives late (another worker, a redelivery)
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT seq FROM passports WHERE battery = 'pack-1'").fetchone() == (2,)


def test_check_names_the_gaps_and_the_breaks_per_device(db: str, key: ec.EllipticCurvePrivateKey) -> None:
    store = PostgresStore(db)
    store.migrate()
    whole = received(key, envelopes(key, ["reading"] * 5))
    store.store(whole)
    assert check(db).returncode == 0
    other = ec.generate_private_key(ec.SECP256R1())
    gappy = received(other, envelopes(other, ["reading"] * 6, dev="gw-00000002"), dev="gw-00000002")
    store.store([gappy[0], gappy[1], gappy[4], gappy[5]])  # 3 and 4 never came
    # a device that lost its state without a new epoch: seq 6 restarts from a stale prev
    broken = received(key, envelopes(key, ["reading"], chain=ChainPosition(1, 5, b"\x07" * 32)))
    store.store(broken)
    out = check(db)
    assert out.returncode == 1
    assert "gw-00000001 epoch 1: 6 messages, seq 1..6; none missing; CHAIN BROKEN before seq 6" in out.stdout
    assert "gw-00000002 epoch 1: 4 messages, seq 1..6; missing 3-4" in out.stdout
    assert out.stdout.splitlines()[-1] == \
        "ingest: 2 devices, 10 envelopes stored, 2 sequence numbers missing, 1 chain breaks, 0 conflicts, 0 rejected"


def test_a_database_that_goes_away_refuses_the_batch_whole_and_takes_it_when_back(
        key: ec.EllipticCurvePrivateKey) -> None:
    with LocalPostgres() as pg:
        store = PostgresStore(pg.dsn, connect_timeout_s=2)
        store.migrate()
        batch = received(key, envelopes(key, ["reading"] * 3))
        store.store(batch[:1])
        pg.kill()
        with pytest.raises(StoreError, match=r"did not take a batch of 2|cannot connect"):
            store.store(batch[1:])
        pg.start()
        assert store.store(batch[1:]).stored == 2  # reconnects
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM messages").fetchone() == (3,)


def test_an_envelope_inside_a_stored_batchs_range_is_a_conflict_and_check_fails(
        db: str, key: ec.EllipticCurvePrivateKey) -> None:
    from gateway.core.passport import build_batch

    store = PostgresStore(db)
    store.migrate()
    rows = [(1_700_000_000.0 + i, {"soc_pct": 50.0 + i}) for i in range(5)]
    batch_env = Signer(key).sign(build_batch(rows, device_id="gw-00000001", chain=ChainPosition().header(), sw="t",
                                             bat=None))
    c = check_envelope(batch_env, {"gw-00000001": key.public_key()}.get)
    readings = tuple((c.seq + i, c.payload["ts"], {"soc_pct": 50.0 + i}) for i in range(5))
    assert store.store([Received("bp/v1/gw-00000001/reading", batch_env, c, dev=c.dev, readings=readings)]).stored == 1
    # a different reading the device signed for seq 3, inside the batch's 1..5
    fork = received(key, envelopes(key, ["reading"], chain=ChainPosition(1, 2, b"\x02" * 32)))
    result = store.store(fork)
    assert result.stored == 0 and result.rejected == 1 and "overlaps sequence numbers" in result.problems[0][1]
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (5,)
        assert conn.execute("SELECT conflict FROM rejections").fetchall() == [(True,)]
    out = check(db)
    assert out.returncode == 1 and "gw-00000001 (signed): 1 rejected, 1 conflicts" in out.stdout


def test_junk_claiming_a_device_is_listed_but_does_not_fail_the_check(db: str, key: ec.EllipticCurvePrivateKey) -> None:
    store = PostgresStore(db)
    store.migrate()
    store.store(received(key, envelopes(key, ["reading"] * 2)))
    forged = "gw-00000001\ningest: 0 devices"  # printable() by the worker before it gets here
    store.store([Received("bp/v1/gw-00000001/reading", b"junk", reason="signature does not verify",
                          dev=forged.replace("\n", "\\x0a"))])
    out = check(db)
    assert out.returncode == 0, out.stdout
    assert "claims gw-00000001\\x0aingest: 0 devices: 1 rejected" in out.stdout
    assert out.stdout.count("\n") == 3  # one line per chain, per claimed device, and the summary


def test_a_passport_from_the_future_does_not_pin_a_batterys_row(db: str, key: ec.EllipticCurvePrivateKey) -> None:
    store = PostgresStore(db)
    store.migrate()
    other = ec.generate_private_key(ec.SECP256R1())

    def passport(k: ec.EllipticCurvePrivateKey, dev: str, ts: int) -> Received:
        env = Signer(k).sign({"v": 1, "kind": "passport", "dev": dev, **ChainPosition().header(), "ts": ts,
                              "sw": "t", "bat": "pack-1", "doc": {}, "ext": {}})
        c = check_envelope(env, {dev: k.public_key()}.get)
        return Received(f"bp/v1/{dev}/passport", env, c, dev=dev)

    store.store([passport(other, "gw-0000000a", 253_402_300_799_000)])  # signed "9999-12-31" by another device
    store.store([passport(key, "gw-00000001", int(time.time() * 1000))])  # the pack's own car, now
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT dev FROM passports WHERE battery = 'pack-1' AND named").fetchone() == \
            ("gw-00000001",)
