"""COSE_Sign1 (RFC 9052) envelopes with ES256, deterministic CBOR payloads, and the per-device hash chain.

Owns: the exact bytes of every envelope (CONTRACT §5) and their verification. The chain position a
message takes (``model.ChainPosition``) is kept by the pipeline and stored with the message.
Invariants: the protected header is ``{1: -7, 4: kid}``; ``kid`` is the first 16 bytes of SHA-256 over
the public key's SubjectPublicKeyInfo DER; the signature is 64-byte r||s over
``["Signature1", protected, h'', payload]``; payload maps are encoded deterministically (RFC 8949
§4.2: sorted keys, shortest forms).
The key object is passed in; this module never touches files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ..errors import EnvelopeError

__all__ = ["ALG_ES256", "COSE_SIGN1_TAG", "Signer", "key_id", "open_envelope", "verify_envelope"]

COSE_SIGN1_TAG = 18
ALG_ES256 = -7
_HDR_ALG, _HDR_KID = 1, 4


def key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """First 16 bytes of SHA-256 over the SubjectPublicKeyInfo DER."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()[:16]


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


def open_envelope(envelope: bytes) -> tuple[bytes, Mapping[Any, Any], dict[str, Any], bytes]:
    """Parse a COSE_Sign1 without checking the signature: (protected bytes, protected map, payload, sig).

    Raises:
        EnvelopeError: not CBOR, not tag 18, wrong structure, or a payload that is not a text-keyed map.
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
    protected_bytes, _, body, signature = parts
    try:
        protected = cbor2.loads(protected_bytes)
        payload = cbor2.loads(body)
    except Exception as exc:
        raise EnvelopeError(f"protected header or payload is not CBOR: {exc}") from exc
    if not isinstance(protected, Mapping) or not isinstance(payload, dict):
        raise EnvelopeError("protected header and payload must be CBOR maps")
    if not all(isinstance(k, str) for k in payload):
        raise EnvelopeError("payload keys must be text")
    if cbor2.dumps(payload, canonical=True) != body:
        raise EnvelopeError("payload is not deterministic CBOR (RFC 8949 §4.2)")
    return protected_bytes, protected, payload, signature


def verify_envelope(envelope: bytes, public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """Check an envelope's header, key id and ES256 signature; return its payload.

    Raises:
        EnvelopeError: saying which check failed.
    """
    protected_bytes, protected, payload, signature = open_envelope(envelope)
    if protected.get(_HDR_ALG) != ALG_ES256:
        raise EnvelopeError(f"alg {protected.get(_HDR_ALG)!r} is not ES256 (-7)")
    if protected.get(_HDR_KID) != key_id(public_key):
        raise EnvelopeError("kid does not match the public key (signed by another device key)")
    if len(signature) != 64:
        raise EnvelopeError(f"signature is {len(signature)} bytes, ES256 needs 64 (r||s)")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    body = cbor2.dumps(payload, canonical=True)
    try:
        public_key.verify(der, _sig_structure(protected_bytes, body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise EnvelopeError("signature does not verify (payload or header was changed)") from None
    return payload
