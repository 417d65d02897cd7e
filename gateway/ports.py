"""Protocols at the seams between services and adapters. One per role; adapters implement them."""

from __future__ import annotations

from typing import Protocol

from .battery import Counters
from .model import Frame, OutgoingMessage
from .signing import Chain

__all__ = ["DiagClient", "FrameSource", "Publisher", "StateStore"]


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


class DiagClient(Protocol):
    """One diagnostic request at a time. Called from the main loop only.

    ``poll`` returns None while the request is in flight, then ``("ok", reply)``,
    ``("error", kind, message)`` or ``("timeout", message)``.
    """

    @property
    def busy(self) -> bool: ...

    def start(self, request_id: int, response_id: int, request: bytes, *, timeout_s: float) -> None: ...

    def feed(self, frame: Frame) -> None: ...

    def poll(self) -> tuple[object, ...] | None: ...
