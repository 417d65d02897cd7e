"""Over-the-air updates: which release to install, when a new release is healthy, when to roll back.

Owns the update decision and the probation state machine; the I/O goes through three ports: an
``UpdateClient`` (python-tuf: every byte it returns was verified against signed metadata), a
``ReleaseStore`` (release directories, the atomic ``current`` symlink, the updater's state file) and the
daemon's health record. Invariants:

- The release counter in the updater's state never goes down, and a bundle whose counter is not
  above it is refused, whatever the (validly signed) metadata says: no downgrade, no replay of an old
  release with a known bug.
- A bundle that does not list this device's hardware id is refused before a byte of it is downloaded.
- The probation record is written before ``current`` is switched, so a power cut at any point leaves
  either the old release running or a probation that the next run finishes (commit or roll back).
- A release that was rolled back is never installed again; a newer counter is needed.
- Only ``current`` changes: the config file and the daemon's ``state_dir`` are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import UpdateError
from ..model import Health, OtaState, Probation, Release
from ..ports import ReleaseStore, UpdateClient

__all__ = ["OtaService", "decide", "probation_verdict"]

log = logging.getLogger(__name__)


def decide(release: Release, *, current: str | None, state: OtaState, hardware_id: str,
           max_bytes: int) -> str | None:
    """Why ``release`` must not be installed, or None to install it.

    "up to date" is the one answer that is not a refusal; every other reason starts with "refused".
    """
    if release.version == current:
        return "up to date"
    if hardware_id not in release.hardware_ids:
        return (f"refused: {release.name} is for hardware {', '.join(release.hardware_ids) or '(none)'}, "
                f"this device is {hardware_id}")
    if release.counter <= state.counter:
        return (f"refused: downgrade: {release.name} {release.version} has release counter {release.counter}, "
                f"not above the installed {state.counter}")
    if release.version in state.rolled_back:
        return f"refused: {release.version} was rolled back on this device before; publish a new release"
    if release.length > max_bytes:
        return f"refused: {release.name} is {release.length} bytes, above ota.max_bundle_mb"
    return None


def probation_verdict(p: Probation, health: Health | None, *, now_ms: int, max_crashes: int) -> str | None:
    """None while waiting; "commit"; or the reason to roll back."""
    mine = health is not None and health.sw == p.version
    if mine and health is not None and health.healthy:
        return "commit"
    if mine and health is not None and health.starts >= max_crashes:
        return (f"rollback: {p.version} started {health.starts} times without becoming healthy "
                f"(ota.max_crashes = {max_crashes})")
    if now_ms >= p.deadline_ms:
        got = "no health record" if not mine or health is None else \
            ", ".join(k for k in ("bus", "broker", "acked") if not getattr(health, k))
        return f"rollback: {p.version} not healthy within its probation (missing: {got})"
    return None


@dataclass
class OtaService:
    """One update run: finish a pending probation, or check, download, install, switch and watch."""

    client: UpdateClient
    releases: ReleaseStore
    report: Callable[[dict[str, Any]], None]
    health: Callable[[], Health | None]
    restart: Callable[[], None]
    hardware_id: str
    target: str
    probation_s: float
    max_crashes: int
    max_bytes: int
    clock: Callable[[], float]  # wall clock, seconds (the probation deadline is stored as wall time)
    sleep: Callable[[float], None]
    poll_s: float = 1.0
    result: dict[str, Any] = field(default_factory=dict)

    def run(self, *, check_only: bool = False) -> bool:
        """Returns True when the device ends on a good release (updated, or already up to date)."""
        state = self.releases.load_state()
        if state.probation is not None:
            return self._watch(state, state.probation)
        current = self.releases.current()
        self._say("checking", version=current)
        try:
            release = self.client.check(self.target)
            reason = decide(release, current=current, state=state, hardware_id=self.hardware_id,
                            max_bytes=self.max_bytes)
            if reason == "up to date" and release.counter > state.counter:  # a fresh image learns its counter
                self.releases.save_state(replace(state, counter=release.counter))
            if reason is not None:
                self._say("up_to_date" if reason == "up to date" else "refused", version=current,
                          offered=release.version, counter=release.counter, reason=reason)
                return reason == "up to date"
            if check_only:
                self._say("available", version=current, offered=release.version, counter=release.counter)
                return True
            self._say("downloading", version=current, offered=release.version, bytes=release.length)
            bundle = self.client.download(release)
            self._say("installing", version=current, offered=release.version)
            self.releases.install(bundle, release.version)
        except UpdateError as exc:
            self._say("refused" if exc.kind == "refused" else "failed", version=current, reason=str(exc),
                      kind=exc.kind)
            return False
        if current is None:  # nothing to fall back to: switch without probation (first install)
            self.releases.switch(release.version)
            self.releases.save_state(replace(state, counter=release.counter))
            self.restart()
            self._say("committed", version=release.version, counter=release.counter)
            return True
        probation = Probation(version=release.version, previous=current, counter=release.counter,
                              deadline_ms=round((self.clock() + self.probation_s) * 1000))
        self.releases.save_state(replace(state, probation=probation))  # before the switch: see module doc
        self.releases.switch(release.version)
        self.restart()
        return self._watch(replace(state, probation=probation), probation)

    def _watch(self, state: OtaState, p: Probation) -> bool:
        if self.releases.current() != p.version:  # the switch never happened (power cut): nothing to undo
            log.warning("probation of %s found but %s is current; clearing it", p.version, self.releases.current())
            self.releases.save_state(replace(state, probation=None))
            return False
        self._say("probation", version=p.version, previous=p.previous, deadline_ms=p.deadline_ms)
        while (verdict := probation_verdict(p, self.health(), now_ms=round(self.clock() * 1000),
                                            max_crashes=self.max_crashes)) is None:
            self.sleep(self.poll_s)
        if verdict == "commit":
            self.releases.save_state(replace(state, counter=max(state.counter, p.counter), probation=None))
            self.releases.prune({p.version, p.previous})
            self._say("committed", version=p.version, previous=p.previous, counter=p.counter)
            return True
        self.releases.switch(p.previous)
        self.releases.save_state(replace(state, probation=None, rolled_back=(*state.rolled_back, p.version)))
        self.restart()
        self._say("rolled_back", version=p.previous, offered=p.version, reason=verdict.removeprefix("rollback: "))
        return False

    def _say(self, state: str, **fields: Any) -> None:
        self.result = {"state": state, **{k: v for k, v in fields.items() if v is not None},
                       "ts": round(self.clock() * 1000)}
        log.log(logging.WARNING if state in ("refused", "failed", "rolled_back") else logging.INFO,
                "ota %s: %s", state, ", ".join(f"{k} {v}" for k, v in fields.items() if v is not None))
        self.report(self.result)
