"""The trust list: which device keys may issue battery certificates, and the verdict on a QR claim.

Who signs what (docs/qr.md): each inspection device signs its claims with its own key; the operator (the
lessor, the auction house, the fleet's CA holder) signs the list of device keys it vouches for, each with
a validity period and, once compromised or retired, a revocation. The verifier page and ``verify`` hold
only the operator's public key. The list itself expires (``exp``), so a phone with a stale copy says
"expired" instead of trusting a key revoked since.

Verdicts, in the order they are decided: ``unknown-issuer`` (the list is not signed by the operator),
``expired`` (the list is out of date), ``not-genuine`` (not a QR claim: prefix, Base45, zlib, COSE
shape, an unprotected header), ``unknown-issuer`` (the key is not on the list), ``not-genuine``
(algorithm, signature, not deterministic CBOR, claim shape, another device's name, dated in the
future), ``revoked``, ``expired`` (dated outside its key's validity), ``genuine``. Numbers are
integers, never booleans or floats. The page (``verifier/src/main.js``) decides the same way; tests
hold the two to the same cases. ``not_after`` retires a key from service but cannot stop whoever holds
it from backdating a claim: a lost or stolen key must be revoked, which makes all its claims "revoked".
Pure: bytes and the time in, a verdict out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import EnvelopeError
from .qrclaim import CLAIM_VERSION, decode_qr
from .signing import Envelope, key_id, open_envelope, spki_der, verify_envelope

__all__ = ["FUTURE_SLACK_S", "LIST_VERSION", "TrustEntry", "TrustList", "Verdict", "build_trust_list", "is_claim",
           "judge_claim", "open_plain", "open_trust_list"]

LIST_VERSION = 1
FUTURE_SLACK_S = 86_400  # a device clock a day ahead is a clock, not a forgery


@dataclass(frozen=True, slots=True)
class TrustEntry:
    """One device key the operator vouches for, from ``not_before`` to ``not_after`` (Unix s)."""

    device: str
    public_key: ec.EllipticCurvePublicKey
    not_before: int
    not_after: int
    revoked: int | None = None

    def as_map(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"kid": key_id(self.public_key), "dev": self.device, "pub": spki_der(self.public_key),
                                 "nbf": self.not_before, "exp": self.not_after}
        if self.revoked is not None:
            entry["rev"] = self.revoked
        return entry


def build_trust_list(entries: list[TrustEntry], *, issuer: str, now: int, valid_s: int) -> dict[str, Any]:
    """The list's payload (sign it with the operator's ``signing.Signer``).

    Raises:
        ValueError: two entries with the same key, or a period that ends before it starts.
    """
    kids = [key_id(e.public_key) for e in entries]
    if len(set(kids)) != len(kids):
        raise ValueError("the same public key is listed twice")
    for e in entries:
        if e.not_after <= e.not_before:
            raise ValueError(f"{e.device}: not_after is not after not_before")
    return {"v": LIST_VERSION, "kind": "trust-list", "iss": issuer, "iat": now, "exp": now + valid_s,
            "keys": [e.as_map() for e in entries]}


@dataclass(frozen=True, slots=True)
class TrustList:
    """An opened list: its signature checked against the operator key, each entry's ``key`` parsed and
    matching its ``kid``; its dates not judged yet."""

    issuer: str
    issued: int
    expires: int
    keys: dict[bytes, dict[str, Any]] = field(default_factory=dict)


def open_trust_list(data: bytes, operator_key: ec.EllipticCurvePublicKey) -> TrustList:
    """Check the list's ES256 signature by the operator and its shape.

    Raises:
        EnvelopeError: not signed by ``operator_key``, or not a trust list.
    """
    try:
        body = verify_envelope(open_plain(data), operator_key)
    except EnvelopeError as exc:
        raise EnvelopeError(f"trust list: {exc}") from None
    keys = body.get("keys")
    if (body.get("kind") != "trust-list" or body.get("v") != LIST_VERSION or not isinstance(keys, list)
            or not all(_is_int(body.get(k)) for k in ("iat", "exp"))):
        raise EnvelopeError("trust list: not a version 1 trust list")
    table: dict[bytes, dict[str, Any]] = {}
    for entry in keys:
        if not (isinstance(entry, dict) and isinstance(entry.get("kid"), bytes) and isinstance(entry.get("pub"), bytes)
                and isinstance(entry.get("dev"), str) and all(_is_int(entry.get(k)) for k in ("nbf", "exp"))
                and ("rev" not in entry or _is_int(entry["rev"]))):
            raise EnvelopeError("trust list: an entry lacks kid, dev, pub, nbf or exp")
        try:
            public_key = serialization.load_der_public_key(entry["pub"])
        except ValueError:
            public_key = None
        if not (isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1)
                and spki_der(public_key) == entry["pub"] and key_id(public_key) == entry["kid"]):
            raise EnvelopeError(f"trust list: the key of {entry['dev']!r} is not an uncompressed P-256 key with "
                                "that kid")
        table[entry["kid"]] = {**entry, "key": public_key}
    return TrustList(str(body.get("iss", "")), body["iat"], body["exp"], table)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``status``: genuine, not-genuine, unknown-issuer, expired or revoked; ``reason`` says why in one
    line; ``claim`` is the decoded claim when its signature was checked (also for revoked/expired)."""

    status: str
    reason: str
    claim: dict[str, Any] | None = None


def _is_int(value: Any) -> bool:
    """An integer that CBOR and JavaScript agree on: not a bool (Python's bool is an int), not a float."""
    return type(value) is int and -(2**53) < value < 2**53


def is_claim(payload: dict[str, Any]) -> bool:
    """A version 1 health claim: ``v`` 1 and an integer ``iat`` (the rest is read as far as it is there)."""
    return payload.get("v") == CLAIM_VERSION and _is_int(payload.get("iat"))


def _plain(value: Any) -> None:
    if _is_int(value) or type(value) in (str, bytes):
        return
    if type(value) is list:
        for item in value:
            _plain(item)
    elif type(value) is dict and all(type(k) is str for k in value):
        for item in value.values():
            _plain(item)
    else:
        raise EnvelopeError(f"a {type(value).__name__} in the payload: a claim or list holds only integers, text, "
                            "bytes, arrays and text-keyed maps")


def open_plain(raw: bytes) -> Envelope:
    """A claim or list opened as strictly as the page opens it, before any key is looked up: CBOR tag 18
    itself, nothing in the unprotected header, and a payload of integers (no floats, no booleans, within
    2^53), text, bytes, arrays and text-keyed maps only, in deterministic encoding, so one signed content
    is one byte string and every reader takes the same values from it.

    Raises:
        EnvelopeError: saying which rule failed.
    """
    if raw[:1] != b"\xd2":  # tag 18 itself, not wrapped in another tag
        raise EnvelopeError("not a tagged COSE_Sign1 (CBOR tag 18)")
    env = open_envelope(raw)
    if env.unprotected:
        raise EnvelopeError("the unprotected header is not empty: a claim has nothing unsigned")
    _plain(env.payload)
    if cbor2.dumps(env.payload, canonical=True) != env.body:
        raise EnvelopeError("the payload is not deterministic CBOR")
    return env


def _day(ts: int) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return f"{ts} s"


def judge_claim(qr_text: str, *, trust: TrustList | EnvelopeError, now: int) -> Verdict:
    """The verdict on a QR text. ``trust`` is the opened list, or the error opening it gave."""
    if isinstance(trust, EnvelopeError):
        return Verdict("unknown-issuer", str(trust))
    if now > trust.expires:
        return Verdict("expired", f"the trust list expired on {_day(trust.expires)}: get a current one "
                                  f"from {trust.issuer or 'the operator'}")
    if trust.issued > now + FUTURE_SLACK_S:
        return Verdict("expired", f"the trust list is dated {_day(trust.issued)}, in the future: check this "
                                  "device's clock")
    try:
        env = open_plain(decode_qr(qr_text))
    except EnvelopeError as exc:
        return Verdict("not-genuine", str(exc))
    kid = env.protected.get(4)
    entry = trust.keys.get(kid) if isinstance(kid, bytes) else None
    if entry is None:
        return Verdict("unknown-issuer", f"key {kid.hex() if isinstance(kid, bytes) else '?'} is not on "
                                         f"{trust.issuer or 'the operator'}'s trust list")
    try:
        claim = verify_envelope(env, entry["key"])
    except EnvelopeError as exc:
        return Verdict("not-genuine", str(exc))
    if not is_claim(claim):
        return Verdict("not-genuine", "signed, but not a version 1 health claim", claim)
    if claim.get("dev") != entry["dev"]:
        return Verdict("not-genuine", f"signed by {entry['dev']}'s key but names device {claim.get('dev')!r}",
                       claim)
    if "rev" in entry:
        return Verdict("revoked", f"{entry['dev']}'s key was revoked on {_day(entry['rev'])}", claim)
    iat = claim["iat"]
    if iat > now + FUTURE_SLACK_S:
        return Verdict("not-genuine", f"dated {_day(iat)}, in the future", claim)
    if not entry["nbf"] <= iat <= entry["exp"]:
        return Verdict("expired", f"dated {_day(iat)}, outside {entry['dev']}'s key validity "
                                  f"{_day(entry['nbf'])} to {_day(entry['exp'])}", claim)
    return Verdict("genuine", f"signed by {entry['dev']}, on {trust.issuer or 'the operator'}'s trust list",
                   claim)
