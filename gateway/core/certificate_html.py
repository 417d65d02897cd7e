"""``certificate.html``: the page a person reads and prints at the auction board.

Self-contained (inline CSS and SVG, no scripts, no network), readable on a phone, in any language that
has a data file (``gateway/data/lang/<code>.json``: every word, the decimal separator, month names and
the date pattern; the forecast, its basis and the warranty reasons are worded from the numbers, not
copied from the payload's English). It shows identity, the health figures with their method, capacity
bars, a cell-voltage chart, the temperature spread, the forecast/warranty status, and how to verify:
the device key id, the SHA-256 of ``certificate.cose``, and the signed QR (``qrclaim.py``) a buyer
scans with the operator's verifier page. Printed (or ``certificate.pdf``), the QR is at the top of the first A4 page.
Pure: payload in, text out.
"""

from __future__ import annotations

import html
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import segno

from .forecast import MIN_DAYS

__all__ = ["Language", "language_from_table", "render_certificate"]


@dataclass(frozen=True, slots=True)
class Language:
    """One language of the page, from a data file (``gateway/data/lang/<code>.json``): its words, the
    decimal separator, month names and the date pattern. A language is a file, not code."""

    code: str
    name: str
    decimal: str
    months: tuple[str, ...]
    date: str
    strings: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.strings[key]

    def num(self, value: float, digits: int | None = 1) -> str:
        """``value`` with ``digits`` decimals (None: as few as it needs), in this language's form."""
        text = f"{value:g}" if digits is None else f"{value:.{digits}f}"
        return text.replace(".", self.decimal)

    def when(self, ts_s: float) -> str:
        t = datetime.fromtimestamp(ts_s, UTC)
        return self.date.format(y=t.year, month=self.months[t.month - 1], d=t.day, hh=f"{t.hour:02d}",
                                mm=f"{t.minute:02d}")


def _fields(text: str) -> set[tuple[str, str, str]]:
    """The ``{placeholders}`` of a text, with their format spec and conversion (a translation may move
    them, not change them)."""
    return {(name, spec or "", conv or "") for _, name, spec, conv in string.Formatter().parse(text) if name}


def language_from_table(code: str, table: dict[str, Any], reference: dict[str, Any]) -> Language:
    """A language from its data file, checked against the reference (English) file: the same keys, and
    each text with the same ``{placeholders}``.

    Raises:
        ValueError: naming the key that is missing, extra or has other placeholders.
    """
    if not isinstance(table, dict):
        raise ValueError("not a JSON object")
    strings, ref = table.get("strings"), reference["strings"]
    if not isinstance(strings, dict) or not all(isinstance(v, str) for v in strings.values()):
        raise ValueError("'strings' must map keys to texts")
    for key in sorted(set(ref) ^ set(strings)):
        raise ValueError(f"key {key!r} is {'missing' if key in ref else 'not in the English file'}")
    for key, text in strings.items():
        if _fields(text) != _fields(ref[key]):
            raise ValueError(f"key {key!r}: placeholders {sorted(n for n, *_ in _fields(text))}, "
                             f"English has {sorted(n for n, *_ in _fields(ref[key]))}")
    months = table.get("months")
    if not (isinstance(months, list) and len(months) == 12 and all(isinstance(m, str) for m in months)):
        raise ValueError("'months' must list 12 month names")
    date, decimal, name = table.get("date"), table.get("decimal"), table.get("name")
    if not (isinstance(date, str) and _fields(date) <= {(k, "", "") for k in ("y", "month", "d", "hh", "mm")}
            and decimal in (".", ",") and isinstance(name, str)):
        raise ValueError("'date' (with {y} {month} {d} {hh} {mm}), 'decimal' (. or ,) and 'name' are required")
    return Language(code, name, decimal, tuple(months), date, dict(strings))


_CSS = """
body{font-family:system-ui,-apple-system,"Hiragino Sans","Noto Sans CJK JP",sans-serif;margin:0;background:#f4f5f7;
color:#1b1f24}main{max-width:760px;margin:0 auto;padding:16px;background:#fff}h1{font-size:1.5em;margin:.2em 0}
h2{font-size:1.1em;border-bottom:2px solid #0b6e4f;padding-bottom:2px;margin-top:1.2em}
table{border-collapse:collapse;width:100%}td{padding:4px 6px;border-bottom:1px solid #e3e6ea;vertical-align:top}
td:first-child{color:#555;width:45%}.big{font-size:2em;font-weight:700;color:#0b6e4f}.note{color:#666;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{flex:1 1 200px;border:1px solid #e3e6ea;border-radius:8px;padding:10px}
.na{color:#a15c00;font-weight:600}code{font-size:.8em;word-break:break-all}svg{max-width:100%;height:auto}
.head{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;justify-content:space-between}
.head>div:first-child{flex:1 1 330px}.qr{flex:0 1 340px;text-align:center;margin:0 auto}
.qr svg{width:100%;max-width:340px;height:auto}.qr .note{font-size:.75em}
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


def _factor(f: dict[str, Any], usage: dict[str, Any], t: Language) -> tuple[str, str]:
    """(name, value) of a forecast factor in the page's language; a factor without a key (an older
    payload) as the payload says it."""
    values = {"temp_c": lambda: t.num(usage["temp_c"], 0), "soc_mean": lambda: t.num(usage["soc_mean_pct"], 0),
              "dod_per_day": lambda: t.num(usage["full_cycles_per_day"], 2),
              "fast_share": lambda: t.num(100 * usage["fast_charge_share"], 0)}
    key = f.get("key")
    if key not in values:
        return str(f["factor"]), str(f["value"])
    return t[f"factor_{key}"], t[f"value_{key}"].format(v=values[key]())


def _present(fc: dict[str, Any], m: dict[str, Any], ident: dict[str, Any], t: Language) -> str:
    """How the present SoH was obtained, in the page's language (from the numbers, not the English text)."""
    present = fc["present"]
    method = present.get("method")
    own: dict[str, Any] = m["soh"] if isinstance(m.get("soh"), dict) else {}
    if method == "capacity-ratio" and "capacity_ah" in m:
        return t["present_capacity-ratio"].format(ah=t.num(m["capacity_ah"], 1), rated=t.num(ident["rated_capacity_ah"],
                                                  None), sigma=t.num(present["sigma_pct"], None))
    if method == "bms-reported":
        return t["present_bms-reported"].format(soh=t.num(present["soh_pct"], 0),
                                                sigma=t.num(present["sigma_pct"], None))
    if method == "gateway-estimate" and "lo_pct" in own:
        return t["present_gateway-estimate"].format(soh=t.num(present["soh_pct"]), lo=t.num(own["lo_pct"]),
                                                    hi=t.num(own["hi_pct"]))
    return str(present["basis"])


def _forecast_html(payload: dict[str, Any], t: Language) -> str:
    fc = payload.get("forecast", {})
    if "horizons" not in fc:
        return ""
    rows = "".join(f"<tr><td>{_e(t['horizon_y'].format(n=h.strip('+y')))}</td><td>{t.num(v['p10'])} %</td>"
                   f"<td><b>{t.num(v['p50'])} %</b></td><td>{t.num(v['p90'])} %</td></tr>"
                   for h, v in fc["horizons"].items())
    head = f"<tr><td>{_e(t['now'])}: {t.num(fc['present']['soh_pct'])} %</td><td>{_e(t['p10'])}</td>" \
           f"<td>{_e(t['p50'])}</td><td>{_e(t['p90'])}</td></tr>"
    u = fc["usage"]
    drivers = "".join("<li>{}</li>".format(_e(t["effect"].format(
        factor=name, value=value, pp=("+" if f["effect_pp"] >= 0 else "") + t.num(f["effect_pp"]))))
        for f in fc["factors"] for name, value in [_factor(f, u, t)])
    own = u["days_observed"] >= MIN_DAYS
    basis = t["usage_own"] if own else t["usage_imported"] if u.get("source") == "imported-log" \
        else t["usage_reference"].format(days=t.num(MIN_DAYS, None))
    usage = t["usage"].format(temp=t.num(u["temp_c"], None), soc=t.num(u["soc_mean_pct"], None),
                              cycles=t.num(u["full_cycles_per_day"], None), basis=basis)
    chem = t.strings.get(f"chem_{fc['chemistry']}", fc["chemistry"])
    text = t["fc_basis"].format(prior=fc["prior"], chem=chem, usage=usage)
    present = _present(fc, payload["m"], payload["identity"], t)
    history = fc.get("rate_factor", {}).get("history")
    if history:
        text += " " + t["imported_history"].format(n=history["imported-log"])
    return (f'<table>{head}{rows}</table><p class="note">{_e(present)}</p>'
            f'<p class="note">{_e(t["drivers"])}</p><ul class="note">{drivers}</ul><p class="note">{_e(text)}</p>')


def _warranty_html(payload: dict[str, Any], t: Language) -> str:
    w, fc = payload.get("warranty", {}), payload.get("forecast", {})
    if w.get("decision") not in ("accept", "decline"):
        return ""
    color = "#0b6e4f" if w["decision"] == "accept" else "#a11"
    h, thr, p = t.num(w["horizon_years"], None), t.num(w["threshold_pct"], None), t.num(w["min_probability"], None)
    prob = t.num(w["probability"], 2)
    rule = t["rule"].format(thr=thr, h=h, p=p, prob=prob)
    if "drivers" not in w:  # an older payload: its reasons as written
        reasons = [str(r) for r in w["reasons"]]
    else:
        by_key = {f.get("key"): f for f in fc.get("factors", [])}
        reasons = [t["reason_rule"].format(thr=thr, h=h, prob=prob, p=p,
                                           cmp=t["cmp_ge" if w["decision"] == "accept" else "cmp_lt"]),
                   t["reason_present"].format(basis=_present(fc, payload["m"], payload["identity"], t))]
        for key in w["drivers"]:
            name, value = _factor(by_key[key], fc["usage"], t)
            pp = t.num(-by_key[key]["effect_pp"])
            reasons.append(t["reason_factor"].format(factor=name, value=value, h=h, pp=pp))
    items = "".join(f"<li>{_e(r)}</li>" for r in reasons)
    return (f'<div class="big" style="color:{color}">{_e(t[w["decision"]])}</div><p>{_e(rule)}</p>'
            f'<ul class="note">{items}</ul>')


def _profile_status(ident: dict[str, Any], t: Language) -> str:
    """How sure the vehicle profile is, in the page's language."""
    if not ident.get("builtin_profile", True):
        return t["validation_user"]
    if ident["checked_against"]:
        return t["validation_checked"].format(captures=", ".join(ident["checked_against"]))
    return t["validation_docs"]


def render_certificate(payload: dict[str, Any], *, language: Language, key_id_hex: str, digest_hex: str,
                       qr_text: str) -> str:
    """The HTML page for a certificate payload in ``language``; ``qr_text`` is the signed claim
    (``qrclaim.encode_qr``)."""
    t, m, ident = language, payload["m"], payload["identity"]
    na = f'<span class="na">{_e(t["na"])}</span>'
    missing = f'<span class="na">{_e(t["missing"])}</span>'

    def num(key: str, unit: str) -> str:
        return f"{t.num(round(m[key], 2), None)} {unit}" if key in m else missing

    cells = m.get("cells_v", [])
    cells_note = t["cells_m"].format(n=len(cells), lo=t.num(min(cells), 3), hi=t.num(max(cells), 3),
                                     mv=round((max(cells) - min(cells)) * 1000)) if cells else ""
    # alphanumeric mode (Base45's alphabet); level Q survives a crease or a smudge on the printed page
    qr = segno.make(qr_text, error="q", boost_error=False).svg_inline(scale=4, border=4, omitsize=True)
    source = t.strings.get(f"source_{ident['rated_source']}", ident["rated_source"])
    identity_rows = "".join([
        _row(t["vehicle"], _e(ident["vehicle"])),
        _row(t["profile"], f'<code>{_e(ident["profile"])}</code>', _profile_status(ident, t))
        if "profile" in ident else "",  # older certificates name no profile
        _row(t["serial"], _e(payload.get("bat") or t["missing"])),
        _row(t["part"], _e(ident.get("part_number") or t["missing"])),
        _row(t["generation"], _e((ident.get("generation") or t["missing"]).upper())),
        _row(t["rated"], f'{t.num(ident["rated_energy_kwh"], None)} kWh / {t.num(ident["rated_capacity_ah"], None)} Ah',
             source),
        _row(t["vin"], f'<code>{_e(ident.get("vin_hash") or t["missing"])}</code>'),
        _row(t["inspected"], _e(t.when(payload["ts"] / 1000))),
        _row(t["device"], f'{_e(payload["dev"])} · {_e(payload["sw"])} · ep {payload["ep"]} seq {payload["seq"]}'),
    ])
    cap_note = t["cap_soh_m"].format(ah=t.num(m["capacity_ah"], None) if "capacity_ah" in m else "?",
                                     rated=t.num(ident["rated_capacity_ah"], None))
    health = "".join(
        f'<div class="card"><div class="note">{_e(label)}</div><div class="big">{value}</div>'
        f'<div class="note">{_e(note)}</div></div>'
        for label, value, note in [
            (t["bms_soh"], num("bms_soh_pct", "%"),
             t["bms_soh_m"].format(signal=payload.get("prov", {}).get("m.bms_soh_pct", {}).get("signal", "?"))),
            (t["cap_soh"], num("capacity_soh_pct", "%"), cap_note),
            (t["hx"], num("hx_pct", "%"), t["hx_m"]),
            (t["soc"], num("soc_pct", "%"), ""),
        ])
    own = m.get("soh")
    if isinstance(own, dict) and "est_pct" in own:
        note = t["own_soh_m"].format(lo=t.num(own["lo_pct"]), hi=t.num(own["hi_pct"]))
        health = (f'<div class="card"><div class="note">{_e(t["own_soh"])}</div>'
                  f'<div class="big">{t.num(own["est_pct"])} %</div><div class="note">{_e(note)}</div></div>') + health
    if "lbc_soh_pct" in m:
        health += (f'<div class="card"><div class="note">{_e(t["lbc_soh"])}</div>'
                   f'<div class="big">{t.num(m["lbc_soh_pct"], None)} %</div></div>')
    results = payload.get("polls", {})
    failed = [name for name, result in results.items() if result != "ok"]
    polls = _e(t["polls_m"].format(ok=len(results) - len(failed), n=len(results)))
    if failed:  # the profile's names of the reads, for whoever looks into it
        polls += f' · {_e(t["poll_failed"])}: <code>{_e(", ".join(failed))}</code>'
    lang = t.code
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
<h2>{_e(t["forecast"])}</h2>{_forecast_html(payload, t) or
    f'<p>{na} <span class="note">{_e(t["na_reason"])}</span></p>'}
<h2>{_e(t["warranty"])}</h2>{_warranty_html(payload, t) or
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
