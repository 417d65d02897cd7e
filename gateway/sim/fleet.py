"""Light simulated gateways for the fleet tests and ``bench/run.py fleet``: many devices in one process,
each with its own key, hash chain and MQTT session, without a CAN bus or a battery model.

A light gateway signs readings like the daemon (the same payload header, ``Signer`` and ``ChainPosition``)
and delivers them with the daemon's own delivery path: the ``Forwarder`` over a ``PahoPublisher`` (the
broker list, failover and back, the protocol), from an outbox held in memory. So a message leaves the
outbox only on its PUBACK, as on a device, and ``produced`` is the record of everything it signed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ..adapters.mqtt import PahoPublisher
from ..core.passport import PAYLOAD_VERSION
from ..core.signing import Signer, device_id_of
from ..model import ChainPosition, OutboxRow, OutgoingMessage
from ..services.forwarder import Forwarder

__all__ = ["LightGateway", "MemoryOutbox"]


@dataclass
class MemoryOutbox:
    """The ``Outbox`` port in memory: rows by id, oldest first."""

    rows: dict[int, OutgoingMessage] = field(default_factory=dict)
    _next: int = 1

    def add(self, message: OutgoingMessage) -> None:
        self.rows[self._next] = message
        self._next += 1

    def oldest(self, limit: int, *, exclude: set[int]) -> list[OutboxRow]:
        out = []
        for row_id, message in self.rows.items():  # insertion order is age
            if row_id not in exclude:
                out.append(OutboxRow(row_id, message))
                if len(out) == limit:
                    break
        return out

    def delete(self, ids: list[int]) -> None:
        for row_id in ids:
            self.rows.pop(row_id, None)


class LightGateway:
    """One simulated device: ``sign`` puts readings in its outbox, ``step`` delivers."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, *, hosts: list[tuple[str, int]], protocol: str = "5",
                 topic_prefix: str = "bp/v1", connect: bool = True, seed: int = 0) -> None:
        self.key, self.device_id = key, device_id_of(key.public_key())
        self._signer = Signer(key)
        self._chain = ChainPosition()
        self._rng = random.Random(seed)
        self.outbox = MemoryOutbox()
        self.produced: list[bytes] = []  # every envelope signed, in chain order
        self.uplink = PahoPublisher(hosts=hosts, device_id=self.device_id, topic_prefix=topic_prefix,
                                    sw="sim-fleet", protocol=protocol, min_backoff_s=0.5, max_backoff_s=5.0) \
            if connect else None
        self.forwarder = Forwarder(self.outbox, self.uplink, window=50, resend_after_s=20.0) \
            if self.uplink is not None else None

    def payload(self, ts_s: float) -> dict[str, Any]:
        """The next reading's payload at ``ts_s`` (plausible Leaf values)."""
        soc, amps = round(self._rng.uniform(20, 95), 2), round(self._rng.uniform(-40, 5), 1)
        return {"v": PAYLOAD_VERSION, "kind": "reading", "dev": self.device_id, **self._chain.header(),
                "ts": round(ts_s * 1000), "sw": "sim-fleet", "bat": None,
                "m": {"soc_pct": soc, "pack_v": round(340 + soc * 0.6, 2), "pack_a": amps,
                      "temp_c_avg": round(self._rng.uniform(10, 30), 1), "bms_soh_pct": 85.0}}

    def sign(self, count: int, *, start_s: float, every_s: float = 60.0) -> list[bytes]:
        """Sign ``count`` readings ``every_s`` apart from ``start_s`` into the outbox; the envelopes."""
        out = []
        for i in range(count):
            body = self.payload(start_s + i * every_s)
            envelope = self._signer.sign(body)
            self.outbox.add(OutgoingMessage(topic="reading", payload=envelope, retain=False, kind="reading",
                                            seq=body["seq"], ep=body["ep"], body=body))
            self._chain = self._chain.after(envelope)
            out.append(envelope)
        self.produced.extend(out)
        return out

    def step(self, now: float) -> None:
        if self.forwarder is not None:
            self.forwarder.step(now)

    @property
    def pending(self) -> int:
        """Signed and not acknowledged by a broker yet."""
        return len(self.outbox.rows)

    def close(self) -> None:
        if self.uplink is not None:
            self.uplink.close(timeout_s=1.0)
