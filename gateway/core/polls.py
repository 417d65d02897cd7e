"""Poll lists of a vehicle profile (data) and the decoding of their replies (bytes -> values).

A poll names a request (e.g. the Leaf battery ECU's ``21 01`` on 0x79B, answered on 0x7BB), how often
to send it in each vehicle state, and one reply layout per accepted payload length. A layout lists
byte fields: numbers, arrays (cell voltages, temperatures), text (serial, part number, VIN) and bit
counts. The payload is the reply after its positive-response header (``request[0] + 0x40`` followed
by the rest of the request: ``61 01`` for ``21 01``, ``62 01 05`` for ``22 01 05``).

Two layouts may share a length when one of them has a ``filler``: bytes the ECU sends in place of data
(the ZE1 battery ECU answers group 0x06 with the 24 bytes of the older packs, 12 of them 0xFF). A reply
takes the layout whose filler it carries, else the one without a filler.

Invariants: a reply whose payload length has no layout yields no value (a ZE1 group 0x01 reply of a
24 kWh length is not decoded with the wrong offsets); filler bytes are never decoded as data; a negative
response ``7F SID NRC`` raises ``UdsNegativeResponse``; every number returned is inside its canonical
range. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError, UdsNegativeResponse
from ..model import FIELDS

__all__ = ["ARRAY_FIELDS", "TEXT_FIELDS", "VEHICLE_STATES", "ByteField", "DiagValues", "Filler", "Layout",
           "PollSpec", "decode_reply", "parse_polls"]

VEHICLE_STATES = ("off", "awake", "driving", "charging")
# "off" in a poll's every_s: the probe that tells a car whose battery ECU only answers polls (no broadcast frames
# say it woke up) that it is on; a reply wakes the state machine
OFF_PROBE_MIN_S = 30.0
# Arrays and what the gateway derives from them (min, max) into canonical fields.
ARRAY_FIELDS: dict[str, tuple[str, str]] = {"cells_v": ("cell_v_min", "cell_v_max"),
                                            "temps_c": ("temp_c_min", "temp_c_max")}
TEXT_FIELDS = ("bat", "part_number", "vin")
_ARRAY_RANGE = {"cells_v": (0.5, 5.0), "temps_c": (-40.0, 100.0)}
_KINDS = ("number", "array", "text", "bitcount")


@dataclass(frozen=True, slots=True)
class ByteField:
    """One field of a reply payload. ``at`` is the offset of the value (of element 0 for arrays)."""

    name: str
    at: int
    size: int
    kind: str = "number"
    signed: bool = False
    scale: float = 1.0
    offset: float = 0.0
    invalid_raw: frozenset[int] = frozenset()
    count: int = 1
    stride: int = 0
    guard_at: int | None = None  # arrays: an element whose guard bytes equal guard_raw is absent
    guard_size: int = 2
    guard_raw: int = 0xFFFF
    mask: int = 0xFF  # bitcount: the bits of each byte that count


@dataclass(frozen=True, slots=True)
class Filler:
    """``size`` bytes from ``at`` that all hold ``byte``: what the ECU sends where a layout has no data."""

    at: int
    size: int
    byte: int = 0xFF

    def found_in(self, payload: bytes) -> bool:
        """True when ``payload`` carries this filler."""
        part = payload[self.at:self.at + self.size]
        return len(part) == self.size and part == bytes([self.byte]) * self.size


@dataclass(frozen=True, slots=True)
class Layout:
    """Fields of a reply payload of exactly ``length`` bytes (``at_least``: of ``length`` bytes or more, for an
    ECU whose replies are known only up to their last documented field); ``generation`` names the pack it
    identifies. With a ``filler``, the layout applies only to replies that carry it.
    """

    length: int
    fields: tuple[ByteField, ...]
    generation: str = ""
    filler: Filler | None = None
    at_least: bool = False

    def fits(self, payload: bytes) -> bool:
        """True when this layout decodes ``payload`` (its length, and its filler if it has one)."""
        size_ok = len(payload) >= self.length if self.at_least else len(payload) == self.length
        return size_ok and (self.filler is None or self.filler.found_in(payload))


@dataclass(frozen=True, slots=True)
class PollSpec:
    """One diagnostic request of a profile."""

    name: str
    request_id: int
    response_id: int
    request: bytes
    every_s: Mapping[str, float]
    layouts: tuple[Layout, ...]
    timeout_s: float = 1.0
    ext_address: tuple[int, int] | None = None  # extended addressing: (target, source) first bytes (BMW)

    @property
    def positive_header(self) -> bytes:
        return bytes([self.request[0] + 0x40]) + self.request[1:]

    @property
    def ids_29bit(self) -> bool:
        """Its ids need 29 bits (an id above 0x7FF)."""
        return max(self.request_id, self.response_id) > 0x7FF


@dataclass
class DiagValues:
    """What one reply gave."""

    values: list[tuple[str, float]]
    arrays: dict[str, list[float]]
    texts: dict[str, str]
    generation: str = ""


def _int(raw: Any, key: str, problems: list[str], lo: int = 0, hi: int = 0x1FFFFFFF) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        problems.append(f"{key}: expected an integer {lo}..{hi}, got {raw!r}")
        return lo
    return raw


def _parse_field(raw: Any, key: str, problems: list[str]) -> ByteField | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{key}: expected a table")
        return None
    known = {"name", "at", "size", "kind", "signed", "scale", "offset", "invalid_raw", "count", "stride",
             "guard_at", "guard_size", "guard_raw", "mask"}
    problems.extend(f"{key}.{k}: unknown key" for k in sorted(set(raw) - known))
    name, kind = raw.get("name"), raw.get("kind", "number")
    if kind not in _KINDS:
        problems.append(f"{key}.kind: expected one of {', '.join(_KINDS)}")
        return None
    names: dict[str, tuple[str, ...]] = {"number": tuple(FIELDS), "array": tuple(ARRAY_FIELDS),
                                         "text": TEXT_FIELDS, "bitcount": tuple(FIELDS)}
    allowed = names[kind]
    if name not in allowed:
        problems.append(f"{key}.name: {name!r} is not a {kind} field ({', '.join(allowed)})")
        return None
    size = _int(raw.get("size", 1), f"{key}.size", problems, 1, 4096 if kind in ("text", "bitcount") else 4)
    try:
        return ByteField(
            name=str(name), at=_int(raw.get("at"), f"{key}.at", problems, 0, 4095), size=size, kind=kind,
            signed=bool(raw.get("signed", False)), scale=float(raw.get("scale", 1.0)),
            offset=float(raw.get("offset", 0.0)), invalid_raw=frozenset(raw.get("invalid_raw", [])),
            count=_int(raw.get("count", 1), f"{key}.count", problems, 1, 512),
            stride=_int(raw.get("stride", size), f"{key}.stride", problems, 1, 64),
            guard_at=None if raw.get("guard_at") is None else _int(raw.get("guard_at"), f"{key}.guard_at", problems,
                                                                   0, 4095),
            guard_size=_int(raw.get("guard_size", 2), f"{key}.guard_size",
                                                          problems, 1, 4),
            guard_raw=_int(raw.get("guard_raw", 0xFFFF), f"{key}.guard_raw", problems, 0, 0xFFFFFFFF),
            mask=_int(raw.get("mask", 0xFF), f"{key}.mask", problems, 0, 0xFF))
    except (TypeError, ValueError) as exc:
        problems.append(f"{key}: {exc}")
        return None


def _parse_filler(raw: Any, key: str, length: int, problems: list[str]) -> Filler | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"at", "size", "byte"}:
        problems.append(f"{key}: expected a table with at, size and byte")
        return None
    filler = Filler(_int(raw.get("at"), f"{key}.at", problems, 0, 4095),
                    _int(raw.get("size"), f"{key}.size", problems, 1, 4095),
                    _int(raw.get("byte", 0xFF), f"{key}.byte", problems, 0, 0xFF))
    if filler.at + filler.size > length:
        problems.append(f"{key}: bytes {filler.at}..{filler.at + filler.size - 1} are outside the "
                        f"{length}-byte payload")
    return filler


def _parse_layout(lay: Any, key: str, problems: list[str]) -> Layout | None:
    if not isinstance(lay, Mapping) or not isinstance(lay.get("fields", []), list):
        problems.append(f"{key}: expected a table with a list of fields")
        return None
    problems.extend(f"{key}.{k}: unknown key" for k in sorted(set(lay) - {"length", "at_least", "generation", "fields",
                                                                          "filler"}))
    fields = [_parse_field(f, f"{key}.fields[{k}]", problems) for k, f in enumerate(lay.get("fields", []))]
    length = _int(lay.get("length"), f"{key}.length", problems, 1, 4095)
    for k, fld in enumerate(fields):
        end = 0 if fld is None else max(fld.at + (fld.count - 1) * fld.stride + fld.size,
                                        0 if fld.guard_at is None else
                                        fld.guard_at + (fld.count - 1) * fld.stride + fld.guard_size)
        if end > length:
            problems.append(f"{key}.fields[{k}]: bytes up to {end - 1} are outside the {length}-byte payload")
    at_least = lay.get("at_least", False)
    if not isinstance(at_least, bool):
        problems.append(f"{key}.at_least: expected true or false")
    return Layout(length, tuple(f for f in fields if f is not None), str(lay.get("generation", "")),
                  _parse_filler(lay.get("filler"), f"{key}.filler", length, problems), at_least is True)


def _parse_poll(i: int, raw: Any, problems: list[str]) -> PollSpec | None:
    key = f"poll[{i}]"
    if not isinstance(raw, Mapping):
        problems.append(f"{key}: expected a table")
        return None
    known = {"name", "request_id", "response_id", "request", "every_s", "layout", "timeout_s", "ext_address"}
    problems.extend(f"{key}.{k}: unknown key" for k in sorted(set(raw) - known))
    request = raw.get("request")
    if not (isinstance(request, list) and request and all(isinstance(b, int) and 0 <= b <= 255 for b in request)):
        problems.append(f"{key}.request: expected a list of bytes, e.g. [0x21, 0x01]")
        return None
    every = raw.get("every_s", {})
    if not isinstance(every, Mapping) or any(k not in VEHICLE_STATES or not isinstance(v, int | float) or v <= 0
                                              for k, v in every.items()):
        problems.append(f"{key}.every_s: expected {{state = seconds}} with states {', '.join(VEHICLE_STATES)}")
        every = {}
    elif every.get("off", OFF_PROBE_MIN_S) < OFF_PROBE_MIN_S:  # a sleeping car is asked seldom: one frame each
        problems.append(f"{key}.every_s.off: at least {OFF_PROBE_MIN_S:g} s (a car that is off is asked seldom)")
        every = {}
    raw_layouts = raw.get("layout", [])
    layouts = [_parse_layout(lay, f"{key}.layout[{j}]", problems)
               for j, lay in enumerate(raw_layouts if isinstance(raw_layouts, list) else [None])]
    timeout = raw.get("timeout_s", 1.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0.05 <= timeout <= 30:
        problems.append(f"{key}.timeout_s: expected seconds 0.05..30, got {timeout!r}")
        timeout = 1.0
    ext = raw.get("ext_address")
    if ext is not None and not (isinstance(ext, list) and len(ext) == 2
                                and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in ext)):
        problems.append(f"{key}.ext_address: expected [target, source] bytes, e.g. [0x07, 0xF1]")
        ext = None
    if ext is not None and len(request) > 6:
        problems.append(f"{key}.request: at most 6 bytes with extended addressing (one single frame)")
    return PollSpec(name=str(raw.get("name", f"poll-{i}")),
                    request_id=_int(raw.get("request_id"), f"{key}.request_id", problems, 0, 0x1FFFFFFF),
                    response_id=_int(raw.get("response_id"), f"{key}.response_id", problems, 0, 0x1FFFFFFF),
                    request=bytes(request), every_s=dict(every),
                    layouts=tuple(lay for lay in layouts if lay is not None),
                    timeout_s=float(timeout), ext_address=(ext[0], ext[1]) if ext else None)


def parse_polls(raw: Any, problems: list[str]) -> tuple[PollSpec, ...]:
    """Parse the profile's ``[[poll]]`` list, appending problems (with their keys) to ``problems``."""
    if not isinstance(raw, list):
        problems.append("poll: expected a list of [[poll]] tables")
        return ()
    polls = [_parse_poll(i, p, problems) for i, p in enumerate(raw)]
    return tuple(p for p in polls if p is not None)


def _uint(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at:at + size], "big")


def _number(f: ByteField, data: bytes, at: int) -> float | None:
    raw = _uint(data, at, f.size)
    if raw in f.invalid_raw:
        return None
    if f.signed and raw >= 1 << (8 * f.size - 1):
        raw -= 1 << (8 * f.size)
    return round(raw * f.scale + f.offset, 6)


def decode_reply(spec: PollSpec, reply: bytes) -> DiagValues:
    """Decode a complete ISO-TP reply to ``spec``'s request.

    Raises:
        UdsNegativeResponse: the ECU answered ``7F <service> <NRC>``.
        DecodeError: the reply is for another request, or its length has no layout (kind ``layout``).
    """
    rid = spec.response_id
    if len(reply) >= 3 and reply[0] == 0x7F and reply[1] == spec.request[0]:
        raise UdsNegativeResponse(f"{spec.name}: negative response, NRC 0x{reply[2]:02X}", frame_id=rid,
                                  nrc=reply[2])
    header = spec.positive_header
    if not reply.startswith(header):
        raise DecodeError(f"{spec.name}: reply {reply[:4].hex(' ')} does not answer {spec.request.hex(' ')}",
                          frame_id=rid, kind="mismatch")
    payload = reply[len(header):]
    layout = _layout_for(spec, payload)
    if layout is None:
        raise DecodeError(f"{spec.name}: {len(payload)}-byte reply matches no layout "
                          f"({', '.join(str(lay.length) for lay in spec.layouts)})", frame_id=rid, kind="layout")
    out = DiagValues([], {}, {}, layout.generation)
    for f in layout.fields:
        if f.kind == "number":
            value = _number(f, payload, f.at)
            spec_range = FIELDS[f.name]
            if value is not None and spec_range.lo <= value <= spec_range.hi:
                out.values.append((f.name, value))
        elif f.kind == "bitcount":
            bits = sum(bin(b & f.mask).count("1") for b in payload[f.at:f.at + f.size])
            out.values.append((f.name, float(bits)))
        elif f.kind == "text":
            text = "".join(chr(b) for b in payload[f.at:f.at + f.size] if 0x20 < b < 0x7F or b == 0x20).strip()
            if text:
                out.texts[f.name] = text
        else:
            out.arrays[f.name] = _array(f, payload)
    for name, (lo_field, hi_field) in ARRAY_FIELDS.items():
        if out.arrays.get(name):
            out.values += [(lo_field, min(out.arrays[name])), (hi_field, max(out.arrays[name]))]
    return out


def _layout_for(spec: PollSpec, payload: bytes) -> Layout | None:
    """The layout that decodes ``payload``: one whose filler the payload carries, else one of its exact length,
    else one it is at least as long as."""
    fitting = sorted((lay for lay in spec.layouts if lay.fits(payload)), key=lambda lay: (lay.filler is None,
                                                                                            lay.at_least))
    return fitting[0] if fitting else None


def _array(f: ByteField, payload: bytes) -> list[float]:
    lo, hi = _ARRAY_RANGE[f.name]
    values = []
    for i in range(f.count):
        if f.guard_at is not None and _uint(payload, f.guard_at + i * f.stride, f.guard_size) == f.guard_raw:
            continue
        value = _number(f, payload, f.at + i * f.stride)
        if value is not None and lo <= value <= hi:
            values.append(value)
    return values
