"""Chain position and counters survive restarts; lost or corrupt state starts a new epoch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.adapters.state_store import JsonStateStore
from gateway.battery import Counters
from gateway.errors import StateError
from gateway.signing import Chain


def test_first_start_is_epoch_one(tmp_path: Path) -> None:
    chain, counters = JsonStateStore(tmp_path / "s").load()
    assert (chain.ep, chain.seq) == (1, 0) and counters == Counters()


def test_restart_continues_chain_and_counters(tmp_path: Path) -> None:
    store = JsonStateStore(tmp_path)
    store.save(Chain(3, 41, b"\x07" * 32), Counters(ah_charged=12.5))
    store.close()
    chain, counters = JsonStateStore(tmp_path).load()
    assert (chain.ep, chain.seq, chain.prev) == (3, 41, b"\x07" * 32)
    assert counters.ah_charged == 12.5


@pytest.mark.parametrize("damage", ["garbage", "truncate", "delete", "wrong-type"])
def test_lost_state_starts_the_next_epoch(tmp_path: Path, damage: str) -> None:
    store = JsonStateStore(tmp_path)
    store.save(Chain(2, 10, b"\x01" * 32), Counters(ah_charged=5.0))
    store.close()
    path = tmp_path / "state.json"
    if damage == "garbage":
        path.write_bytes(os.urandom(64))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:20])
    elif damage == "delete":
        path.unlink()
    else:
        path.write_text('{"version":1,"ep":"x","seq":1,"prev":"00","counters":{}}')
    fresh = JsonStateStore(tmp_path)
    chain, counters = fresh.load()
    assert (chain.ep, chain.seq, chain.prev) == (3, 0, bytes(32))
    assert counters == Counters()
    assert fresh.new_epoch_reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_state_dir_is_a_state_error(tmp_path: Path) -> None:
    store = JsonStateStore(tmp_path)
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StateError, match=r"device\.state_dir: cannot write"):
            store.save(Chain(), Counters())
    finally:
        tmp_path.chmod(0o700)


def test_unusable_state_dir_is_a_state_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StateError, match=r"device\.state_dir"):
        JsonStateStore(blocker / "state")


def test_a_second_process_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    # Two writers could hand out the same (ep, seq) twice
    first = JsonStateStore(tmp_path)
    with pytest.raises(StateError, match="in use by another battery-gateway process"):
        JsonStateStore(tmp_path)
    first.close()
    JsonStateStore(tmp_path).close()
