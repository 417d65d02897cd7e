"""The offline verifier page (gateway/data/verifier.html, built from verifier/) in Debian's chromium, driven
by Selenium through Debian's chromium-driver: a buyer scans a certificate's QR with the camera (chromium's
fake capture device playing a rendered QR), or opens a photo of the printed A4 certificate.

Every verdict the page gives is also asked of the Python verifier (core/trustlist.py) on the same bytes:
the two must agree. With BGW_SCREENSHOTS=DIR the verdict screenshots are kept there (docs/img/verifier).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import base45
import cbor2
import pytest
import segno
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.adapters.keystore import generate_key, load_private_key, public_pem
from gateway.adapters.pdf import find_browser
from gateway.app.trust import build_list, write_outputs
from gateway.core.qrclaim import build_claim, decode_qr, encode_qr
from gateway.core.signing import Signer, open_envelope
from gateway.core.trustlist import judge_claim, open_trust_list
from gateway.sim.battery import LeafBattery
from gateway.sim.ecu import LbcResponder
from tests.integration import test_inspection_certificate as bay
from tests.rig import wait_for

CHROMIUM = find_browser()
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="Debian's chromium and chromium-driver are not installed (make setup does it)")
DAY = 86_400
TIMINGS: dict[str, float] = {}


@contextmanager
def browser(tmp: Path, camera: Path | None = None) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and DRIVER is not None
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                 "--window-size=480,1400", f"--user-data-dir={tmp / 'chromium-profile'}"):
        options.add_argument(flag)
    if camera is not None:
        options.add_argument("--use-fake-device-for-media-stream")
        options.add_argument("--use-fake-ui-for-media-stream")  # the buyer's "allow camera"
        options.add_argument(f"--use-file-for-fake-video-capture={camera}")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def camera_clip(text: str, path: Path) -> Path:
    """A Y4M clip (what chromium's fake camera plays) of the QR on white paper, 640x480, 4:2:0."""
    width, height = 640, 480
    matrix = segno.make(text, error="q", boost_error=False).matrix
    scale = min(width, height) // (len(matrix) + 8)
    luma = bytearray(b"\xff" * (width * height))
    x0, y0 = (width - len(matrix) * scale) // 2, (height - len(matrix) * scale) // 2
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            if dark:
                for dy in range(scale):
                    start = (y0 + r * scale + dy) * width + x0 + c * scale
                    luma[start:start + scale] = b"\x00" * scale
    chroma = b"\x80" * (width * height // 2)
    path.write_bytes(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode()
                     + (b"FRAME\n" + bytes(luma) + chroma) * 2)
    return path


def open_page(driver: Any, page: Path, lang: str = "en") -> None:
    driver.get(f"{page.as_uri()}?lang={lang}")
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), 20, "the verifier page to load")


def verdict(driver: Any) -> dict[str, Any]:
    wait_for(lambda: driver.execute_script("return window.bpResult"), 30, "the page's verdict")
    result: dict[str, Any] = driver.execute_script("return window.bpResult")
    result["text"] = driver.find_element("id", "verdict").text
    return result


def keep(driver: Any, tmp: Path, name: str) -> None:
    shot = tmp / f"{name}.png"
    driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("BGW_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["BGW_SCREENSHOTS"]) / shot.name)


class Site:
    """An operator, its devices, and the verifier page it publishes (built by the real command)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        for name in ("operator", "gw-bay-1", "gw-bay-2", "outsider"):
            self.keys[name] = generate_key(tmp / f"{name}.pem")
            (tmp / f"{name}.pub").write_text(public_pem(self.keys[name]))
        (tmp / "devices.toml").write_text(
            'issuer = "Example Leasing"\nvalid_days = 30\n'
            '[[device]]\nid = "gw-bay-1"\npubkey = "gw-bay-1.pub"\nnot_before = 2026-01-01\nnot_after = 2030-12-31\n'
            '[[device]]\nid = "gw-bay-2"\npubkey = "gw-bay-2.pub"\nnot_before = 2026-01-01\nnot_after = 2030-12-31\n'
            'revoked = 2026-06-30\n')
        built = subprocess.run([sys.executable, "-m", "gateway", "trust-list", str(tmp / "devices.toml"), "--key",
                                str(tmp / "operator.pem"), "--out", str(tmp / "site")], capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
        assert "2 device keys of Example Leasing (1 revoked)" in built.stdout
        self.page = tmp / "site" / "verifier.html"
        # the same list, issued 40 days ago: what a phone that never updated still has
        old, _ = build_list(str(tmp / "devices.toml"), operator_key_file=str(tmp / "operator.pem"),
                            now=time.time() - 40 * DAY)
        self.stale_page = write_outputs(str(tmp / "stale"), old, self.keys["operator"].public_key())[1]

    def qr(self, signer: str, dev: str = "gw-bay-1", **over: Any) -> str:
        payload = bay_certificate(dev, **over)
        claim = build_claim(payload, certificate_sha256=hashlib.sha256(b"certificate.cose").digest())
        return encode_qr(Signer(self.keys[signer]).sign(claim))

    def python_verdict(self, text: str, page: Path) -> str:
        data = (page.parent / "trust-list.cose").read_bytes()
        trust = open_trust_list(data, self.keys["operator"].public_key())
        return judge_claim(text, trust=trust, now=int(time.time())).status


def bay_certificate(dev: str, **over: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "dev": dev, "ts": int(time.time() * 1000) - 60_000, "bat": "AZE0-20170412-0042",
        "identity": {"vehicle": "Nissan Leaf AZE0 (2013-2017, 24/30 kWh)", "generation": "aze0",
                     "vin_hash": "9f2c41d05a7e3b6c8d1e2f3a4b5c6d7e", "rated_energy_kwh": 30.0,
                     "rated_capacity_ah": 79.0},
        "m": {"bms_soh_pct": 84.0},
        "forecast": {"present": {"soh_pct": 83.91, "sigma_pct": 2.0, "method": "capacity-ratio"},
                     "horizons": {"+3y": {"p50": 78.4}}},
        "warranty": {"decision": "accept", "probability": 0.93}}
    payload.update(over)
    return payload


def tampered(text: str) -> str:
    """The seller's edit: the BMS SOH raised under the device's own signature."""
    env = open_envelope(decode_qr(text))
    body = cbor2.dumps(dict(env.payload, bms=950, soh=dict(env.payload["soh"], p=950)), canonical=True)
    return encode_qr(cbor2.dumps(cbor2.CBORTag(18, [env.protected_raw, {}, body, env.signature])))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(tmp_path_factory.mktemp("site"))


CASES = {
    # name: (who signs, which page, how the text is changed, the verdict, what the buyer reads)
    "genuine": ("gw-bay-1", "page", None, "genuine", "Genuine"),
    "tampered": ("gw-bay-1", "page", tampered, "not-genuine", "NOT genuine"),
    "unknown-issuer": ("outsider", "page", None, "unknown-issuer", "Unknown issuer"),
    "expired-list": ("gw-bay-1", "stale_page", None, "expired", "Expired"),
    "revoked": ("gw-bay-2", "page", None, "revoked", "Revoked"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_qr_scanned_by_the_camera_gets_the_right_verdict(site: Site, tmp_path: Path, case: str) -> None:
    signer, which, change, status, headline = CASES[case]
    text = site.qr(signer, dev="gw-bay-2" if signer == "gw-bay-2" else "gw-bay-1")
    if change is not None:
        text = change(text)
    page: Path = getattr(site, which)
    clip = camera_clip(text, tmp_path / "qr.y4m")
    with browser(tmp_path, camera=clip) as driver:
        open_page(driver, page)
        assert driver.execute_script("return window.bpResult") is None
        driver.find_element("id", "scan").click()
        result = verdict(driver)
        keep(driver, tmp_path, f"verdict-{case}")
    TIMINGS[case] = result["scanMs"]
    print(f"\n{case}: {result['status']} in {result['scanMs']:.0f} ms from 'scan' to the verdict ({result['reason']})")
    assert result["status"] == status, result
    assert result["text"].startswith(headline)
    assert site.python_verdict(text, page) == status  # the page and `verify` agree
    figures_shown = "State of health" in result["text"]
    assert figures_shown == (status == "genuine")  # never figures nobody vouches for (a thief picks them)
    if status == "genuine":
        assert "83.9 %" in result["text"] and "ACCEPT" in result["text"] and "78.4 %" in result["text"]


def test_the_page_speaks_japanese(site: Site, tmp_path: Path) -> None:
    clip = camera_clip(site.qr("gw-bay-1"), tmp_path / "qr.y4m")
    with browser(tmp_path, camera=clip) as driver:
        open_page(driver, site.page, lang="ja")
        assert driver.find_element("id", "scan").text == "カメラで読み取る"
        driver.find_element("id", "scan").click()
        result = verdict(driver)
        keep(driver, tmp_path, "verdict-genuine-ja")
        assert result["status"] == "genuine" and result["text"].startswith("真正")
        assert "3年後の予測(中央値)" in result["text"] and "承認" in result["text"]
        driver.find_element("css selector", "[data-lang=en]").click()  # the buyer switches: same verdict
        assert driver.find_element("id", "verdict").text.startswith("Genuine")


def test_pasted_text_and_a_non_certificate_qr(site: Site, tmp_path: Path) -> None:
    with browser(tmp_path) as driver:
        open_page(driver, site.page)
        driver.find_element("id", "text").send_keys("https://example.com/not-a-certificate")
        driver.find_element("id", "check").click()
        result = verdict(driver)
        assert result["status"] == "not-genuine" and "not a battery certificate QR" in result["reason"]
        driver.execute_script("window.bpResult = null; document.getElementById('text').value = ''")
        driver.find_element("id", "text").send_keys(site.qr("gw-bay-1"))
        driver.find_element("id", "check").click()
        assert verdict(driver)["status"] == "genuine"


def signed(key: ec.EllipticCurvePrivateKey, body: bytes, protected: bytes | None = None,
           unprotected: dict[int, Any] | None = None) -> bytes:
    """A COSE_Sign1 over ``body`` exactly as given (``Signer`` would encode a map canonically)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from gateway.core.signing import key_id

    protected = cbor2.dumps({1: -7, 4: key_id(key.public_key())}) if protected is None else protected
    der = key.sign(cbor2.dumps(["Signature1", protected, b"", body]), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected or {}, body, signature]))


def hostile_variants(site: Site) -> dict[str, str]:
    """QR texts that only an exact reader refuses, or that a listed device (an insider) signed oddly."""
    from gateway.core.signing import key_id

    good = site.qr("gw-bay-1")
    env_bytes = decode_qr(good)
    packed = zlib.compress(env_bytes, 9)
    b45 = good[4:]
    claim = open_envelope(env_bytes).payload
    device = site.keys["gw-bay-1"]
    kid = key_id(device.public_key())

    def qr(raw: bytes) -> str:
        return "BP1:" + base45.b45encode(zlib.compress(raw, 9)).decode()

    def claim_bytes(**edit: Any) -> bytes:
        return cbor2.dumps({**claim, **edit}, canonical=True)

    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
    at = next(i for i in range(0, len(b45) - 2, 3) if int.from_bytes(base45.b45decode(b45[i:i + 3])) < 45**3 - 65536)
    big = int.from_bytes(base45.b45decode(b45[at:at + 3])) + 65536  # the same two bytes, modulo 65536
    overflow = b45[:at] + "".join(alphabet[d] for d in (big % 45, big // 45 % 45, big // 2025)) + b45[at + 3:]
    duplicate = bytearray(claim_bytes())
    duplicate[0] += 1
    unsorted = b"".join([bytes([0xA0 + len(claim)])] + [cbor2.dumps(k) + cbor2.dumps(v) for k, v in
                                                        sorted(claim.items(), reverse=True)])
    return {
        "zlib checksum zeroed": "BP1:" + base45.b45encode(packed[:-4] + bytes(4)).decode(),
        "bytes after the zlib stream": "BP1:" + base45.b45encode(packed + b"\x01\x02").decode(),
        "a Base45 triplet above 65535": "BP1:" + overflow,
        "a byte-order mark before the prefix": "\ufeff" + good,
        "longer than a QR holds": good + "0" * 5000,
        "kid in both headers": qr(signed(device, claim_bytes(), unprotected={4: kid})),
        "COSE wrapped in tag 55799": qr(cbor2.dumps(cbor2.CBORTag(55799, cbor2.loads(env_bytes)))),
        "wrong alg and an unknown kid": qr(signed(device, claim_bytes(), cbor2.dumps({1: -35, 4: bytes(16)}))),
        "an empty protected header": qr(signed(device, claim_bytes(), b"")),
        "a map key twice": qr(signed(device, bytes(duplicate) + cbor2.dumps("bms") + cbor2.dumps(990))),
        "keys out of order": qr(signed(device, unsorted)),
        "v = true": qr(signed(device, claim_bytes(v=True))),
        "a float iat": qr(signed(device, claim_bytes(iat=float(claim["iat"])))),
        "an integer key": qr(signed(device, cbor2.dumps({**claim, 7: 1}, canonical=True))),
        "iat far in the future": qr(signed(device, claim_bytes(iat=2**52))),
        "a 2^60 rating": qr(signed(device, claim_bytes(rat=[2**60, 1]))),
        "a rating as text (a figure of the wrong type)": qr(signed(device, claim_bytes(rat=["62", "176"]))),
    }


def test_the_page_and_verify_agree_on_hostile_and_odd_qr_texts(site: Site, tmp_path: Path) -> None:
    cases = hostile_variants(site)
    seen: dict[str, tuple[str, str]] = {}
    with browser(tmp_path) as driver:
        open_page(driver, site.page)
        for name, text in cases.items():
            driver.execute_script("window.bpResult = null; document.getElementById('text').value = arguments[0]", text)
            driver.find_element("id", "check").click()
            result = verdict(driver)
            seen[name] = (result["status"], site.python_verdict(text, site.page))
            if name.startswith("a rating as text"):  # genuine, and the figure of the wrong type is left out
                assert "Rated when new" not in result["text"] and "State of health" in result["text"]
    print("\n" + "\n".join(f"{name}: page {page}, verify {python}" for name, (page, python) in seen.items()))
    assert {name: page for name, (page, _) in seen.items()} == {name: python for name, (_, python) in seen.items()}
    genuine = {name for name, (page, _) in seen.items() if page == "genuine"}
    assert genuine == {"a rating as text (a figure of the wrong type)"}
    assert seen["wrong alg and an unknown kid"][0] == seen["an empty protected header"][0] == "unknown-issuer"


def test_a_new_verdict_never_leaves_the_last_one_on_screen(site: Site, tmp_path: Path) -> None:
    # GIVEN car A checked genuine, THEN a claim by the revoked key with a figure of the wrong type
    claim = open_envelope(decode_qr(site.qr("gw-bay-2", dev="gw-bay-2"))).payload
    odd = signed(site.keys["gw-bay-2"], cbor2.dumps({**claim, "rat": ["62", "176"]}, canonical=True))
    with browser(tmp_path) as driver:
        open_page(driver, site.page)
        for text, expected in ((site.qr("gw-bay-1"), "Genuine"),
                               ("BP1:" + base45.b45encode(zlib.compress(odd, 9)).decode(), "Revoked")):
            driver.execute_script("window.bpResult = null; document.getElementById('text').value = arguments[0]", text)
            driver.find_element("id", "check").click()
            result = verdict(driver)
            assert result["text"].startswith(expected), result
        assert "State of health" not in result["text"] and "83.9 %" not in result["text"]  # no figures under revoked


def test_a_forecast_with_imported_history_tells_the_buyer(site: Site, tmp_path: Path) -> None:
    forecast = {**bay_certificate("gw-bay-1")["forecast"], "rate_factor": {"history": {"imported-log": 12}}}
    with browser(tmp_path) as driver:
        open_page(driver, site.page)
        driver.find_element("id", "text").send_keys(site.qr("gw-bay-1", forecast=forecast))
        driver.find_element("id", "check").click()
        result = verdict(driver)
    assert result["status"] == "genuine" and "12 weekly points from imported logs" in result["text"]


def test_the_page_loads_nothing_and_allows_no_network(site: Site) -> None:
    page = site.page.read_text()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp and "connect-src 'none'" in csp.group(1) and "default-src 'none'" in csp.group(1)
    assert not re.search(r'(src|href)="https?:', page)
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    assert len(scripts) == 1
    digest = hashlib.sha256(scripts[0].encode()).digest()
    import base64

    assert f"'sha256-{base64.b64encode(digest).decode()}'" in csp.group(1)  # only our bundle may run


def test_the_printed_pdf_certificate_verifies_from_a_render_of_the_paper(tmp_path: Path) -> None:
    import pypdfium2

    config, port = bay.setup(tmp_path, "ze1")
    battery = LeafBattery(generation="ze1", rated_kwh=62.0, rated_ah=176.0, soh_pct=81)
    ecu = bay.Ecu(port, battery, LbcResponder(battery, hx_pct=77.0))
    try:
        t0 = time.monotonic()
        done = bay.inspect(config, tmp_path / "out")
        wall = time.monotonic() - t0
    finally:
        ecu.close()
    assert done.returncode == 0, done.stderr
    assert "certificate.cose, .json, .html, .pdf" in done.stdout
    print(f"\ninspect with the PDF: {wall:.1f} s")
    assert wall < 15.0
    pdf = tmp_path / "out" / "certificate.pdf"
    document = pypdfium2.PdfDocument(str(pdf))
    width, height = document[0].get_size()
    assert (round(width), round(height)) == (595, 842)  # A4 in points
    photo = tmp_path / "certificate-page-1.png"
    document[0].render(scale=150 / 72).to_pil().save(photo)  # the paper, at 150 dpi
    # the operator vouches for this bay's device
    (tmp_path / "bay.pub").write_text(public_pem(load_private_key(tmp_path / "key.pem")))
    (tmp_path / "devices.toml").write_text('issuer = "Auction Lane 3"\n[[device]]\nid = "gw-bay-1"\n'
                                           'pubkey = "bay.pub"\nnot_before = 2026-01-01\nnot_after = 2030-01-01\n')
    generate_key(tmp_path / "operator.pem")
    subprocess.run([sys.executable, "-m", "gateway", "trust-list", str(tmp_path / "devices.toml"), "--key",
                    str(tmp_path / "operator.pem"), "--out", str(tmp_path / "site")], check=True, capture_output=True)
    with browser(tmp_path) as driver:
        open_page(driver, tmp_path / "site" / "verifier.html")
        picker = driver.find_element("id", "image")
        driver.execute_script("arguments[0].hidden = false", picker)
        picker.send_keys(str(photo))
        result = verdict(driver)
        keep(driver, tmp_path, "verdict-from-pdf")
    print(f"photo of the PDF page: {result['status']} in {result['scanMs']:.0f} ms")
    certificate = json.loads((tmp_path / "out" / "certificate.json").read_text())
    assert result["status"] == "genuine", result
    assert result["claim"] == {"dev": "gw-bay-1", "iat": certificate["ts"] // 1000}
    assert "81.0 %" in result["text"]
    # and `verify` says the same of the text the page holds
    text = html.unescape(re.search(r'id="qr-text">(BP1:[^<]+)<',  # type: ignore[union-attr]
                                   (tmp_path / "out" / "certificate.html").read_text()).group(1))
    (tmp_path / "operator.pub").write_text(public_pem(load_private_key(tmp_path / "operator.pem")))
    checked = subprocess.run([sys.executable, "-m", "gateway", "verify", "--trust-list",
                              str(tmp_path / "site" / "trust-list.cose"), "--operator", str(tmp_path / "operator.pub"),
                              text], capture_output=True, text=True)
    assert checked.returncode == 0 and "GENUINE: signed by gw-bay-1, on Auction Lane 3's trust list" in checked.stderr
    claim = json.loads(checked.stdout)
    assert claim["cert"] == hashlib.sha256((tmp_path / "out" / "certificate.cose").read_bytes()).hexdigest()
