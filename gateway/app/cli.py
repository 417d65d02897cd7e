"""Command line: ``battery-gateway SUBCOMMAND`` (also ``python -m gateway``). Logging setup, exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error. User mistakes print one line on
stderr naming the culprit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from .. import __version__
from ..errors import CaptureError, ConfigError, GatewayError, TransportError

__all__ = ["main"]

log = logging.getLogger("gateway")

EPILOG = """\
examples:
  battery-gateway keygen --key /var/lib/battery-gateway/device-key.pem
  battery-gateway check-config --config /etc/battery-gateway/gateway.toml
  battery-gateway run --config /etc/battery-gateway/gateway.toml
  battery-gateway replay drive.log --profile leaf-ze1 --json > messages.jsonl
  battery-gateway verify --pubkey device.pub certificate.cose
  battery-gateway update --config /etc/battery-gateway/gateway.toml --check
  battery-gateway demo
  battery-gateway ingest --trust /etc/bgw/devices --nats nats://n1:4222 --db postgresql://ingest@db/bgw

Docs: docs/cli.md (commands), docs/config.md (every key), docs/mqtt.md (topics and envelope),
docs/ota.md (updates), docs/fleet.md (the backend's ingest).
"""


class _JournalFormatter(logging.Formatter):
    """``<N>`` syslog priority prefixes, which journald reads from stderr; no timestamps (journald adds them)."""

    _PRIO: ClassVar[dict[int, int]] = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                                       logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self._PRIO.get(record.levelno, 6)}>{super().format(record)}"


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(name)s: %(message)s"
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    handler.setFormatter(_JournalFormatter(fmt) if journal else logging.Formatter(f"%(levelname)s {fmt}"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _parser() -> argparse.ArgumentParser:
    from ..adapters.files import certificate_languages

    p = argparse.ArgumentParser(
        prog="battery-gateway", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Reads an EV battery ECU over CAN, signs every reading (COSE ES256) and publishes "
                    "battery-passport updates over MQTT 5.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("run", help="the daemon (SIGTERM/SIGINT: flush, close, exit 0)")
    s.add_argument("--config", required=True, metavar="PATH", help="the TOML config (docs/config.md)")

    s = sub.add_parser("check-config", help="validate a config and print the effective values; exit 2 if bad")
    s.add_argument("--config", required=True, metavar="PATH")

    s = sub.add_parser("keygen", help="create the P-256 device key (PKCS#8 PEM, mode 0600)")
    s.add_argument("--key", required=True, metavar="PATH", help="where to write it; never overwritten")

    s = sub.add_parser("csr", help="TLS key (created if missing) and a certificate request for the fleet CA",
                       description="Writes a PKCS#10 CSR with CN = the device id; the fleet CA's certificate then "
                                   "becomes the MQTT identity (docs/delivery.md). Run by first-boot provisioning.")
    s.add_argument("--key", required=True, metavar="PATH", help="the TLS key (P-256, mode 0600; kept if present)")
    s.add_argument("--id", required=True, metavar="DEVICE_ID", help="the device id (keygen prints it)")
    s.add_argument("--out", required=True, metavar="FILE", help="where to write the CSR (PEM); - for stdout")

    s = sub.add_parser("replay", help="decode a recorded capture offline; print what would be published",
                       description="Formats, detected from the content: candump -l and text, OVMS CRTD, "
                                   "SavvyCAN/GVRET CSV and text, ParserFlags tab export, CANHacker .trc; "
                                   "through python-can: Vector ASC and BLF, PCAN .trc, python-can CSV, MF4, .db. "
                                   "A pipe or standard input is read once, as it comes.")
    s.add_argument("capture", metavar="CAPTURE", help="the capture file, or - for standard input")
    s.add_argument("--profile", metavar="NAME", help="vehicle profile (default: the config's, else leaf-ze1)")
    s.add_argument("--config", metavar="PATH", help="a config; only [vehicle] and [publish] are needed")
    s.add_argument("--json", action="store_true", help="one JSON payload per line (byte strings as hex)")
    s.add_argument("--bus", type=int, metavar="N", help="only frames from bus/channel N (CRTD bus 1 = 1)")

    s = sub.add_parser("inspect", help="one-shot inspection-bay read with a signed certificate",
                       description="Waits for the battery ECU, polls every group once, and writes "
                                   "certificate.cose (the signed envelope), certificate.json (its payload), "
                                   "certificate.html (the page to read and print, with the signed QR a buyer scans) "
                                   "and certificate.pdf (A4, when a headless Chromium is installed). Exit 1 when "
                                   "the ECU is silent.")
    s.add_argument("--config", required=True, metavar="PATH")
    s.add_argument("--out", default=".", metavar="DIR", help="where the certificate files go (default: here)")
    s.add_argument("--lang", choices=certificate_languages(), default="en",
                   help="language of certificate.html and .pdf (a file in gateway/data/lang each)")
    s.add_argument("--wait", type=float, default=5.0, metavar="S", help="how long to wait for the bus (default 5)")

    s = sub.add_parser("import-log", help="import a vehicle's history from LeafSpy CSV logs into the forecast",
                       description="Reads LeafSpy CSV logs (the Log_*.csv files LeafSpy Pro writes) and adds their "
                                   "BMS capacity readings (AHr), one a week, to the SoH history the forecast uses, "
                                   "kept apart from the device's own measurements: the forecast and the certificate "
                                   "say how many points were imported and from which dates. SOH, Hx, SoC and "
                                   "temperatures are summarised in the import's record. All files or none; stop the "
                                   "daemon on the same state_dir first. docs/soh.md.",
                       epilog="example:\n  battery-gateway import-log ~/LeafSpy/Log_*.csv --config "
                              "/etc/battery-gateway/gateway.toml", formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("files", nargs="+", metavar="LOG", help="LeafSpy CSV logs of this device's vehicle")
    s.add_argument("--config", required=True, metavar="PATH")

    s = sub.add_parser("verify", help="verify envelopes and print their payloads as JSON; exit 1 if any fails",
                       description="Checks signatures, the hash chain and gaps per device, drops duplicates by "
                                   "(dev, ep, seq), and reports what is missing. Envelopes come from files, "
                                   "directories of files, or an MQTT subscription. A certificate's QR text (BP1:) "
                                   "is judged against --trust-list as the verifier page does: genuine, not-genuine, "
                                   "unknown-issuer, expired or revoked (docs/qr.md).",
                       epilog="examples:\n"
                              "  battery-gateway verify --pubkey device.pub certificate.cose\n"
                              "  battery-gateway verify --trust /etc/bgw/devices --mqtt broker:1883 --duration 60\n"
                              "  battery-gateway verify --trust-list trust-list.cose --operator operator.pub 'BP1:...'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("files", nargs="*", metavar="FILE|DIR|BP1:...",
                   help="files holding one COSE_Sign1 envelope each, or a certificate's QR text (BP1:..., or a file "
                        "holding it)")
    s.add_argument("--pubkey", metavar="PEM", help="the device's public key (printed by keygen), for one device")
    s.add_argument("--trust-list", metavar="FILE",
                   help="for QR texts: the operator's signed trust list (trust-list.cose); needs --operator")
    s.add_argument("--operator", metavar="PEM", help="the operator's public key that signs the trust list")
    s.add_argument("--trust", metavar="DIR", help="trusted device keys, one PEM per device id: DIR/<dev>.pem")
    s.add_argument("--mqtt", metavar="HOST:PORT", help="subscribe to a broker instead of reading files")
    s.add_argument("--topic", default="bp/v1/+/#", help="topic filter for --mqtt (default bp/v1/+/#)")
    s.add_argument("--duration", type=float, metavar="S", help="with --mqtt: stop after S seconds (else Ctrl-C)")
    s.add_argument("--tls", nargs=3, metavar=("CA", "CERT", "KEY"), help="with --mqtt: mutual TLS files")
    s.add_argument("--protocol", choices=("5", "3.1.1"), default="5",
                   help="with --mqtt: MQTT version (3.1.1 for brokers without MQTT 5, e.g. NATS; default 5)")

    s = sub.add_parser("profiles", help="the cars the gateway reads: each built-in profile, how it reads the car "
                                        "and how sure it is",
                       description="Lists the built-in vehicle profiles (set one as vehicle.profile). 'checked "
                                   "against' names the real captures whose replay checks the profile; "
                                   "'documentation only' means its facts come from public tables alone.")
    s.add_argument("--markdown", action="store_true", help="the vehicles x signals x status table "
                                                           "(docs/profiles.md)")

    s = sub.add_parser("trust-list", help="operator: sign the list of trusted inspection devices and build the "
                                          "offline verifier page",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=(
                           "Reads SPEC (TOML: issuer, valid_days, one [[device]] per key with id, pubkey,\n"
                           "not_before, not_after and optionally revoked), signs it with the operator's key, and\n"
                           "writes DIR/trust-list.cose and DIR/verifier.html: the page a buyer opens on a phone\n"
                           "to scan a certificate's QR, with this list and the operator's public key built in.\n"
                           "Publish a new list before valid_days run out: a phone with an old one says\n"
                           "'expired'. Who signs what: docs/qr.md."),
                       epilog="examples:\n"
                              "  battery-gateway keygen --key operator.pem > operator.pub   # once, kept offline\n"
                              "  battery-gateway trust-list devices.toml --key operator.pem --out site/")
    s.add_argument("spec", metavar="SPEC", help="the TOML list of trusted devices (see above)")
    s.add_argument("--key", required=True, metavar="PEM", help="the operator's private key (keygen makes one)")
    s.add_argument("--out", default=".", metavar="DIR",
                   help="where trust-list.cose and verifier.html go (default: .)")

    s = sub.add_parser("ingest", help="backend: verify what devices publish and store it in PostgreSQL (one worker)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=(
                           "One worker of a consumer group: start as many as the load needs, on any machines,\n"
                           "with the same --group. Each takes batches from the engine, verifies every envelope\n"
                           "against --trust and its topic, stores the batch in one PostgreSQL transaction (once\n"
                           "per (dev, ep, seq)) and acknowledges only after the commit. Engines: a NATS cluster's\n"
                           "MQTT stream (--nats) or an MQTT 5 broker's shared subscription (--mqtt).\n"
                           "--check reports gaps, chain breaks and rejections per device.\n"
                           "Needs the ingest extra: pip install 'battery-gateway[ingest]'. Docs: docs/fleet.md."),
                       epilog="examples:\n"
                              "  export BGW_INGEST_DB=postgresql://ingest@db.example/bgw\n"
                              "  battery-gateway ingest --trust /etc/bgw/devices --nats nats://n1:4222,nats://n2:4222\n"
                              "  battery-gateway ingest --trust /etc/bgw/devices --mqtt mq:1883 --client-id ingest-1\n"
                              "  battery-gateway ingest --check")
    s.add_argument("--db", default=os.environ.get("BGW_INGEST_DB", ""), metavar="DSN",
                   help="PostgreSQL connection string (default: $BGW_INGEST_DB; keep passwords in ~/.pgpass)")
    s.add_argument("--trust", metavar="DIR", help="trusted device keys, one PEM per device id: DIR/<dev>.pem")
    s.add_argument("--nats", metavar="URL[,URL...]", help="NATS cluster nodes (its MQTT stream is the source)")
    s.add_argument("--mqtt", metavar="HOST:PORT", help="an MQTT 5 broker with shared subscriptions")
    s.add_argument("--client-id", default="", metavar="ID",
                   help="with --mqtt: this worker's MQTT client id, unique and stable across restarts")
    s.add_argument("--tls", nargs=3, metavar=("CA", "CERT", "KEY"), help="with --mqtt: mutual TLS files")
    s.add_argument("--group", default="bgw-ingest", help="consumer group shared by the workers (default bgw-ingest)")
    s.add_argument("--topic-prefix", default="bp/v1", help="the devices' mqtt.topic_prefix (default bp/v1)")
    s.add_argument("--batch", type=int, default=200, metavar="N", help="messages per transaction (default 200)")
    s.add_argument("--ack-wait", type=float, default=30.0, metavar="S",
                   help="with --nats: a message a worker took and did not acknowledge goes to another after S s")
    s.add_argument("--check", action="store_true",
                   help="report per device what is missing, broken or in conflict; exit 1 if any")
    s.add_argument("--migrate", action="store_true", help="apply the schema's migrations and exit")

    s = sub.add_parser("update", help="over-the-air update through TUF: check, download, install, probation",
                       description="One updater run (the battery-gateway-update timer and path units start it). "
                                   "Finishes a pending probation (commit or roll back) or checks the TUF "
                                   "repository for the release in ota.target, downloads it (resuming), installs "
                                   "it next to the current one, switches `current`, restarts the daemon and "
                                   "waits until it is healthy or rolls back. Exit 1 when refused, failed or "
                                   "rolled back. Progress goes to ota-status.json in ota.releases_dir; the daemon "
                                   "publishes it on {topic_prefix}/{device.id}/ota (retained).")
    s.add_argument("--config", required=True, metavar="PATH")
    s.add_argument("--check", action="store_true", help="refresh the metadata and say what would be installed")

    s = sub.add_parser("command", help="sign a command for a device with the backend key (writes COSE bytes)",
                       description="Publish the output (not retained: a retained command is ignored) on "
                                   "{topic_prefix}/{device}/cmd/{NAME} within 10 minutes, e.g. "
                                   "mosquitto_pub -t bp/v1/gw-0001/cmd/ota -f cmd.cose -q 1. The device checks "
                                   "it against ota.command_key.")
    s.add_argument("name", choices=("ota", "passport"), metavar="NAME",
                   help="ota (check for an update now) or passport (publish a passport update now)")
    s.add_argument("--key", required=True, metavar="PEM", help="the backend's command key (PKCS#8 PEM)")
    s.add_argument("--device", required=True, metavar="ID")
    s.add_argument("--out", required=True, metavar="FILE", help="where to write the envelope; - for stdout")

    s = sub.add_parser("demo", help="simulated Leaf (or --profile's car) -> daemon -> local broker -> verifying "
                                    "subscriber")
    s.add_argument("--duration", type=float, default=20.0, metavar="S", help="seconds to run (default 20)")
    s.add_argument("--profile", default="leaf-aze0", metavar="P",
                   help="the simulated car: a built-in profile (battery-gateway profiles lists them) or a profile "
                        ".toml (default leaf-aze0)")

    s = sub.add_parser("simulate", help="a simulated battery ECU of any profile on a CAN bus (for tests and demos)",
                       description="Sends the profile's broadcast frames (through its own DBC files) and answers its "
                                   "polls from a small pack model. The Leaf profiles use the Leaf simulator written "
                                   "from leaf_formulas.md.")
    s.add_argument("--interface", default="udp_multicast")
    s.add_argument("--channel", default="ff11:7079:7468:6f6e:6465:6d6f:6d63:6173",
                   help="bus channel (default: an interface-local IPv6 multicast group, never leaves this host)")
    s.add_argument("--port", type=int, default=43113, help="udp_multicast port")
    s.add_argument("--profile", metavar="P", help="the car: a built-in profile or a profile .toml "
                                                  "(default: the Leaf of --generation)")
    s.add_argument("--generation", choices=("ze0", "aze0", "ze1"), default="aze0",
                   help="the Leaf's generation when no --profile is given (default aze0)")
    s.add_argument("--soh", type=int, default=85, metavar="PCT")
    s.add_argument("--soc", type=float, default=70.0, metavar="PCT")
    s.add_argument("--duration", type=float, default=60.0, metavar="S")
    return p


def _to_json(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def dumps(payload: dict[str, Any]) -> str:
    """A payload as one JSON line, byte strings as hex."""
    return json.dumps(payload, default=_to_json, separators=(",", ":"), ensure_ascii=False)


def _write_output(path: str, data: bytes) -> None:
    """Write a command's ``--out`` (a CSR or a signed command: nothing secret in either): ``-`` is standard
    output, an existing pipe or device is written into, anything else is replaced as a whole file."""
    from ..adapters.fs import write_atomic

    try:
        if path == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        elif os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            with open(path, "wb") as stream:  # e.g. a pipe to mosquitto_pub -s, or /dev/stdout
                stream.write(data)
        else:
            write_atomic(path, data, mode=0o644)
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot write: {exc.strerror}") from exc


def _cmd_check_config(args: argparse.Namespace) -> int:
    from ..core.config import render_toml
    from .wiring import check_files, load_config, load_profile

    config = load_config(args.config)
    load_profile(config.vehicle.profile)
    check_files(config)  # every file it points at opens and parses: a broken one is named, not met at run time
    print(render_toml(config), end="")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from ..adapters.keystore import generate_key, public_pem
    from ..core.signing import device_id_of, key_id

    key = generate_key(args.key)
    kid, pem = key_id(key.public_key()), public_pem(key)
    print(f"device id: {device_id_of(key.public_key())}")
    print(f"key id: {kid.hex()}")
    print(pem, end="")
    return 0


def _cmd_csr(args: argparse.Namespace) -> int:
    from ..adapters.keystore import certificate_request

    pem = certificate_request(args.key, args.id)
    _write_output(args.out, pem)
    if args.out != "-":
        print(pem.decode(), end="")
    return 0


def _without_mf4() -> None:
    """Keep python-can from importing asammdf (and numpy, ~50 MB) in the long-running commands.

    python-can imports asammdf eagerly when the ``mf4`` extra is installed; only ``replay`` reads MF4.
    """
    sys.modules.setdefault("asammdf", None)  # type: ignore[arg-type]  # None makes the import fail cleanly


def _cmd_run(args: argparse.Namespace) -> int:
    _without_mf4()
    from .daemon import run_daemon
    from .wiring import load_config

    config = load_config(args.config)
    _setup_logging("DEBUG" if args.verbose else config.logging.level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run_daemon(config, stop=stop)


def _cmd_update(args: argparse.Namespace) -> int:
    _without_mf4()
    from .updater import run_update
    from .wiring import load_config

    config = load_config(args.config)
    _setup_logging("DEBUG" if args.verbose else config.logging.level)
    return run_update(config, check_only=args.check)


def _cmd_command(args: argparse.Namespace) -> int:
    from .commands import sign_command

    _write_output(args.out, sign_command(args.key, device_id=args.device, command=args.name))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..core.chainverify import ChainVerifier
    from .verify import envelopes_from_files, envelopes_from_mqtt, split_qr_texts, trusted_keys

    qr_texts, args.files = split_qr_texts(args.files)
    if qr_texts:
        return _verify_qr(args, qr_texts)
    if not args.pubkey and not args.trust:
        raise ConfigError("verify: give --pubkey PEM (one device) or --trust DIR (one PEM per device id)")
    if not args.files and not args.mqtt:
        raise ConfigError("verify: give envelope files or directories, or --mqtt HOST:PORT")
    verifier = ChainVerifier(trusted_keys(pubkey=args.pubkey, trust_dir=args.trust))
    if args.mqtt:
        # Ctrl-C or SIGTERM ends the subscription at the next poll: an exception raised at a random point
        # could leave a lock the MQTT thread needs held, and the report would never come
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        source = envelopes_from_mqtt(args.mqtt, topic=args.topic, duration_s=args.duration, tls=args.tls,
                                     protocol=args.protocol, stop=stop.is_set)
    else:
        source = envelopes_from_files(args.files)
    try:
        for name, envelope in source:
            verdict = verifier.add(envelope, topic=name if args.mqtt else None)
            if verdict.status == "accepted":
                assert verdict.payload is not None
                print(dumps(verdict.payload), flush=True)
                print(f"{name}: signature verified ({verdict.payload.get('kind')} {verdict.reason})", file=sys.stderr)
            elif verdict.status == "duplicate":
                print(f"{name}: ignored: {verdict.reason}", file=sys.stderr)
            else:
                print(f"{name}: REJECTED: {verdict.reason}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    lines, intact = verifier.report()
    for line in lines:
        print(f"verify: {line}", file=sys.stderr)
    return 0 if intact else 1


def _verify_qr(args: argparse.Namespace, qr_texts: list[tuple[str, str]]) -> int:
    """QR texts: the verifier page's verdict (with a trust list), or the signature alone (with a key)."""
    from ..core.qrclaim import readable
    from .trust import load_trust, qr_verdict
    from .verify import trusted_keys

    if args.files or args.mqtt:
        raise ConfigError("verify: give QR texts or envelopes, not both in one run")
    if bool(args.trust_list) != bool(args.operator):
        raise ConfigError("verify: --trust-list and --operator go together (the list and the key that signs it)")
    if args.trust_list and (args.pubkey or args.trust):
        raise ConfigError("verify: a QR text is checked against --trust-list or against --pubkey/--trust, not both")
    if not args.trust_list and not args.pubkey and not args.trust:
        raise ConfigError("verify: for a QR text give --trust-list FILE --operator PEM (as the verifier page "
                          "checks it), or --pubkey PEM / --trust DIR (its signature only)")
    trust = load_trust(args.trust_list, args.operator) if args.trust_list else None
    keys = None if trust is not None else trusted_keys(pubkey=args.pubkey, trust_dir=args.trust)
    genuine = True
    for name, text in qr_texts:
        verdict = qr_verdict(text, trust=trust, keys=keys, now=int(time.time()))
        if verdict.status == "genuine" and verdict.claim is not None:  # as the page: figures only when genuine;
            # ASCII: a signed claim's text cannot move the terminal's cursor
            print(json.dumps(readable(verdict.claim), default=repr, separators=(",", ":")), flush=True)
        label = verdict.status.upper() if trust is not None or verdict.status != "genuine" else "SIGNATURE-VALID"
        print(f"{name}: {label}: {verdict.reason}", file=sys.stderr)
        genuine = genuine and verdict.status == "genuine"
    return 0 if genuine else 1


def _cmd_import_log(args: argparse.Namespace) -> int:
    from .importlog import import_logs
    from .wiring import load_config

    config = load_config(args.config)
    results, sources = import_logs(config, args.files)
    for (record, stats), name in zip(results, args.files, strict=True):
        span = " to ".join(time.strftime("%Y-%m-%d", time.gmtime(record[k])) for k in ("from", "to"))
        figures = [f"{label} {ends[0]:g} -> {ends[1]:g} {unit}" for label, key, unit in (
            ("capacity", "capacity_ah", "Ah"), ("BMS SOH", "bms_soh_pct", "%"), ("Hx", "hx_pct", "%"))
            if (ends := record[key])]
        print(f"{name}: LeafSpy log, {stats.rows} rows ({stats.bad_rows} unreadable), {span}: "
              f"{record['points_added']} weekly capacity points added; {', '.join(figures)}")
        for example in stats.bad_examples:
            print(f"  skipped {example}", file=sys.stderr)
    print(f"history: {sources['device']} weekly points measured by this device, {sources['imported-log']} imported. "
          "The forecast uses imported points for the car whose VIN it reads, dated before the device's own, until "
          "its own span 180 days; they can make the forecast worse, never better")
    return 0


def _cmd_profiles(args: argparse.Namespace) -> int:
    from ..adapters.files import BUILTIN_PROFILES
    from .profiles import markdown, summary
    from .wiring import load_profile

    profiles = [load_profile(name)[0] for name in BUILTIN_PROFILES]
    print(markdown(profiles) if args.markdown else summary(profiles), end="")
    return 0


def _cmd_trust_list(args: argparse.Namespace) -> int:
    from ..core.trustlist import open_trust_list
    from .trust import build_list, fingerprint, write_outputs

    signed, operator = build_list(args.spec, operator_key_file=args.key)
    trust = open_trust_list(signed, operator)
    files = write_outputs(args.out, signed, operator)
    revoked = sum(1 for e in trust.keys.values() if "rev" in e)
    until = time.strftime("%Y-%m-%d", time.gmtime(trust.expires))
    print(f"{files[0]}: {len(trust.keys)} device keys of {trust.issuer} ({revoked} revoked), valid until {until}")
    print(f"{files[1]}: the verifier page with this list built in")
    print(f"operator key {fingerprint(operator)}: publish it where buyers can compare it with the page's")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from . import ingest
    from .verify import trusted_keys

    if not args.db:
        raise ConfigError("ingest: give --db DSN or set BGW_INGEST_DB")
    if args.migrate:
        applied = ingest.migrate(args.db)
        print(f"ingest: {'applied ' + ', '.join(applied) if applied else 'schema up to date'}", file=sys.stderr)
        return 0
    if args.check:
        lines, whole = ingest.check(args.db)
        for line in lines:
            print(f"ingest: {line}")
        return 0 if whole else 1
    if not args.trust or bool(args.nats) == bool(args.mqtt):
        raise ConfigError("ingest: give --trust DIR and one engine: --nats URL[,URL...] or --mqtt HOST:PORT")
    if not 1 <= args.batch <= 10_000:
        raise ConfigError(f"ingest --batch: {args.batch} is outside 1..10000")
    if not 1 <= args.ack_wait <= 3600:
        raise ConfigError(f"ingest --ack-wait: {args.ack_wait:g} is outside 1..3600 s")
    opts = ingest.IngestOptions(
        db=args.db, group=args.group, topic_prefix=args.topic_prefix.strip("/"),
        nats=tuple(u.strip() for u in (args.nats or "").split(",") if u.strip()), mqtt=args.mqtt or "",
        client_id=args.client_id, tls=tuple(args.tls) if args.tls else None, batch=args.batch,
        ack_wait_s=args.ack_wait)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # finish the batch in hand, then stop
        signal.signal(sig, lambda *_: stop.set())
    totals = ingest.run_worker(opts, trusted_keys(pubkey=None, trust_dir=args.trust, recheck_s=60.0),
                               stop=stop.is_set)
    log.info("ingest stopped: %s", totals)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    _without_mf4()
    from .inspection import run_inspection
    from .wiring import load_config

    config = load_config(args.config)
    _setup_logging("DEBUG" if args.verbose else "ERROR")  # progress lines say what happens

    def progress(line: str) -> None:
        print(f"inspect: {line}", file=sys.stderr, flush=True)

    result = run_inspection(config, out_dir=args.out, lang=args.lang, wait_s=args.wait, progress=progress)
    m = result.payload["m"]
    assert isinstance(m, dict)
    health = "  ".join(f"{label} {round(m[key], 2):g} %" for key, label in (("bms_soh_pct", "BMS SOH"),
                       ("capacity_soh_pct", "capacity SoH"), ("hx_pct", "Hx")) if key in m)
    pdf = ", .pdf" if result.pdf == "written" else ""
    print(f"certificate written in {result.seconds:.1f} s: {result.out_dir}/certificate.cose, .json, .html{pdf}")
    print(f"battery {result.payload.get('bat') or '(serial not read)'}: {health}")
    print(f"sha256 {result.digest_hex}{'  (published)' if result.published else ''}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    _without_mf4()
    from ..sim.demo import run_demo
    from .wiring import load_profile

    profile, databases = load_profile(args.profile)
    return run_demo(profile=profile, databases=databases, profile_ref=args.profile, duration_s=args.duration)


def _cmd_simulate(args: argparse.Namespace) -> int:
    _without_mf4()
    from ..sim.demo import simulate
    from .wiring import load_profile

    profile, databases = load_profile(args.profile or f"leaf-{args.generation}")
    return simulate(interface=args.interface, channel=args.channel, port=args.port, profile=profile,
                    databases=databases, soh_pct=args.soh, soc_pct=args.soc, duration_s=args.duration)


def _describe(body: dict[str, Any]) -> str:
    from ..core.passport import rfc3339
    from ..core.summary import describe

    return f"{body['kind']:8} seq {body['seq']:<5} {rfc3339(body['ts'] / 1000)}  {describe(body)}"


def _cmd_replay(args: argparse.Namespace) -> int:
    from logging.handlers import MemoryHandler

    from ..adapters.capture_files import CaptureStats
    from ..core.config import parse_config
    from .replay import replay_capture
    from .wiring import load_config

    sections = ("vehicle", "publish")
    config = load_config(args.config, sections=sections) if args.config else parse_config({}, sections=sections)
    stats = CaptureStats()
    shown = False

    def progress() -> None:
        # How far the reader is in bytes: a total is known for a regular file only, and nothing is read twice.
        nonlocal shown
        if stats.size_bytes > 2_000_000:
            shown = True
            print(f"\rreplay: {stats.bytes_read / 1e6:,.1f} of {stats.size_bytes / 1e6:,.1f} MB "
                  f"({min(100, stats.bytes_read * 100 // stats.size_bytes)} %)", end="", file=sys.stderr)

    # Warnings (a CRC error, a dropped poll reply) and unreadable lines are shown after the run, not as they
    # come: a capture that turns out to be broken gives its one error line only.
    root = logging.getLogger()
    held = MemoryHandler(1000, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
    handlers, root.handlers = root.handlers, root.handlers if args.verbose else [held]
    try:
        run = replay_capture(args.capture, config=config, profile=args.profile, bus=args.bus, stats=stats,
                             progress=progress if sys.stderr.isatty() else None)
        for message in run.messages:
            print(dumps(message.body) if args.json else _describe(message.body), flush=False)
    finally:
        root.handlers = handlers
        if shown:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
    for record in held.buffer:
        root.handle(record)
    for example in stats.bad_examples:
        print(f"replay: {example}", file=sys.stderr)
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(run.counts().items()))
    print(f"replay: {stats.path} ({stats.format}): {stats.lines:,} lines, {stats.frames:,} battery frames, "
          f"{stats.bad_lines} unreadable lines" + (f"; {counts}" if counts else ""), file=sys.stderr)
    if run.missing():
        print(f"replay: no passport: battery state incomplete (never seen: {', '.join(run.missing())})",
              file=sys.stderr)
    return 0


_COMMANDS = {"run": _cmd_run, "check-config": _cmd_check_config, "keygen": _cmd_keygen, "replay": _cmd_replay,
             "verify": _cmd_verify, "inspect": _cmd_inspect, "demo": _cmd_demo, "simulate": _cmd_simulate,
             "update": _cmd_update, "command": _cmd_command, "csr": _cmd_csr, "ingest": _cmd_ingest,
             "trust-list": _cmd_trust_list, "import-log": _cmd_import_log, "profiles": _cmd_profiles}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    _setup_logging("DEBUG" if args.verbose else "INFO" if args.command in ("run", "demo", "ingest") else "WARNING")
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except CaptureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TransportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
