"""Service: outbox -> publisher, oldest first, a bounded window in flight, delete on a successful PUBACK.

Owns: the in-flight window (row id per MQTT message id), what a PUBACK reason means (< 0x80 success:
delete; "not authorized", "quota exceeded" and other failures: keep, log, hold back the uplink for a
while), and sending again what stayed unacknowledged for ``resend_after_s`` (paho itself re-sends its
in-flight messages after a reconnect, so a short outage causes no duplicates; a long one may, and the
backend drops them by ``(dev, ep, seq)``).
Runs on the main loop; acknowledgements arrive as (mid, reason code, reason) tuples the publisher
queued from its network thread.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from ..ports import Outbox, Publisher

__all__ = ["Forwarder"]

log = logging.getLogger(__name__)


@dataclass
class Forwarder:
    """Drains the outbox through the uplink."""

    outbox: Outbox
    uplink: Publisher
    window: int = 100
    hold_s: float = 30.0  # after a refused message, wait this long before sending more
    resend_after_s: float = 120.0
    counts: Counter[str] = field(default_factory=Counter)
    _inflight: dict[int, tuple[int, float]] = field(default_factory=dict)  # mid -> (row id, sent at)
    _hold_until: float = 0.0
    _logged: set[int] = field(default_factory=set)

    def step(self, now: float) -> int:
        """Handle acknowledgements, then fill the window. Returns how many messages were handed out."""
        done: list[int] = []
        for mid, code, reason in self.uplink.take_acks():
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue
            if code < 0x80:
                done.append(entry[0])
            else:
                self.counts[f"refused_{code:#04x}"] += 1
                if code not in self._logged:
                    self._logged.add(code)
                    log.error("broker refused a message (PUBACK %#04x %s); it stays in the outbox, "
                              "retrying in %.0f s", code, reason, self.hold_s)
                self._hold_until = now + self.hold_s
        if done:
            self.outbox.delete(done)
            self.counts["delivered"] += len(done)
        if not self.uplink.is_connected:
            return 0
        stale = [mid for mid, (_, sent) in self._inflight.items() if now - sent > self.resend_after_s]
        for mid in stale:
            del self._inflight[mid]
            self.counts["resent"] += 1
        if now < self._hold_until:
            return 0
        room = self.window - len(self._inflight)
        if room <= 0:
            return 0
        sent = 0
        for row in self.outbox.oldest(room, exclude={r for r, _ in self._inflight.values()}):
            message_id = self.uplink.publish(row.message)  # the stored bytes, unchanged
            if message_id is None:
                break
            self._inflight[message_id] = (row.id, now)
            sent += 1
        return sent

    @property
    def in_flight(self) -> int:
        return len(self._inflight)
