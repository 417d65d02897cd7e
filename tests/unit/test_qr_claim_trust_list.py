"""The certificate's signed QR (core/qrclaim.py) and the operator's trust list (core/trustlist.py): what a
buyer's verdict rests on. Every check is tried by someone who wants it to say "genuine"."""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import base45
import cbor2
import pytest
import segno
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.core.qrclaim import MAX_ENVELOPE, MAX_TEXT, PREFIX, build_claim, decode_qr, encode_qr, readable
from gateway.core.signing import Signer, open_envelope
from gateway.core.trustlist import TrustEntry, build_trust_list, judge_claim, open_trust_list
from gateway.errors import EnvelopeError

NOW = 1_796_000_000  # 2026-11-30T00:53Z
DAY = 86_400


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def certificate(**over: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "dev": "gw-bay-1", "ts": (NOW - 60) * 1000, "bat": "ZE1-0123456789AB",
        "identity": {"vehicle": "Nissan Leaf ZE1 (2018+, 40/62 kWh)", "generation": "ze1",
                     "vin_hash": "34a826b7780e2e2997eba352b5298486", "rated_energy_kwh": 62.0,
                     "rated_capacity_ah": 176.0},
        "m": {"bms_soh_pct": 88.0, "capacity_soh_pct": 87.43},
        "forecast": {"present": {"soh_pct": 87.43, "sigma_pct": 2.0, "basis": "BMS capacity",
                                 "method": "capacity-ratio"},
                     "horizons": {"+3y": {"p10": 82.27, "p50": 85.29, "p90": 88.01}}},
        "warranty": {"decision": "accept", "probability": 0.97},
    }
    payload.update(over)
    return payload


class Fleet:
    """An operator, a trusted device, and the list that vouches for it."""

    def __init__(self, **entry: Any) -> None:
        self.operator, self.device = key(), key()
        self.entry = TrustEntry("gw-bay-1", self.device.public_key(), NOW - 365 * DAY, NOW + 365 * DAY, **entry)
        self.others: list[TrustEntry] = []

    def trust_list(self, *, now: int = NOW, valid_s: int = 30 * DAY, signer: ec.EllipticCurvePrivateKey | None = None,
                   **edit: Any) -> bytes:
        payload = build_trust_list([self.entry, *self.others], issuer="Example Leasing", now=now, valid_s=valid_s)
        payload.update(edit)
        return Signer(signer or self.operator).sign(payload)

    def qr(self, claim: dict[str, Any] | None = None, signer: ec.EllipticCurvePrivateKey | None = None) -> str:
        claim = claim or build_claim(certificate(), certificate_sha256=hashlib.sha256(b"cose").digest())
        return encode_qr(Signer(signer or self.device).sign(claim))

    def judge(self, qr: str, *, now: int = NOW, trust_list: bytes | None = None) -> tuple[str, str]:
        try:
            trust: Any = open_trust_list(trust_list or self.trust_list(), self.operator.public_key())
        except EnvelopeError as exc:
            trust = exc
        verdict = judge_claim(qr, trust=trust, now=now)
        return verdict.status, verdict.reason


def test_the_claim_carries_what_a_buyer_needs_in_exact_tenths() -> None:
    digest = hashlib.sha256(b"the certificate").digest()
    claim = build_claim(certificate(), certificate_sha256=digest)
    assert claim == {
        "v": 1, "dev": "gw-bay-1", "iat": NOW - 60, "veh": "Nissan Leaf ZE1 (2018+, 40/62 kWh)", "gen": "ze1",
        "rat": [620, 1760], "bat": "ZE1-0123456789AB", "vin": bytes.fromhex("34a826b7780e2e2997eba352b5298486"),
        "soh": {"p": 874, "lo": 849, "hi": 900, "m": "capacity-ratio"}, "bms": 880, "f3": 853, "w": "accept",
        "wp": 97, "cert": digest}
    assert readable(claim)["soh"] == {"p": 87.4, "lo": 84.9, "hi": 90.0, "m": "capacity-ratio"}


def test_a_figure_the_inspection_did_not_get_is_left_out_not_guessed() -> None:
    claim = build_claim(certificate(m={}, forecast={}, warranty={"status": "not available", "decision": None}),
                        certificate_sha256=bytes(32))
    assert not {"soh", "bms", "f3", "w", "wp"} & set(claim)


def test_the_gateway_estimate_is_preferred_with_its_own_interval() -> None:
    m = {"soh": {"est_pct": 91.26, "lo_pct": 89.0, "hi_pct": 93.5}, "bms_soh_pct": 88.0}
    claim = build_claim(certificate(m=m), certificate_sha256=bytes(32))
    assert claim["soh"] == {"p": 913, "lo": 890, "hi": 935, "m": "gateway-estimate"}


def test_the_qr_is_alphanumeric_and_small_enough_to_print_and_scan() -> None:
    fleet = Fleet()
    longest = certificate(identity={**certificate()["identity"], "vehicle": "Hyundai Kona Electric 64 kWh (2018-2023)"},
                          bat="X" * 24)
    text = fleet.qr(build_claim(longest, certificate_sha256=bytes(32)))
    assert text.startswith(PREFIX) and set(text) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
    qr = segno.make(text, error="q", boost_error=False)
    assert qr.mode == "alphanumeric" and qr.version <= 18, (len(text), qr.version)


def test_decode_round_trips_and_refuses_what_is_not_a_claim() -> None:
    envelope = Signer(key()).sign({"v": 1})
    assert decode_qr("  " + encode_qr(envelope) + "\n") == envelope
    with pytest.raises(EnvelopeError, match="expected 'BP1:'"):
        decode_qr("HC1:" + encode_qr(envelope)[4:])
    with pytest.raises(EnvelopeError, match="not Base45"):
        decode_qr("BP1:abc")  # lower case is outside the alphabet
    with pytest.raises(EnvelopeError, match="not Base45"):
        decode_qr("BP1:GGW")  # 3 characters worth more than 65535
    with pytest.raises(EnvelopeError, match="not zlib"):
        decode_qr("BP1:" + base45.b45encode(b"plain bytes").decode())
    with pytest.raises(EnvelopeError, match="truncated or padded"):
        decode_qr("BP1:" + base45.b45encode(zlib.compress(envelope)[:-3]).decode())
    with pytest.raises(EnvelopeError, match="truncated or padded"):
        decode_qr("BP1:" + base45.b45encode(zlib.compress(envelope) + b"junk").decode())


def test_a_qr_that_inflates_to_megabytes_or_is_longer_than_any_qr_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(b"\0" * 2_500_000, 9)  # 2.4 kB of zlib, fits a QR: a 2.5 MB payload
    text = "BP1:" + base45.b45encode(bomb).decode()
    assert len(text) <= MAX_TEXT
    with pytest.raises(EnvelopeError, match=f"inflates past {MAX_ENVELOPE}"):
        decode_qr(text)
    with pytest.raises(EnvelopeError, match="more than a QR code holds"):
        decode_qr("BP1:" + base45.b45encode(zlib.compress(b"\0" * 50_000_000, 9)).decode())


def test_genuine() -> None:
    fleet = Fleet()
    assert fleet.judge(fleet.qr()) == ("genuine", "signed by gw-bay-1, on Example Leasing's trust list")


def test_a_changed_figure_is_not_genuine() -> None:
    fleet = Fleet()
    env = open_envelope(decode_qr(fleet.qr()))
    forged = dict(env.payload, bms=990)  # the seller's wish, under the device's signature
    tag = cbor2.CBORTag(18, [env.protected_raw, {}, cbor2.dumps(forged, canonical=True), env.signature])
    status, reason = fleet.judge(encode_qr(cbor2.dumps(tag)))
    assert status == "not-genuine" and "signature does not verify" in reason


def test_a_key_not_on_the_list_is_an_unknown_issuer_even_when_it_names_a_listed_device() -> None:
    fleet = Fleet()
    status, reason = fleet.judge(fleet.qr(signer=key()))
    assert status == "unknown-issuer" and "is not on Example Leasing's trust list" in reason


def test_a_listed_device_cannot_issue_in_another_devices_name() -> None:
    fleet = Fleet()
    other = key()
    fleet.others.append(TrustEntry("gw-lane-2", other.public_key(), NOW - DAY, NOW + DAY))
    claim = build_claim(certificate(), certificate_sha256=bytes(32))  # names gw-bay-1
    status, reason = fleet.judge(fleet.qr(claim, signer=other))
    assert status == "not-genuine" and "signed by gw-lane-2's key but names device 'gw-bay-1'" in reason


def test_a_claim_with_anything_in_the_unsigned_header_is_not_genuine() -> None:
    fleet = Fleet()
    env = open_envelope(decode_qr(fleet.qr()))
    moved = cbor2.CBORTag(18, [cbor2.dumps({1: -7}), {4: env.protected[4]}, env.body, env.signature])
    assert fleet.judge(encode_qr(cbor2.dumps(moved))) == ("not-genuine", "the unprotected header is not empty: a "
                                                           "claim has nothing unsigned")


def test_a_revoked_key_is_revoked_whatever_date_its_claim_says() -> None:
    fleet = Fleet(revoked=NOW - 10 * DAY)
    claim = build_claim(certificate(ts=(NOW - 400 * DAY) * 1000), certificate_sha256=bytes(32))  # backdated
    status, reason = fleet.judge(fleet.qr(claim))
    assert status == "revoked" and "revoked on 2026-11-20" in reason


def test_a_certificate_dated_outside_its_keys_validity_is_expired() -> None:
    fleet = Fleet()
    claim = build_claim(certificate(ts=(NOW - 400 * DAY) * 1000), certificate_sha256=bytes(32))
    status, reason = fleet.judge(fleet.qr(claim))
    assert status == "expired" and "outside gw-bay-1's key validity" in reason


def test_a_certificate_dated_in_the_future_is_not_genuine_but_a_fast_clock_is_tolerated() -> None:
    fleet = Fleet()
    ahead = build_claim(certificate(ts=(NOW + 3600) * 1000), certificate_sha256=bytes(32))
    assert fleet.judge(fleet.qr(ahead))[0] == "genuine"
    future = build_claim(certificate(ts=(NOW + 3 * DAY) * 1000), certificate_sha256=bytes(32))
    assert fleet.judge(fleet.qr(future))[0] == "not-genuine"


def test_an_expired_list_says_expired_even_for_a_good_claim() -> None:
    fleet = Fleet()
    old = fleet.trust_list(now=NOW - 40 * DAY)
    status, reason = fleet.judge(fleet.qr(), trust_list=old)
    assert status == "expired" and "the trust list expired on 2026-11-20" in reason


def test_a_list_not_signed_by_the_operator_trusts_nobody() -> None:
    fleet = Fleet()
    assert fleet.judge(fleet.qr(), trust_list=fleet.trust_list(signer=fleet.device))[0] == "unknown-issuer"
    # an insider extends a good list's life: the operator's signature no longer holds
    env = open_envelope(fleet.trust_list())
    stretched = cbor2.dumps(dict(env.payload, exp=NOW + 3650 * DAY), canonical=True)
    tag = cbor2.dumps(cbor2.CBORTag(18, [env.protected_raw, {}, stretched, env.signature]))
    status, reason = fleet.judge(fleet.qr(), trust_list=tag)
    assert status == "unknown-issuer" and reason.startswith("trust list: signature does not verify")


def test_garbage_and_other_qr_codes_are_not_genuine() -> None:
    fleet = Fleet()
    for text in ("https://example.com/", "BP1:", "BP1:" + base45.b45encode(zlib.compress(b"\xa0")).decode()):
        assert fleet.judge(text)[0] in ("not-genuine",), text


def test_the_list_refuses_a_key_twice_and_an_empty_period() -> None:
    device = key().public_key()
    with pytest.raises(ValueError, match="listed twice"):
        build_trust_list([TrustEntry("gw-a", device, 0, 1), TrustEntry("gw-b", device, 0, 1)], issuer="x", now=0,
                         valid_s=1)
    with pytest.raises(ValueError, match="not after not_before"):
        build_trust_list([TrustEntry("gw-a", device, 5, 5)], issuer="x", now=0, valid_s=1)


@pytest.mark.parametrize("edit", [{"rev": True}, {"rev": 1.5}, {"nbf": False}, {"exp": 2**60}, {"kid": bytes(16)},
                                  {"pub": b"not a key"}])
def test_a_list_entry_of_the_wrong_type_or_a_kid_not_of_its_key_refuses_the_list(edit: dict[str, Any]) -> None:
    fleet = Fleet()
    payload = build_trust_list([fleet.entry], issuer="x", now=NOW, valid_s=DAY)
    payload["keys"][0].update(edit)
    with pytest.raises(EnvelopeError, match="trust list: "):
        open_trust_list(Signer(fleet.operator).sign(payload), fleet.operator.public_key())


def test_odd_figures_in_a_signed_claim_never_crash_the_reader() -> None:
    fleet = Fleet()
    claim = build_claim(certificate(), certificate_sha256=bytes(32))
    claim.update(rat=["a", "b"], bms=[1], soh={"p": "x"}, iat=-(2**52) + 1)
    verdict = judge_claim(fleet.qr(claim), trust=open_trust_list(fleet.trust_list(), fleet.operator.public_key()),
                          now=NOW)
    assert verdict.status == "expired" and f"dated {-(2**52) + 1} s" in verdict.reason  # no date that far back
    shown = readable(claim)
    assert shown["rat"] == ["a", "b"] and shown["bms"] == [1] and shown["soh"] == {"p": "x"}


@pytest.mark.parametrize("odd", [{"v": True}, {"bms": 88.0}, {"bms": None}, {"bms": False}, {"soh": {"p": 2**53}},
                                 {"soh": {b"p": 874}}, {"soh": {1: 874}}, {"bms": cbor2.CBORTag(99, 1)},
                                 {"bms": float("nan")}])
def test_a_listed_device_cannot_sign_values_two_readers_would_read_differently(odd: dict[str, Any]) -> None:
    fleet = Fleet()
    claim = {**build_claim(certificate(), certificate_sha256=bytes(32)), **odd}
    status, reason = fleet.judge(fleet.qr(claim))
    assert status == "not-genuine" and "holds only integers, text, bytes, arrays and text-keyed maps" in reason
