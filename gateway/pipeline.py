"""Service: frames -> decoded values -> battery state -> signed reading/passport messages.

Owns: when a message is due (reading interval, passport triggers of PASSPORT.md) and the order
"sign, advance the chain, persist, hand out". Time is measurement time: the frame timestamps, or the
``now`` given to ``tick`` (wall clock in the daemon, capture time in replay), so the same code serves
both. Invariant: a message leaves only after its chain position and the counters were saved.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .battery import BatteryTracker
from .decoding import Decoder
from .errors import DecodeError, StateError
from .isotp_passive import PassiveIsoTp
from .model import Frame, OutgoingMessage
from .passport import build_batch, build_passport, build_reading
from .polls import ARRAY_FIELDS, PollSpec, decode_reply
from .ports import StateStore
from .signing import Chain, Signer

__all__ = ["Pipeline", "PublishPolicy"]

log = logging.getLogger(__name__)

_CLOCK_STEP_S = 5.0  # a backward step larger than this re-anchors the timers


@dataclass(frozen=True, slots=True)
class PublishPolicy:
    """When messages are due (config ``[publish]``)."""

    reading_interval_s: float = 60.0
    passport_interval_s: float = 86400.0
    soh_change_pct: float = 1.0
    first_reading_after_s: float = 1.0  # publish the first reading this soon even if state is partial
    silence_s: float = 5.0  # no frames this long = car off (key-off passport)
    charge_settle_s: float = 10.0  # charging / idle must last this long to count as a change
    batch: int = 1  # readings per envelope (cellular fleets); 1 = one envelope per reading


class Pipeline:
    """Turns frames into signed messages. Single-threaded: call from one thread only."""

    def __init__(self, decoder: Decoder, tracker: BatteryTracker, signer: Signer, chain: Chain, *,
                 device_id: str, sw: str, policy: PublishPolicy, store: StateStore | None = None,
                 passive_diag: bool = False, vin_salt: bytes = b"", emit: bool = True,
                 outlook: Callable[[BatteryTracker, float], dict[str, Any] | None] | None = None) -> None:
        """Args:
            emit: False for a one-shot read (``inspect``): the state is updated, no reading or passport
                is signed, so the chain has no gaps the backend would take for lost messages.
            passive_diag: reassemble poll replies seen on the bus (replay); the daemon polls actively
                and hands replies to ``on_diag_reply`` instead.
            vin_salt: salt of the VIN hash; the VIN itself is never kept.
            outlook: forecast and warranty for the passport (``outlook.build_outlook`` bound to the prior).
        """
        self.decoder, self.tracker, self.signer, self.chain = decoder, tracker, signer, chain
        self.device_id, self.sw, self.policy, self.store = device_id, sw, policy, store
        self.counts: Counter[str] = Counter()
        profile = decoder.profile
        self._ids = decoder.frame_ids
        self._diag_ids = profile.response_ids
        self._specs: dict[int, list[PollSpec]] = {}
        for spec in profile.polls:
            self._specs.setdefault(spec.response_id, []).append(spec)
        self._passive = PassiveIsoTp(self._diag_ids) if passive_diag else None
        self._vin_salt = vin_salt
        self._emit = emit
        self.outlook = outlook
        self.epoch_note = ""  # why this epoch started (state lost), said in its first message
        self._last_tick: float | None = None
        self._batch: list[tuple[float, dict[str, Any]]] = []
        self._signals: dict[str, str] = {}
        for sm in profile.signals:
            self._signals.setdefault(sm.field, f"0x{sm.frame_id:03X} {sm.signal}")
        for spec in profile.polls:
            for layout in spec.layouts:
                for f in layout.fields:
                    source = f"0x{spec.request_id:03X} {spec.request.hex(' ').upper()} ({spec.name})"
                    for name in (f.name, *ARRAY_FIELDS.get(f.name, ())):
                        self._signals.setdefault(name, source)
        self._first_ts: float | None = None
        self._last_frame_ts: float | None = None
        self._next_reading: float | None = None
        self._last_passport_ts: float | None = None
        self._passport_soh: float | None = None
        self._pending: str | None = None  # reason of a passport that is due
        self._asleep = False
        self._charging = False
        self._charge_flip_ts: float | None = None

    # -- input -----------------------------------------------------------------------------------
    def _count(self, exc: DecodeError) -> None:
        self.counts[exc.kind] += 1
        if self.counts[exc.kind] == 1:
            log.warning("%s (dropped; further %s errors are counted, not logged)", exc, exc.kind)
        else:
            log.debug("%s", exc)

    def on_frame(self, frame: Frame) -> list[OutgoingMessage]:
        """Decode one frame, update the state, and return the messages that became due."""
        if frame.can_id not in self._ids:
            if frame.can_id in self._diag_ids and self._passive is not None:
                self._on_passive(frame)
                return self.tick(frame.ts)
            self.counts["ignored"] += 1
            return []
        try:
            values = self.decoder.decode(frame)
        except DecodeError as exc:
            self._count(exc)
            return []
        self.counts["decoded"] += 1
        ts = frame.ts
        self._seen(ts)
        previous_relay = self.tracker.values.get("main_relay")
        self.tracker.update(ts, values)
        for name, value in values:
            if name == "main_relay" and previous_relay == 1.0 and value == 0.0:
                self._want_passport("key-off")
            elif name == "bms_soh_pct" and self._passport_soh is not None \
                    and abs(value - self._passport_soh) >= self.policy.soh_change_pct:
                self._want_passport("soh-change")
            elif name == "pack_a":
                self._watch_charging(ts)
        return self.tick(ts)

    def _seen(self, ts: float) -> None:
        if self._first_ts is None:
            self._first_ts = ts
        self._last_frame_ts = ts
        if self._asleep:
            self._asleep = False
            log.info("battery ECU is talking again")

    def _on_passive(self, frame: Frame) -> None:
        assert self._passive is not None
        try:
            reply = self._passive.feed(frame)
        except DecodeError as exc:
            self._count(exc)
            return
        if reply is not None:
            self.on_diag_reply(frame.can_id, reply, frame.ts)

    def spec_for(self, response_id: int, reply: bytes) -> PollSpec | None:
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
        logged once per kind) and gives nothing.
        """
        spec = spec or self.spec_for(response_id, reply)
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
        self.tracker.update(ts, got.values)
        self.tracker.arrays.update(got.arrays)
        for name, text in got.texts.items():
            if name == "vin":  # pseudonymise at once: the VIN itself is never stored or sent
                digest = hashlib.sha256(self._vin_salt + text.encode()).hexdigest()[:32]
                self.tracker.texts["vin_hash"] = digest
            else:
                self.tracker.texts[name] = text
        if got.generation:
            self.tracker.generation = got.generation
        return "ok"

    def vehicle_state(self) -> str:
        """``off`` (no battery frames), ``charging``, ``driving`` (main relay closed) or ``awake``."""
        if self._asleep or self._last_frame_ts is None:
            return "off"
        if self._charging or self.tracker.charging:
            return "charging"
        if self.tracker.values.get("main_relay") == 1.0:
            return "driving"
        return "awake"

    def _watch_charging(self, ts: float) -> None:
        if self.tracker.charging == self._charging:
            self._charge_flip_ts = None
            return
        if self._charge_flip_ts is None:
            self._charge_flip_ts = ts
        elif ts - self._charge_flip_ts >= self.policy.charge_settle_s:
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
    def tick(self, now: float) -> list[OutgoingMessage]:
        """Return the messages due at ``now``. Cheap when nothing is due; call it often."""
        if self._first_ts is None or not self._emit:
            return []
        out: list[OutgoingMessage] = []
        p = self.policy
        if self._last_tick is not None and now < self._last_tick - _CLOCK_STEP_S:
            self._clock_stepped_back(now)
        self._last_tick = now
        if self._next_reading is None and (not self.tracker.missing()
                                           or now - self._first_ts >= p.first_reading_after_s):
            self._next_reading = now
        if self._last_frame_ts is not None and not self._asleep and now - self._last_frame_ts >= p.silence_s:
            self._asleep = True
            log.info("no battery frames for %.0f s: car off or asleep", now - self._last_frame_ts)
            self.tracker.soh.end_session()  # before the key-off passport, so it carries the session
            self._want_passport("key-off")
        if self._next_reading is not None and now >= self._next_reading and not self._asleep:
            out.extend(self._reading(now))
            self._next_reading = max(self._next_reading + p.reading_interval_s, now)
        if self._last_passport_ts is None:
            self._want_passport("first")
        elif now - self._last_passport_ts >= p.passport_interval_s:
            self._want_passport("daily")
        if self._pending and not self.tracker.missing():
            out.extend(self._passport(min(now, self.tracker.last_ts or now), self._pending))
        return out

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

    def finish(self, now: float) -> list[OutgoingMessage]:
        """A final reading and passport (end of a replay, or shutdown)."""
        self.tracker.soh.end_session()
        out = self._reading(now)
        out += self._flush_batch()
        if not self.tracker.missing():
            out.extend(self._passport(now, self._pending or "final"))
        else:
            log.info("no passport: battery state incomplete (missing %s)", ", ".join(self.tracker.missing()))
        return out

    # -- output ----------------------------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        header = self.chain.header()
        if self.epoch_note and header["seq"] == 1:
            header["note"] = f"new epoch: {self.epoch_note}"  # say why the chain restarted
        return header

    def _reading(self, now: float) -> list[OutgoingMessage]:
        payload = build_reading(self.tracker, now=now, device_id=self.device_id, chain=self._header(),
                                sw=self.sw, bat=self.tracker.texts.get("bat"))
        if payload is None:
            return []
        if self.policy.batch > 1:
            self._batch.append((now, payload["m"]))
            return self._flush_batch() if len(self._batch) >= self.policy.batch else []
        message = self._sign("reading", payload)
        return [] if message is None else [message]

    def _flush_batch(self) -> list[OutgoingMessage]:
        """Sign the readings collected so far as one batch envelope (before a passport, at the end)."""
        if not self._batch:
            return []
        payload = build_batch(self._batch, device_id=self.device_id, chain=self._header(), sw=self.sw,
                              bat=self.tracker.texts.get("bat"))
        message = self._sign("batch", payload, topic="reading", count=len(self._batch))
        self._batch = []
        return [] if message is None else [message]

    def _passport(self, now: float, reason: str) -> list[OutgoingMessage]:
        flushed = self._flush_batch()  # the readings before a passport come before it in the chain
        payload = build_passport(self.tracker, now=now, device_id=self.device_id, chain=self._header(),
                                 sw=self.sw, signals=self._signals, reason=reason, bat=self.tracker.texts.get("bat"),
                                 outlook=self.outlook(self.tracker, now) if self.outlook else None)
        thinned = self.store.take_thinned() if self.store is not None else 0
        if thinned or self.epoch_note:
            payload["prov"]["outbox"] = {"thinned_readings": thinned, "epoch_note": self.epoch_note,
                                         "policy": "readings thinned oldest first, one kept per interval"}
        message = self._sign("passport", payload)
        if message is None:
            return flushed  # not stored: stays pending and is tried again
        self._pending = None
        self._last_passport_ts = now
        self._passport_soh = self.tracker.values.get("bms_soh_pct")
        log.info("passport update (%s)", reason)
        return [*flushed, message]

    @property
    def signals(self) -> dict[str, str]:
        """Canonical field -> the CAN frame/signal or poll it comes from (provenance)."""
        return dict(self._signals)

    def sign_message(self, kind: str, payload: dict[str, Any]) -> OutgoingMessage:
        """Sign a payload built from ``chain.header()`` (e.g. a certificate) as the next message.

        Raises:
            StateError: it could not be stored (nothing was handed out).
        """
        message = self._sign(kind, payload, raise_on_error=True)
        assert message is not None
        return message

    def _sign(self, kind: str, payload: dict[str, Any], *, raise_on_error: bool = False, topic: str = "",
              count: int = 1) -> OutgoingMessage | None:
        envelope = self.signer.sign(payload)
        message = OutgoingMessage(topic=topic or kind, payload=envelope, retain=kind == "passport", kind=kind,
                                  seq=payload["seq"], ep=payload["ep"], body=payload)
        following = Chain(self.chain.ep, self.chain.seq, self.chain.prev)
        following.advance(envelope, count)
        if self.store is not None:
            try:
                self.store.save(following, self.tracker.counters, message)
            except StateError as exc:
                # Not stored = not sent: the chain does not advance, so no (ep, seq) is ever reused.
                self.counts[f"{kind}_not_stored"] += 1
                if raise_on_error:
                    raise
                if self.counts[f"{kind}_not_stored"] in (1, 10, 100, 1000):
                    log.error("%s lost, cannot be stored: %s", kind, exc)
                return None
        self.chain.ep, self.chain.seq, self.chain.prev = following.ep, following.seq, following.prev
        self.counts[kind] += 1
        return message
