"""docs/profiles.md's table of vehicles x signals x status is what ``battery-gateway profiles --markdown``
prints from the profile files: the documentation cannot claim a status the profiles do not have."""

from __future__ import annotations

from pathlib import Path

from gateway.adapters.files import BUILTIN_PROFILES
from gateway.app.profiles import markdown
from gateway.app.wiring import load_profile

DOC = Path(__file__).resolve().parents[2] / "docs" / "profiles.md"


def test_the_documented_table_is_the_one_the_profiles_give() -> None:
    text = DOC.read_text()
    documented = text.split("<!-- profiles-table -->\n", 1)[1].split("<!-- /profiles-table -->", 1)[0]
    assert documented == markdown([load_profile(n)[0] for n in BUILTIN_PROFILES]), \
        "docs/profiles.md is stale: paste `battery-gateway profiles --markdown` between its markers"


def test_a_signal_checked_by_a_capture_says_capture_and_one_not_given_says_so() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ") for line in
            markdown([load_profile(n)[0] for n in ("kia-eniro-64", "kia-soul-ev-27")]).splitlines()[2:]}
    # SoC, pack V, pack I (0 A on the bench: no check), temperature, cells, BMS SoH, capacity
    assert rows["kia-eniro-64"][3:10] == ["capture", "capture", "doc", "capture", "capture", "capture", "—"]
    assert rows["kia-soul-ev-27"][8] == "—" and rows["kia-soul-ev-27"][-1] == "documentation only |"
