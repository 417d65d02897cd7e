"""Composition root of the updater process (``battery-gateway update``): builds the adapters (python-tuf,
release directories) and wires ``services/ota.OtaService``. Its progress goes to ``ota-status.json`` in the
releases directory, which the daemon publishes: the updater never connects to the broker itself. The signed
``cmd/ota`` that may start it is ``app/commands.py``. The daemon never imports this module (nor
python-tuf). docs/ota.md describes the whole flow.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time

from ..adapters.health import read_health
from ..adapters.releases import ReleaseDirs
from ..adapters.tuf_client import TufUpdateClient
from ..core.config import Config
from ..errors import ConfigError, UpdateError
from ..services.ota import OtaService

__all__ = ["run_update"]

log = logging.getLogger(__name__)


def _restart(command: str) -> None:
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("ota.restart_command %r failed: %s", command, exc)
        return
    if done.returncode:
        log.error("ota.restart_command %r exited %d: %s", command, done.returncode, done.stderr.strip()[-200:])


def run_update(config: Config, *, check_only: bool = False) -> int:
    """One updater run (timer, ``cmd/ota`` request, or ``OnFailure=`` of the daemon). Returns the exit code.

    Raises:
        ConfigError: over-the-air updates are not configured.
    """
    o = config.ota
    if not o.metadata_url:
        raise ConfigError("ota.metadata_url: required for update (empty = over-the-air updates off)")
    releases = ReleaseDirs(o.releases_dir, o.dir, python=sys.executable)

    def report(body: dict[str, object]) -> None:
        releases.write_status({**body, "dev": config.device.id})

    try:
        with releases.lock():
            client = TufUpdateClient(metadata_url=o.metadata_url, targets_url=o.targets_url,
                                     trusted_root=o.trusted_root, cache_dir=o.dir)
            service = OtaService(client=client, releases=releases, report=report,
                                 health=lambda: read_health(config.device.state_dir),
                                 restart=lambda: _restart(o.restart_command), hardware_id=o.hardware_id,
                                 target=o.target, probation_s=o.probation_s, max_crashes=o.max_crashes,
                                 max_bytes=o.max_bundle_mb * 1024 * 1024, clock=time.time, sleep=time.sleep)
            return 0 if service.run(check_only=check_only) else 1
    except UpdateError as exc:
        if exc.kind == "busy":
            log.warning("%s: nothing to do", exc)
            return 0
        log.error("ota: %s", exc)
        report({"state": "refused" if exc.kind == "refused" else "failed", "reason": str(exc),
                "ts": round(time.time() * 1000)})
        return 1
