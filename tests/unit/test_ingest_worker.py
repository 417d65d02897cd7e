"""One ingest worker's loop with fakes for its two ports (the engine's consumer group and the database):
verdicts per envelope, the topic binding, acknowledgement only after a commit, and a batch the database
refused stored again before anything new is fetched."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.core.passport import build_batch
from gateway.core.signing import Signer
from gateway.errors import StoreError
from gateway.model import ChainPosition, Delivery, Received, StoreResult
from gateway.services.ingest import IngestWorker
from tests.unit.test_chain_verifier import stream


class FakeSource:
    def __init__(self, batches: list[list[Delivery]]) -> None:
        self.batches, self.acked, self.fetches = batches, [], 0

    def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        self.fetches += 1
        return self.batches.pop(0) if self.batches else []

    def ack(self, deliveries: list[Delivery]) -> None:
        self.acked.extend(deliveries)

    def close(self) -> None: ...


class FakeStore:
    def __init__(self, fail: int = 0) -> None:
        self.fail, self.batches = fail, []

    def store(self, batch: list[Received]) -> StoreResult:
        if self.fail:
            self.fail -= 1
            raise StoreError("ingest: the database did not take a batch: connection refused")
        self.batches.append(batch)
        return StoreResult(stored=sum(1 for r in batch if r.checked), rejected=sum(1 for r in batch if not r.checked))

    def close(self) -> None: ...


def on_topic(envs: list[bytes], dev: str = "gw-1", kind: str = "reading") -> list[Delivery]:
    return [Delivery(f"bp/v1/{dev}/{kind}", e, i) for i, e in enumerate(envs)]


def test_verdicts_and_topic_binding(key: ec.EllipticCurvePrivateKey) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    mine, theirs = stream(key, 2), stream(other, 1, dev="gw-2")
    forged = stream(ec.generate_private_key(ec.SECP256R1()), 1)[0]  # claims gw-1, another key
    source = FakeSource([[*on_topic(mine), *on_topic(theirs, dev="gw-1"), *on_topic([forged]),
                          Delivery("bp/v1/gw-1/passport", mine[0]), Delivery("bp/v1/gw-1/reading", b"\x00junk")]])
    store = FakeStore()
    worker = IngestWorker(source, store, {"gw-1": key.public_key(), "gw-2": other.public_key()}.get)
    assert worker.run_once() == 6
    [batch] = store.batches
    assert [r.checked is not None for r in batch] == [True, True, False, False, False, False]
    reasons = [r.reason for r in batch]
    assert "signed by gw-2 was published on bp/v1/gw-1/reading" in reasons[2] and batch[2].dev == "gw-2"
    assert "signed by another key" in reasons[3] and batch[3].dev == "gw-1"
    assert "a reading signed by gw-1 was published on bp/v1/gw-1/passport" in reasons[4]
    assert "COSE_Sign1" in reasons[5] and batch[5].dev is None
    assert batch[0].readings == ((1, 1, {"soc_pct": 50.0}),)
    assert len(source.acked) == 6 and worker.totals.line() == "2 stored, 0 duplicates dropped, 4 rejected in 1 batches"


def test_a_batch_of_readings_is_expanded_with_its_own_sequence_numbers(key: ec.EllipticCurvePrivateKey) -> None:
    rows = [(1000.0 + i, {"soc_pct": 50.0 + i}) for i in range(3)]
    payload = build_batch(rows, device_id="gw-1", chain=ChainPosition().header(), sw="t", bat="pack-1")
    store = FakeStore()
    IngestWorker(FakeSource([on_topic([Signer(key).sign(payload)])]), store, {"gw-1": key.public_key()}.get).run_once()
    [[received]] = store.batches
    assert received.checked is not None and received.checked.n == 3
    assert [(seq, ts) for seq, ts, _ in received.readings] == [(1, 1_000_000), (2, 1_001_000), (3, 1_002_000)]
    assert [m["soc_pct"] for _, _, m in received.readings] == [50.0, 51.0, 52.0]


def test_nothing_is_acknowledged_before_the_commit_and_a_refused_batch_comes_first_again(
        key: ec.EllipticCurvePrivateKey) -> None:
    first, second = on_topic(stream(key, 2)), on_topic(stream(key, 4)[2:])
    source, store = FakeSource([first, second]), FakeStore(fail=2)
    worker = IngestWorker(source, store, {"gw-1": key.public_key()}.get)
    for _ in range(2):
        with pytest.raises(StoreError):
            worker.run_once()
        assert source.acked == [] and source.fetches == 1  # held, not fetched again, not acknowledged
    assert worker.run_once() == 2 and source.acked == first
    assert worker.run_once() == 2 and source.acked == first + second
    assert [[r.envelope for r in b] for b in store.batches] == [[d.payload for d in first], [d.payload for d in second]]
