"""The update decision, the probation verdict and the cmd/ota checks: pure functions and the service
with our own ports faked (tests/fakes.py). The TUF side is tested for real in tests/integration/test_ota.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gateway.errors import UpdateError
from gateway.model import Health, OtaState, Probation, Release, release_from_target
from gateway.services.ota import OtaService, decide, probation_verdict
from tests.fakes import MemoryReleases, StaticUpdateClient

REL = Release(name="gw/stable.tar", version="2.0.0", counter=7, hardware_ids=("rpi4", "rpi5"), length=1000)


def _decide(release: Release = REL, *, current: str = "1.0.0", state: OtaState | None = None,
            hw: str = "rpi4") -> str | None:
    return decide(release, current=current, state=state or OtaState(counter=6), hardware_id=hw, max_bytes=10_000)


def test_newer_counter_for_this_hardware_is_installed() -> None:
    assert _decide() is None


def test_same_version_is_up_to_date() -> None:
    assert _decide(current="2.0.0") == "up to date"


@pytest.mark.parametrize(("changes", "state", "hw", "why"), [
    ({}, OtaState(counter=7), "rpi4", "downgrade"),            # counter equal: not above
    ({"counter": 3}, OtaState(counter=6), "rpi4", "downgrade"),  # newer version string, older counter
    ({}, OtaState(counter=6), "rpi3", "is for hardware rpi4, rpi5"),
    ({"length": 20_000}, OtaState(counter=6), "rpi4", "above ota.max_bundle_mb"),
    ({}, OtaState(counter=6, rolled_back=("2.0.0",)), "rpi4", "rolled back on this device before"),
])
def test_refusals(changes: dict[str, int], state: OtaState, hw: str, why: str) -> None:
    reason = _decide(replace(REL, **changes), state=state, hw=hw)  # type: ignore[arg-type]
    assert reason is not None and reason.startswith("refused") and why in reason


@pytest.mark.parametrize("custom", [
    {"release_counter": 1, "hardware_ids": []},
    {"version": "../../etc", "release_counter": 1, "hardware_ids": []},
    {"version": "1.0", "release_counter": True, "hardware_ids": []},
    {"version": "1.0", "release_counter": 0, "hardware_ids": []},
    {"version": "1.0", "release_counter": 1, "hardware_ids": "rpi4"},
])
def test_bad_custom_metadata_is_refused_naming_the_field(custom: dict[str, object]) -> None:
    with pytest.raises(UpdateError, match=r"custom\.") as err:
        release_from_target("gw/stable.tar", 10, custom)
    assert err.value.kind == "refused"


P = Probation(version="2.0.0", previous="1.0.0", counter=7, deadline_ms=10_000)


@pytest.mark.parametrize(("health", "now", "verdict"), [
    (None, 5_000, None),
    (Health("1.0.0", 1, True, True, True), 5_000, None),      # the old release's record: wait
    (Health("2.0.0", 1, True, True, False), 5_000, None),
    (Health("2.0.0", 1, True, True, True), 5_000, "commit"),
    (Health("2.0.0", 3, True, False, False), 5_000, "rollback: 2.0.0 started 3 times"),
    (Health("2.0.0", 1, True, False, False), 10_000, "rollback: 2.0.0 not healthy within its probation "
                                                     "(missing: broker, acked)"),
    (None, 10_000, "rollback: 2.0.0 not healthy within its probation (missing: no health record)"),
])
def test_probation_verdict(health: Health | None, now: int, verdict: str | None) -> None:
    got = probation_verdict(P, health, now_ms=now, max_crashes=3)
    assert got == verdict if verdict is None or verdict == "commit" else (got or "").startswith(verdict)


def _service(releases: MemoryReleases, client: StaticUpdateClient, health: list[Health | None],
             restarts: list[int]) -> OtaService:
    clock = [1000.0]
    return OtaService(client=client, releases=releases, report=lambda body: None,  # type: ignore[arg-type]
                      health=lambda: health[0], restart=lambda: restarts.append(1), hardware_id="rpi4",
                      target="gw/stable.tar", probation_s=30, max_crashes=3, max_bytes=10_000,
                      clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))


def test_probation_is_saved_before_the_switch_and_commit_raises_the_counter() -> None:
    releases, restarts = MemoryReleases(), []
    releases.state = OtaState(counter=6)
    health: list[Health | None] = [Health("2.0.0", 1, True, True, True)]
    assert _service(releases, StaticUpdateClient(REL), health, restarts).run()
    assert releases.log == ["install 2.0.0", "save probation", "switch 2.0.0", "save no-probation"]
    assert releases.state.counter == 7 and restarts == [1] and releases.current() == "2.0.0"


def test_unhealthy_release_is_switched_back_and_never_retried() -> None:
    releases, restarts = MemoryReleases(), []
    releases.state = OtaState(counter=6)
    service = _service(releases, StaticUpdateClient(REL), [None], restarts)
    assert not service.run()
    assert releases.current() == "1.0.0" and releases.state.counter == 6 and len(restarts) == 2
    assert releases.state.rolled_back == ("2.0.0",) and service.result["state"] == "rolled_back"
    assert not service.run() and service.result["state"] == "refused"


def test_power_cut_between_state_save_and_switch_clears_the_probation() -> None:
    releases = MemoryReleases()
    releases.installed.add("2.0.0")
    releases.state = OtaState(counter=6, probation=P)  # saved, but `current` still points at 1.0.0
    client = StaticUpdateClient(REL)
    assert not _service(releases, client, [None], []).run()
    assert releases.state.probation is None and releases.state.rolled_back == () and client.downloads == 0


def test_download_failure_is_reported_and_nothing_switched() -> None:
    releases = MemoryReleases()
    service = _service(releases, StaticUpdateClient(REL, UpdateError("link down", kind="download")), [None], [])
    assert not service.run()
    assert service.result["state"] == "failed" and releases.log == []


@pytest.mark.parametrize("evil", ["../escape.txt", "/etc/cron.d/x", "link"])
def test_bundle_with_a_path_outside_or_a_link_is_refused(tmp_path: Path, evil: str) -> None:
    import io
    import tarfile

    from gateway.adapters.releases import ReleaseDirs

    bundle = tmp_path / "b.tar"
    with tarfile.open(bundle, "w") as tar:
        info = tarfile.TarInfo(evil)
        if evil == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    releases = ReleaseDirs(str(tmp_path / "opt"), str(tmp_path / "ota"), python="/nonexistent")
    with pytest.raises(UpdateError, match="not a plain file inside the bundle") as err:
        releases.install(str(bundle), "1.0.0")
    assert err.value.kind == "install" and not (tmp_path / "opt" / "releases" / "1.0.0").exists()
    assert not (tmp_path / "escape.txt").exists()
