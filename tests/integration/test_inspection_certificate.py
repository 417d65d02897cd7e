"""``battery-gateway inspect`` as a real process against the simulated Leaf battery ECU on udp_multicast."""

from __future__ import annotations

import hashlib
import html
import json
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest

from gateway.adapters.keystore import load_public_key
from gateway.adapters.pdf import find_browser
from gateway.core.qrclaim import decode_qr
from gateway.core.signing import verify_envelope
from gateway.sim.battery import LeafBattery
from gateway.sim.broker import LocalBroker
from gateway.sim.demo import ecu_bus
from gateway.sim.ecu import LbcResponder, run_ecu
from tests.conftest import SCHEMA
from tests.rig import wait_for
from tests.unit.test_certificate_languages import ENGLISH_SENTENCES, visible

CHROMIUM = find_browser()
GROUP = "ff11:7079:7468:6f6e:6465:6d6f:6d63:6173"
RATED = {"ze0": (24.0, 66.0), "aze0": (30.0, 79.0), "ze1": (62.0, 176.0)}


def setup(tmp: Path, generation: str, mqtt_port: int = 1) -> tuple[Path, int]:
    subprocess.run([sys.executable, "-m", "gateway", "keygen", "--key", str(tmp / "key.pem")], check=True,
                   capture_output=True)
    port = random.randint(40000, 49999)
    config = tmp / "g.toml"
    config.write_text(f'[device]\nid = "gw-bay-1"\nkey_file = "{tmp / "key.pem"}"\nstate_dir = "{tmp / "state"}"\n'
                      f'[can]\ninterface = "udp_multicast"\nchannel = "{GROUP}"\nudp_multicast_port = {port}\n'
                      f'[vehicle]\nprofile = "leaf-{generation}"\n[mqtt]\nport = {mqtt_port}\n')
    return config, port


class Ecu:
    def __init__(self, port: int, battery: LeafBattery, responder: LbcResponder | None, broadcast: bool = True):
        self.bus = ecu_bus(interface="udp_multicast", channel=GROUP, port=port)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run_ecu, args=(battery, self.bus), kwargs={
            "duration_s": 40, "stop": self.stop.is_set, "responder": responder, "broadcast": broadcast})
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.bus.close()


def inspect(config: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "inspect", "--config", str(config), "--out", str(out),
                           "--wait", "3", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["ze0", "aze0", "ze1"])
def generation(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


def test_certificate_within_15_s_with_every_polled_value(tmp_path: Path, generation: str) -> None:
    config, port = setup(tmp_path, generation)
    energy, ah = RATED[generation]
    battery = LeafBattery(generation=generation, rated_kwh=energy, rated_ah=ah, soh_pct=random.randint(60, 95))
    responder = LbcResponder(battery, hx_pct=round(random.uniform(60, 99), 2), serial=f"S{random.randint(0, 10**9)}")
    ecu = Ecu(port, battery, responder)
    try:
        t0 = time.monotonic()
        out = inspect(config, tmp_path / "out")
        wall = time.monotonic() - t0
    finally:
        ecu.close()
    assert out.returncode == 0, out.stderr
    assert wall < 15.0
    assert "[1/" in out.stderr  # progress on the way
    files = {p.name for p in (tmp_path / "out").iterdir()}
    pdf = {"certificate.pdf"} if CHROMIUM else set()
    assert files == {"certificate.cose", "certificate.json", "certificate.html"} | pdf
    envelope = (tmp_path / "out" / "certificate.cose").read_bytes()
    payload = verify_envelope(envelope, load_public_key(tmp_path / "key.pem"))
    as_json = json.loads((tmp_path / "out" / "certificate.json").read_text())
    assert as_json["seq"] == payload["seq"] and as_json["m"] == payload["m"]
    m = payload["m"]
    assert payload["kind"] == "certificate" and payload["bat"] == responder.serial
    assert len(m["cells_v"]) == 96
    assert m["hx_pct"] == pytest.approx(responder.hx_pct, abs=0.01)
    assert m["bms_soh_pct"] == battery.soh_pct
    assert m["capacity_soh_pct"] == pytest.approx(battery.soh_pct, abs=0.01)
    fc, w = payload["forecast"], payload["warranty"]
    assert fc["present"]["basis"].startswith("BMS capacity")  # a single inspection: AHr / rated
    assert fc["present"]["soh_pct"] == pytest.approx(battery.soh_pct, abs=0.01)
    for h in ("+1y", "+3y", "+5y"):
        q = fc["horizons"][h]
        assert q["p10"] <= q["p50"] <= q["p90"] <= battery.soh_pct + 5
    assert fc["horizons"]["+1y"]["p50"] > fc["horizons"]["+5y"]["p50"]
    assert fc["usage"]["basis"].startswith("reference vehicle")  # minutes of counters say nothing of usage
    assert w["decision"] == ("accept" if w["probability"] >= 0.9 else "decline") and w["reasons"]
    assert payload["identity"]["generation"] == generation
    assert payload["identity"]["vin_hash"] and "SJNFAAZE1U0012345" not in json.dumps(as_json)
    if SCHEMA.is_file():
        jsonschema.validate(payload["doc"], json.loads(SCHEMA.read_text()))
    page = (tmp_path / "out" / "certificate.html").read_text()
    assert hashlib.sha256(envelope).hexdigest() in page
    assert responder.serial in page and "<svg" in page and not re.search(r"https?://(?!www\.w3\.org/)", page)
    assert "default-src 'none'" in page  # no script runs, nothing loads, also when chromium prints it
    assert ("ACCEPT" if w["decision"] == "accept" else "DECLINE") in page and "P50" in page
    # the QR's signed claim summarises this certificate, signed by the same device key
    qr_text = re.search(r'id="qr-text">(BP1:[^<]+)<', page).group(1)  # type: ignore[union-attr]
    claim = verify_envelope(decode_qr(html.unescape(qr_text)), load_public_key(tmp_path / "key.pem"))
    assert claim["cert"] == hashlib.sha256(envelope).digest() and claim["dev"] == "gw-bay-1"
    assert claim["bms"] == round(battery.soh_pct * 10) and claim["gen"] == generation
    assert claim["vin"].hex() == payload["identity"]["vin_hash"] and claim["iat"] == payload["ts"] // 1000
    assert claim["w"] == w["decision"] and claim["f3"] == round(fc["horizons"]["+3y"]["p50"] * 10)
    assert claim["soh"]["lo"] < claim["soh"]["p"] == round(fc["present"]["soh_pct"] * 10) < claim["soh"]["hi"]


def test_japanese_page(tmp_path: Path) -> None:
    config, port = setup(tmp_path, "ze1")
    battery = LeafBattery(generation="ze1", rated_kwh=62.0, rated_ah=176.0)
    ecu = Ecu(port, battery, LbcResponder(battery))
    try:
        out = inspect(config, tmp_path / "out", "--lang", "ja")
    finally:
        ecu.close()
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "out" / "certificate.html").read_text()
    assert '<html lang="ja">' in page and "バッテリー健全性証明書" in page
    # the serial and VIN hash stay with whoever ran it, whatever their umask
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "out").iterdir()} == {"0o600"}
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700
    assert "承認" in page and "劣化予測" in page
    text = visible(page)  # every sentence in Japanese, dates in Japanese form
    assert [s for s in ENGLISH_SENTENCES if s in text] == [] and re.search(r"\d{4}年\d{1,2}月\d{1,2}日", text)


def test_missing_ecu_exits_1_naming_it_and_writes_nothing(tmp_path: Path) -> None:
    config, _ = setup(tmp_path, "ze1")
    out = inspect(config, tmp_path / "out")
    assert out.returncode == 1
    assert "battery ECU did not answer: no reply on 0x7BB to requests on 0x79B" in out.stderr
    assert "no broadcast frames either" in out.stderr
    assert not (tmp_path / "out").exists()


def test_silent_ecu_that_broadcasts_exits_1(tmp_path: Path) -> None:
    config, port = setup(tmp_path, "aze0")
    battery = LeafBattery(generation="aze0")
    ecu = Ecu(port, battery, None)
    try:
        out = inspect(config, tmp_path / "out")
    finally:
        ecu.close()
    assert out.returncode == 1 and "it broadcasts but does not answer" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.broker
def test_certificate_is_published_when_a_broker_answers(tmp_path: Path, broker: LocalBroker) -> None:
    config, port = setup(tmp_path, "aze0", mqtt_port=broker.port)
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, msg: got.append(msg.payload)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("bp/v1/gw-bay-1/certificate", qos=1)
    sub.loop_start()
    battery = LeafBattery(generation="aze0")
    ecu = Ecu(port, battery, LbcResponder(battery))
    try:
        assert subscribed.wait(30), "no SUBACK from the test broker"  # else the certificate could pass us by
        out = inspect(config, tmp_path / "out")
        wait_for(lambda: got or out.returncode, 30, "the published certificate")
    finally:
        ecu.close()
        sub.loop_stop()
        sub.disconnect()
    assert out.returncode == 0, out.stderr
    assert "(published)" in out.stdout
    assert got == [(tmp_path / "out" / "certificate.cose").read_bytes()]



@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make setup installs it)")
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_certificate_page_renders_in_a_real_headless_browser(tmp_path: Path, lang: str) -> None:
    config, port = setup(tmp_path, "ze1")
    battery = LeafBattery(generation="ze1", rated_kwh=62.0, rated_ah=176.0, soh_pct=87)
    ecu = Ecu(port, battery, LbcResponder(battery, hx_pct=84.5))
    try:
        assert inspect(config, tmp_path / "out", "--lang", lang).returncode == 0
    finally:
        ecu.close()
    page = tmp_path / "out" / "certificate.html"
    shot = tmp_path / f"certificate-{lang}.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    assert CHROMIUM is not None
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60)
    assert "84.5 %" in dom.stdout and "87 %" in dom.stdout
    subprocess.run([CHROMIUM, *flags, "--window-size=420,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=60)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_an_output_directory_planted_as_a_link_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    # GIVEN `inspect --out /tmp/cert` (the README's example, run as root) where another user left
    # /tmp/cert as a link to a directory of root's
    config, _ = setup(tmp_path, "ze1")
    victim = tmp_path / "etc"
    victim.mkdir()
    (tmp_path / "cert").symlink_to(victim)
    out = inspect(config, tmp_path / "cert")
    # THEN one line, exit 2, nothing written through the link, nothing signed
    assert out.returncode == 2 and "inspect --out" in out.stderr and "symbolic link" in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0 and list(victim.iterdir()) == []
    assert not (tmp_path / "state" / "state.db").exists()
