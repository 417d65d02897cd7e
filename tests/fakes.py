"""Fakes of our own ports, for pure unit tests."""

from __future__ import annotations

from gateway.battery import Counters
from gateway.errors import StateError
from gateway.model import OutgoingMessage
from gateway.signing import Chain


class MemoryStateStore:
    """``StateStore`` in memory: records every save."""

    def __init__(self) -> None:
        self.saves: list[tuple[int, int, bytes]] = []
        self.counters: dict[str, object] = {}
        self.messages: list[OutgoingMessage] = []
        self.fail = False  # a full disk
        self.thinned = 0  # readings the outbox thinned since the last passport

    def save(self, chain: Chain, counters: Counters, message: OutgoingMessage | None = None) -> None:
        if self.fail:
            raise StateError("device.state_dir: disk full")
        self.saves.append((chain.ep, chain.seq, chain.prev))
        self.counters = counters.to_dict()
        if message is not None:
            self.messages.append(message)

    def take_thinned(self) -> int:
        n, self.thinned = self.thinned, 0
        return n
