"""Composition root of ``battery-gateway replay``: a recorded capture through the daemon's pipeline.

The pipeline is the daemon's, built from the same config; its messages go to an in-memory stream
instead of the outbox, and nothing is persisted. The device key is the config's when it exists and is
readable, else a throw-away key (the payloads are the same; only the signatures differ).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric import ec

from ..adapters.capture_files import CaptureStats, read_capture
from ..adapters.keystore import load_private_key
from ..core.config import Config
from ..errors import ConfigError
from ..model import ChainPosition, Counters, OutgoingMessage
from ..services.replay import MessageStream, Replay
from .wiring import Assembly, assemble

__all__ = ["ReplayRun", "replay_capture"]


@dataclass
class ReplayRun:
    """A replay being run: iterate ``messages``; then ``counts`` and ``missing`` tell how it went."""

    parts: Assembly
    replay: Replay
    messages: Iterator[OutgoingMessage]

    def counts(self) -> Counter[str]:
        """What was decoded, dropped and signed, by kind."""
        return self.parts.pipeline.counts + self.parts.decoder.counts + self.replay.counts

    def missing(self) -> list[str]:
        """The fields a passport needs that the capture never gave."""
        return self.parts.tracker.missing()


def replay_capture(capture: str, *, config: Config, profile: str | None, bus: int | None,
                   stats: CaptureStats, progress: Callable[[], None] | None = None) -> ReplayRun:
    """Build a pipeline for offline replay and the iterator of what it would publish.

    Args:
        capture: the capture file, or ``-`` for standard input (read once, as it comes).
        stats: filled in by the reader while ``messages`` is iterated.
        progress: called every 4,096 frames; ``stats.bytes_read`` of ``stats.size_bytes`` says how far.

    Raises:
        ConfigError: unknown profile.
        CaptureError: unreadable, unrecognised or broken capture (raised while ``messages`` is iterated).
    """
    if profile:
        config = replace(config, vehicle=replace(config.vehicle, profile=profile))
    try:
        key = load_private_key(config.device.key_file)
    except ConfigError:
        key = ec.generate_private_key(ec.SECP256R1())
    stream = MessageStream()
    parts = assemble(config, key, sink=stream, chain=ChainPosition(), counters=Counters(),
                     device_id=config.device.id or "replay", vin_salt=os.urandom(16))
    replies = parts.profile.response_ids - parts.decoder.frame_ids  # an id that is both is decoded as broadcast
    ext = {p.response_id: p.ext_address[1] for p in parts.profile.polls if p.ext_address}
    replay = Replay(parts.pipeline, stream, response_ids=replies, bus=bus, progress=progress, ext=ext)
    frames = read_capture(capture, want=parts.profile.frame_ids, stats=stats)
    return ReplayRun(parts, replay, replay.run(frames))
