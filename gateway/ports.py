"""Protocols at the seams between services and adapters. One per role; adapters implement them."""

from __future__ import annotations

from typing import Protocol

from .battery import Counters
from .model import Frame, OutgoingMessage
from .signing import Chain

__all__ = ["FrameSource", "Publisher", "StateStore"]


class FrameSource(Protocol):
    """Yields CAN frames; ``recv`` returns None on timeout. Called from the main loop only."""

    def recv(self, timeout_s: float) -> Frame | None: ...

    def close(self) -> None: ...


class StateStore(Protocol):
    """Persists the hash chain and the counters so that a restart continues both."""

    def save(self, chain: Chain, counters: Counters) -> None: ...


class Publisher(Protocol):
    """Delivers signed envelopes. ``publish`` must not block on the network."""

    def publish(self, message: OutgoingMessage) -> None: ...
