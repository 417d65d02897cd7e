"""The backend's check of a stream of envelopes: signatures against trusted device keys, the hash chain,
gaps, duplicates and conflicts, per device and epoch. Pure: bytes in, verdicts and a report out.

Verdicts for each envelope:
- ``accepted``: signature valid, ``(dev, ep, seq)`` new;
- ``duplicate``: the same envelope again (QoS 1 redelivery, or a replay): ignored, ``(dev, ep, seq)``
  deduplicates it;
- ``rejected``: no trusted key for the device, bad signature (tampered), malformed, or a different
  envelope for an ``(dev, ep, seq)`` already seen (a conflict: forged or a device that reused its chain).

The report lists, per device and epoch, the sequence numbers received, the ones missing, and every
place where ``prev`` does not match the SHA-256 of the previous envelope.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import EnvelopeError
from ..model import DEVICE_ID, MAX_BATCH, ZERO_HASH, Checked
from .signing import open_envelope, verify_envelope

__all__ = ["ChainVerifier", "EpochChain", "KeyLookup", "Verdict", "check_envelope", "printable", "storable"]

KeyLookup = Callable[[str], ec.EllipticCurvePublicKey | None]

# The topic (last segment) each kind is published on; a batch of readings goes on ``reading``.
TOPIC_OF_KIND = {"reading": "reading", "batch": "reading", "passport": "passport", "certificate": "certificate"}
MAX_POSITION = (1 << 63) - 1 - MAX_BATCH  # ep and seq fit a signed 64-bit column, with a batch's last seq
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last instant a datetime can hold


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str  # accepted | duplicate | rejected
    reason: str
    payload: dict[str, Any] | None = None


def check_envelope(envelope: bytes, keys: KeyLookup, *, topic: str | None = None) -> Checked:
    """Verify one envelope against its device's trusted key and, when ``topic`` is given, that it was
    published on its own device's topic for its kind (``.../{dev}/reading`` for a reading or batch): a
    device with a valid key that publishes into another device's topic is caught here, whatever the
    broker's ACL let through.

    Raises:
        EnvelopeError: saying which check failed.
    """
    opened = open_envelope(envelope)
    claimed = opened.payload
    dev, ep, seq = claimed.get("dev"), claimed.get("ep"), claimed.get("seq")
    if not isinstance(dev, str) or not isinstance(ep, int) or not isinstance(seq, int):
        raise EnvelopeError("payload lacks dev/ep/seq")
    if not DEVICE_ID.fullmatch(dev):
        raise EnvelopeError(f"dev {dev[:80]!r} is not a device id")
    if not (1 <= ep <= MAX_POSITION and 1 <= seq <= MAX_POSITION):
        raise EnvelopeError(f"{dev}: ep {ep} or seq {seq} out of range")
    key = keys(dev)
    if key is None:
        raise EnvelopeError(f"no trusted key for device {dev!r}")
    payload = verify_envelope(opened, key)
    prev, kind, ts = payload.get("prev"), payload.get("kind"), payload.get("ts")
    name = f"{dev} ep {ep} seq {seq}"
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise EnvelopeError(f"{name}: prev is not 32 bytes")
    if not isinstance(kind, str) or kind not in TOPIC_OF_KIND:
        raise EnvelopeError(f"{name}: unknown kind {kind!r:.40}")
    if not isinstance(ts, int) or not 0 <= ts <= MAX_TS_MS:
        raise EnvelopeError(f"{name}: ts {ts!r:.40} is not a time in milliseconds")
    n = payload.get("n", 1) if kind == "batch" else 1
    if not isinstance(n, int) or not 1 <= n <= MAX_BATCH:
        raise EnvelopeError(f"{name}: batch size {n!r:.40}")
    if kind == "batch" and (not isinstance(payload.get("rows"), list) or len(payload["rows"]) != n):
        raise EnvelopeError(f"{name}: a batch of n = {n} must carry {n} rows")
    if topic is not None and not topic.endswith(f"/{dev}/{TOPIC_OF_KIND[kind]}"):
        raise EnvelopeError(f"{name}: a {kind} signed by {dev} was published on {printable(topic)}, "
                            "not on its own device's topic")
    return Checked(dev, ep, seq, n, kind, prev, hashlib.sha256(envelope).digest(), payload)


@dataclass
class EpochChain:
    """What arrived of one device's epoch: the envelope digest covering each sequence number, the
    ``prev`` of each envelope by its first sequence number, and every sequence number two different
    envelopes claimed (a conflict)."""

    digests: dict[int, bytes] = field(default_factory=dict)
    prevs: dict[int, bytes] = field(default_factory=dict)
    conflicts: list[int] = field(default_factory=list)

    def add(self, seq: int, n: int, prev: bytes, digest: bytes) -> None:
        self.prevs[seq] = prev
        for s in range(seq, seq + n):  # every reading of a batch has its own (dev, ep, seq)
            held = self.digests.setdefault(s, digest)
            if held != digest:
                self.conflicts.append(s)

    def missing(self) -> list[tuple[int, int]]:
        """The sequence numbers missing, as (first, last) ranges, from 1 to the highest received (walked
        over what arrived: a signed seq of 10**18 costs nothing)."""
        out, expected = [], 1
        for s in sorted(self.digests):
            if s > expected:
                out.append((expected, s - 1))
            expected = s + 1
        return out

    def missing_count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.missing())

    def breaks(self) -> list[int]:
        """First sequence numbers of envelopes whose ``prev`` is not the previous envelope's digest
        (where that one arrived)."""
        out = []
        for seq in sorted(self.prevs):
            expected = ZERO_HASH if seq == 1 else self.digests.get(seq - 1)
            if expected is not None and self.prevs[seq] != expected:
                out.append(seq)
        return out

    def describe(self, dev: str, ep: int) -> str:
        seqs = sorted(self.digests)
        missing, breaks = self.missing(), self.breaks()
        line = f"{dev} epoch {ep}: {len(seqs)} messages, seq {seqs[0]}..{seqs[-1]}"
        line += f"; missing {_spans(missing)}" if missing else "; none missing"
        if breaks:
            line += f"; CHAIN BROKEN before seq {', '.join(map(str, breaks))}"
        if self.conflicts:
            line += f"; CONFLICT (two envelopes) at seq {_ranges(sorted(set(self.conflicts)))}"
        return line


class ChainVerifier:
    """Accumulates envelopes; ``report`` says what is missing or broken."""

    def __init__(self, keys: KeyLookup) -> None:
        self._keys = keys
        self._chains: dict[tuple[str, int], EpochChain] = {}
        self.accepted = self.duplicates = self.rejected = 0

    def add(self, envelope: bytes, *, topic: str | None = None) -> Verdict:
        """Check one envelope (and the topic it came on, when it came from a broker)."""
        try:
            c = check_envelope(envelope, self._keys, topic=topic)
        except EnvelopeError as exc:
            self.rejected += 1
            return Verdict("rejected", str(exc))
        chain = self._chains.setdefault((c.dev, c.ep), EpochChain())
        if c.seq in chain.digests:
            if chain.digests[c.seq] == c.digest:
                self.duplicates += 1
                return Verdict("duplicate", f"{c.name} already received: duplicate or replay, ignored", c.payload)
            self.rejected += 1
            return Verdict("rejected", f"{c.name} already received with different content: conflict")
        chain.add(c.seq, c.n, c.prev, c.digest)
        self.accepted += 1
        return Verdict("accepted", c.name, c.payload)

    def report(self) -> tuple[list[str], bool]:
        """Lines describing every device/epoch, and whether the chains are intact (no break, no conflict)."""
        lines, intact = [], self.rejected == 0
        for (dev, ep), chain in sorted(self._chains.items()):
            intact = intact and not chain.breaks()
            lines.append(chain.describe(dev, ep))
        lines.append(f"{self.accepted} accepted, {self.duplicates} duplicates ignored, {self.rejected} rejected")
        return lines, intact


def _spans(spans: list[tuple[int, int]]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in spans)


def printable(text: str, limit: int = 200) -> str:
    """Text from the network as one line a log or a report may show: control characters and anything
    outside printable ASCII escaped, cut at ``limit``."""
    out = text.encode("ascii", "backslashreplace").decode("ascii")
    out = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in out)
    return out if len(out) <= limit else out[:limit] + "..."


def storable(value: Any, depth: int = 0) -> str | None:
    """Why a payload value cannot go into a database's JSON and text columns, or None: NaN or infinite
    numbers, integers past 2**53, NUL characters, non-text keys, anything nested deeper than 8 or longer
    than 4,096 (bytes are allowed: they are stored as hex)."""
    if depth > 8:
        return "nested too deeply"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if abs(value) <= 1 << 53 else f"integer {str(value)[:20]}... out of range"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"number {value!r}"
    if isinstance(value, str):
        return None if "\0" not in value and len(value) <= 4096 else "text with NUL or too long"
    if isinstance(value, bytes):
        return None if len(value) <= 4096 else "bytes too long"
    if isinstance(value, list | tuple):
        if len(value) > 4096:
            return "list too long"
        return next((p for v in value if (p := storable(v, depth + 1))), None)
    if isinstance(value, dict):
        if len(value) > 4096:
            return "map too long"
        for k, v in value.items():
            if not isinstance(k, str) or "\0" in k or len(k) > 128:
                return f"key {printable(repr(k), 40)}"
            if (p := storable(v, depth + 1)) is not None:
                return f"{printable(k, 40)}: {p}"
        return None
    return f"value of type {type(value).__name__}"


def _ranges(values: list[int]) -> str:
    """Sorted numbers -> "3-4, 8" (runs of consecutive numbers as spans)."""
    spans: list[tuple[int, int]] = []
    for v in values:
        if spans and v == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], v)
        else:
            spans.append((v, v))
    return _spans(spans)
