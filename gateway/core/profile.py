"""Vehicle profiles: which DBC files to load, which signals feed the canonical battery state, and which
frame checks apply. A new car is a new TOML file, not new code (docs/profiles.md lists every key).

Pure: ``parse_profile`` takes the parsed document (mapping in, ``Profile`` out, every problem reported
at once). Finding the file, its ``include`` files and the DBC files is ``adapters/files.py``'s job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..model import FIELDS
from .forecast import CHEMISTRIES
from .polls import ARRAY_FIELDS, PollSpec, parse_polls

__all__ = ["DOCUMENTATION_ONLY", "USER_PROFILE", "CaptureCheck", "Derived", "PackVariant", "Profile", "SignalMap",
           "parse_profile"]

DOCUMENTATION_ONLY = "from documentation only"
USER_PROFILE = "a user's profile file, not checked by the project"

# "complete" may name a field or a group: "temperature" (any pack temperature), "rated_pack" (the car's own
# data tell which of the profile's packs it carries: BatteryTracker.pack_evidence)
_COMPLETE_GROUPS = {"temperature", "rated_pack"}


@dataclass(frozen=True, slots=True)
class SignalMap:
    """One DBC signal feeding one canonical field."""

    frame_id: int
    signal: str
    field: str
    invalid_raw: frozenset[int] = frozenset()
    when: tuple[tuple[str, int], ...] = ()
    lookup: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class PackVariant:
    """A pack the vehicle can carry: its energy and capacity when new.

    ``upgrade`` marks a pack the car was not sold with but is fitted with in the field (a ZE0 with a 30 kWh
    pack behind a CAN bridge); never the default, only detected or configured. ``cells_series``: this pack's
    cells in series where they differ from the profile's (VW MEB: 84, 96 or 108); 0 = the profile's.
    """

    energy_kwh: float
    capacity_ah: float
    upgrade: bool = False
    cells_series: int = 0


@dataclass(frozen=True, slots=True)
class Derived:
    """A canonical field the BMS does not send but two it sends give: ``scale * numerator / denominator``
    (Tesla's energy-based SoH: 100 x nominal full-pack energy / the pack's energy when new)."""

    field: str
    numerator: str
    denominator: str
    scale: float = 100.0

    def describe(self, sources: Mapping[str, str]) -> str:
        return (f"{self.scale:g} x {self.numerator} / {self.denominator} ({sources.get(self.numerator, '?')}; "
                f"{sources.get(self.denominator, '?')})")


@dataclass(frozen=True, slots=True)
class CaptureCheck:
    """A real capture the profile was checked against: the file (relative to the shared can-data folder)
    and the values its replay must give (``tests/integration/test_profile_validation.py`` replays it)."""

    file: str
    expect: tuple[tuple[str, float], ...]

    @property
    def name(self) -> str:
        return self.file.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Profile:
    """A parsed vehicle profile. ``dbc`` names the DBC files (found by ``adapters/files.py``)."""

    name: str
    title: str
    dbc: tuple[str, ...]
    signals: tuple[SignalMap, ...]
    packs: tuple[PackVariant, ...]
    complete: tuple[str, ...]
    crc8_frames: frozenset[int] = frozenset()
    crc8_poly: int = 0x85
    crc8_init: int = 0x00
    wh_per_gid: float = 80.0
    gids_zero_soc_pct: float = 8.0  # the battery ECU's SoC at which its GIDs reach 0 (Leaf)
    cells_series: int = 96
    cell_v_min: float = 2.5
    cell_v_max: float = 4.2
    temp_low_c: float = -10.0
    temp_high_c: float = 40.0
    polls: tuple[PollSpec, ...] = ()
    chemistry: str = "lmo-leaf"  # the forecast prior's table (gateway/data/soh_prior.json)
    derive: tuple[Derived, ...] = ()
    sources: tuple[str, ...] = ()  # where the profile's facts come from
    captures: tuple[CaptureCheck, ...] = ()  # real captures its decoding is checked against
    builtin: bool = True  # False: loaded from a user's file, whose claims are not ours to pass on

    def derives(self, field: str) -> bool:
        """``field`` is computed from two the BMS sends (``[[derive]]``), not reported by it."""
        return any(d.field == field for d in self.derive)

    def validation_of(self, field: str) -> str:
        """How sure the profile is of ``field``: the real capture that checks it, or documentation only."""
        if not self.builtin:
            return USER_PROFILE
        names = [c.name for c in self.captures if any(f == field for f, _ in c.expect)]
        return f"checked against real capture {', '.join(names)}" if names else DOCUMENTATION_ONLY

    @property
    def validation(self) -> str:
        """The profile's status as a whole: checked against real captures (naming them), or documentation only."""
        if not self.builtin:
            return USER_PROFILE
        if not self.captures:
            return DOCUMENTATION_ONLY
        return f"checked against real capture {', '.join(dict.fromkeys(c.name for c in self.captures))}"

    @property
    def frame_ids(self) -> frozenset[int]:
        """Every CAN id the profile listens to (broadcast frames and poll replies): the bus filters."""
        return frozenset(s.frame_id for s in self.signals) | self.response_ids

    @property
    def poll_pace_s(self) -> float:
        """For a car read only by polls (its replies are its only frames): the longest time between two
        replies while it is on, in the slowest state it can be in (``driving`` only when the profile reads
        the main relay); 0 for a car that broadcasts. Its silence means "off" after 4 of them (one lost
        reply is no key-off), and its current is integrated over gaps up to 1.5 of them."""
        if self.signals:
            return 0.0
        relay = "main_relay" in self.field_sources()
        states = ("awake", "charging", "driving") if relay else ("awake", "charging")
        quickest = [min((p.every_s[s] for p in self.polls if s in p.every_s), default=0.0) for s in states]
        return max(quickest)

    @property
    def response_ids(self) -> frozenset[int]:
        """CAN ids on which the polled ECUs answer."""
        return frozenset(p.response_id for p in self.polls)

    def field_sources(self) -> dict[str, str]:
        """Canonical field -> the CAN frame and signal, or the poll, it comes from (passport provenance)."""
        sources: dict[str, str] = {}
        for sm in self.signals:
            sources.setdefault(sm.field, f"0x{sm.frame_id:03X} {sm.signal}")
        for spec in self.polls:
            source = f"0x{spec.request_id:03X} {spec.request.hex(' ').upper()} ({spec.name})"
            for layout in spec.layouts:
                for f in layout.fields:
                    for name in (f.name, *ARRAY_FIELDS.get(f.name, ())):
                        sources.setdefault(name, source)
        for d in self.derive:
            sources.setdefault(d.field, d.describe(sources))
        return sources


def _int(value: Any, key: str, problems: list[str]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{key}: expected an integer, got {value!r}")
        return None
    return value


def _parse_signal(i: int, raw: Any, problems: list[str]) -> SignalMap | None:
    key = f"signal[{i}]"
    if not isinstance(raw, Mapping):
        problems.append(f"{key}: expected a table")
        return None
    unknown = set(raw) - {"frame", "signal", "field", "invalid_raw", "when", "lookup"}
    problems.extend(f"{key}.{k}: unknown key" for k in sorted(unknown))
    frame_id = _int(raw.get("frame"), f"{key}.frame", problems)
    name, fld = raw.get("signal"), raw.get("field")
    if not isinstance(name, str):
        problems.append(f"{key}.signal: expected a DBC signal name")
    if not isinstance(fld, str) or fld not in FIELDS:
        problems.append(f"{key}.field: {fld!r} is not a canonical field ({', '.join(FIELDS)})")
    invalid = raw.get("invalid_raw", [])
    when = raw.get("when", {})
    lookup = raw.get("lookup", {})
    if not (isinstance(invalid, list) and all(isinstance(v, int) for v in invalid)):
        problems.append(f"{key}.invalid_raw: expected a list of integers")
        invalid = []
    if not (isinstance(when, Mapping) and all(isinstance(v, int) for v in when.values())):
        problems.append(f"{key}.when: expected a table of signal = raw integer")
        when = {}
    try:
        table = tuple(sorted((int(k), float(v)) for k, v in dict(lookup).items()))
    except (TypeError, ValueError):
        problems.append(f"{key}.lookup: expected a table of raw integer = value")
        table = ()
    if frame_id is None or not isinstance(name, str) or not isinstance(fld, str) or fld not in FIELDS:
        return None
    return SignalMap(frame_id, name, str(fld), frozenset(invalid), tuple(sorted(when.items())), table)


def parse_profile(data: Mapping[str, Any]) -> Profile:
    """Build a ``Profile`` from a parsed TOML mapping (its ``include`` files already merged).

    Raises:
        ConfigError: listing every problem found.
    """
    problems: list[str] = []
    known = {"name", "title", "dbc", "signal", "pack", "complete", "crc8", "wh_per_gid", "gids_zero_soc_pct",
             "cells_series", "cell_v_min", "cell_v_max", "temp_low_c", "temp_high_c", "poll", "include", "chemistry",
             "validation", "derive"}
    problems.extend(f"{k}: unknown key" for k in sorted(set(data) - known))
    name = data.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name: expected a non-empty string")
    dbc_files: list[str] = []
    polls = parse_polls(_list(data, "poll", problems), problems)
    dbc_names = _list(data, "dbc", problems)
    raw_signals = _list(data, "signal", problems)
    if not dbc_names and raw_signals:
        problems.append("dbc: list the DBC files that define the signals")
    for dbc in dbc_names:
        if not isinstance(dbc, str) or not dbc or "/" in dbc or dbc.startswith("."):
            problems.append(f"dbc: {dbc!r} is not a DBC file name")
        else:
            dbc_files.append(dbc)
    signals = [_parse_signal(i, s, problems) for i, s in enumerate(raw_signals)]
    if not signals and not polls:
        problems.append("signal, poll: map at least one broadcast signal or one poll")
    packs = _parse_packs(_list(data, "pack", problems), problems)
    complete = tuple(_list(data, "complete", problems))
    bad = [c for c in complete if not isinstance(c, str) or (c not in FIELDS and c not in _COMPLETE_GROUPS)]
    problems.extend(f"complete: {c!r} is not a canonical field" for c in bad)
    crc = data.get("crc8", {})
    if not isinstance(crc, Mapping) or not all(isinstance(crc.get(k, 0), int) for k in ("poly", "init")) \
            or not all(isinstance(f, int) for f in _list(crc, "frames", problems)):
        problems.append("crc8: expected a table with integer poly, init and a list of frame ids")
        crc = {}
    numbers: dict[str, float] = {}
    for key, default in (("wh_per_gid", 80.0), ("gids_zero_soc_pct", 8.0), ("cell_v_min", 2.5), ("cell_v_max", 4.2),
                         ("temp_low_c", -10.0), ("temp_high_c", 40.0), ("cells_series", 96)):
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not -1000 < value < 1000:
            problems.append(f"{key}: expected a number, got {value!r}")
            value = default
        numbers[key] = value
    chemistry = data.get("chemistry", "lmo-leaf")
    if chemistry not in CHEMISTRIES:
        problems.append(f"chemistry: expected one of {', '.join(CHEMISTRIES)}, got {chemistry!r}")
    sources, captures = _parse_validation(data.get("validation", {}), problems)
    derive = _parse_derive(_list(data, "derive", problems), problems)
    if problems:
        raise ConfigError([f"profile {name or '?'}: {p}" for p in problems])
    return Profile(
        name=str(name), title=str(data.get("title", name)), dbc=tuple(dbc_files),
        signals=tuple(s for s in signals if s is not None), packs=tuple(packs), complete=complete,
        crc8_frames=frozenset(crc.get("frames", [])), crc8_poly=int(crc.get("poly", 0x85)),
        crc8_init=int(crc.get("init", 0)), wh_per_gid=float(numbers["wh_per_gid"]),
        gids_zero_soc_pct=float(numbers["gids_zero_soc_pct"]),
        cells_series=int(numbers["cells_series"]), cell_v_min=float(numbers["cell_v_min"]),
        cell_v_max=float(numbers["cell_v_max"]), temp_low_c=float(numbers["temp_low_c"]),
        temp_high_c=float(numbers["temp_high_c"]), polls=polls, chemistry=str(chemistry),
        derive=derive, sources=sources, captures=captures,
    )


def _parse_derive(raw: list[Any], problems: list[str]) -> tuple[Derived, ...]:
    """``[[derive]]``: ``field``, ``ratio = [numerator, denominator]`` (canonical fields), ``scale``."""
    out = []
    for i, d in enumerate(raw):
        ratio = d.get("ratio") if isinstance(d, Mapping) else None
        scale = d.get("scale", 100.0) if isinstance(d, Mapping) else None
        if not isinstance(d, Mapping) or set(d) - {"field", "ratio", "scale"} or d.get("field") not in FIELDS \
                or not isinstance(ratio, list) or len(ratio) != 2 or not all(r in FIELDS for r in ratio) \
                or d["field"] in ratio or isinstance(scale, bool) or not isinstance(scale, int | float) \
                or not math.isfinite(scale) or scale == 0:
            problems.append(f"derive[{i}]: expected field, ratio = [numerator, denominator] (canonical fields "
                            "other than field) and a non-zero scale")
            continue
        out.append(Derived(d["field"], ratio[0], ratio[1], float(scale)))
    derived = {d.field for d in out}
    for i, d in enumerate(out):  # one level only: no field derived from a derived one, so no cycle
        if {d.numerator, d.denominator} & derived:
            problems.append(f"derive[{i}]: {d.field} from a derived field; derive from what the BMS sends")
    return tuple(out)


def _parse_validation(raw: Any, problems: list[str]) -> tuple[tuple[str, ...], tuple[CaptureCheck, ...]]:
    """``[validation]``: ``sources`` (text) and ``[[validation.capture]]`` (``file``, ``expect``)."""
    if not isinstance(raw, Mapping) or set(raw) - {"sources", "capture"}:
        problems.append("validation: expected a table with sources and [[validation.capture]]")
        return (), ()
    sources = _list(raw, "sources", problems)
    if not all(isinstance(s, str) and s for s in sources):
        problems.append("validation.sources: expected a list of texts")
        sources = []
    captures = []
    for i, c in enumerate(_list(raw, "capture", problems)):
        key = f"validation.capture[{i}]"
        expect = c.get("expect") if isinstance(c, Mapping) else None
        file = c.get("file") if isinstance(c, Mapping) else None
        if not isinstance(file, str) or not file or file.startswith("/") or ".." in file.split("/") \
                or not isinstance(expect, Mapping) or not expect or set(c) - {"file", "expect"}:
            problems.append(f"{key}: expected file (a path under the shared can-data folder) and expect "
                            "(a table of canonical field = value)")
            continue
        bad = [k for k, v in expect.items() if k not in FIELDS or isinstance(v, bool) or not isinstance(v, int | float)]
        problems.extend(f"{key}.expect.{k}: expected a canonical field = number" for k in bad)
        zero = [k for k, v in expect.items() if k not in bad and v == 0]  # 0 checks neither a sign nor a scale
        problems.extend(f"{key}.expect.{k}: 0 checks nothing (no sign, no scale); leave the field out" for k in zero)
        captures.append(CaptureCheck(file, tuple((str(k), float(v)) for k, v in expect.items())))
    return tuple(sources), tuple(captures)


def _parse_packs(raw: list[Any], problems: list[str]) -> list[PackVariant]:
    """The ``[[pack]]`` tables; at least one must be a pack the car was sold with (not an upgrade)."""
    packs: list[PackVariant] = []
    for i, p in enumerate(raw):
        try:
            unknown = set(p) - {"energy_kwh", "capacity_ah", "upgrade", "cells_series"}
            cells = p.get("cells_series", 0)
            if unknown or not isinstance(p.get("upgrade", False), bool) or isinstance(cells, bool) \
                    or not isinstance(cells, int):
                raise ValueError(f"unknown keys {sorted(unknown)}")
            pack = PackVariant(float(p["energy_kwh"]), float(p["capacity_ah"]), p.get("upgrade", False), cells)
            if not (0 < pack.energy_kwh < 1000 and 0 < pack.capacity_ah < 5000 and 0 <= cells < 1000):
                raise ValueError("out of range")
            packs.append(pack)
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            problems.append(f"pack[{i}]: needs energy_kwh and capacity_ah numbers (and upgrade = true/false, "
                            "cells_series = an integer)")
    if not any(not p.upgrade for p in packs):
        problems.append("pack: list at least one pack the car was sold with (energy_kwh, capacity_ah)")
    return packs


def _list(data: Mapping[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        problems.append(f"{key}: expected a list")
        return []
    return value
