"""Fakes of our own ports, for pure unit tests."""

from __future__ import annotations

from gateway.battery import Counters
from gateway.signing import Chain


class MemoryStateStore:
    """``StateStore`` in memory: records every save."""

    def __init__(self) -> None:
        self.saves: list[tuple[int, int, bytes]] = []
        self.counters: dict[str, object] = {}

    def save(self, chain: Chain, counters: Counters) -> None:
        self.saves.append((chain.ep, chain.seq, chain.prev))
        self.counters = counters.to_dict()
