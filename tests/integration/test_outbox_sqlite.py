"""The SQLite outbox on disk: atomic chain + message, epochs after lost state, thinning, full and
read-only disks, one process per state directory."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from gateway.adapters.sqlite_outbox import SqliteOutbox
from gateway.errors import StateError
from gateway.model import ChainPosition, Counters, OutgoingMessage


def message(seq: int, *, kind: str = "reading", ts_ms: int = 0, size: int = 300, ep: int = 1) -> OutgoingMessage:
    return OutgoingMessage(topic=kind, payload=os.urandom(size), retain=kind == "passport", kind=kind, seq=seq, ep=ep,
                           body={"ts": ts_ms or seq * 1000})


def fill(store: SqliteOutbox, n: int, *, start: int = 1, **kw: object) -> ChainPosition:
    chain = ChainPosition()
    for seq in range(start, start + n):
        chain = ChainPosition(1, seq)
        store.put(message(seq, **kw), chain=chain, counters=Counters())  # type: ignore[arg-type]
    return chain


def open_store(path: Path, **kw: object) -> SqliteOutbox:
    store = SqliteOutbox(path, **kw)  # type: ignore[arg-type]
    store.load()
    return store


def test_first_start_is_epoch_one_and_restart_continues(tmp_path: Path) -> None:
    store = SqliteOutbox(tmp_path / "s")
    chain, counters = store.load()
    assert (chain.ep, chain.seq) == (1, 0) and counters == Counters()
    store.put(message(41), chain=ChainPosition(1, 41, b"\x07" * 32), counters=Counters(ah_charged=12.5))
    store.close()
    again = SqliteOutbox(tmp_path / "s")
    chain, counters = again.load()
    assert (chain.ep, chain.seq, chain.prev) == (1, 41, b"\x07" * 32) and counters.ah_charged == 12.5
    assert [r.message.seq for r in again.oldest(10)] == [41]
    again.close()


def test_the_same_ep_seq_can_never_hold_two_messages(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put(message(1), chain=ChainPosition(1, 1), counters=Counters())
    with pytest.raises(StateError, match="UNIQUE"):
        store.put(message(1), chain=ChainPosition(1, 1), counters=Counters())
    assert store.count() == 1
    store.close()


@pytest.mark.parametrize("damage", ["garbage", "truncate", "delete"])
def test_lost_state_starts_the_next_epoch_and_says_why(tmp_path: Path, damage: str) -> None:
    store = open_store(tmp_path)
    store.put(message(10, ep=2), chain=ChainPosition(2, 10, b"\x01" * 32), counters=Counters(ah_charged=5.0))
    store.close()
    db = tmp_path / "state.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if damage == "garbage":
        db.write_bytes(os.urandom(4096))
    elif damage == "truncate":
        db.write_bytes(db.read_bytes()[:100])
    else:
        db.unlink()
    store = SqliteOutbox(tmp_path)
    chain, counters = store.load()
    assert (chain.ep, chain.seq, chain.prev) == (3, 0, bytes(32)) and counters == Counters()
    assert store.new_epoch_reason
    store.close()


def test_acknowledged_rows_are_deleted_oldest_first_order_kept(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    fill(store, 5)
    rows = store.oldest(3)
    assert [r.message.seq for r in rows] == [1, 2, 3]
    assert [r.message.seq for r in store.oldest(3, exclude={rows[0].id})] == [2, 3, 4]
    store.delete([rows[0].id, rows[1].id])
    assert [r.message.seq for r in store.oldest(10)] == [3, 4, 5]
    store.close()


def test_over_the_cap_readings_are_thinned_but_passports_kept(tmp_path: Path) -> None:
    store = open_store(tmp_path, max_bytes=200_000, thin_bucket_s=10.0)
    for seq in range(1, 2001):  # one reading per second, a passport every 100
        kind = "passport" if seq % 100 == 0 else "reading"
        store.put(message(seq, kind=kind, ts_ms=seq * 1000, size=200), chain=ChainPosition(1, seq), counters=Counters())
    assert store.used_bytes() <= 200_000 + 64 * 1024  # the cap, plus the pages of one transaction
    kinds = [r.message.kind for r in store.oldest(5000)]
    assert kinds.count("passport") == 20
    thinned = store.take_thinned()
    assert thinned > 1000 and store.take_thinned() == 0
    assert len(kinds) + thinned == 2000
    store.close()


def test_a_full_disk_thins_and_then_refuses_without_advancing(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    fill(store, 50, size=2000)
    db = sqlite3.connect(tmp_path / "state.db")
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    store._conn().execute(f"PRAGMA max_page_count = {pages}")  # the disk is full now
    # room made by thinning old readings
    store.put(message(51, size=2000), chain=ChainPosition(1, 51), counters=Counters())
    assert store.take_thinned() > 0
    for seq in range(52, 400):  # keep writing big passports: nothing may be thinned, so it fails at last
        try:
            store.put(message(seq, kind="passport", size=4000), chain=ChainPosition(1, seq), counters=Counters())
        except StateError as exc:
            assert "full" in str(exc)
            break
    else:
        pytest.fail("a full disk was never reported")
    store.close()


def test_a_read_only_database_is_a_state_error(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store._conn().execute("PRAGMA query_only = 1")
    with pytest.raises(StateError, match=r"state\.db"):
        store.put(message(1), chain=ChainPosition(1, 1), counters=Counters())
    store.close()


def test_a_second_process_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    first = SqliteOutbox(tmp_path)
    with pytest.raises(StateError, match="in use by another battery-gateway process"):
        SqliteOutbox(tmp_path)
    first.close()
    SqliteOutbox(tmp_path).close()


def test_unusable_state_dir_is_a_state_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StateError, match=r"device\.state_dir"):
        SqliteOutbox(blocker / "state")


def test_saving_the_state_never_moves_the_stored_position_back(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    fill(store, 10)
    store.save(ChainPosition(1, 5), Counters())  # a shutdown with a stale position
    store.close()
    again = SqliteOutbox(tmp_path)
    chain, _ = again.load()
    assert chain.seq == 10
    again.close()


def test_batched_readings_are_thinned_under_the_cap_like_single_ones(tmp_path: Path) -> None:
    # GIVEN [publish] batch = 10 and a small disk cap
    store = open_store(tmp_path, max_bytes=200_000, thin_bucket_s=10.0)
    for i in range(400):  # batches of 10 readings, one every 10 s; a passport every 40 batches
        seq = 1 + i * 10
        kind = "passport" if i % 40 == 39 else "batch"
        msg = OutgoingMessage(topic="reading" if kind == "batch" else kind, payload=os.urandom(1200),
                              retain=kind == "passport", kind=kind, seq=seq, ep=1, body={"ts": i * 10_000},
                              readings=10 if kind == "batch" else 1)
        store.put(msg, chain=ChainPosition(1, seq + 9), counters=Counters())  # WHEN it fills: no StateError
    # THEN old batches were thinned, passports kept, and the count is in readings
    assert store.used_bytes() <= 200_000 + 64 * 1024
    kinds = [r.message.kind for r in store.oldest(5000)]
    assert kinds.count("passport") == 10
    thinned = store.take_thinned()
    assert thinned > 0 and thinned % 10 == 0
    store.close()


def test_a_schema_1_database_is_upgraded_in_place_not_thrown_away(tmp_path: Path) -> None:
    # GIVEN the state of a device running the previous release (schema 1, no readings column)
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript("""
        CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
        CREATE TABLE chain (id INTEGER PRIMARY KEY CHECK (id = 1), ep INTEGER NOT NULL, seq INTEGER NOT NULL,
            prev BLOB NOT NULL, counters TEXT NOT NULL);
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, ep INTEGER NOT NULL, seq INTEGER NOT NULL,
            kind TEXT NOT NULL, topic TEXT NOT NULL, retain INTEGER NOT NULL, ts INTEGER NOT NULL,
            payload BLOB NOT NULL, UNIQUE (ep, seq));
        INSERT INTO meta VALUES ('version', '1');
        INSERT INTO outbox (ep, seq, kind, topic, retain, ts, payload) VALUES (3, 7, 'reading', 'reading', 0, 1, x'00');
    """)
    db.execute("INSERT INTO chain VALUES (1, 3, 7, ?, ?)", (b"\x05" * 32, json.dumps(Counters().to_dict())))
    db.commit()
    db.close()
    (tmp_path / "epoch").write_text("3\n")
    # WHEN the new release opens it THEN the chain continues in the same epoch and the row is still there
    store = SqliteOutbox(tmp_path)
    chain, _ = store.load()
    assert (chain.ep, chain.seq) == (3, 7) and store.new_epoch_reason == ""
    assert [r.message.readings for r in store.oldest(10)] == [1]
    store.close()
