"""``certificate.html``: the page a person reads and prints at the auction board.

Self-contained (inline CSS and SVG, no scripts, no network), readable on a phone, in English or
Japanese. It shows identity, the health figures with their method, capacity bars, a cell-voltage
chart, the temperature spread, the forecast/warranty status, and how to verify: the device key id,
the SHA-256 of ``certificate.cose``, and the signed QR (``qrclaim.py``) a buyer scans with the
operator's verifier page. Printed (or ``certificate.pdf``), the QR is at the top of the first A4 page.
Pure: payload in, text out.
"""

from __future__ import annotations

import html
from typing import Any

import segno

__all__ = ["LANGUAGES", "render_certificate"]

_T: dict[str, dict[str, str]] = {
    "en": {
        "title": "Battery health certificate", "vehicle": "Vehicle", "serial": "Pack serial",
        "part": "Part number", "generation": "Pack generation", "rated": "Rated when new", "vin": "VIN (pseudonymised)",
        "inspected": "Inspected", "device": "Gateway", "health": "Health", "bms_soh": "State of health (BMS)",
        "bms_soh_m": "reported by the battery ECU (0x5BC)", "cap_soh": "State of health (capacity)",
        "cap_soh_m": "BMS capacity {ah} Ah ÷ rated {rated} Ah", "hx": "Hx", "hx_m": "battery ECU figure; not SOH",
        "lbc_soh": "State of health (battery ECU group 0x61)", "own_soh": "State of health (gateway estimate)",
        "own_soh_m": "80 % interval {lo}-{hi} %, from counted charge (docs/soh.md)",
        "bars": "Capacity bars", "soc": "State of charge",
        "cells": "Cell voltages", "cells_m": "{n} cells, min {lo} V, max {hi} V, spread {mv} mV",
        "temps": "Pack temperatures", "forecast": "Forecast", "warranty": "Warranty decision",
        "na": "not available", "verify": "Verify this certificate", "kid": "Device key id",
        "digest": "SHA-256 of certificate.cose", "how": "battery-gateway verify --pubkey DEVICE.pub certificate.cose",
        "scan": "Scan to check: the QR code holds these health figures, signed by the gateway. The operator's "
                "verifier page checks it offline on any phone.", "qr_text": "QR text (to paste into the verifier)",
        "missing": "not read", "polls": "Battery ECU reads",
        "na_reason": "No present SoH was read (no gateway estimate, BMS capacity or BMS SOH).",
        "horizon": "In", "p10": "P10 (pessimistic)", "p50": "P50", "p90": "P90", "now": "Now",
        "drivers": "What drives it (effect on the median against a 20 °C, 60 % SoC, 0.3 cycles/day car)",
        "accept": "ACCEPT", "decline": "DECLINE",
        "rule": "Rule: P(SoH ≥ {thr} % after {h} years) ≥ {p}. Probability: {prob}",
        "fc_basis": "Prior: {prior} ({chem}); usage: {usage}. Forecasts are estimates with the stated spread.",
        "soce": "Not SOCE (EU 2023/1542 Annex VII): no value here is the state of certified energy.",
    },
    "ja": {
        "title": "バッテリー健全性証明書", "vehicle": "車両", "serial": "バッテリーパック製造番号",
        "part": "部品番号", "generation": "パック世代", "rated": "新品時定格", "vin": "車台番号(仮名化)",
        "inspected": "検査日時", "device": "ゲートウェイ", "health": "健全性", "bms_soh": "SOH(BMS値)",
        "bms_soh_m": "バッテリーECUの報告値 (0x5BC)", "cap_soh": "SOH(容量比)",
        "cap_soh_m": "BMS容量 {ah} Ah ÷ 定格 {rated} Ah", "hx": "Hx", "hx_m": "バッテリーECUの指標。SOHではありません",
        "lbc_soh": "SOH(バッテリーECU グループ0x61)", "own_soh": "SOH(ゲートウェイ推定値)",
        "own_soh_m": "80 %区間 {lo}-{hi} %(充放電電荷量から推定)", "bars": "容量セグメント", "soc": "充電率",
        "cells": "セル電圧", "cells_m": "{n}セル 最小 {lo} V 最大 {hi} V 差 {mv} mV",
        "temps": "パック温度", "forecast": "劣化予測", "warranty": "保証判定",
        "na": "提供なし", "verify": "この証明書の検証", "kid": "デバイス鍵ID",
        "digest": "certificate.cose の SHA-256", "how": "battery-gateway verify --pubkey DEVICE.pub certificate.cose",
        "scan": "読み取って確認: このQRコードにはゲートウェイが署名した健全性の数値が入っています。運営者の"
                "確認ページで、どのスマートフォンでもオフラインで確認できます。",
        "qr_text": "QRの文字列(確認ページに貼り付け用)",
        "missing": "未取得", "polls": "バッテリーECU読み取り",
        "na_reason": "現在のSOHが取得できませんでした(推定値・BMS容量・BMS SOHなし)。",
        "horizon": "期間", "p10": "P10(悲観)", "p50": "P50", "p90": "P90", "now": "現在",
        "drivers": "要因(20 °C・SOC 60 %・0.3サイクル/日の車両に対する中央値への影響)",
        "accept": "承認", "decline": "不承認",
        "rule": "判定基準: {h}年後に SOH ≥ {thr} % となる確率 ≥ {p}。確率: {prob}",
        "fc_basis": "事前分布: {prior}({chem})。使用状況: {usage}。予測は記載の幅を持つ推定値です。",
        "soce": "SOCE(EU 2023/1542 附属書VII)ではありません。",
    },
}
LANGUAGES = tuple(_T)

_CSS = """
body{font-family:system-ui,-apple-system,"Hiragino Sans","Noto Sans CJK JP",sans-serif;margin:0;background:#f4f5f7;
color:#1b1f24}main{max-width:760px;margin:0 auto;padding:16px;background:#fff}h1{font-size:1.5em;margin:.2em 0}
h2{font-size:1.1em;border-bottom:2px solid #0b6e4f;padding-bottom:2px;margin-top:1.2em}
table{border-collapse:collapse;width:100%}td{padding:4px 6px;border-bottom:1px solid #e3e6ea;vertical-align:top}
td:first-child{color:#555;width:45%}.big{font-size:2em;font-weight:700;color:#0b6e4f}.note{color:#666;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{flex:1 1 200px;border:1px solid #e3e6ea;border-radius:8px;padding:10px}
.na{color:#a15c00;font-weight:600}code{font-size:.8em;word-break:break-all}svg{max-width:100%;height:auto}
.head{display:flex;gap:12px;align-items:flex-start;justify-content:space-between}.qr{text-align:center;max-width:46%}
.qr svg{width:100%;max-width:320px;height:auto}.qr .note{font-size:.75em}
@page{size:A4;margin:12mm}@media print{body{background:#fff}main{padding:0;max-width:none}details{display:none}
h2{break-after:avoid}.card,table,svg{break-inside:avoid}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _bars_svg(bars: float | None) -> str:
    n = int(bars) if bars is not None else 0
    rects = "".join(f'<rect x="{i * 22}" y="{60 - 4 * i}" width="18" height="{20 + 4 * i}" rx="2" '
                    f'fill="{"#0b6e4f" if i < n else "#d5d9de"}"/>' for i in range(12))
    return f'<svg viewBox="0 0 262 82" width="262" height="82" role="img" aria-label="{n}/12">{rects}</svg>'


def _cells_svg(cells: list[float]) -> str:
    if not cells:
        return ""
    lo, hi = min(cells), max(cells)
    floor = lo - max(0.01, (hi - lo))
    span = max(hi - floor, 0.001)
    w = 6
    bars = "".join(
        f'<rect x="{i * w}" y="{120 - (v - floor) / span * 110:.1f}" width="{w - 1}" '
        f'height="{(v - floor) / span * 110:.1f}" fill="{"#c0392b" if v in (lo, hi) else "#2e86de"}"/>'
        for i, v in enumerate(cells))
    return (f'<svg viewBox="0 0 {len(cells) * w} 135" width="100%" role="img" aria-label="cells">{bars}'
            f'<text x="0" y="133" font-size="10">{floor:.3f} V</text>'
            f'<text x="{len(cells) * w - 60}" y="10" font-size="10">{hi:.3f} V</text></svg>')


def _temps_svg(temps: list[float]) -> str:
    if not temps:
        return ""
    items = "".join(f'<rect x="{i * 70}" y="{80 - max(0, t + 20) * 1.2:.1f}" width="50" '
                    f'height="{max(0, t + 20) * 1.2:.1f}" fill="#e67e22"/>'
                    f'<text x="{i * 70 + 8}" y="96" font-size="12">{t:g} °C</text>' for i, t in enumerate(temps))
    return f'<svg viewBox="0 0 {len(temps) * 70} 100" width="{len(temps) * 70}" role="img">{items}</svg>'


def _row(label: str, value: Any, note: str = "") -> str:
    note_html = f'<br><span class="note">{_e(note)}</span>' if note else ""
    return f"<tr><td>{_e(label)}</td><td>{value}{note_html}</td></tr>"


def _forecast_html(fc: dict[str, Any], t: dict[str, str]) -> str:
    if "horizons" not in fc:
        return ""
    rows = "".join(f"<tr><td>{_e(t['horizon'])} {_e(h)}</td><td>{v['p10']:.1f} %</td><td><b>{v['p50']:.1f} %</b></td>"
                   f"<td>{v['p90']:.1f} %</td></tr>" for h, v in fc["horizons"].items())
    head = f"<tr><td>{_e(t['now'])}: {fc['present']['soh_pct']:.1f} %</td><td>{_e(t['p10'])}</td>" \
           f"<td>{_e(t['p50'])}</td><td>{_e(t['p90'])}</td></tr>"
    drivers = "".join(f"<li>{_e(f['factor'])} ({_e(f['value'])}): {f['effect_pp']:+.1f} pp</li>" for f in fc["factors"])
    u = fc["usage"]
    usage = f"{u['temp_c']:g} °C, SoC {u['soc_mean_pct']:g} %, {u['full_cycles_per_day']:g}/d ({u['basis']})"
    basis = t["fc_basis"].format(prior=fc["prior"], chem=fc["chemistry"], usage=usage)
    return (f'<table>{head}{rows}</table><p class="note">{_e(fc["present"]["basis"])}</p>'
            f'<p class="note">{_e(t["drivers"])}</p><ul class="note">{drivers}</ul><p class="note">{_e(basis)}</p>')


def _warranty_html(w: dict[str, Any], t: dict[str, str]) -> str:
    if w.get("decision") not in ("accept", "decline"):
        return ""
    color = "#0b6e4f" if w["decision"] == "accept" else "#a11"
    rule = t["rule"].format(thr=f"{w['threshold_pct']:g}", h=f"{w['horizon_years']:g}", p=f"{w['min_probability']:g}",
                            prob=f"{w['probability']:.2f}")
    reasons = "".join(f"<li>{_e(r)}</li>" for r in w["reasons"])
    return (f'<div class="big" style="color:{color}">{_e(t[w["decision"]])}</div><p>{_e(rule)}</p>'
            f'<ul class="note">{reasons}</ul>')


def render_certificate(payload: dict[str, Any], *, lang: str, key_id_hex: str, digest_hex: str, qr_text: str) -> str:
    """The HTML page for a certificate payload; ``qr_text`` is the signed claim (``qrclaim.encode_qr``).

    Raises:
        ValueError: unknown language.
    """
    if lang not in _T:
        raise ValueError(f"language {lang!r}: choose {', '.join(LANGUAGES)}")
    t, m, ident = _T[lang], payload["m"], payload["identity"]
    na = f'<span class="na">{_e(t["na"])}</span>'
    missing = f'<span class="na">{_e(t["missing"])}</span>'

    def num(key: str, unit: str) -> str:
        return f"{round(m[key], 2):g} {unit}" if key in m else missing

    from .passport import rfc3339  # local: keeps this module's imports to the page itself

    cells = m.get("cells_v", [])
    cells_note = t["cells_m"].format(n=len(cells), lo=f"{min(cells):.3f}", hi=f"{max(cells):.3f}",
                                     mv=round((max(cells) - min(cells)) * 1000)) if cells else ""
    # alphanumeric mode (Base45's alphabet); level Q survives a crease or a smudge on the printed page
    qr = segno.make(qr_text, error="q", boost_error=False).svg_inline(scale=4, border=4, omitsize=True)
    identity_rows = "".join([
        _row(t["vehicle"], _e(ident["vehicle"])),
        _row(t["serial"], _e(payload.get("bat") or t["missing"])),
        _row(t["part"], _e(ident.get("part_number") or t["missing"])),
        _row(t["generation"], _e((ident.get("generation") or t["missing"]).upper())),
        _row(t["rated"], f'{ident["rated_energy_kwh"]:g} kWh / {ident["rated_capacity_ah"]:g} Ah',
             ident["rated_source"]),
        _row(t["vin"], f'<code>{_e(ident.get("vin_hash") or t["missing"])}</code>'),
        _row(t["inspected"], _e(rfc3339(payload["ts"] / 1000))),
        _row(t["device"], f'{_e(payload["dev"])} · {_e(payload["sw"])} · ep {payload["ep"]} seq {payload["seq"]}'),
    ])
    cap_note = t["cap_soh_m"].format(ah=m.get("capacity_ah", "?"), rated=ident["rated_capacity_ah"])
    health = "".join(
        f'<div class="card"><div class="note">{_e(label)}</div><div class="big">{value}</div>'
        f'<div class="note">{_e(note)}</div></div>'
        for label, value, note in [
            (t["bms_soh"], num("bms_soh_pct", "%"), t["bms_soh_m"]),
            (t["cap_soh"], num("capacity_soh_pct", "%"), cap_note),
            (t["hx"], num("hx_pct", "%"), t["hx_m"]),
            (t["soc"], num("soc_pct", "%"), ""),
        ])
    own = m.get("soh")
    if isinstance(own, dict) and "est_pct" in own:
        note = t["own_soh_m"].format(lo=f"{own['lo_pct']:.1f}", hi=f"{own['hi_pct']:.1f}")
        health = (f'<div class="card"><div class="note">{_e(t["own_soh"])}</div>'
                  f'<div class="big">{own["est_pct"]:.1f} %</div><div class="note">{_e(note)}</div></div>') + health
    if "lbc_soh_pct" in m:
        health += (f'<div class="card"><div class="note">{_e(t["lbc_soh"])}</div>'
                   f'<div class="big">{m["lbc_soh_pct"]:g} %</div></div>')
    polls = ", ".join(f"{_e(k)}: {_e(v)}" for k, v in payload.get("polls", {}).items())
    return f"""<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{_e(t["title"])} · {_e(payload.get("bat") or payload["dev"])}</title><style>{_CSS}</style></head>
<body><main>
<div class="head"><div><h1>{_e(t["title"])}</h1><table>{identity_rows}</table></div>
<div class="qr">{qr}<div class="note">{_e(t["scan"])}</div></div></div>
<h2>{_e(t["health"])}</h2><div class="grid">{health}</div>
<p class="note">{_e(t["soce"])}</p>
<h2>{_e(t["bars"])}: {num("capacity_bars", "/ 12")}</h2>{_bars_svg(m.get("capacity_bars"))}
<h2>{_e(t["cells"])}</h2><p class="note">{_e(cells_note) if cells else missing}</p>{_cells_svg(cells)}
<h2>{_e(t["temps"])}</h2>{_temps_svg(m.get("temps_c", [])) or missing}
<h2>{_e(t["forecast"])}</h2>{_forecast_html(payload.get("forecast", {}), t) or
    f'<p>{na} <span class="note">{_e(t["na_reason"])}</span></p>'}
<h2>{_e(t["warranty"])}</h2>{_warranty_html(payload.get("warranty", {}), t) or
    f'<p>{na} <span class="note">{_e(t["na_reason"])}</span></p>'}
<h2>{_e(t["verify"])}</h2>
<div class="card">
<div class="note">{_e(t["kid"])}</div><code>{_e(key_id_hex)}</code>
<div class="note">{_e(t["digest"])}</div><code>{_e(digest_hex)}</code>
<div class="note"><code>{_e(t["how"])}</code></div>
<details><summary class="note">{_e(t["qr_text"])}</summary><code id="qr-text">{_e(qr_text)}</code></details></div>
<p class="note">{_e(t["polls"])}: {polls}</p>
</main></body></html>
"""
