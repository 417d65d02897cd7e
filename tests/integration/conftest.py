"""Fixtures of the integration tests: the daemon rig and a subscriber (tests/rig.py has the helpers)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.keystore import load_public_key
from gateway.sim.broker import LocalBroker
from tests.rig import Rig, Subscriber, write_config


@pytest.fixture
def rig(tmp_path: Path, broker: LocalBroker) -> Rig:
    out = subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(tmp_path / "key.pem")],
                         capture_output=True, text=True, check=True)
    assert "BEGIN PUBLIC KEY" in out.stdout and "device id:" in out.stdout
    device = f"gw-test-{random.randint(0, 99999)}"
    can_port = random.randint(40000, 49999)
    config = write_config(tmp_path, device=device, mqtt_port=broker.port, can_port=can_port)
    return Rig(tmp_path, config, device, can_port, load_public_key(tmp_path / "key.pem"))


@pytest.fixture
def sub(rig: Rig, broker: LocalBroker) -> Iterator[Subscriber]:
    s = Subscriber(broker.port, rig.device)
    yield s
    s.close()
