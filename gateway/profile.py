"""Vehicle profiles: which DBC files to load, which signals feed the canonical battery state, and which
frame checks apply. A new car is a new TOML file, not new code (docs/profiles.md lists every key).

``parse_profile`` is pure (mapping in, ``Profile`` out, every problem reported at once);
``load_profile`` resolves a built-in name or a path and loads the DBC files with ``strict=True``.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cantools

from .errors import ConfigError
from .forecast import CHEMISTRIES, Prior
from .model import FIELDS
from .polls import PollSpec, parse_polls

__all__ = ["BUILTIN_PROFILES", "PackVariant", "Profile", "SignalMap", "load_prior", "load_profile", "parse_profile"]

BUILTIN_PROFILES = ("leaf-ze0", "leaf-aze0", "leaf-ze1", "kia-eniro-64")
_COMPLETE_GROUPS = {"temperature"}  # "complete" may name a field or a group of fields


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
    """A pack the vehicle was sold with: its energy and capacity when new."""

    energy_kwh: float
    capacity_ah: float


@dataclass(frozen=True, slots=True)
class Profile:
    """A parsed vehicle profile. ``dbc_files`` are resolved paths."""

    name: str
    title: str
    dbc_files: tuple[Path, ...]
    signals: tuple[SignalMap, ...]
    packs: tuple[PackVariant, ...]
    complete: tuple[str, ...]
    crc8_frames: frozenset[int] = frozenset()
    crc8_poly: int = 0x85
    crc8_init: int = 0x00
    wh_per_gid: float = 80.0
    cells_series: int = 96
    cell_v_min: float = 2.5
    cell_v_max: float = 4.2
    temp_low_c: float = -10.0
    temp_high_c: float = 40.0
    polls: tuple[PollSpec, ...] = ()
    chemistry: str = "lmo-leaf"  # the forecast prior's table (gateway/data/soh_prior.json)

    @property
    def frame_ids(self) -> frozenset[int]:
        """Every CAN id the profile listens to (broadcast frames and poll replies): the bus filters."""
        return frozenset(s.frame_id for s in self.signals) | self.response_ids

    @property
    def response_ids(self) -> frozenset[int]:
        """CAN ids on which the polled ECUs answer."""
        return frozenset(p.response_id for p in self.polls)


def _builtin_dir() -> Path:
    return Path(str(resources.files("gateway.profiles")))


def builtin_dbc_dir() -> Path:
    """Where the project's own DBC files live: ``gateway/dbc`` in a wheel, ``dbc/`` in a source tree."""
    installed = Path(__file__).parent / "dbc"
    return installed if installed.is_dir() else Path(__file__).parent.parent / "dbc"


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


def parse_profile(data: Mapping[str, Any], *, dbc_dirs: tuple[Path, ...]) -> Profile:
    """Build a ``Profile`` from a parsed TOML mapping.

    Args:
        data: the profile document.
        dbc_dirs: directories searched, in order, for the DBC file names it lists.

    Returns:
        The profile, with DBC names resolved to existing files.

    Raises:
        ConfigError: listing every problem found.
    """
    problems: list[str] = []
    known = {"name", "title", "dbc", "signal", "pack", "complete", "crc8", "wh_per_gid", "cells_series",
             "cell_v_min", "cell_v_max", "temp_low_c", "temp_high_c", "poll", "include", "chemistry"}
    problems.extend(f"{k}: unknown key" for k in sorted(set(data) - known))
    name = data.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name: expected a non-empty string")
    dbc_files: list[Path] = []
    polls = parse_polls(_list(data, "poll", problems), problems)
    dbc_names = _list(data, "dbc", problems)
    raw_signals = _list(data, "signal", problems)
    if not dbc_names and raw_signals:
        problems.append("dbc: list the DBC files that define the signals")
    for dbc in dbc_names:
        if not isinstance(dbc, str) or not dbc or "/" in dbc:
            problems.append(f"dbc: {dbc!r} is not a DBC file name")
            continue
        found = next((d / dbc for d in dbc_dirs if (d / dbc).is_file()), None)
        if found is None:
            problems.append(f"dbc: {dbc!r} not found in {', '.join(map(str, dbc_dirs))}")
        else:
            dbc_files.append(found)
    signals = [_parse_signal(i, s, problems) for i, s in enumerate(raw_signals)]
    if not signals and not polls:
        problems.append("signal, poll: map at least one broadcast signal or one poll")
    packs: list[PackVariant] = []
    for i, p in enumerate(_list(data, "pack", problems)):
        try:
            pack = PackVariant(float(p["energy_kwh"]), float(p["capacity_ah"]))
            if not (0 < pack.energy_kwh < 1000 and 0 < pack.capacity_ah < 5000):
                raise ValueError("out of range")
            packs.append(pack)
        except (KeyError, TypeError, ValueError, OverflowError):
            problems.append(f"pack[{i}]: needs energy_kwh and capacity_ah numbers")
    if not packs:
        problems.append("pack: list at least one pack (energy_kwh, capacity_ah)")
    complete = tuple(_list(data, "complete", problems))
    bad = [c for c in complete if not isinstance(c, str) or (c not in FIELDS and c not in _COMPLETE_GROUPS)]
    problems.extend(f"complete: {c!r} is not a canonical field" for c in bad)
    crc = data.get("crc8", {})
    if not isinstance(crc, Mapping) or not all(isinstance(crc.get(k, 0), int) for k in ("poly", "init")) \
            or not all(isinstance(f, int) for f in _list(crc, "frames", problems)):
        problems.append("crc8: expected a table with integer poly, init and a list of frame ids")
        crc = {}
    numbers: dict[str, float] = {}
    for key, default in (("wh_per_gid", 80.0), ("cell_v_min", 2.5), ("cell_v_max", 4.2),
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
    if problems:
        raise ConfigError([f"profile {name or '?'}: {p}" for p in problems])
    return Profile(
        name=str(name), title=str(data.get("title", name)), dbc_files=tuple(dbc_files),
        signals=tuple(s for s in signals if s is not None), packs=tuple(packs), complete=complete,
        crc8_frames=frozenset(crc.get("frames", [])), crc8_poly=int(crc.get("poly", 0x85)),
        crc8_init=int(crc.get("init", 0)), wh_per_gid=float(numbers["wh_per_gid"]),
        cells_series=int(numbers["cells_series"]), cell_v_min=float(numbers["cell_v_min"]),
        cell_v_max=float(numbers["cell_v_max"]), temp_low_c=float(numbers["temp_low_c"]),
        temp_high_c=float(numbers["temp_high_c"]), polls=polls, chemistry=str(chemistry),
    )


def _list(data: Mapping[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        problems.append(f"{key}: expected a list")
        return []
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"vehicle.profile: cannot read {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"vehicle.profile: {path}: {exc}") from exc


def load_prior() -> Prior:
    """The forecast prior shipped with the package (``gateway/data/soh_prior.json``, tools/soh_prior.py)."""
    try:
        return Prior.from_json(json.loads((resources.files("gateway.data") / "soh_prior.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"gateway/data/soh_prior.json: unreadable forecast prior ({exc}); reinstall the "
                          "release") from exc


def load_profile(name_or_path: str) -> tuple[Profile, list[Any]]:
    """Load a built-in profile by name, or a profile TOML file by path, and its DBC databases.

    Raises:
        ConfigError: unknown profile, unreadable file, or a DBC that does not load strictly.
    """
    if name_or_path in BUILTIN_PROFILES:
        path = _builtin_dir() / f"{name_or_path}.toml"
    else:
        path = Path(name_or_path)
        if not path.suffix:
            raise ConfigError(f"vehicle.profile: unknown profile {name_or_path!r} "
                              f"(built-in: {', '.join(BUILTIN_PROFILES)}; or a path to a .toml file)")
    data = _read_toml(path)
    for name in data.get("include", []):  # shared poll lists, e.g. leaf_lbc_polls.toml
        included = _read_toml(path.parent / name)
        data["poll"] = [*included.get("poll", []), *data.get("poll", [])]
    profile = parse_profile(data, dbc_dirs=(path.parent, builtin_dbc_dir()))
    dbs = []
    for dbc in profile.dbc_files:
        try:
            dbs.append(cantools.database.load_file(str(dbc), strict=True))
        except Exception as exc:  # cantools raises many types (ParseError, UnsupportedDatabaseFormatError)
            raise ConfigError(f"profile {profile.name}: DBC {dbc}: {exc}") from exc
    return profile, dbs
