"""The signed health claim in the certificate's QR code (docs/qr.md), shaped after the EU Digital COVID
Certificate (HCERT): a COSE_Sign1 by the device key over a small deterministic CBOR map, zlib-compressed,
Base45-encoded (RFC 9285) and prefixed ``BP1:``, so a phone verifies it offline against a trust list
(``trustlist.py``) without the ``.cose`` file, this project's CLI or a network.

Owns: which certificate facts the claim carries and their encoding. Percentages and ratings are integers
in tenths (87.4 % is 874): exact, short in CBOR, and the same number in every language's decoder. The
claim binds the full certificate by the SHA-256 of ``certificate.cose``.
Pure: payload in, map out; bytes in, text out.
"""

from __future__ import annotations

import zlib
from typing import Any

import base45

from ..errors import EnvelopeError
from .soh import SohSettings

__all__ = ["CLAIM_VERSION", "MAX_ENVELOPE", "MAX_TEXT", "PREFIX", "build_claim", "decode_qr", "encode_qr",
           "readable"]

PREFIX = "BP1:"
CLAIM_VERSION = 1
MAX_ENVELOPE = 2048  # a claim envelope is ~320 bytes; a QR holds at most 2,953: anything bigger is not ours
MAX_TEXT = 4296  # the most characters a QR code holds in alphanumeric mode
_MAX_TEXT_FIELD = 64  # vehicle title, pack serial: the claim stays far below MAX_ENVELOPE
_Z80 = SohSettings().interval_z  # a 1-sigma figure as a two-sided 80 % interval, as the gateway's estimate has it


def _tenths(value: float) -> int:
    return round(value * 10)


def build_claim(payload: dict[str, Any], *, certificate_sha256: bytes) -> dict[str, Any]:
    """The claim for a certificate payload (``certificate.build_certificate``).

    Keys (docs/qr.md): ``v`` claim version, ``dev`` device id, ``iat`` inspection time (s), ``veh`` vehicle
    model, ``gen`` pack generation, ``rat`` [rated kWh, rated Ah] in tenths, ``bat`` pack serial, ``vin``
    pseudonymous VIN hash, ``soh`` present SoH {``p``, ``lo``, ``hi`` (80 % interval), ``m`` method} in
    tenths of %, ``bms`` the BMS's own SOH, ``f3`` forecast median at +3 years, ``w`` warranty decision
    ("accept"/"decline") with ``wp`` its probability in %, ``imp`` how many weekly points of the forecast's
    history were imported from another tool's logs, ``cert`` SHA-256 of certificate.cose. A figure
    the inspection did not get is left out, never sent as a guess.
    """
    ident, m = payload["identity"], payload["m"]
    claim: dict[str, Any] = {
        "v": CLAIM_VERSION, "dev": payload["dev"], "iat": payload["ts"] // 1000,
        "veh": ident["vehicle"][:_MAX_TEXT_FIELD],
        "rat": [_tenths(ident["rated_energy_kwh"]), _tenths(ident["rated_capacity_ah"])],
        "cert": certificate_sha256,
    }
    if ident.get("generation"):
        claim["gen"] = ident["generation"]
    if payload.get("bat"):
        claim["bat"] = payload["bat"][:_MAX_TEXT_FIELD]
    if ident.get("vin_hash"):
        claim["vin"] = bytes.fromhex(ident["vin_hash"])  # hex, from battery.vin_hash
    present = payload.get("forecast", {}).get("present")
    own = m.get("soh") if isinstance(m.get("soh"), dict) else None
    if own and "est_pct" in own:
        claim["soh"] = {"p": _tenths(own["est_pct"]), "lo": _tenths(own["lo_pct"]), "hi": _tenths(own["hi_pct"]),
                        "m": "gateway-estimate"}
    elif present:
        half = _Z80 * present["sigma_pct"]
        claim["soh"] = {"p": _tenths(present["soh_pct"]), "lo": _tenths(present["soh_pct"] - half),
                        "hi": _tenths(present["soh_pct"] + half), "m": present.get("method", "unknown")}
    if "bms_soh_pct" in m:
        claim["bms"] = _tenths(m["bms_soh_pct"])
    three = payload.get("forecast", {}).get("horizons", {}).get("+3y")
    if three:
        claim["f3"] = _tenths(three["p50"])
    history = payload.get("forecast", {}).get("rate_factor", {}).get("history")
    if history:  # the forecast's fade includes points another tool logged: the buyer is told
        claim["imp"] = history["imported-log"]
    w = payload.get("warranty", {})
    if w.get("decision") in ("accept", "decline"):
        claim["w"] = w["decision"]
        claim["wp"] = round(w["probability"] * 100)
    return claim


def encode_qr(envelope: bytes) -> str:
    """``BP1:`` + Base45(zlib(envelope)): only characters of the QR alphanumeric mode.

    Raises:
        ValueError: an envelope larger than any verifier reads back.
    """
    if len(envelope) > MAX_ENVELOPE:
        raise ValueError(f"a {len(envelope)}-byte claim envelope: at most {MAX_ENVELOPE}")
    encoded: bytes = base45.b45encode(zlib.compress(envelope, 9))
    return PREFIX + encoded.decode("ascii")


def decode_qr(text: str) -> bytes:
    """The COSE_Sign1 bytes inside a QR text.

    Raises:
        EnvelopeError: longer than a QR holds, no ``BP1:`` prefix, not Base45, not zlib (checksum
            included, nothing after it), or inflating past ``MAX_ENVELOPE`` (a small QR that would unpack
            into megabytes).
    """
    text = text.strip(" \t\r\n")  # only ASCII ones, as the page: a byte-order mark is not a space
    if len(text) > MAX_TEXT:
        raise EnvelopeError(f"{len(text)} characters: more than a QR code holds ({MAX_TEXT})")
    if not text.startswith(PREFIX):
        head = text[:8].encode("unicode_escape").decode("ascii")
        raise EnvelopeError(f"not a battery certificate QR: it starts {head!r}, expected {PREFIX!r}")
    try:
        packed = base45.b45decode(text[len(PREFIX):])
    except ValueError:
        raise EnvelopeError("QR text after BP1: is not Base45 (RFC 9285)") from None
    inflater = zlib.decompressobj()
    try:
        envelope = inflater.decompress(packed, MAX_ENVELOPE + 1)
    except zlib.error as exc:
        raise EnvelopeError(f"QR content is not zlib data: {exc}") from None
    if len(envelope) > MAX_ENVELOPE:
        raise EnvelopeError(f"QR content inflates past {MAX_ENVELOPE} bytes: not a health claim")
    if not inflater.eof or inflater.unused_data:
        raise EnvelopeError("QR content is a truncated or padded zlib stream")
    return envelope


def readable(claim: dict[str, Any]) -> dict[str, Any]:
    """The claim with tenths as numbers and hashes as hex: what ``verify`` prints."""
    out: dict[str, Any] = dict(claim)
    rat = claim.get("rat")
    if isinstance(rat, list) and len(rat) == 2 and all(type(v) is int for v in rat):
        out["rat"] = {"kwh": rat[0] / 10, "ah": rat[1] / 10}
    if isinstance(claim.get("soh"), dict):
        out["soh"] = {k: (v / 10 if k in ("p", "lo", "hi") and type(v) is int else v)
                      for k, v in claim["soh"].items()}
    for key in ("bms", "f3"):
        if type(claim.get(key)) is int:
            out[key] = claim[key] / 10
    for key in ("cert", "vin"):
        if isinstance(claim.get(key), bytes):
            out[key] = claim[key].hex()
    return out
