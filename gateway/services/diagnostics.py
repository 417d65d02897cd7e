"""Service: poll the battery ECU on the profile's schedule, one request at a time, through a DiagClient.

Owns: which poll is due in which vehicle state (``off`` never: polling keeps a sleeping car's
12 V system awake, the most reported problem of comparable dongles), retries after failures, and
handing each complete reply to the ``on_reply`` callback (the pipeline's ``on_diag_reply``, wired by
the composition root). Errors are counted per kind and logged once per (poll, kind).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from ..core.polls import PollSpec
from ..model import Frame
from ..ports import DiagClient

__all__ = ["DiagService", "ReplyHandler"]

log = logging.getLogger(__name__)

# (response id, reply, measurement time, the poll it answers) -> "ok" or the error kind
ReplyHandler = Callable[[int, bytes, float, PollSpec], str]


class DiagService:
    """Drives a ``DiagClient`` from the main loop."""

    def __init__(self, specs: tuple[PollSpec, ...], client: DiagClient, *, on_reply: ReplyHandler,
                 vehicle_state: Callable[[], str], retry_s: float = 30.0) -> None:
        """Args:
            specs: the profile's polls, in schedule order.
            on_reply: takes every complete reply (called on the main loop, inside ``step``).
            vehicle_state: ``off``, ``charging``, ``driving`` or ``awake`` now (which polls are due).
        """
        self.specs, self.client, self.retry_s = specs, client, retry_s
        self.response_ids = frozenset(s.response_id for s in specs)
        self._on_reply, self._vehicle_state = on_reply, vehicle_state
        self.counts: Counter[str] = Counter()  # every outcome by kind, ``ok`` included
        self.failures: Counter[str] = Counter()  # requests that got no reply: ``timeout`` and transport errors
        self._next: dict[str, float] = {}
        self._inflight: PollSpec | None = None
        self._logged: set[tuple[str, str]] = set()

    def on_frame(self, frame: Frame) -> bool:
        """Take a frame if it is a diagnostic reply; True when it was."""
        if frame.can_id in self.response_ids:
            self.client.feed(frame)
            return True
        return False

    def request(self, spec: PollSpec) -> None:
        """Send ``spec``'s request now (``inspect``); the outcome arrives through ``step``."""
        self.client.start(spec.request_id, spec.response_id, spec.request, timeout_s=spec.timeout_s,
                          ext=spec.ext_address)
        self._inflight = spec

    def step(self, now: float, *, schedule: bool = True) -> tuple[PollSpec, str] | None:
        """Drive the client; handle a finished request; start the next due one if ``schedule``.

        Returns:
            (poll, result) when a request finished: result is ``ok``, an error kind, or ``timeout``.
        """
        finished = None
        outcome = self.client.poll()
        if outcome is not None and self._inflight is not None:
            spec, self._inflight = self._inflight, None
            finished = (spec, self._finish(spec, outcome, now))
        if schedule and not self.client.busy:
            due = self.due(now, self._vehicle_state())
            if due is not None:
                self._next[due.name] = now + self.retry_s  # until its outcome says otherwise
                self.request(due)
        return finished

    def due(self, now: float, state: str) -> PollSpec | None:
        """The first poll due in ``state``; in ``off`` only a profile's probe (a poll with ``off`` in ``every_s``)."""
        for spec in self.specs:
            if state in spec.every_s and now >= self._next.get(spec.name, 0.0):
                return spec
        return None

    def _finish(self, spec: PollSpec, outcome: tuple[object, ...], now: float) -> str:
        state = self._vehicle_state()
        interval = spec.every_s.get(state, self.retry_s)
        message = ""
        if outcome[0] == "ok":
            reply = outcome[1]
            assert isinstance(reply, bytes)
            kind = self._on_reply(spec.response_id, reply, now, spec)  # counts and logs its errors
            if kind == "ok":
                self._next[spec.name] = now + interval
                self.counts["ok"] += 1
                return "ok"
        elif outcome[0] == "timeout":
            kind, message = "timeout", f"{spec.name}: {outcome[1]}"
        else:
            kind, message = str(outcome[1]), f"{spec.name}: {outcome[2]}"
        self.counts[kind] += 1
        if message:
            self.failures[kind] += 1
        # a failure is retried after retry_s, but a probe of a car that is off waits its own interval
        delay = interval if state == "off" else min(self.retry_s, interval)
        if message and (spec.name, kind) not in self._logged:
            self._logged.add((spec.name, kind))
            log.warning("%s (retrying in %.0f s; further %s errors of this poll are counted)", message, delay, kind)
        self._next[spec.name] = now + delay
        return kind

