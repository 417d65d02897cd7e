"""The backend's stream check: signatures, dedup by (dev, ep, seq), conflicts, gaps and chain breaks."""

from __future__ import annotations

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.core.chainverify import ChainVerifier
from gateway.core.signing import Signer
from gateway.model import ChainPosition


def stream(key: ec.EllipticCurvePrivateKey, n: int, *, dev: str = "gw-1", ep: int = 1) -> list[bytes]:
    chain, signer, out = ChainPosition(ep=ep), Signer(key), []
    for _ in range(n):
        env = signer.sign({"v": 1, "kind": "reading", "dev": dev, **chain.header(), "ts": 1, "sw": "t", "bat": None,
                           "m": {"soc_pct": 50.0}})
        chain = chain.after(env)
        out.append(env)
    return out


def verifier(**keys: ec.EllipticCurvePrivateKey) -> ChainVerifier:
    pubs = {dev.replace("_", "-"): k.public_key() for dev, k in keys.items()}
    return ChainVerifier(pubs.get)


def test_an_intact_stream_in_any_order(key: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(gw_1=key)
    envs = stream(key, 6)
    for env in reversed(envs):
        assert v.add(env).status == "accepted"
    lines, intact = v.report()
    assert intact and "seq 1..6; none missing" in lines[0]


def test_duplicates_and_replays_are_ignored_once_each(key: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(gw_1=key)
    envs = stream(key, 3)
    for env in envs + envs[:2]:
        v.add(env)
    assert (v.accepted, v.duplicates, v.rejected) == (3, 2, 0)
    assert v.report()[1]


def test_gaps_are_reported_but_the_chain_is_not_broken(key: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(gw_1=key)
    envs = stream(key, 10)
    for i, env in enumerate(envs):
        if i + 1 not in (3, 4, 8):
            v.add(env)
    lines, intact = v.report()
    assert "missing 3-4, 8" in lines[0] and intact


def test_tampered_forged_and_unknown_are_rejected_with_a_reason(key: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(gw_1=key)
    good = stream(key, 2)
    protected, _, body, sig = cbor2.loads(good[1]).value
    payload = cbor2.loads(body)
    payload["m"]["soc_pct"] = 99.0
    tampered = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, cbor2.dumps(payload, canonical=True), sig]))
    other = ec.generate_private_key(ec.SECP256R1())
    forged = stream(other, 1)[0]  # claims gw-1 ep 1 seq 1, signed by another key
    unknown = stream(other, 1, dev="gw-9")[0]
    v.add(good[0])
    assert "signature does not verify" in v.add(tampered).reason
    assert "kid does not match" in v.add(forged).reason
    assert "no trusted key for device 'gw-9'" in v.add(unknown).reason
    assert v.add(b"\x00garbage").status == "rejected"
    assert v.report()[1] is False  # rejected envelopes make the run fail


def test_a_different_message_for_a_seen_position_is_a_conflict(key: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(gw_1=key)
    first, second = stream(key, 1)[0], stream(key, 1)[0]  # same (dev, ep, seq), different signature
    v.add(first)
    verdict = v.add(second)
    assert verdict.status == "rejected" and "conflict" in verdict.reason


def test_a_broken_chain_is_reported(key: ec.EllipticCurvePrivateKey) -> None:
    v = verifier(gw_1=key)
    a = stream(key, 3)
    b = stream(key, 3)  # another run of the same positions: seq 3 of b does not link to seq 2 of a
    for env in (a[0], a[1], b[2]):
        v.add(env)
    lines, intact = v.report()
    assert not intact and "CHAIN BROKEN before seq 3" in lines[0]


def test_gaps_are_ranges_even_when_a_signed_seq_is_huge() -> None:
    from gateway.core.chainverify import EpochChain

    chain = EpochChain()
    for seq in (1, 2, 5, 10**15):
        chain.add(seq, 1, bytes(32), bytes([seq % 256]) * 32)
    assert chain.missing() == [(3, 4), (6, 10**15 - 1)] and chain.missing_count() == 10**15 - 4
    assert "missing 3-4, 6-999999999999999" in chain.describe("gw-1", 1)


def test_two_envelopes_claiming_one_sequence_number_are_a_conflict() -> None:
    from gateway.core.chainverify import EpochChain

    chain = EpochChain()
    chain.add(1, 5, bytes(32), b"\x01" * 32)  # a batch 1..5
    chain.add(3, 1, b"\x01" * 32, b"\x02" * 32)  # another envelope for 3
    assert chain.conflicts == [3] and "CONFLICT (two envelopes) at seq 3" in chain.describe("gw-1", 1)


def test_nats_subjects_map_back_to_the_mqtt_topics() -> None:
    from gateway.adapters.nats_source import subject_of_topic, topic_of_subject

    assert subject_of_topic("bp/v1/+/reading") == "$MQTT.msgs.bp.v1.*.reading"
    assert subject_of_topic("bp/v1/gw.a/reading") == "$MQTT.msgs.bp.v1.gw//a.reading"  # as nats-server does
    assert topic_of_subject("$MQTT.msgs.bp.v1.gw//a.reading") == "bp/v1/gw.a/reading"
    assert topic_of_subject("$MQTT.msgs.bp.v1.gw-0a1b2c3d.passport") == "bp/v1/gw-0a1b2c3d/passport"
