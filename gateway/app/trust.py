"""Composition root of ``battery-gateway trust-list`` and of ``verify`` on QR texts: the operator's signed
list of inspection-device keys (``core/trustlist.py``), and the offline verifier page with the list and
the operator's public key built in (docs/qr.md).

The spec is a TOML file the operator keeps under review::

    issuer = "Example Leasing"      # shown to the buyer
    valid_days = 30                 # the list's own lifetime: publish a new one before it ends

    [[device]]
    id = "gw-1a2b3c4d"
    pubkey = "keys/gw-1a2b3c4d.pem" # what keygen printed; relative to this file
    not_before = 2026-01-01         # claims dated outside this period are "expired" (UTC; not_after
    not_after = 2028-12-31          # includes its whole day). A lost key must be revoked (docs/qr.md)
    revoked = 2026-11-20            # optional: every claim by this key is "revoked"
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ..adapters.files import read_package_text
from ..adapters.fs import read_regular, safe_dir, write_atomic
from ..adapters.keystore import load_private_key, load_public_key
from ..core.qrclaim import decode_qr
from ..core.signing import Signer, key_id, spki_der, verify_envelope
from ..core.trustlist import (
    TrustEntry,
    TrustList,
    Verdict,
    build_trust_list,
    is_claim,
    judge_claim,
    open_plain,
    open_trust_list,
)
from ..errors import ConfigError, EnvelopeError
from ..model import DEVICE_ID

__all__ = ["PAGE_SLOT", "build_list", "fingerprint", "load_trust", "qr_verdict", "verifier_page", "write_outputs"]

PAGE_SLOT = '<script id="bp-trust" type="application/json">null</script>'
_SPEC_KEYS = {"issuer", "valid_days", "device"}
_DEVICE_KEYS = {"id", "pubkey", "not_before", "not_after", "revoked"}
_MAX_LIST = 4 << 20  # 20,000 devices at ~200 bytes


def _epoch(value: Any, where: str, *, end_of_day: bool = False) -> int:
    """Unix seconds of a TOML date (its first second, or with ``end_of_day`` its last, UTC) or date-time
    (UTC when it has no offset)."""
    if isinstance(value, dt.datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp())
    if isinstance(value, dt.date):
        start = int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp())
        return start + 86_399 if end_of_day else start
    raise ConfigError(f"{where}: expected a TOML date (2026-01-31) or date-time, got {value!r}")


def _entries(spec_path: Path, spec: dict[str, Any]) -> list[TrustEntry]:
    devices = spec.get("device", [])
    if not isinstance(devices, list) or not devices:
        raise ConfigError(f"{spec_path}: no [[device]] entries: a list that trusts nobody verifies nothing")
    out = []
    for i, d in enumerate(devices):
        where = f"{spec_path}: device[{i}]"
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a [[device]] table, got {d!r}")
        unknown = set(d) - _DEVICE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (keys: {', '.join(sorted(_DEVICE_KEYS))})")
        for key in ("id", "pubkey", "not_before", "not_after"):
            if key not in d:
                raise ConfigError(f"{where}: missing {key}")
        if not isinstance(d["id"], str) or not DEVICE_ID.fullmatch(d["id"]):
            raise ConfigError(f"{where}.id: {d['id']!r} is not a device id")
        where = f"{spec_path}: device {d['id']}"
        public_key = load_public_key(spec_path.parent / str(d["pubkey"]), what=f"{where}.pubkey")
        revoked = _epoch(d["revoked"], f"{where}.revoked") if "revoked" in d else None
        out.append(TrustEntry(d["id"], public_key, _epoch(d["not_before"], f"{where}.not_before"),
                              _epoch(d["not_after"], f"{where}.not_after", end_of_day=True), revoked))
    return out


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """What a buyer compares with the operator's published one: the first 8 bytes of the key id (SHA-256 of
    its SubjectPublicKeyInfo), in groups of four hex digits (the page shows the same)."""
    digest = key_id(key)[:8].hex()
    return " ".join(digest[i:i + 4] for i in range(0, 16, 4))


def build_list(spec_file: str, *, operator_key_file: str,
               now: float | None = None) -> tuple[bytes, ec.EllipticCurvePublicKey]:
    """(signed list, the operator's public key) from a spec file.

    Raises:
        ConfigError: an unreadable or wrong spec, naming the file and key; an unreadable key file.
    """
    path = Path(spec_file)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"trust-list {path}: cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"trust-list {path}: not TOML: {exc}") from exc
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (keys: {', '.join(sorted(_SPEC_KEYS))})")
    issuer = spec.get("issuer")
    if not isinstance(issuer, str) or not issuer.strip() or len(issuer) > 80:
        raise ConfigError(f"{path}: issuer must be a name of 1 to 80 characters (the buyer reads it)")
    days = spec.get("valid_days", 30)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 366:
        raise ConfigError(f"{path}: valid_days must be a whole number of days, 1 to 366, got {days!r}")
    entries = _entries(path, spec)
    operator = load_private_key(operator_key_file, what="trust-list --key")
    try:
        payload = build_trust_list(entries, issuer=issuer, now=int(time.time() if now is None else now),
                                   valid_s=days * 86_400)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return Signer(operator).sign(payload), operator.public_key()


def verifier_page(trust_list: bytes, operator_key: ec.EllipticCurvePublicKey) -> str:
    """The shipped verifier page (``gateway/data/verifier.html``, built by ``make verifier``) with the
    operator's public key and the signed list in its data slot.

    Raises:
        ConfigError: the shipped page has no data slot (a damaged release).
    """
    page = read_package_text("verifier.html", what="verifier page")
    if page.count(PAGE_SLOT) != 1:
        raise ConfigError("gateway/data/verifier.html: no trust-list slot; reinstall the release")
    data = json.dumps({"operator": base64.b64encode(spki_der(operator_key)).decode(),
                       "list": base64.b64encode(trust_list).decode()})
    return page.replace(PAGE_SLOT, f'<script id="bp-trust" type="application/json">{data}</script>')


def write_outputs(out_dir: str, trust_list: bytes, operator_key: ec.EllipticCurvePublicKey) -> tuple[Path, Path]:
    """``DIR/trust-list.cose`` and ``DIR/verifier.html`` (both public: 0644).

    Raises:
        ConfigError: ``DIR`` is not a safe place to write.
    """
    out = Path(out_dir)
    page = verifier_page(trust_list, operator_key)
    try:
        safe_dir(out, mode=0o755)
        files = (out / "trust-list.cose", out / "verifier.html")
        write_atomic(files[0], trust_list, mode=0o644)
        write_atomic(files[1], page.encode(), mode=0o644)
    except OSError as exc:
        raise ConfigError(f"trust-list --out {out_dir}: {exc.strerror or exc}") from exc
    return files


def load_trust(list_file: str, operator_pem: str) -> TrustList | EnvelopeError:
    """The opened list, or the error a verdict reports (not signed by that operator).

    Raises:
        ConfigError: a file that cannot be read.
    """
    operator = load_public_key(operator_pem, what="verify --operator")
    try:
        data = read_regular(list_file, max_bytes=_MAX_LIST)
    except OSError as exc:
        raise ConfigError(f"verify --trust-list {list_file}: {exc.strerror or exc}") from exc
    try:
        return open_trust_list(data, operator)
    except EnvelopeError as exc:
        return exc


def qr_verdict(text: str, *, trust: TrustList | EnvelopeError | None,
               keys: Callable[[str], ec.EllipticCurvePublicKey | None] | None, now: int) -> Verdict:
    """The trust list's verdict; without a list, the signature alone against the device's own key
    (``genuine`` then says nothing of the issuer's standing: the reason says so)."""
    if trust is not None:
        return judge_claim(text, trust=trust, now=now)
    assert keys is not None
    try:
        env = open_plain(decode_qr(text))  # as strict as with a list
        dev = env.payload.get("dev")
        key = keys(dev) if isinstance(dev, str) else None
        if key is None:
            return Verdict("unknown-issuer", f"no trusted key for device {dev!r}")
        claim = verify_envelope(env, key)
    except EnvelopeError as exc:
        return Verdict("not-genuine", str(exc))
    if not is_claim(claim):
        return Verdict("not-genuine", "signed, but not a version 1 health claim", claim)
    return Verdict("genuine", f"signed by {dev}'s key (no trust list: validity and revocation not checked)",
                   claim)
