"""Plain value types shared by every layer. Frozen dataclasses, no behaviour beyond small helpers.

Invariants: times are float seconds since the Unix epoch (measurement time, from the frame), CAN ids
are ints, payload maps use the canonical field names of ``FIELDS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import UpdateError

__all__ = ["FIELDS", "FieldSpec", "Frame", "Health", "OtaState", "OutboxRow", "OutgoingMessage", "Probation",
           "Release", "release_from_target"]


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
    "capacity_bars": FieldSpec("bars", 0.0, 12.0, "capacity bars on the dash (Leaf)"),
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


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One signed message waiting in the outbox for its PUBACK."""

    id: int
    ep: int
    seq: int
    kind: str
    topic: str
    retain: bool
    payload: bytes


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
