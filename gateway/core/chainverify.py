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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import EnvelopeError
from ..model import ZERO_HASH, Checked
from .signing import open_envelope, verify_envelope

__all__ = ["ChainVerifier", "EpochChain", "KeyLookup", "Verdict", "check_envelope", "ranges"]

KeyLookup = Callable[[str], ec.EllipticCurvePublicKey | None]

# The topic (last segment) each kind is published on; a batch of readings goes on ``reading``.
TOPIC_OF_KIND = {"reading": "reading", "batch": "reading", "passport": "passport", "certificate": "certificate"}
MAX_BATCH = 100_000


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
    claimed = open_envelope(envelope).payload
    dev, ep, seq = claimed.get("dev"), claimed.get("ep"), claimed.get("seq")
    if not isinstance(dev, str) or not isinstance(ep, int) or not isinstance(seq, int):
        raise EnvelopeError("payload lacks dev/ep/seq")
    key = keys(dev)
    if key is None:
        raise EnvelopeError(f"no trusted key for device {dev!r}")
    payload = verify_envelope(envelope, key)
    prev, kind = payload.get("prev"), payload.get("kind")
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise EnvelopeError("prev is not 32 bytes")
    if not isinstance(kind, str) or kind not in TOPIC_OF_KIND:
        raise EnvelopeError(f"{dev} ep {ep} seq {seq}: unknown kind {kind!r}")
    n = payload.get("n", 1) if kind == "batch" else 1
    if not isinstance(n, int) or not 1 <= n <= MAX_BATCH:
        raise EnvelopeError(f"{dev} ep {ep} seq {seq}: batch size {n!r}")
    if topic is not None and not topic.endswith(f"/{dev}/{TOPIC_OF_KIND[kind]}"):
        raise EnvelopeError(f"{dev} ep {ep} seq {seq}: a {kind} signed by {dev} was published on {topic}, "
                            "not on its own device's topic")
    return Checked(dev, ep, seq, n, kind, prev, hashlib.sha256(envelope).digest(), payload)


@dataclass
class EpochChain:
    """What arrived of one device's epoch: the envelope digest covering each sequence number, and the
    ``prev`` of each envelope by its first sequence number."""

    digests: dict[int, bytes] = field(default_factory=dict)
    prevs: dict[int, bytes] = field(default_factory=dict)

    def add(self, seq: int, n: int, prev: bytes, digest: bytes) -> None:
        self.prevs[seq] = prev
        for s in range(seq, seq + n):  # every reading of a batch has its own (dev, ep, seq)
            self.digests[s] = digest

    def missing(self) -> list[int]:
        return sorted(set(range(1, max(self.digests) + 1)) - set(self.digests)) if self.digests else []

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
        missing, breaks = ranges(self.missing()), self.breaks()
        line = f"{dev} epoch {ep}: {len(seqs)} messages, seq {seqs[0]}..{seqs[-1]}"
        line += f"; missing {missing}" if missing else "; none missing"
        if breaks:
            line += f"; CHAIN BROKEN before seq {', '.join(map(str, breaks))}"
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


def ranges(values: list[int]) -> str:
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)
