"""``battery-gateway profiles``: which cars the gateway reads, how, and how sure each profile is.

The table of vehicles x signals x status in docs/profiles.md is this module's ``markdown`` output (a test
keeps them equal), so the documentation cannot drift from the profile files.
"""

from __future__ import annotations

from ..core.profile import DOCUMENTATION_ONLY, Profile

__all__ = ["SIGNALS", "markdown", "summary", "transport"]

# The columns: a signal, and the canonical fields that give it
SIGNALS: dict[str, tuple[str, ...]] = {
    "SoC": ("soc_pct",), "pack V": ("pack_v",), "pack I": ("pack_a",),
    "temperature": ("temp_c_min", "temp_c_max", "temp_c_avg"), "cell V min/max": ("cell_v_min", "cell_v_max"),
    "BMS SoH": ("bms_soh_pct", "lbc_soh_pct"), "capacity": ("capacity_ah", "full_energy_kwh"),
}


def transport(profile: Profile) -> str:
    """How the car is read: broadcast frames, polls (with their addressing), or both."""
    ways = []
    if profile.signals:
        ways.append("broadcast")
    if profile.polls:
        kinds = {"29-bit" if p.ids_29bit else "11-bit" for p in profile.polls}
        if any(p.ext_address for p in profile.polls):
            kinds.add("extended addressing")
        ways.append(f"polls ({', '.join(sorted(kinds))})")
    return " + ".join(ways)


def _cell(profile: Profile, fields: tuple[str, ...]) -> str:
    sources = profile.field_sources()
    given = [f for f in fields if f in sources]
    if not given:
        return "—"
    checked = any(profile.validation_of(f) != DOCUMENTATION_ONLY for f in given)
    return "capture" if checked else "doc"


def markdown(profiles: list[Profile]) -> str:
    """The vehicles x signals table: ``capture`` (a real capture's replay checks it), ``doc`` (from documentation
    only), ``—`` (the car does not give it through this profile)."""
    head = ["profile", "vehicle", "read by", *SIGNALS, "status"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in profiles:
        status = "checked against " + ", ".join(dict.fromkeys(c.name for c in p.captures)) if p.captures \
            else "documentation only"
        cells = [f"`{p.name}`", p.title, transport(p), *(_cell(p, f) for f in SIGNALS.values()), status]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def summary(profiles: list[Profile]) -> str:
    """One line per profile for a terminal: name, vehicle, how it is read, how sure."""
    width = max(len(p.name) for p in profiles)
    return "\n".join(f"{p.name:<{width}}  {p.title}\n{'':<{width}}  read by {transport(p)}; {p.validation}"
                     for p in profiles) + "\n"
