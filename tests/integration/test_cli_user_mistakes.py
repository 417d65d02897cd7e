"""The command line: one clear line per user mistake, exit codes 0/1/2, keygen and verify."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.adapters.keystore import generate_key, public_pem
from gateway.core.signing import Signer


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=timeout)


def test_help_teaches_the_commands() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for command in ("run", "check-config", "keygen", "replay", "inspect", "verify", "demo"):
        assert command in out.stdout
    assert "examples:" in out.stdout


def test_check_config_prints_effective_config(tmp_path: Path) -> None:
    generate_key(tmp_path / "key.pem")
    path = tmp_path / "g.toml"
    path.write_text(f'[device]\nid = "gw-0001"\nkey_file = "{tmp_path / "key.pem"}"\n'
                    '[vehicle]\nprofile = "leaf-aze0"\n')
    out = cli("check-config", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert 'profile = "leaf-aze0"' in out.stdout and "reading_interval_s = 60.0" in out.stdout


def test_check_config_names_every_bad_key_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[device]\n[mqtt]\nport = "1883"\nhots = "x"\n')
    out = cli("check-config", "--config", str(path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert any("device.id: required" in line for line in lines)
    assert any("mqtt.port: expected an integer" in line for line in lines)
    assert any("mqtt.hots: unknown key" in line for line in lines)
    assert "Traceback" not in out.stderr


def test_unknown_profile_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[device]\nid = "gw"\n[vehicle]\nprofile = "tesla-s"\n')
    out = cli("check-config", "--config", str(path))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "unknown profile 'tesla-s'" in out.stderr


def test_a_profile_reports_its_missing_dbc_file_with_its_other_problems(tmp_path: Path) -> None:
    profile = tmp_path / "car.toml"
    profile.write_text('name = "car"\ndbc = ["nosuch.dbc"]\ncolour = "red"\n[[pack]]\nenergy_kwh = 24\n'
                       'capacity_ah = 66\n[[signal]]\nframe = 0x1DB\nsignal = "x"\nfield = "soc_pct"\n')
    path = tmp_path / "g.toml"
    path.write_text(f'[device]\nid = "gw"\n[vehicle]\nprofile = "{profile}"\n')
    out = cli("check-config", "--config", str(path))
    assert out.returncode == 2
    assert "colour: unknown key" in out.stderr and "'nosuch.dbc' not found" in out.stderr


def test_a_signed_command_goes_to_stdout_with_out_dash(tmp_path: Path) -> None:
    key = tmp_path / "backend.pem"
    generate_key(key)
    out = subprocess.run([sys.executable, "-m", "gateway", "command", "ota", "--key", str(key), "--device", "gw-1",
                          "--out", "-"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert cbor2.loads(out.stdout).tag == 18  # the COSE_Sign1 envelope itself, nothing else


def test_keygen_writes_0600_and_never_overwrites(tmp_path: Path) -> None:
    key = tmp_path / "k" / "device-key.pem"
    out = cli("keygen", "--key", str(key))
    assert out.returncode == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert out.stdout.startswith("device id: gw-") and "-----BEGIN PUBLIC KEY-----" in out.stdout
    again = cli("keygen", "--key", str(key))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_run_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    generate_key(key)
    key.chmod(0o644)
    path = tmp_path / "g.toml"
    path.write_text(f'[device]\nid = "gw"\nkey_file = "{key}"\nstate_dir = "{tmp_path / "s"}"\n')
    out = cli("run", "--config", str(path))
    assert out.returncode == 2
    assert "readable by others" in out.stderr and "chmod 600" in out.stderr


def test_run_without_a_key_says_how_to_make_one(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(f'[device]\nid = "gw"\nkey_file = "{tmp_path / "none.pem"}"\n')
    out = cli("run", "--config", str(path))
    assert out.returncode == 2 and "battery-gateway keygen --key" in out.stderr


def test_verify_accepts_good_and_rejects_tampered(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "device.pub"
    pub.write_text(public_pem(key))
    env = Signer(key).sign({"v": 1, "kind": "reading", "dev": "gw", "ep": 1, "seq": 1, "prev": bytes(32),
                            "ts": 1, "sw": "t", "bat": None, "m": {"soc_pct": 50.0}})
    good = tmp_path / "good.cose"
    good.write_bytes(env)
    out = cli("verify", "--pubkey", str(pub), str(good))
    assert out.returncode == 0 and '"soc_pct":50.0' in out.stdout and '"prev":"' + "00" * 32 in out.stdout
    assert "signature verified" in out.stderr
    protected, _, body, sig = cbor2.loads(env).value
    payload = cbor2.loads(body)
    payload["m"]["soc_pct"] = 99.0
    bad = tmp_path / "bad.cose"
    bad.write_bytes(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, cbor2.dumps(payload, canonical=True), sig])))
    out = cli("verify", "--pubkey", str(pub), str(good), str(bad))
    assert out.returncode == 1
    assert f"{bad}: REJECTED: signature does not verify" in out.stderr


def test_verify_without_a_key_is_a_usage_error(tmp_path: Path) -> None:
    out = cli("verify", str(tmp_path / "x.cose"))
    assert out.returncode == 2 and "--pubkey" in out.stderr


@pytest.mark.parametrize("args,needle", [
    (["replay", "/nonexistent/capture.log"], "cannot read"),
    (["replay", "{tmp}/junk.txt"], "unknown capture format"),
    (["replay", "{tmp}/junk.txt", "--profile", "nope"], "unknown profile 'nope'"),
])
def test_replay_mistakes_exit_2_with_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "junk.txt").write_text("not a capture\n")
    out = cli(*[a.format(tmp=tmp_path) for a in args])
    assert out.returncode == 2
    assert needle in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr


def _config(tmp: Path, device: str = "[device]\nid = \"gw-1\"\n", extra: str = "") -> Path:
    if not (tmp / "key.pem").exists():
        generate_key(tmp / "key.pem")
    path = tmp / "g.toml"
    path.write_text(f'{device}key_file = "{tmp / "key.pem"}"\nstate_dir = "{tmp / "state"}"\n{extra}')
    return path


@pytest.mark.parametrize("bad_id", ["+", "#", "gw/1", "gw-\\u0000", "x" * 65536, "", "$SYS"])
def test_an_id_the_broker_would_read_as_syntax_is_refused(tmp_path: Path, bad_id: str) -> None:
    # a "+" passed before: the daemon said READY=1 and never connected, logging nothing
    for command in ("check-config", "run"):
        out = cli(command, "--config", str(_config(tmp_path, f'[device]\nid = "{bad_id}"\n')))
        assert out.returncode == 2 and "device.id:" in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("prefix", ["bp/#", "bp/+/v1", "/bp", "bp//v1", "bp/v1/", "bp v1", "x" * 200])
def test_a_topic_prefix_with_wildcards_or_empty_levels_is_refused(tmp_path: Path, prefix: str) -> None:
    out = cli("check-config", "--config", str(_config(tmp_path, extra=f'[mqtt]\ntopic_prefix = "{prefix}"\n')))
    assert out.returncode == 2 and "mqtt.topic_prefix:" in out.stderr, out.stderr


def test_a_key_that_is_a_device_or_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.pem", 0o600)  # no writer: reading it would hang
    for key, why in (("/dev/zero", "not a regular file"), (str(tmp_path / "fifo.pem"), "not a regular file")):
        config = tmp_path / "g.toml"
        config.write_text(f'[device]\nid = "gw-1"\nkey_file = "{key}"\n')
        out = cli("check-config", "--config", str(config), timeout=20)  # before: MemoryError, or a hang
        assert out.returncode == 2 and f"device.key_file: {key}: {why}" in out.stderr, out.stderr


def test_check_config_opens_every_file_it_names_and_names_the_broken_one(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    (tmp_path / "cert.pem").write_text("x\n")
    (tmp_path / "tls.key").write_text("x\n")
    (tmp_path / "tls.key").chmod(0o644)
    (tmp_path / "root.json").write_text("{broken")
    extra = (f'[mqtt]\ntls = true\nca_file = "{tmp_path / "ca.pem"}"\ncert_file = "{tmp_path / "cert.pem"}"\n'
             f'key_file = "{tmp_path / "tls.key"}"\n[ota]\nmetadata_url = "https://u.example/metadata"\n'
             f'trusted_root = "{tmp_path / "root.json"}"\ncommand_key = "{tmp_path / "nowhere.pub"}"\n')
    out = cli("check-config", "--config", str(_config(tmp_path, extra=extra)))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert any(line.startswith("error: mqtt.key_file:") and "readable by others" in line for line in lines), lines
    assert any(line.startswith("error: ota.trusted_root:") and "not JSON" in line for line in lines), lines
    assert any(line.startswith("error: ota.command_key:") and "No such file" in line for line in lines), lines
    (tmp_path / "tls.key").chmod(0o600)
    out = cli("check-config", "--config", str(tmp_path / "g.toml"))
    assert any(line.startswith("error: mqtt.ca_file:") for line in out.stderr.splitlines()), out.stderr


GOOD_DEVICE = 'id = "gw-bay-1"\npubkey = "dev.pub"\nnot_before = 2026-01-01\nnot_after = 2030-01-01\n'


@pytest.mark.parametrize(("spec", "needle"), [
    ('valid_days = 30\n[[device]]\n' + GOOD_DEVICE, "issuer must be a name"),
    ('issuer = "X"\n', "no [[device]] entries"),
    ('issuer = "X"\nvalid_dayz = 3\n[[device]]\n' + GOOD_DEVICE, "unknown key 'valid_dayz'"),
    ('issuer = "X"\nvalid_days = 0\n[[device]]\n' + GOOD_DEVICE, "valid_days must be a whole number of days"),
    ('issuer = "X"\n[[device]]\n' + GOOD_DEVICE + 'revoke = 2026-02-01\n', "device[0]: unknown key 'revoke'"),
    ('issuer = "X"\n[[device]]\n' + GOOD_DEVICE.replace("not_after = 2030-01-01\n", ""),
     "device[0]: missing not_after"),
    ('issuer = "X"\n[[device]]\n' + GOOD_DEVICE.replace("2030-01-01", '"soon"'),
     "device gw-bay-1.not_after: expected a TOML date"),
    ('issuer = "X"\n[[device]]\n' + GOOD_DEVICE.replace("2030-01-01", "2025-01-01"),
     "not_after is not after not_before"),
    ('issuer = "X"\n[[device]]\n' + GOOD_DEVICE.replace('"gw-bay-1"', '"../../etc"'), "is not a device id"),
    ('issuer = "X"\n[[device]]\n' + GOOD_DEVICE.replace("dev.pub", "missing.pub"), "missing.pub"),
    ('issuer = "X"\n[[device]\n', "not TOML"),
])
def test_trust_list_mistakes_are_one_line_naming_the_key(tmp_path: Path, spec: str, needle: str) -> None:
    generate_key(tmp_path / "operator.pem")
    (tmp_path / "dev.pub").write_text(public_pem(generate_key(tmp_path / "dev.pem")))
    (tmp_path / "devices.toml").write_text(spec)
    out = cli("trust-list", str(tmp_path / "devices.toml"), "--key", str(tmp_path / "operator.pem"), "--out",
              str(tmp_path / "site"))
    assert out.returncode == 2 and needle in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert not (tmp_path / "site").exists()


def test_trust_list_refuses_an_output_directory_planted_as_a_link(tmp_path: Path) -> None:
    generate_key(tmp_path / "operator.pem")
    (tmp_path / "dev.pub").write_text(public_pem(generate_key(tmp_path / "dev.pem")))
    (tmp_path / "devices.toml").write_text('issuer = "X"\n[[device]]\n' + GOOD_DEVICE)
    (tmp_path / "www").mkdir()
    (tmp_path / "site").symlink_to(tmp_path / "www")
    out = cli("trust-list", str(tmp_path / "devices.toml"), "--key", str(tmp_path / "operator.pem"), "--out",
              str(tmp_path / "site"))
    assert out.returncode == 2 and "trust-list --out" in out.stderr and list((tmp_path / "www").iterdir()) == []


def test_verify_of_a_qr_text_needs_the_list_and_its_key_together(tmp_path: Path) -> None:
    out = cli("verify", "--trust-list", str(tmp_path / "t.cose"), "BP1:ABC")
    assert out.returncode == 2 and "--trust-list and --operator go together" in out.stderr
    out = cli("verify", "BP1:ABC")
    assert out.returncode == 2 and "for a QR text give --trust-list FILE --operator PEM" in out.stderr
    generate_key(tmp_path / "dev.pem")
    (tmp_path / "dev.pub").write_text(public_pem(generate_key(tmp_path / "other.pem")))
    out = cli("verify", "--pubkey", str(tmp_path / "dev.pub"), "BP1:ABC")
    assert out.returncode == 1 and "QR text: NOT-GENUINE:" in out.stderr and "Traceback" not in out.stderr


def test_trust_list_dates_are_utc_and_not_after_takes_its_whole_day(tmp_path: Path) -> None:
    from gateway.app.trust import build_list
    from gateway.core.trustlist import open_trust_list

    generate_key(tmp_path / "operator.pem")
    (tmp_path / "dev.pub").write_text(public_pem(generate_key(tmp_path / "dev.pem")))
    (tmp_path / "devices.toml").write_text('issuer = "X"\nvalid_days = 7\n[[device]]\n' + GOOD_DEVICE.replace(
        "not_before = 2026-01-01", "not_before = 2026-01-01T09:00:00+09:00"))
    signed, operator = build_list(str(tmp_path / "devices.toml"), operator_key_file=str(tmp_path / "operator.pem"),
                                  now=1_800_000_000)
    trust = open_trust_list(signed, operator)
    (entry,) = trust.keys.values()
    assert entry["nbf"] == 1_767_225_600  # 2026-01-01T00:00Z: 09:00 in Tokyo
    assert entry["exp"] == 1_893_542_399  # 2030-01-01T23:59:59Z
    assert (trust.issued, trust.expires) == (1_800_000_000, 1_800_000_000 + 7 * 86_400)
