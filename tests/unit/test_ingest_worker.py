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


def signed(key: ec.EllipticCurvePrivateKey, **changes: object) -> bytes:
    body = {"v": 1, "kind": "reading", "dev": "gw-1", **ChainPosition().header(), "ts": 1, "sw": "t", "bat": None,
            "m": {"soc_pct": 50.0}}
    return Signer(key).sign({**body, **changes})


@pytest.mark.parametrize(("changes", "why"), [
    ({"ts": 10**20}, "not a time in milliseconds"),
    ({"ts": -1}, "not a time in milliseconds"),
    ({"seq": 2**63}, "out of range"),
    ({"ep": 0}, "out of range"),
    ({"m": {"soc_pct": float("nan")}}, "cannot be stored: soc_pct: number nan"),
    ({"m": {"soc_pct": float("inf")}}, "number inf"),
    ({"m": {"note": "a\x00b"}}, "text with NUL"),
    ({"m": {"big": 10**400}}, "out of range"),
    ({"m": [1, 2]}, "measurements are not a map"),
    ({"bat": {"a": 1}}, "is not a pack id"),
    ({"bat": "p\x00"}, "is not a pack id"),
    ({"kind": "batch", "n": 1, "cols": ["soc_pct"], "res": [0.01], "rows": [[0, 5000]] * 5}, "must carry 1 rows"),
    ({"kind": "batch", "n": 1, "cols": [1], "res": [0.01], "rows": [[0, 5000]]}, "unreadable"),
    ({"kind": "batch", "n": 1, "cols": ["x"], "res": [1.0], "rows": [[10**20, 1]]}, "a reading's time"),
    ({"kind": "batch", "n": 1, "cols": ["x"], "res": [1.0], "rows": [[0, 10**400]]}, "unreadable"),
])
def test_a_signed_payload_no_database_could_hold_is_a_rejection_not_a_crash(
        key: ec.EllipticCurvePrivateKey, changes: dict[str, object], why: str) -> None:
    store = FakeStore()
    source = FakeSource([on_topic([signed(key, **changes), signed(key, seq=2, prev=b"\x01" * 32)])])
    worker = IngestWorker(source, store, {"gw-1": key.public_key()}.get)
    assert worker.run_once() == 2 and len(source.acked) == 2
    [[bad, good]] = store.batches
    assert bad.checked is None and why in bad.reason and good.checked is not None


@pytest.mark.parametrize("dev", ["gw-1\ningest: 0 devices", "x" * 300, "../etc/passwd", ""])
def test_a_hostile_device_id_is_rejected_and_printed_as_one_line(dev: str) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    env = Signer(attacker).sign({"v": 1, "kind": "reading", "dev": dev, "ep": 1, "seq": 1, "prev": bytes(32),
                                 "ts": 1, "sw": "t", "m": {}})
    store, keys_asked = FakeStore(), []
    worker = IngestWorker(FakeSource([on_topic([env], dev="gw-1")]), store, lambda d: keys_asked.append(d))
    worker.run_once()
    [[r]] = store.batches
    assert r.checked is None and "is not a device id" in r.reason and keys_asked == []
    assert "\n" not in r.reason and (r.dev is None or ("\n" not in r.dev and len(r.dev) <= 70))


class DataRefusingStore(FakeStore):
    """Refuses (as a database refuses a value) any batch holding ``poison``."""

    def __init__(self, poison: bytes) -> None:
        super().__init__()
        self.poison = poison

    def store(self, batch: list[Received]) -> StoreResult:
        if any(r.envelope == self.poison and r.checked is not None for r in batch):
            raise StoreError("ingest: the database refused a batch: value out of range", refused_data=True)
        return super().store(batch)


def test_a_message_the_database_refuses_alone_is_rejected_and_the_rest_is_stored(
        key: ec.EllipticCurvePrivateKey) -> None:
    envs = stream(key, 4)
    store = DataRefusingStore(envs[1])
    source = FakeSource([on_topic(envs)])
    worker = IngestWorker(source, store, {"gw-1": key.public_key()}.get)
    assert worker.run_once() == 4 and len(source.acked) == 4
    stored = [r.envelope for b in store.batches for r in b if r.checked is not None]
    rejected = [r for b in store.batches for r in b if r.checked is None]
    assert stored == [envs[0], envs[2], envs[3]]
    assert [r.envelope for r in rejected] == [envs[1]] and "the database refused it" in rejected[0].reason
    assert worker.totals.line() == "3 stored, 0 duplicates dropped, 1 rejected in 1 batches"
