"""COSE_Sign1 (RFC 9052) envelopes with ES256 and deterministic CBOR payloads.

Owns: the exact bytes of every envelope (CONTRACT §5) and their verification. The chain position a
message takes (``model.ChainPosition``) is kept by the pipeline and stored with the message.
Invariants of what ``Signer`` makes: the protected header is ``{1: -7, 4: kid}``; ``kid`` is the first
16 bytes of SHA-256 over the public key's SubjectPublicKeyInfo DER; the signature is 64-byte r||s over
``["Signature1", protected, h'', payload]``; payload maps are encoded deterministically (RFC 8949
§4.2: sorted keys, shortest forms). Verification is as wide as RFC 9052 allows, so envelopes from
standard COSE libraries verify (``kid`` in the unprotected header, any key order), but never wider:
ES256 in the protected header, the signature over the bytes as received, no map key twice.
The key object is passed in; this module never touches files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ..errors import EnvelopeError

__all__ = ["ALG_ES256", "COSE_SIGN1_TAG", "Envelope", "Signer", "device_id_of", "key_id", "open_envelope",
           "spki_der", "verify_envelope"]

COSE_SIGN1_TAG = 18
ALG_ES256 = -7
_HDR_ALG, _HDR_KID = 1, 4


def spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The key's SubjectPublicKeyInfo in DER (an uncompressed point: 91 bytes for P-256)."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """First 16 bytes of SHA-256 over the SubjectPublicKeyInfo DER."""
    return hashlib.sha256(spki_der(public_key)).digest()[:16]


def device_id_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """The device id ``keygen`` gives a new key: ``gw-`` and the first 4 bytes of its key id in hex."""
    return f"gw-{key_id(public_key)[:4].hex()}"


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload], canonical=True)


class Signer:
    """Signs payload maps into tagged COSE_Sign1 bytes with one P-256 key."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError("ES256 needs a P-256 key")
        self._key = private_key
        self.kid = key_id(private_key.public_key())
        self._protected = cbor2.dumps({_HDR_ALG: ALG_ES256, _HDR_KID: self.kid}, canonical=True)

    def sign(self, payload: dict[str, Any]) -> bytes:
        """Encode ``payload`` deterministically and wrap it in a signed, tagged COSE_Sign1."""
        body = cbor2.dumps(payload, canonical=True)
        der = self._key.sign(_sig_structure(self._protected, body), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [self._protected, {}, body, signature]), canonical=True)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed COSE_Sign1, signature not checked yet. ``body`` is the payload's bytes as signed."""

    protected_raw: bytes
    protected: Mapping[Any, Any]
    unprotected: Mapping[Any, Any]
    payload: dict[str, Any]
    body: bytes
    signature: bytes


def open_envelope(envelope: bytes) -> Envelope:
    """Parse a COSE_Sign1 without checking the signature.

    Any valid encoding is read (a standard COSE library need not sort its map keys), but a map with a
    key twice is refused: two readers could take different values from the same signed bytes.

    Raises:
        EnvelopeError: not CBOR, not tag 18, wrong structure, a duplicate map key, or a payload that is
            not a text-keyed map.
    """
    try:
        obj = cbor2.loads(envelope)
    except Exception as exc:  # cbor2 raises CBORDecodeError and, on garbage, ValueError/TypeError
        raise EnvelopeError(f"not CBOR: {exc}") from exc
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != COSE_SIGN1_TAG:
        raise EnvelopeError("not a tagged COSE_Sign1 (CBOR tag 18)")
    parts = obj.value
    # cbor2 may decode a tag's content as an immutable tuple/frozendict: accept any sequence/mapping.
    if not (isinstance(parts, list | tuple) and len(parts) == 4 and isinstance(parts[0], bytes)
            and isinstance(parts[1], Mapping) and isinstance(parts[2], bytes) and isinstance(parts[3], bytes)):
        raise EnvelopeError("COSE_Sign1 must be [protected bstr, unprotected map, payload bstr, signature bstr]")
    protected_raw, unprotected, body, signature = parts
    try:
        for raw in (envelope, protected_raw, body):
            if raw:
                _no_duplicate_keys(raw)
        protected = cbor2.loads(protected_raw) if protected_raw else {}
        payload = cbor2.loads(body)
    except Exception as exc:
        raise EnvelopeError(f"protected header or payload is not CBOR: {exc}") from exc
    if not isinstance(protected, Mapping) or not isinstance(payload, dict):
        raise EnvelopeError("protected header and payload must be CBOR maps")
    if not all(isinstance(k, str) for k in payload):
        raise EnvelopeError("payload keys must be text")
    return Envelope(protected_raw, protected, unprotected, payload, body, signature)


def verify_envelope(envelope: bytes | Envelope, public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """Check an envelope's algorithm, key id and ES256 signature; return its payload.

    ``alg`` must be ES256 in the protected header; ``kid`` may be in either header (RFC 9052 §3.1), not
    both, and when present must name ``public_key``. The signature decides. An envelope already opened
    (to read whose key to check it with) is not parsed again.

    Raises:
        EnvelopeError: saying which check failed.
    """
    env = envelope if isinstance(envelope, Envelope) else open_envelope(envelope)
    if env.protected.get(_HDR_ALG) != ALG_ES256:
        raise EnvelopeError(f"alg {env.protected.get(_HDR_ALG)!r} is not ES256 (-7) in the protected header")
    if _HDR_KID in env.protected and _HDR_KID in env.unprotected:
        raise EnvelopeError("kid is in both the protected and the unprotected header")
    kid = env.protected.get(_HDR_KID, env.unprotected.get(_HDR_KID))
    if kid is not None and kid != key_id(public_key):
        raise EnvelopeError("kid does not match the public key (signed by another key)")
    if len(env.signature) != 64:
        raise EnvelopeError(f"signature is {len(env.signature)} bytes, ES256 needs 64 (r||s)")
    der = encode_dss_signature(int.from_bytes(env.signature[:32], "big"), int.from_bytes(env.signature[32:], "big"))
    try:
        public_key.verify(der, _sig_structure(env.protected_raw, env.body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise EnvelopeError("signature does not verify (payload or header was changed)") from None
    return env.payload


def _no_duplicate_keys(data: bytes) -> None:
    """Raise ValueError when any map in the CBOR item ``data`` has a key twice (cbor2 keeps the last)."""
    pos = _walk(data, 0, 0)
    if pos != len(data):
        raise ValueError("trailing bytes after the CBOR item")


def _head(data: bytes, pos: int) -> tuple[int, int | None, int]:
    """(major type, argument or None for indefinite length, position after the head)."""
    ib = data[pos]
    major, info, pos = ib >> 5, ib & 0x1F, pos + 1
    if info < 24:
        return major, info, pos
    if info == 31:
        return major, None, pos
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if size is None or pos + size > len(data):
        raise ValueError("malformed CBOR head")
    return major, int.from_bytes(data[pos:pos + size], "big"), pos + size


def _walk(data: bytes, pos: int, depth: int) -> int:
    if depth > 64:
        raise ValueError("CBOR nested too deeply")
    major, arg, pos = _head(data, pos)
    if major in (0, 1) or (major == 7 and arg is not None):
        return pos
    if major in (2, 3):
        if arg is not None:
            return pos + arg
        while data[pos] != 0xFF:  # indefinite string: definite chunks until the break
            pos = _walk(data, pos, depth + 1)
        return pos + 1
    if major == 6:
        return _walk(data, pos, depth + 1)
    if major == 4:
        return _items(data, pos, arg, depth, map_pairs=False)
    if major == 5:
        return _items(data, pos, arg, depth, map_pairs=True)
    raise ValueError("unexpected CBOR break")


def _items(data: bytes, pos: int, count: int | None, depth: int, *, map_pairs: bool) -> int:
    keys: set[Any] = set()
    n = 0
    while (count is None and data[pos] != 0xFF) or (count is not None and n < count):
        start = pos
        pos = _walk(data, pos, depth + 1)
        if map_pairs:
            key = cbor2.loads(data[start:pos])
            if key in keys:
                raise ValueError(f"map key {key!r} appears twice")
            keys.add(key)
            pos = _walk(data, pos, depth + 1)
        n += 1
    return pos + 1 if count is None else pos
