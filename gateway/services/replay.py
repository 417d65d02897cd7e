"""Service: run a capture through the same pipeline as the daemon, in capture time.

Owns: turning capture timestamps into a usable measurement clock (never backwards, never years
ahead), reassembling the poll replies seen on the bus (the daemon polls actively; a capture only has
what another tool asked for), and the stream the pipeline's messages leave through. A poll reply the
capture cuts off is counted as ``isotp_incomplete``. Captures step backwards (GVRET sub-millisecond
jitter, a stale buffer 581 s back in one ZE0 log): a step back of up to ``max_back_s`` is held at the
last time; a larger one is treated as a new segment that continues from the last time (so the frames
after it still count, in order).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from ..core.isotp_passive import PassiveIsoTp
from ..errors import DecodeError
from ..model import ChainPosition, Counters, Frame, OutgoingMessage

__all__ = ["CaptureClock", "FrameConsumer", "MessageStream", "Replay"]

log = logging.getLogger(__name__)


class FrameConsumer(Protocol):
    """What a replay feeds: the pipeline's inputs."""

    def on_frame(self, frame: Frame) -> None: ...

    def on_diag_reply(self, response_id: int, reply: bytes, ts: float) -> str: ...

    def tick(self, now: float) -> None: ...

    def finish(self, now: float) -> None: ...


class MessageStream:
    """A ``MessageSink`` that keeps every message in memory until ``drain`` (nothing is persisted)."""

    def __init__(self) -> None:
        self._messages: deque[OutgoingMessage] = deque()

    def put(self, message: OutgoingMessage, *, chain: ChainPosition, counters: Counters) -> bool:
        self._messages.append(message)
        return True

    def take_thinned(self) -> int:
        return 0

    def drain(self) -> Iterator[OutgoingMessage]:
        """The messages put since the last call, oldest first."""
        while self._messages:
            yield self._messages.popleft()


class CaptureClock:
    """Non-decreasing capture time that never runs away: a jump forward of more than ``max_forward_s`` (a
    broken timestamp; a parked car's real gaps are hours or days) continues from the last time too."""

    def __init__(self, *, max_back_s: float = 1.0, max_forward_s: float = 30 * 86400.0) -> None:
        self.max_back_s, self.max_forward_s = max_back_s, max_forward_s
        self.offset = 0.0
        self.last: float | None = None
        self.rebased = 0

    def __call__(self, ts: float) -> float:
        t = ts + self.offset
        last = self.last
        if last is not None and (t < last or t - last > self.max_forward_s):
            if t < last and last - t <= self.max_back_s:
                t = last  # jitter: held
            else:
                self.offset += last - t
                self.rebased += 1
                t = last
        self.last = t
        return t


class Replay:
    """Feeds a capture's frames to a ``FrameConsumer`` and yields what it puts on ``stream``."""

    def __init__(self, consumer: FrameConsumer, stream: MessageStream, *, response_ids: frozenset[int],
                 bus: int | None = None, progress: Callable[[], None] | None = None,
                 ext: Mapping[int, int] | None = None) -> None:
        """Args:
            response_ids: CAN ids of poll replies, reassembled passively and handed to ``on_diag_reply``.
            ext: response ids with extended addressing -> the address byte their frames start with.
            bus: keep only frames from this bus number (CRTD/GVRET/candump channel), all when None.
            progress: called every 4,096 frames (the caller knows how far the reader is).
        """
        self._consumer, self._stream = consumer, stream
        self._passive = PassiveIsoTp(response_ids, ext=ext)
        self._bus, self._progress = bus, progress
        self.counts: Counter[str] = Counter()  # poll replies that could not be reassembled, by kind

    def run(self, frames: Iterable[Frame]) -> Iterator[OutgoingMessage]:
        """Every message the pipeline signs for ``frames``, in order, then the final reading and passport."""
        clock = CaptureClock()
        consumer, diag_ids, progress = self._consumer, self._passive.ids, self._progress
        n = 0
        for frame in frames:
            n += 1
            if progress is not None and not n & 0xFFF:
                progress()
            if self._bus is not None and frame.bus != self._bus:
                continue
            t = clock(frame.ts)
            if t != frame.ts:
                frame = Frame(t, frame.can_id, frame.data, frame.bus, frame.is_extended, frame.is_tx)
            if frame.can_id in diag_ids:
                self._reassemble(frame)
                consumer.tick(t)
            else:
                consumer.on_frame(frame)
            yield from self._stream.drain()
        for exc in self._passive.finish():  # replies the capture cut off
            self._count(exc)
        if clock.last is not None:
            consumer.finish(clock.last)
            yield from self._stream.drain()

    def _count(self, exc: DecodeError) -> None:
        self.counts[exc.kind] += 1
        if self.counts[exc.kind] == 1:
            log.warning("%s (dropped; further %s errors are counted, not logged)", exc, exc.kind)

    def _reassemble(self, frame: Frame) -> None:
        try:
            reply = self._passive.feed(frame)
        except DecodeError as exc:
            self._count(exc)
            return
        if reply is not None:
            self._consumer.on_diag_reply(frame.can_id, reply, frame.ts)
