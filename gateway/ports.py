"""Protocols at the seams between the services and the adapters: one per role, named for the role.

Imports only ``model`` (and ``errors`` in docstrings): a port is a shape, not an implementation.
Adapters implement them; the composition roots (``gateway/app``) hand the implementations to the
services. Every method is called from the daemon's main loop unless its docstring says otherwise.
"""

from __future__ import annotations

from typing import Protocol

from .model import (
    ChainPosition,
    Counters,
    Delivery,
    Frame,
    OtaState,
    OutboxRow,
    OutgoingMessage,
    Received,
    Release,
    StoreResult,
)

__all__ = ["DiagClient", "FrameSource", "GroupSource", "IngestStore", "MessageSink", "Outbox", "Publisher",
           "ReleaseStore", "UpdateClient"]


class FrameSource(Protocol):
    """Yields CAN frames; ``recv`` returns None on timeout. Raises BusError when the interface is gone."""

    def recv(self, timeout_s: float) -> Frame | None: ...

    def close(self) -> None: ...


class MessageSink(Protocol):
    """Where the pipeline's signed messages go: its one way out.

    The daemon backs it with the SQLite outbox, ``replay`` with an in-memory stream, ``inspect`` with a
    sink that drops them without a chain position (only the inspection's certificate enters the chain).
    """

    def put(self, message: OutgoingMessage, *, chain: ChainPosition, counters: Counters) -> bool:
        """Take ``message`` together with the chain position it leaves behind and the counters.

        Returns:
            True when the message took its chain position (the pipeline moves on to ``chain``);
            False when the sink drops it without taking a position (the chain stays where it was).

        Raises:
            StateError: it could not be stored; nothing was taken, the pipeline tries again later.
        """
        ...

    def take_thinned(self) -> int:
        """Readings dropped under the disk cap since the last call (for the next passport's provenance)."""
        ...


class Outbox(Protocol):
    """Signed messages waiting for their acknowledgement, oldest first (the forwarder's side)."""

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
    """One diagnostic request at a time.

    ``poll`` returns None while the request is in flight, then ``("ok", reply)``,
    ``("error", kind, message)`` or ``("timeout", message)``.
    """

    @property
    def busy(self) -> bool: ...

    def start(self, request_id: int, response_id: int, request: bytes, *, timeout_s: float,
              ext: tuple[int, int] | None = None) -> None:
        """``ext``: extended addressing, (the ECU's address, ours) as the first byte of each frame (BMW)."""
        ...

    def feed(self, frame: Frame) -> None: ...

    def poll(self) -> tuple[object, ...] | None: ...

    def close(self) -> None: ...


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


class GroupSource(Protocol):
    """An ingest worker's share of the devices' messages from the engine's consumer group (a JetStream
    durable pull consumer, an MQTT 5 ``$share`` group). A message not acknowledged is delivered again,
    to this worker or another."""

    def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_messages``; an empty list when none came within ``timeout_s``.

        Raises:
            PublishError: the engine refused the consumer or the subscription.
        """

    def ack(self, deliveries: list[Delivery]) -> None:
        """Acknowledge: called only once what they carry is committed."""

    def close(self) -> None: ...


class IngestStore(Protocol):
    """The backend's database of what devices signed."""

    def store(self, batch: list[Received]) -> StoreResult:
        """Store a batch in one transaction: accepted envelopes once per ``(dev, ep, seq)``, rejections
        with their reason.

        Raises:
            StoreError: nothing of the batch was committed.
        """

    def close(self) -> None: ...
