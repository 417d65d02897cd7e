"""Envelopes made by a COSE library this project did not write (pycose, with its defaults: kid in the
unprotected header, the payload in the order it was given) verify, both as a backend command on the
device and in `battery-gateway verify`; a forgery made with the same library does not."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pycose.algorithms import Es256
from pycose.headers import KID, Algorithm
from pycose.keys import EC2Key
from pycose.keys.curves import P256
from pycose.messages import Sign1Message

from gateway.adapters.keystore import generate_key, public_pem
from gateway.app.commands import CommandIntake
from gateway.app.wiring import load_config
from gateway.core.signing import key_id


def pycose_sign(key: ec.EllipticCurvePrivateKey, payload: dict[str, object]) -> bytes:
    numbers = key.private_numbers()
    cose_key = EC2Key(crv=P256, d=numbers.private_value.to_bytes(32, "big"),
                      x=numbers.public_numbers.x.to_bytes(32, "big"), y=numbers.public_numbers.y.to_bytes(32, "big"))
    message = Sign1Message(phdr={Algorithm: Es256}, uhdr={KID: key_id(key.public_key())},
                           payload=cbor2.dumps(payload))  # insertion order, as most backends would write it
    message.key = cose_key
    return bytes(message.encode())


@pytest.fixture
def intake(tmp_path: Path) -> tuple[CommandIntake, ec.EllipticCurvePrivateKey]:
    backend = generate_key(tmp_path / "backend.pem")
    (tmp_path / "backend.pub").write_text(public_pem(backend))
    config = tmp_path / "g.toml"
    config.write_text(f'[device]\nid = "gw-1"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[ota]\ncommand_key = "{tmp_path / "backend.pub"}"\n')
    (tmp_path / "state").mkdir(mode=0o700)
    return CommandIntake(load_config(config)), backend


def test_a_command_signed_with_pycose_defaults_is_accepted(intake: tuple[CommandIntake, ec.EllipticCurvePrivateKey]
                                                           ) -> None:
    take, backend = intake
    now = round(time.time() * 1000)
    envelope = pycose_sign(backend, {"v": 1, "kind": "command", "cmd": "ota", "dev": "gw-1", "ts": now})
    assert cbor2.loads(envelope).value[1] != {}  # the kid really is in the unprotected header
    assert take.accept("ota", envelope, now_ms=now)


def test_a_pycose_forgery_is_refused(intake: tuple[CommandIntake, ec.EllipticCurvePrivateKey]) -> None:
    take, _ = intake
    now = round(time.time() * 1000)
    attacker = ec.generate_private_key(ec.SECP256R1())
    assert not take.accept("ota", pycose_sign(attacker, {"v": 1, "kind": "command", "cmd": "ota", "dev": "gw-1",
                                                        "ts": now}), now_ms=now)


def test_verify_accepts_a_device_envelope_made_with_pycose(tmp_path: Path) -> None:
    device = generate_key(tmp_path / "device.pem")
    (tmp_path / "device.pub").write_text(public_pem(device))
    payload = {"v": 1, "kind": "reading", "dev": "gw-9", "ep": 1, "seq": 1, "prev": bytes(32), "ts": 1, "sw": "x",
               "bat": None, "m": {"soc_pct": 50.0}}
    (tmp_path / "r.cose").write_bytes(pycose_sign(device, payload))
    out = subprocess.run([sys.executable, "-m", "gateway", "verify", "--pubkey", str(tmp_path / "device.pub"),
                          str(tmp_path / "r.cose")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "signature verified" in out.stderr and '"soc_pct":50.0' in out.stdout
