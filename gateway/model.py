"""The values every layer shares: frames, canonical fields, signed messages, the chain position, the
lifetime counters, release and health records, and the SoH segment-model protocol.

Owns nothing but shapes: dataclasses and one Protocol, with small helpers that only compute. Imports
nothing of the gateway but ``errors``, so ports, adapters and the core can all depend on it.
Invariants: times are float seconds since the Unix epoch (measurement time, from the frame), CAN ids
are ints, payload maps use the canonical field names of ``FIELDS``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .errors import UpdateError

__all__ = ["DEVICE_ID", "FIELDS", "MAX_BATCH", "SOC_BINS_PCT", "TEMP_BINS_C", "ZERO_HASH", "ChainPosition", "Checked",
           "Counters", "Delivery", "FieldSpec", "Frame", "Health", "OtaState", "OutboxRow", "OutgoingMessage",
           "Probation", "Received", "Release", "SegmentModel", "StoreResult", "release_from_target"]

ZERO_HASH = bytes(32)  # ``prev`` of the first message of an epoch
MAX_BATCH = 100_000  # readings one ``batch`` envelope may carry (its ``n``): the verifier's bound
# A device id is the MQTT client id, username, topic level and certificate CN at once: nothing a broker reads
# as syntax (``+ # /``, NUL), nothing too long for any of them, nothing a file name could misuse.
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SOC_BINS_PCT = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # upper edges; last bin is >= 90 %
TEMP_BINS_C = (-20, -10, 0, 10, 20, 30, 40, 50)  # upper edges; first bin < -20, last >= 50 degC


@dataclass(frozen=True, slots=True)
class Frame:
    """One classic CAN frame as read from a bus or a capture."""

    ts: float
    can_id: int
    data: bytes
    bus: int = 0
    is_extended: bool = False
    is_tx: bool = False


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A canonical battery-state field: its unit and the range outside which a value is rejected."""

    unit: str
    lo: float
    hi: float
    description: str


# The canonical battery state. Every vehicle profile maps its signals onto these names; readings
# carry them under the same names (CONTRACT §5). Ranges are physical plausibility, not pack limits.
FIELDS: dict[str, FieldSpec] = {
    "soc_pct": FieldSpec("%", 0.0, 100.0, "state of charge as the BMS reports it"),
    "pack_v": FieldSpec("V", 0.0, 1000.0, "pack voltage"),
    "pack_a": FieldSpec("A", -1000.0, 1000.0, "pack current, positive = charging"),
    "bms_soh_pct": FieldSpec("%", 1.0, 100.0, "the BMS's own state of health (not SOCE)"),
    "gids": FieldSpec("gids", 0.0, 1022.0, "remaining energy in GIDs (Leaf)"),
    "gids_full": FieldSpec("gids", 1.0, 1022.0, "full-capacity GIDs (Leaf 30 kWh and later)"),
    "full_energy_kwh": FieldSpec("kWh", 0.1, 200.0, "full usable energy as the BMS reports it"),
    "bol_energy_kwh": FieldSpec("kWh", 0.1, 200.0, "full energy of this pack when new, as the BMS reports it (Tesla)"),
    "capacity_bars": FieldSpec("bars", 0.0, 12.0, "capacity bars on the dash (Leaf)"),
    "capacity_bars_ze0": FieldSpec("bars", 0.0, 12.0, "capacity bars in the ZE0 layout of 0x5BC (low nibble of "
                                   "d[2]); taken as capacity_bars on a car whose battery ECU sends no 0x59E"),
    "temp_c_min": FieldSpec("degC", -40.0, 100.0, "lowest pack temperature"),
    "temp_c_max": FieldSpec("degC", -40.0, 100.0, "highest pack temperature"),
    "temp_c_avg": FieldSpec("degC", -40.0, 100.0, "average pack temperature"),
    "dis_limit_kw": FieldSpec("kW", 0.0, 500.0, "discharge power limit"),
    "chg_limit_kw": FieldSpec("kW", 0.0, 500.0, "charge power limit"),
    "dash_soc_pct": FieldSpec("%", 0.0, 100.0, "state of charge shown on the dash"),
    "hx_pct": FieldSpec("%", 0.0, 150.0, "Leaf Hx (a battery ECU health figure; not SOH)"),
    "capacity_ah": FieldSpec("Ah", 1.0, 1000.0, "capacity the BMS reports (Leaf AHr)"),
    "cell_v_min": FieldSpec("V", 0.5, 5.0, "lowest cell voltage"),
    "cell_v_max": FieldSpec("V", 0.5, 5.0, "highest cell voltage"),
    "lbc_soh_pct": FieldSpec("%", 1.0, 100.0, "SOH the ZE1 battery ECU reports in group 0x61"),
    "balancing_cells": FieldSpec("cells", 0.0, 512.0, "cells with the balancing shunt on"),
    "main_relay": FieldSpec("", 0.0, 1.0, "main contactor closed (1) or open (0)"),
    "full_charge": FieldSpec("", 0.0, 1.0, "the BMS flags the pack as fully charged"),
}


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A signed envelope ready to publish: ``topic`` is relative to ``{prefix}/{dev}/``."""

    topic: str
    payload: bytes
    retain: bool
    kind: str
    seq: int
    ep: int
    body: dict[str, object] = field(default_factory=dict, compare=False)
    readings: int = 1  # readings it carries (a batch: its ``n``, each with its own sequence number)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One signed message waiting in the outbox for its PUBACK: the message as it was stored, and its row."""

    id: int
    message: OutgoingMessage


@dataclass(frozen=True, slots=True)
class ChainPosition:
    """Where a device's hash chain stands: epoch, last sequence number, hash of the last envelope.

    A message is built from ``header()``; once it is stored, the chain moves to ``after(envelope)``.
    """

    ep: int = 1
    seq: int = 0
    prev: bytes = ZERO_HASH

    def header(self) -> dict[str, Any]:
        """The ``ep``/``seq``/``prev`` fields of the next message."""
        return {"ep": self.ep, "seq": self.seq + 1, "prev": self.prev}

    def after(self, envelope: bytes, count: int = 1) -> ChainPosition:
        """The position once ``envelope`` (built from ``header()``) is stored; a batch of ``count``
        readings takes ``count`` sequence numbers."""
        return ChainPosition(self.ep, self.seq + count, hashlib.sha256(envelope).digest())

    def next_epoch(self) -> ChainPosition:
        """The first position of the next epoch (counter state was lost)."""
        return ChainPosition(self.ep + 1)


@dataclass(frozen=True, slots=True)
class Checked:
    """An envelope whose signature verified (``core/chainverify.check_envelope``): where it sits in its
    device's chain. It covers sequence numbers ``seq .. seq + n - 1`` (``n`` > 1 for a batch of readings);
    ``digest`` is the SHA-256 of the envelope, the ``prev`` of the next one.
    """

    dev: str
    ep: int
    seq: int
    n: int
    kind: str
    prev: bytes
    digest: bytes
    payload: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.dev} ep {self.ep} seq {self.seq}" + (f"..{self.seq + self.n - 1}" if self.n > 1 else "")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to an ingest worker by the engine's consumer group, not acknowledged yet.
    ``token`` is the engine's handle for the acknowledgement."""

    topic: str
    payload: bytes
    token: Any = None


@dataclass(frozen=True, slots=True)
class Received:
    """A delivery with the verifier's verdict: ``checked`` when its signature and topic held, else
    ``reason`` says why it is rejected."""

    topic: str
    envelope: bytes
    checked: Checked | None = None
    reason: str = ""
    dev: str | None = None  # the device the payload names, also when rejected (if it could be read)
    readings: tuple[tuple[int, int, dict[str, Any]], ...] = ()  # (seq, ts ms, measurements), batches expanded


@dataclass
class StoreResult:
    """What one transaction of an ingest batch did: envelopes stored, copies already stored (dropped),
    rejections, and the conflicts it found as (topic, reason)."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LogRow:
    """One row of another tool's battery log (a LeafSpy CSV): values it decoded, not CAN frames. Units as
    everywhere here; None where the row has no usable value."""

    t: float                 # Unix time, s
    capacity_ah: float | None  # the BMS's capacity (LeafSpy "AHr")
    soh_pct: float | None    # the BMS's SOH
    hx_pct: float | None
    soc_pct: float | None
    temp_c: float | None     # mean of the pack sensors
    vin: str | None


@dataclass
class Counters:
    """Lifetime counters (PASSPORT.md), persisted with the chain position and carried in every passport.

    Mutable: the battery tracker advances them as measurements arrive; the state store saves them.
    """

    ah_charged: float = 0.0
    ah_discharged: float = 0.0
    ah_charged_fast: float = 0.0  # charged above battery.FAST_CHARGE_A (DC fast charging)
    since_ts: float = 0.0  # first measurement these counters saw (0 = none yet)
    kwh_charged: float = 0.0
    kwh_discharged: float = 0.0
    deep_discharge_events: int = 0
    overcharge_events: int = 0
    min_high_temp_idle: float = 0.0
    min_low_temp_idle: float = 0.0
    min_high_temp_charging: float = 0.0
    min_low_temp_charging: float = 0.0
    soc_hist_min: list[float] = field(default_factory=lambda: [0.0] * (len(SOC_BINS_PCT) + 1))
    temp_hist_min: list[float] = field(default_factory=lambda: [0.0] * (len(TEMP_BINS_C) + 1))
    events: list[dict[str, Any]] = field(default_factory=list)  # last negative events: kind, ts
    soh: dict[str, Any] = field(default_factory=dict)  # the SoH estimator's filter state (core/soh.py)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counters:
        """Inverse of ``to_dict``.

        Raises:
            ValueError: a key is missing or has the wrong type (the stored state is corrupt).
        """
        try:
            c = cls(**data)
        except TypeError as exc:
            raise ValueError(f"counters: {exc}") from exc
        if not isinstance(c.soh, dict):
            raise ValueError("counters: soh is not a table")
        numbers = [v for k, v in asdict(c).items() if k not in ("soc_hist_min", "temp_hist_min", "events", "soh")]
        if not all(isinstance(v, int | float) and v >= 0 for v in numbers):
            raise ValueError("counters: negative or non-numeric value")
        if len(c.soc_hist_min) != len(SOC_BINS_PCT) + 1 or len(c.temp_hist_min) != len(TEMP_BINS_C) + 1:
            raise ValueError("counters: histogram has the wrong number of bins")
        return c


class SegmentModel(Protocol):
    """Corrects a rest-anchored segment (docs/soh.md): features in the order of tools/train_soh_model.py
    (soc1, soc2, slope1, slope2 [mV/pp], temp1, temp2 [degC], ln rest1, ln rest2 [h], capacity / rated)
    -> (mu, sigma): 100 * ln(true / counted capacity) and its standard deviation, both in percent.
    ``shared``: the share of that variance common to all segments of one vehicle (it does not average out).

    The core's SoH estimator calls it; ``adapters/tflite.py`` implements it with the TensorFlow Lite model.
    """

    name: str
    shared: float

    def predict(self, features: Sequence[float]) -> tuple[float, float]: ...


@dataclass(frozen=True, slots=True)
class Release:
    """A release bundle as the signed TUF targets metadata describes it."""

    name: str
    version: str
    counter: int
    hardware_ids: tuple[str, ...]
    length: int


@dataclass(frozen=True, slots=True)
class Probation:
    """A release switched to and not yet proven healthy."""

    version: str
    previous: str
    counter: int
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class OtaState:
    """What the updater keeps between runs (``{ota.dir}/state.json``)."""

    counter: int = 0
    probation: Probation | None = None
    rolled_back: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Health:
    """The daemon's own record (``{state_dir}/health.json``): which release runs and how far it got."""

    sw: str
    starts: int
    bus: bool
    broker: bool
    acked: bool

    @property
    def healthy(self) -> bool:
        return self.bus and self.broker and self.acked


def release_from_target(name: str, length: int, custom: Mapping[str, Any]) -> Release:
    """Read a target's ``custom`` metadata: ``version``, ``release_counter``, ``hardware_ids``.

    Raises:
        UpdateError: (kind ``refused``) a field is missing or mistyped, named in the message.
    """
    version, counter, hw = custom.get("version"), custom.get("release_counter"), custom.get("hardware_ids")
    if not isinstance(version, str) or not version or "/" in version or version.startswith("."):
        raise UpdateError(f"target {name}: custom.version must be a plain version string, got {version!r}",
                          kind="refused")
    if isinstance(counter, bool) or not isinstance(counter, int) or counter < 1:
        raise UpdateError(f"target {name}: custom.release_counter must be a positive integer, got {counter!r}",
                          kind="refused")
    if not isinstance(hw, list) or not all(isinstance(h, str) for h in hw):
        raise UpdateError(f"target {name}: custom.hardware_ids must be a list of strings, got {hw!r}",
                          kind="refused")
    return Release(name=name, version=version, counter=counter, hardware_ids=tuple(hw), length=length)
