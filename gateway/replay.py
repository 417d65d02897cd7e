"""Service: run a capture through the same pipeline as the daemon, in capture time.

Owns: turning capture timestamps into a usable measurement clock. Captures step backwards (GVRET
sub-millisecond jitter, a stale buffer 581 s back in one ZE0 log): a step back of up to
``max_back_s`` is held at the last time; a larger one is treated as a new segment that continues
from the last time (so the frames after it still count, in order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from .model import Frame, OutgoingMessage
from .pipeline import Pipeline

__all__ = ["CaptureClock", "replay_frames"]


class CaptureClock:
    """Non-decreasing capture time."""

    def __init__(self, *, max_back_s: float = 1.0) -> None:
        self.max_back_s = max_back_s
        self.offset = 0.0
        self.last: float | None = None
        self.rebased = 0

    def __call__(self, ts: float) -> float:
        t = ts + self.offset
        last = self.last
        if last is not None and t < last:
            if last - t > self.max_back_s:
                self.offset += last - t
                self.rebased += 1
            t = last
        self.last = t
        return t


def replay_frames(pipeline: Pipeline, frames: Iterable[Frame], *, bus: int | None = None,
                  progress: Callable[[], None] | None = None) -> Iterator[OutgoingMessage]:
    """Feed frames to the pipeline in capture time; yield every message it produces, then the final ones.

    Args:
        bus: keep only frames from this bus number (CRTD/GVRET/candump channel), all when None.
        progress: called every 4,096 frames (the caller knows how far the reader is).
    """
    clock = CaptureClock()
    on_frame = pipeline.on_frame
    n = 0
    for frame in frames:
        n += 1
        if progress is not None and not n & 0xFFF:
            progress()
        if bus is not None and frame.bus != bus:
            continue
        t = clock(frame.ts)
        if t != frame.ts:
            frame = Frame(t, frame.can_id, frame.data, frame.bus, frame.is_extended, frame.is_tx)
        yield from on_frame(frame)
    if clock.last is not None:
        yield from pipeline.finish(clock.last)
