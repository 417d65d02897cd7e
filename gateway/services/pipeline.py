"""Service: frames -> decoded values -> battery state -> signed reading/passport messages -> the sink.

Owns: when a message is due (reading interval, passport triggers of PASSPORT.md) and the order
"sign, hand to the sink with the chain position it takes, then advance". Time is measurement time:
the frame timestamps, or the ``now`` given to ``tick`` (wall clock in the daemon, capture time in
replay), so the same code serves both. Invariants: the chain advances only when the sink took the
message, so no ``(ep, seq)`` is ever handed out twice or skipped; the one way out is the
``MessageSink`` port (docs/architecture.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..core.battery import BatteryTracker, vin_hash
from ..core.config import PublishConfig
from ..core.decoding import Decoder
from ..core.passport import build_batch, build_passport, build_reading
from ..core.polls import PollSpec, decode_reply
from ..core.signing import Signer
from ..errors import DecodeError, StateError
from ..model import ChainPosition, Frame, OutgoingMessage
from ..ports import MessageSink

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)

_CLOCK_STEP_S = 5.0  # a backward step larger than this re-anchors the timers


class Pipeline:
    """Turns frames into signed messages for a ``MessageSink``. Single-threaded: call from one thread only."""

    def __init__(self, decoder: Decoder, tracker: BatteryTracker, *, signer: Signer, sink: MessageSink,
                 chain: ChainPosition, policy: PublishConfig, device_id: str, sw: str, vin_salt: bytes = b"",
                 epoch_note: str = "", outlook: Callable[[BatteryTracker, float], dict[str, Any] | None] | None = None,
                 first_reading_after_s: float = 1.0, charge_settle_s: float = 10.0) -> None:
        """Args:
            sink: where every signed message goes (the outbox, a replay stream, or nothing for ``inspect``).
            chain: the position the device's chain stands at (saved state, or a fresh one for replay).
            vin_salt: salt of the VIN hash; the VIN itself is never kept.
            epoch_note: why this epoch started (state lost), said in its first message and passports.
            outlook: forecast and warranty for the passport (``outlook.build_outlook`` bound to the prior).
            first_reading_after_s: publish the first reading this soon even if the state is partial.
            charge_settle_s: charging / idle must last this long to count as a change.
        """
        self._decoder, self._tracker, self._signer = decoder, tracker, signer
        self._device_id, self._sw, self._policy = device_id, sw, policy
        self._silence_s = max(policy.silence_s, 4 * decoder.profile.poll_pace_s)  # a car read only by polls
        self.counts: Counter[str] = Counter()
        self._sink = sink
        self._chain = chain
        self._ids = decoder.frame_ids
        self._specs: dict[int, list[PollSpec]] = {}
        for spec in decoder.profile.polls:
            self._specs.setdefault(spec.response_id, []).append(spec)
        self._signals = decoder.profile.field_sources()
        self._vin_salt = vin_salt
        self._epoch_note = epoch_note
        self._outlook = outlook
        self._first_reading_after_s = first_reading_after_s
        self._charge_settle_s = charge_settle_s
        self._last_tick: float | None = None
        self._batch: list[tuple[float, dict[str, Any]]] = []
        self._first_ts: float | None = None
        self._last_frame_ts: float | None = None
        self._next_reading: float | None = None
        self._last_passport_ts: float | None = None
        self._passport_soh: float | None = None
        self._pending: str | None = None  # reason of a passport that is due
        self._asleep = False
        self._charging = False
        self._charge_flip_ts: float | None = None

    @property
    def chain(self) -> ChainPosition:
        """Where the device's chain stands (the position the last message taken by the sink left)."""
        return self._chain

    # -- input -----------------------------------------------------------------------------------
    def _count(self, exc: DecodeError) -> None:
        self.counts[exc.kind] += 1
        if self.counts[exc.kind] == 1:
            log.warning("%s (dropped; further %s errors are counted, not logged)", exc, exc.kind)
        else:
            log.debug("%s", exc)

    def on_frame(self, frame: Frame) -> None:
        """Decode one broadcast frame, update the state, and sign what became due."""
        if frame.can_id not in self._ids:
            self.counts["ignored"] += 1
            return
        try:
            values = self._decoder.decode(frame)
        except DecodeError as exc:
            self._count(exc)
            return
        self.counts["decoded"] += 1
        ts = frame.ts
        self._seen(ts)
        previous_relay = self._tracker.values.get("main_relay")
        self._tracker.update(ts, values)
        for name, value in values:
            if name == "main_relay" and previous_relay == 1.0 and value == 0.0:
                self._want_passport("key-off")
            elif name == "bms_soh_pct" and self._passport_soh is not None \
                    and abs(value - self._passport_soh) >= self._policy.soh_change_pct:
                self._want_passport("soh-change")
            elif name == "pack_a":
                self._watch_charging(ts)
        self.tick(ts)

    def _seen(self, ts: float) -> None:
        if self._first_ts is None:
            self._first_ts = ts
        self._last_frame_ts = ts
        if self._asleep:
            self._asleep = False
            log.info("battery ECU is talking again")

    def _spec_for(self, response_id: int, reply: bytes) -> PollSpec | None:
        """The poll that ``reply`` on ``response_id`` answers (by its header), if any."""
        specs = self._specs.get(response_id, [])
        for spec in specs:
            if reply.startswith(spec.positive_header):
                return spec
        if len(reply) >= 2 and reply[0] == 0x7F:  # a negative response names only the service
            return next((s for s in specs if s.request[0] == reply[1]), None)
        return None

    def on_diag_reply(self, response_id: int, reply: bytes, ts: float, spec: PollSpec | None = None) -> str:
        """Decode a complete diagnostic reply into the battery state. Returns ``ok`` or the error kind.

        A negative response, a reply of an unknown length or for an unknown request is counted (and
        logged once per kind) and gives nothing. The daemon's diagnostics service and replay's passive
        reassembly call it; the next ``tick`` signs what it made due.
        """
        spec = spec or self._spec_for(response_id, reply)
        if spec is None:
            self.counts["diag_unknown"] += 1
            return "diag_unknown"
        try:
            got = decode_reply(spec, reply)
        except DecodeError as exc:
            self._count(exc)
            return exc.kind
        self.counts[f"diag:{spec.name}"] += 1
        self._seen(ts)
        self._tracker.update(ts, got.values)
        self._tracker.arrays.update(got.arrays)
        for name, text in got.texts.items():
            if name == "vin":  # pseudonymise at once: the VIN itself is never stored or sent
                self._tracker.texts["vin_hash"] = vin_hash(self._vin_salt, text)
            else:
                self._tracker.texts[name] = text
        if got.generation:
            self._tracker.generation = got.generation
        return "ok"

    def vehicle_state(self) -> str:
        """``off`` (no battery frames), ``charging``, ``driving`` (main relay closed) or ``awake``."""
        if self._asleep or self._last_frame_ts is None:
            return "off"
        if self._charging or self._tracker.charging:
            return "charging"
        if self._tracker.values.get("main_relay") == 1.0:
            return "driving"
        return "awake"

    def _watch_charging(self, ts: float) -> None:
        if self._tracker.charging == self._charging:
            self._charge_flip_ts = None
            return
        if self._charge_flip_ts is None:
            self._charge_flip_ts = ts
        elif ts - self._charge_flip_ts >= self._charge_settle_s:
            self._charging = not self._charging
            self._charge_flip_ts = None
            log.info("charging %s", "started" if self._charging else "ended")
            if not self._charging:
                self._want_passport("end-of-charge")

    def _want_passport(self, reason: str) -> None:
        self._pending = self._pending or reason

    def request_passport(self, reason: str = "request") -> None:
        """Ask for a passport update as soon as the state is complete (on-demand trigger)."""
        self._want_passport(reason)

    # -- time ------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Sign what is due at ``now``. Cheap when nothing is due; call it often."""
        if self._first_ts is None:
            return
        p = self._policy
        if self._last_tick is not None and now < self._last_tick - _CLOCK_STEP_S:
            self._clock_stepped_back(now)
        self._last_tick = now
        if self._next_reading is None and (not self._tracker.missing()
                                           or now - self._first_ts >= self._first_reading_after_s):
            self._next_reading = now
        if self._last_frame_ts is not None and not self._asleep and now - self._last_frame_ts >= self._silence_s:
            self._asleep = True
            log.info("no battery frames for %.0f s: car off or asleep", now - self._last_frame_ts)
            self._tracker.soh.end_session()  # before the key-off passport, so it carries the session
            self._want_passport("key-off")
        if self._next_reading is not None and now >= self._next_reading and not self._asleep:
            self._reading(now)
            self._next_reading = max(self._next_reading + p.reading_interval_s, now)
        if self._last_passport_ts is None:
            self._want_passport("first")
        elif now - self._last_passport_ts >= p.passport_interval_s:
            self._want_passport("daily")
        if self._pending and not self._tracker.missing():
            self._passport(min(now, self._tracker.last_ts or now), self._pending)

    def _clock_stepped_back(self, now: float) -> None:
        # NTP or a GNSS fix after a cold start can move the wall clock back by hours: re-anchor the timers
        # so readings continue at once instead of waiting for the old future to come round again.
        assert self._last_tick is not None
        log.warning("clock stepped back by %.0f s: timers re-anchored", self._last_tick - now)
        self.counts["clock_step_back"] += 1
        if self._next_reading is not None:
            self._next_reading = now
        if self._last_passport_ts is not None:
            self._last_passport_ts = min(self._last_passport_ts, now)
        if self._last_frame_ts is not None:
            self._last_frame_ts = min(self._last_frame_ts, now)
        self._first_ts = min(self._first_ts or now, now)

    def finish(self, now: float) -> None:
        """A final reading and passport (end of a replay)."""
        self._tracker.soh.end_session()
        self._reading(now)
        self._flush_batch()
        if not self._tracker.missing():
            self._passport(now, self._pending or "final")
        else:
            log.info("no passport: battery state incomplete (missing %s)", ", ".join(self._tracker.missing()))

    # -- output ----------------------------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        header = self._chain.header()
        if self._epoch_note and header["seq"] == 1:
            header["note"] = f"new epoch: {self._epoch_note}"  # say why the chain restarted
        return header

    def _reading(self, now: float) -> None:
        payload = build_reading(self._tracker, now=now, device_id=self._device_id, chain=self._header(),
                                sw=self._sw, bat=self._tracker.texts.get("bat"))
        if payload is None:
            return
        if self._policy.batch > 1:
            self._batch.append((now, payload["m"]))
            if len(self._batch) >= self._policy.batch:
                self._flush_batch()
            return
        self._sign("reading", payload)

    def _flush_batch(self) -> None:
        """Sign the readings collected so far as one batch envelope (before a passport, at the end)."""
        if not self._batch:
            return
        payload = build_batch(self._batch, device_id=self._device_id, chain=self._header(), sw=self._sw,
                              bat=self._tracker.texts.get("bat"))
        if self._sign("batch", payload, topic="reading", count=len(self._batch)) is not None:
            self._batch = []  # not stored: the readings stay and go with the next attempt

    def _passport(self, now: float, reason: str) -> None:
        self._flush_batch()  # the readings before a passport come before it in the chain
        payload = build_passport(self._tracker, now=now, device_id=self._device_id, chain=self._header(),
                                 sw=self._sw, signals=self._signals, reason=reason, bat=self._tracker.texts.get("bat"),
                                 outlook=self._outlook(self._tracker, now) if self._outlook else None)
        thinned = self._sink.take_thinned()
        if thinned or self._epoch_note:
            payload["prov"]["outbox"] = {"thinned_readings": thinned, "epoch_note": self._epoch_note,
                                         "policy": "readings thinned oldest first, one kept per interval"}
        taken = self._sign("passport", payload)
        if taken is None:
            return  # not stored: stays pending and is tried again
        self._pending = None
        self._last_passport_ts = now
        self._passport_soh = self._tracker.values.get("bms_soh_pct")
        if taken:
            log.info("passport update (%s)", reason)

    def _sign(self, kind: str, payload: dict[str, Any], *, topic: str = "", count: int = 1) -> bool | None:
        """Sign ``payload`` (built from ``_header()``) and hand it to the sink.

        Returns:
            True when the sink took it (the chain moves on), False when the sink dropped it without a
            chain position, None when it could not be stored (the chain stays: no ``(ep, seq)`` is ever
            reused or skipped; the caller tries again later).
        """
        envelope = self._signer.sign(payload)
        message = OutgoingMessage(topic=topic or kind, payload=envelope, retain=kind == "passport", kind=kind,
                                  seq=payload["seq"], ep=payload["ep"], body=payload, readings=count)
        following = self._chain.after(envelope, count)
        try:
            taken = self._sink.put(message, chain=following, counters=self._tracker.counters)
        except StateError as exc:
            self.counts[f"{kind}_not_stored"] += 1
            if self.counts[f"{kind}_not_stored"] in (1, 10, 100, 1000):
                log.error("%s not stored: %s", kind, exc)
            return None
        if taken:
            self._chain = following
            self.counts[kind] += 1
        return taken
