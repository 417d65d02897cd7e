"""COSE_Sign1 ES256 envelopes: exact structure, verification, tamper detection, hash chain."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.signing import Signer, key_id, verify_envelope
from gateway.errors import EnvelopeError
from gateway.model import ZERO_HASH, ChainPosition

PAYLOAD = {"v": 1, "kind": "reading", "dev": "gw-1", "ep": 1, "seq": 1, "prev": ZERO_HASH, "ts": 1700000000000,
           "sw": "t", "bat": None, "m": {"soc_pct": 93.5, "pack_a": -69.0}}


def test_envelope_has_the_contract_structure(key: ec.EllipticCurvePrivateKey) -> None:
    env = Signer(key).sign(PAYLOAD)
    tag = cbor2.loads(env)
    assert isinstance(tag, cbor2.CBORTag) and tag.tag == 18
    protected, unprotected, body, sig = tag.value
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert cbor2.loads(protected) == {1: -7, 4: hashlib.sha256(spki).digest()[:16]}
    assert dict(unprotected) == {}
    assert len(sig) == 64
    # Independent check of the signature over the RFC 9052 Sig_structure
    sig_structure = cbor2.dumps(["Signature1", protected, b"", body])
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.public_key().verify(der, sig_structure, ec.ECDSA(hashes.SHA256()))


def test_payload_is_deterministic_cbor_with_sorted_text_keys(key: ec.EllipticCurvePrivateKey) -> None:
    shuffled = dict(reversed(list(PAYLOAD.items())))
    s = Signer(key)
    body1 = cbor2.loads(s.sign(PAYLOAD)).value[2]
    body2 = cbor2.loads(s.sign(shuffled)).value[2]
    assert body1 == body2
    keys = list(cbor2.loads(body1))
    assert keys == sorted(keys, key=lambda k: (len(k.encode()), k.encode()))


def test_verify_returns_payload(key: ec.EllipticCurvePrivateKey) -> None:
    assert verify_envelope(Signer(key).sign(PAYLOAD), key.public_key()) == PAYLOAD


def test_verify_rejects_another_devices_key(key: ec.EllipticCurvePrivateKey) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(EnvelopeError, match="kid"):
        verify_envelope(Signer(key).sign(PAYLOAD), other.public_key())


def test_verify_rejects_a_changed_payload(key: ec.EllipticCurvePrivateKey) -> None:
    protected, unprotected, _, sig = cbor2.loads(Signer(key).sign(PAYLOAD)).value
    forged = cbor2.dumps({**PAYLOAD, "m": {"soc_pct": 99.0}}, canonical=True)
    env = cbor2.dumps(cbor2.CBORTag(18, [protected, dict(unprotected), forged, sig]))
    with pytest.raises(EnvelopeError, match="signature does not verify"):
        verify_envelope(env, key.public_key())


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_is_rejected(position: int, bit: int) -> None:
    env = bytearray(ENVELOPE)
    env[position % len(env)] ^= 1 << bit
    with pytest.raises(EnvelopeError):
        verify_envelope(bytes(env), KEY.public_key())


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=300))
def test_garbage_is_rejected_cleanly(garbage: bytes) -> None:
    with pytest.raises(EnvelopeError):
        verify_envelope(garbage, KEY.public_key())


def test_a_payload_in_any_key_order_verifies_but_a_key_twice_does_not(key: ec.EllipticCurvePrivateKey) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from gateway.core.signing import _sig_structure

    protected = cbor2.loads(Signer(key).sign(PAYLOAD)).value[0]

    def envelope(body: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(_sig_structure(protected, body), ec.ECDSA(hashes.SHA256())))
        return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, body, r.to_bytes(32, "big") + s.to_bytes(32, "big")]))

    unsorted = cbor2.dumps({"b": 1, "a": 2})  # a standard library need not sort: signed as it is, it verifies
    assert verify_envelope(envelope(unsorted), key.public_key()) == {"a": 2, "b": 1}
    twice = bytes([0xA2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02])  # {"a": 1, "a": 2}: which one is meant?
    with pytest.raises(EnvelopeError, match="appears twice"):
        verify_envelope(envelope(twice), key.public_key())


def test_kid_may_be_in_the_unprotected_header_but_not_in_both(key: ec.EllipticCurvePrivateKey) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from gateway.core.signing import _sig_structure

    body = cbor2.dumps(PAYLOAD, canonical=True)

    def envelope(protected_map: dict[int, object], unprotected: dict[int, object]) -> bytes:
        protected = cbor2.dumps(protected_map)
        r, s = decode_dss_signature(key.sign(_sig_structure(protected, body), ec.ECDSA(hashes.SHA256())))
        return cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, body,
                                              r.to_bytes(32, "big") + s.to_bytes(32, "big")]))

    kid = key_id(key.public_key())
    assert verify_envelope(envelope({1: -7}, {4: kid}), key.public_key())["kind"] == PAYLOAD["kind"]
    assert verify_envelope(envelope({1: -7}, {}), key.public_key())["kind"] == PAYLOAD["kind"]  # the signature decides
    with pytest.raises(EnvelopeError, match="both"):
        verify_envelope(envelope({1: -7, 4: kid}, {4: kid}), key.public_key())
    with pytest.raises(EnvelopeError, match="kid does not match"):
        verify_envelope(envelope({1: -7}, {4: b"someone else"}), key.public_key())
    with pytest.raises(EnvelopeError, match="protected header"):
        verify_envelope(envelope({}, {1: -7, 4: kid}), key.public_key())  # alg must be protected


def test_chain_links_each_envelope_to_the_previous(key: ec.EllipticCurvePrivateKey) -> None:
    chain, signer = ChainPosition(), Signer(key)
    envs = []
    for _ in range(3):
        env = signer.sign({**PAYLOAD, **chain.header()})
        chain = chain.after(env)
        envs.append(env)
    payloads = [verify_envelope(e, key.public_key()) for e in envs]
    assert [p["seq"] for p in payloads] == [1, 2, 3]
    assert payloads[0]["prev"] == bytes(32)
    assert payloads[1]["prev"] == hashlib.sha256(envs[0]).digest()
    assert payloads[2]["prev"] == hashlib.sha256(envs[1]).digest()
    chain = chain.next_epoch()
    assert chain.header() == {"ep": 2, "seq": 1, "prev": bytes(32)}


def test_key_id_is_16_bytes_of_spki_hash(key: ec.EllipticCurvePrivateKey) -> None:
    assert len(key_id(key.public_key())) == 16


KEY = ec.generate_private_key(ec.SECP256R1())
ENVELOPE = Signer(KEY).sign(PAYLOAD)
