"""Protocols at the seams between services and adapters. One per role; adapters implement them."""

from __future__ import annotations

from typing import Protocol

from .battery import Counters
from .model import Frame, OtaState, OutboxRow, OutgoingMessage, Release
from .signing import Chain
from .soh import SegmentModel  # defined beside its one user (the estimator), listed here with the others

__all__ = ["DiagClient", "FrameSource", "Outbox", "Publisher", "ReleaseStore", "SegmentModel", "StateStore",
           "UpdateClient"]


class FrameSource(Protocol):
    """Yields CAN frames; ``recv`` returns None on timeout. Called from the main loop only."""

    def recv(self, timeout_s: float) -> Frame | None: ...

    def close(self) -> None: ...


class StateStore(Protocol):
    """Persists the chain position, the counters and the message that took that position, atomically."""

    def save(self, chain: Chain, counters: Counters, message: OutgoingMessage | None = None) -> None: ...

    def take_thinned(self) -> int: ...


class Outbox(Protocol):
    """Signed messages waiting for their acknowledgement, oldest first."""

    def oldest(self, limit: int, *, exclude: set[int]) -> list[OutboxRow]: ...

    def delete(self, ids: list[int]) -> None: ...


class Publisher(Protocol):
    """The uplink. ``publish`` never blocks on the network; it returns the message id, or None when the
    uplink cannot take it now. ``take_acks`` returns (message id, reason code, reason) of PUBACKs."""

    @property
    def is_connected(self) -> bool: ...

    def publish(self, message: OutgoingMessage) -> int | None: ...

    def take_acks(self) -> list[tuple[int, int, str]]: ...


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


class UpdateClient(Protocol):
    """Signed-metadata client (python-tuf)."""

    def check(self, target: str) -> Release:
        """Refresh the metadata and describe ``target``. Raises UpdateError."""
        ...

    def download(self, release: Release) -> str:
        """Download (resuming a partial download) and verify ``release``; return the file. Raises UpdateError."""
        ...


class ReleaseStore(Protocol):
    """Release directories, the ``current`` symlink and the updater's state."""

    def current(self) -> str | None: ...

    def install(self, bundle: str, version: str) -> None:
        """Unpack and install ``bundle`` as ``releases/<version>`` (not switched to). Raises UpdateError."""
        ...

    def switch(self, version: str) -> None: ...

    def prune(self, keep: set[str]) -> None: ...

    def load_state(self) -> OtaState: ...

    def save_state(self, state: OtaState) -> None: ...
