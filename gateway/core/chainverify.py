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
from ..model import ZERO_HASH
from .signing import open_envelope, verify_envelope

__all__ = ["ChainVerifier", "Verdict"]

KeyLookup = Callable[[str], ec.EllipticCurvePublicKey | None]


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str  # accepted | duplicate | rejected
    reason: str
    payload: dict[str, Any] | None = None


@dataclass
class _Epoch:
    digests: dict[int, bytes] = field(default_factory=dict)
    prevs: dict[int, bytes] = field(default_factory=dict)


class ChainVerifier:
    """Accumulates envelopes; ``report`` says what is missing or broken."""

    def __init__(self, keys: KeyLookup) -> None:
        self._keys = keys
        self._chains: dict[tuple[str, int], _Epoch] = {}
        self.accepted = self.duplicates = self.rejected = 0

    def add(self, envelope: bytes) -> Verdict:
        """Check one envelope."""
        try:
            claimed = open_envelope(envelope).payload
            dev, ep, seq = claimed.get("dev"), claimed.get("ep"), claimed.get("seq")
            if not isinstance(dev, str) or not isinstance(ep, int) or not isinstance(seq, int):
                raise EnvelopeError("payload lacks dev/ep/seq")
            key = self._keys(dev)
            if key is None:
                raise EnvelopeError(f"no trusted key for device {dev!r}")
            payload = verify_envelope(envelope, key)
            prev = payload.get("prev")
            if not isinstance(prev, bytes) or len(prev) != 32:
                raise EnvelopeError("prev is not 32 bytes")
        except EnvelopeError as exc:
            self.rejected += 1
            return Verdict("rejected", str(exc))
        digest = hashlib.sha256(envelope).digest()
        chain = self._chains.setdefault((dev, ep), _Epoch())
        count = payload.get("n", 1) if payload.get("kind") == "batch" else 1
        if not isinstance(count, int) or not 1 <= count <= 100_000:
            self.rejected += 1
            return Verdict("rejected", f"{dev} ep {ep} seq {seq}: batch size {count!r}")
        name = f"{dev} ep {ep} seq {seq}" + (f"..{seq + count - 1}" if count > 1 else "")
        if seq in chain.digests:
            if chain.digests[seq] == digest:
                self.duplicates += 1
                return Verdict("duplicate", f"{name} already received: duplicate or replay, ignored", payload)
            self.rejected += 1
            return Verdict("rejected", f"{name} already received with different content: conflict")
        chain.prevs[seq] = prev
        for s in range(seq, seq + count):  # every reading of a batch has its own (dev, ep, seq)
            chain.digests[s] = digest
        self.accepted += 1
        return Verdict("accepted", name, payload)

    def report(self) -> tuple[list[str], bool]:
        """Lines describing every device/epoch, and whether the chains are intact (no break, no conflict)."""
        lines, intact = [], self.rejected == 0
        for (dev, ep), chain in sorted(self._chains.items()):
            seqs = sorted(chain.digests)
            missing = _ranges(sorted(set(range(1, seqs[-1] + 1)) - set(seqs)))
            breaks = []
            for seq in sorted(chain.prevs):  # the first sequence number of each envelope
                expected = ZERO_HASH if seq == 1 else chain.digests.get(seq - 1)
                if expected is not None and chain.prevs[seq] != expected:
                    breaks.append(seq)
            intact = intact and not breaks
            line = f"{dev} epoch {ep}: {len(seqs)} messages, seq {seqs[0]}..{seqs[-1]}"
            line += f"; missing {missing}" if missing else "; none missing"
            if breaks:
                line += f"; CHAIN BROKEN before seq {', '.join(map(str, breaks))}"
            lines.append(line)
        lines.append(f"{self.accepted} accepted, {self.duplicates} duplicates ignored, {self.rejected} rejected")
        return lines, intact


def _ranges(values: list[int]) -> str:
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)
