// The offline verifier of battery-gateway's signed QR (docs/qr.md): BP1: + Base45 + zlib + COSE_Sign1
// (ES256, the inspection device's key) over a CBOR health claim, checked with WebCrypto against the
// operator's signed trust list built into this page. The verdict order is gateway/core/trustlist.py's.
// No network: the page's Content-Security-Policy has connect-src 'none'.
import jsQR from "jsqr";
import { decode as b45decode, encode as b45encode } from "base45-ts";
import { Inflate } from "pako";
import { decode as cborDecode, encode as cborEncode } from "cborg";

const PREFIX = "BP1:";
const MAX_ENVELOPE = 2048;
const MAX_TEXT = 4296; // the most characters a QR code holds in alphanumeric mode
const FUTURE_SLACK_S = 86400;
// Maps as Maps (integer keys in COSE headers), a key twice refused (two readers could take different
// values from the same signed bytes: gateway/core/signing.py refuses them too), COSE_Sign1's tag 18 kept.
const CBOR = { useMaps: true, rejectDuplicateMapKeys: true, tags: { 18: (content) => ({ tag: 18, value: content() }) } };
const cbor = { decode: (bytes) => cborDecode(bytes, CBOR) };

const T = {
  en: {
    title: "Battery certificate check",
    intro: "Scan the QR code on a battery health certificate. Everything is checked on this phone; nothing is sent anywhere.",
    scan: "Scan with camera", stop: "Stop camera", image: "Open a photo or image", paste: "…or paste the QR text",
    check: "Check", list: "Trust list of {iss}, valid until {exp} (operator key {key})",
    nocam: "Camera not available: {e}",
    "genuine": "Genuine", "not-genuine": "NOT genuine", "unknown-issuer": "Unknown issuer", "expired": "Expired", "revoked": "Revoked",
    "genuine-h": "Signed by an inspection device the operator trusts. The figures below are as measured.",
    "not-genuine-h": "This certificate was changed or forged. Do not rely on any figure from it.",
    "unknown-issuer-h": "The signing device is not on the operator's trust list. The figures cannot be trusted.",
    "expired-h": "The trust list or the device's key is out of date: this page cannot vouch for the certificate.",
    "revoked-h": "The device's key was revoked: this certificate must not be relied on. Ask for a new inspection.",
    vehicle: "Vehicle", gen: "Pack generation", rated: "Rated when new", bat: "Pack serial", soh: "State of health",
    sohm: { "gateway-estimate": "gateway estimate from counted charge", "capacity-ratio": "BMS capacity ÷ rated capacity", "bms-reported": "as reported by the battery ECU", unknown: "method not stated" },
    interval: "80 % interval {lo}–{hi} %", bms: "State of health (BMS)", f3: "Forecast in 3 years (median)",
    w: "Warranty decision", accept: "ACCEPT", decline: "DECLINE", imp: "History from other tools",
    impv: "{n} weekly points from imported logs (not measured by this device; they can only worsen the forecast)", wp: "probability {p} %", iat: "Inspected",
    ago: "{n} days ago", dev: "Inspection device", vin: "VIN (pseudonymised)", cert: "SHA-256 of certificate.cose", why: "Why",
    time: "checked in {ms} ms",
    r: {
      prefix: 'not a battery certificate QR (it starts "{head}")', b45: "the QR text is not Base45", zlib: "the QR content is not zlib data",
      big: "too large for a health claim", cbor: "not CBOR", cose: "not a signed COSE_Sign1 message", alg: "not signed with ES256",
      nolist: "this page has no trust list: ask the operator for theirs", insecure: "open this page from a file or an https:// address: the browser allows signature checks only there",
      list_sig: "the trust list is not signed by the operator", list_shape: "the trust list is damaged",
      list_expired: "the trust list expired on {d}: get a current one from {iss}", list_future: "the trust list is dated {d}, in the future: check this phone's clock",
      unknown_key: "key {kid} is not on {iss}'s trust list", bad_sig: "the signature does not verify: the claim was changed",
      not_claim: "signed, but not a version 1 health claim", dev_mismatch: "signed by {signer}'s key but names device {dev}",
      revoked: "{dev}'s key was revoked on {d}", future: "dated {d}, in the future",
      key_validity: "dated {d}, outside {dev}'s key validity {from} to {to}", genuine: "signed by {dev}, on {iss}'s trust list",
      noqr: "no QR code found in the image",
    },
  },
  ja: {
    title: "バッテリー証明書の確認",
    intro: "バッテリー健全性証明書のQRコードを読み取ってください。確認はこの端末内だけで行い、どこにも送信しません。",
    scan: "カメラで読み取る", stop: "カメラを止める", image: "写真・画像を開く", paste: "またはQRの文字列を貼り付け",
    check: "確認", list: "{iss} の信頼リスト({exp} まで有効、運営者の鍵 {key})",
    nocam: "カメラを使用できません: {e}",
    "genuine": "真正", "not-genuine": "真正ではありません", "unknown-issuer": "発行元不明", "expired": "期限切れ", "revoked": "失効",
    "genuine-h": "運営者が信頼する検査機器の署名です。以下の数値は測定のとおりです。",
    "not-genuine-h": "この証明書は改ざんまたは偽造されています。数値を信用しないでください。",
    "unknown-issuer-h": "署名した機器は運営者の信頼リストにありません。数値は信用できません。",
    "expired-h": "信頼リストまたは機器の鍵の有効期限が切れているため、この証明書を保証できません。",
    "revoked-h": "機器の鍵は失効しています。この証明書に依拠せず、再検査を依頼してください。",
    vehicle: "車両", gen: "パック世代", rated: "新品時定格", bat: "バッテリーパック製造番号", soh: "SOH(健全性)",
    sohm: { "gateway-estimate": "充放電電荷量からのゲートウェイ推定値", "capacity-ratio": "BMS容量 ÷ 定格容量", "bms-reported": "バッテリーECUの報告値", unknown: "方法の記載なし" },
    interval: "80 %区間 {lo}–{hi} %", bms: "SOH(BMS値)", f3: "3年後の予測(中央値)",
    w: "保証判定", accept: "承認", decline: "不承認", imp: "他ツールの記録",
    impv: "取り込んだ記録から {n} 週分(この機器の測定ではなく、予測を悪くすることはあっても良くはしません)", wp: "確率 {p} %", iat: "検査日時",
    ago: "{n}日前", dev: "検査機器", vin: "車台番号(仮名化)", cert: "certificate.cose の SHA-256", why: "理由",
    time: "確認時間 {ms} ms",
    r: {
      prefix: "バッテリー証明書のQRではありません(先頭: 「{head}」)", b45: "QRの文字列がBase45ではありません", zlib: "QRの内容がzlibデータではありません",
      big: "健全性データとしては大きすぎます", cbor: "CBORではありません", cose: "署名付きCOSE_Sign1ではありません", alg: "ES256で署名されていません",
      nolist: "このページには信頼リストがありません。運営者から入手してください", insecure: "このページはファイルまたは https:// で開いてください。署名の確認はそこでのみ可能です",
      list_sig: "信頼リストに運営者の署名がありません", list_shape: "信頼リストが破損しています",
      list_expired: "信頼リストは {d} に期限切れです。{iss} から最新版を入手してください", list_future: "信頼リストの日付 {d} が未来です。端末の時計を確認してください",
      unknown_key: "鍵 {kid} は {iss} の信頼リストにありません", bad_sig: "署名が一致しません。内容が変更されています",
      not_claim: "署名はありますが、バージョン1の健全性データではありません", dev_mismatch: "{signer} の鍵で署名されていますが、機器名は {dev} です",
      revoked: "{dev} の鍵は {d} に失効しました", future: "日付 {d} が未来です",
      key_validity: "日付 {d} は {dev} の鍵の有効期間({from}〜{to})外です", genuine: "{dev} の署名。{iss} の信頼リストに登録済み",
      noqr: "画像にQRコードが見つかりません",
    },
  },
};

const $ = (id) => document.getElementById(id);
let lang = (new URLSearchParams(location.search).get("lang") || navigator.language || "en").startsWith("ja") ? "ja" : "en";
const fmt = (s, v) => s.replace(/\{(\w+)\}/g, (_, k) => String(v[k]));
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const valid = (s) => Number.isFinite(new Date(s * 1000).getTime());
const day = (s) => (valid(s) ? new Date(s * 1000).toISOString().slice(0, 10) : `${s} s`); // as core/trustlist.py's _day
const local = (s) => (valid(s) ? new Intl.DateTimeFormat(lang === "ja" ? "ja-JP" : "en-GB", { dateStyle: "long", timeStyle: "short" }).format(new Date(s * 1000)) : `${s} s`);
const num = (tenths) => new Intl.NumberFormat(lang === "ja" ? "ja-JP" : "en-GB", { minimumFractionDigits: 1, maximumFractionDigits: 1 }).format(tenths / 10);

// A verdict's reason: a key of T[lang].r and its values, so it reads in the buyer's language.
const why = (key, values = {}) => ({ key, values });
const say = (reason) => fmt(T[lang].r[reason.key], reason.values);

class Refusal extends Error {
  constructor(status, reason) { super(reason.key); this.status = status; this.reason = reason; }
}

const isInt = Number.isSafeInteger; // not a float, not a BigInt: what gateway/core/trustlist.py's _is_int takes
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

// A payload holds safe integers, text, bytes, arrays and text-keyed maps only, at most 64 levels deep:
// gateway/core/trustlist.py's _plain and signing.py's depth limit.
function plain(value, depth = 0) {
  if (depth > 64) return false;
  if (isInt(value) || typeof value === "string" || value instanceof Uint8Array) return true;
  if (Array.isArray(value)) return value.every((item) => plain(item, depth + 1));
  if (value instanceof Map) {
    return [...value].every(([key, item]) => typeof key === "string" && plain(item, depth + 1));
  }
  return false;
}

// A COSE_Sign1 opened as gateway/core/trustlist.py's open_plain opens it, before any key is looked up:
// tag 18 itself (first byte 0xD2), [protected bstr, empty unprotected map, payload bstr, signature bstr],
// a plain payload in deterministic encoding (one signed content, one byte string: no float, no second
// encoding reads differently here and in `verify`).
function openCose(bytes) {
  let obj;
  try { obj = cbor.decode(bytes); } catch (e) { throw new Refusal("not-genuine", why("cbor")); }
  const parts = bytes[0] === 0xd2 && obj && obj.tag === 18 ? obj.value : null;
  if (!Array.isArray(parts) || parts.length !== 4 || !(parts[0] instanceof Uint8Array) || !(parts[1] instanceof Map)
      || !(parts[2] instanceof Uint8Array) || !(parts[3] instanceof Uint8Array)) {
    throw new Refusal("not-genuine", why("cose"));
  }
  let header, payload;
  try { header = parts[0].length ? cbor.decode(parts[0]) : new Map(); payload = cbor.decode(parts[2]); } catch (e) {
    throw new Refusal("not-genuine", why("cbor"));
  }
  if (!(header instanceof Map) || parts[1].size || !(payload instanceof Map) || !plain(payload)) {
    throw new Refusal("not-genuine", why("cose"));
  }
  if (!same(cborEncode(payload), parts[2])) throw new Refusal("not-genuine", why("not_claim"));
  return { protectedRaw: parts[0], header, body: parts[2], payload: Object.fromEntries(payload), signature: parts[3] };
}

// The checks of gateway/core/signing.py's verify_envelope, in its order: ES256, one kid, the signature.
async function verifyCose(env, spki) {
  if (env.header.get(1) !== -7) throw new Refusal("not-genuine", why("alg"));
  if (!globalThis.crypto || !crypto.subtle) throw new Refusal("unknown-issuer", why("insecure"));
  if (env.signature.length !== 64) return false;
  const key = await crypto.subtle.importKey("spki", spki, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
  const toBeSigned = cborEncode(["Signature1", env.protectedRaw, new Uint8Array(0), env.body]);
  return crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, env.signature, toBeSigned);
}

// zlib as Python's zlib reads it (pako is a port of it): the zlib wrapper only, its checksum, nothing
// after the stream, and never more than MAX_ENVELOPE bytes out
function inflate(packed) {
  const inflater = new Inflate({ windowBits: 15 });
  const out = new Uint8Array(MAX_ENVELOPE + 1);
  let size = 0;
  inflater.onData = (chunk) => {
    if (size + chunk.length > MAX_ENVELOPE) throw new Refusal("not-genuine", why("big"));
    out.set(chunk, size);
    size += chunk.length;
  };
  inflater.onEnd = () => {};
  inflater.push(packed, true);
  if (inflater.err || !inflater.ended || inflater.strm.avail_in) throw new Refusal("not-genuine", why("zlib"));
  return out.slice(0, size);
}

// BP1: + Base45 + zlib, refused as gateway/core/qrclaim.py's decode_qr refuses it: longer than a QR holds,
// Base45 that is not the one encoding of its bytes (base45-ts wraps a triplet above 65535), zlib that
// Python's zlib refuses.
function qrEnvelope(text) {
  text = text.replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, "");
  if (text.length > MAX_TEXT) throw new Refusal("not-genuine", why("big"));
  if (!text.startsWith(PREFIX)) throw new Refusal("not-genuine", why("prefix", { head: text.slice(0, 8) }));
  const body = text.slice(PREFIX.length);
  let packed, envelope;
  try { packed = b45decode(body); } catch (e) { throw new Refusal("not-genuine", why("b45")); }
  if (b45encode(packed) !== body) throw new Refusal("not-genuine", why("b45"));
  try { envelope = inflate(packed); } catch (e) { throw e instanceof Refusal ? e : new Refusal("not-genuine", why("zlib")); }
  return envelope;
}

let trust = null; // {issuer, issued, expires, operator (fingerprint), keys: Map(kidHex -> entry)} or a Refusal

async function loadTrust() {
  try {
    const slot = JSON.parse($("bp-trust").textContent);
    if (!slot) return new Refusal("unknown-issuer", why("nolist"));
    const operator = b64(slot.operator);
    const operatorKid = new Uint8Array(await crypto.subtle.digest("SHA-256", operator)).slice(0, 16);
    const env = openCose(b64(slot.list));
    const listKid = env.header.get(4);
    if (listKid !== undefined && !(listKid instanceof Uint8Array && same(listKid, operatorKid))) {
      return new Refusal("unknown-issuer", why("list_sig"));
    }
    if (!(await verifyCose(env, operator))) return new Refusal("unknown-issuer", why("list_sig"));
    const p = env.payload;
    if (p.kind !== "trust-list" || p.v !== 1 || !Array.isArray(p.keys) || !isInt(p.iat) || !isInt(p.exp)) {
      return new Refusal("unknown-issuer", why("list_shape"));
    }
    const keys = new Map();
    for (const raw of p.keys) {
      const e = raw instanceof Map ? Object.fromEntries(raw) : {};
      // an uncompressed P-256 key (91 bytes of SubjectPublicKeyInfo) that WebCrypto takes, with its kid
      if (!(e.kid instanceof Uint8Array) || !(e.pub instanceof Uint8Array) || e.pub.length !== 91 || typeof e.dev !== "string"
          || !isInt(e.nbf) || !isInt(e.exp) || (raw.has("rev") && !isInt(e.rev))
          || !same(new Uint8Array(await crypto.subtle.digest("SHA-256", e.pub)).slice(0, 16), e.kid)) {
        return new Refusal("unknown-issuer", why("list_shape"));
      }
      await crypto.subtle.importKey("spki", e.pub, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
      keys.set(hex(e.kid), e);
    }
    return { issuer: String(p.iss || ""), issued: p.iat, expires: p.exp, keys,
      operator: hex(operatorKid.slice(0, 8)).match(/.{4}/g).join(" ") };
  } catch (e) {
    return new Refusal("unknown-issuer", e instanceof Refusal && e.reason.key === "insecure" ? e.reason : why("list_shape"));
  }
}

// The verdict, in gateway/core/trustlist.py's order.
async function judge(text, now) {
  if (trust instanceof Refusal) throw trust;
  if (now > trust.expires) throw new Refusal("expired", why("list_expired", { d: day(trust.expires), iss: trust.issuer }));
  if (trust.issued > now + FUTURE_SLACK_S) throw new Refusal("expired", why("list_future", { d: day(trust.issued) }));
  const env = openCose(qrEnvelope(text));
  const kid = env.header.get(4);
  const entry = kid instanceof Uint8Array ? trust.keys.get(hex(kid)) : undefined;
  if (!entry) throw new Refusal("unknown-issuer", why("unknown_key", { kid: kid instanceof Uint8Array ? hex(kid) : "?", iss: trust.issuer }));
  if (!(await verifyCose(env, entry.pub))) throw new Refusal("not-genuine", why("bad_sig"));
  const claim = env.payload;
  if (claim.v !== 1 || !isInt(claim.iat)) throw new Refusal("not-genuine", why("not_claim"));
  if (claim.dev !== entry.dev) throw new Refusal("not-genuine", why("dev_mismatch", { signer: entry.dev, dev: claim.dev }));
  if ("rev" in entry) return { status: "revoked", reason: why("revoked", { dev: entry.dev, d: day(entry.rev) }), claim };
  if (claim.iat > now + FUTURE_SLACK_S) throw new Refusal("not-genuine", why("future", { d: day(claim.iat) }));
  if (claim.iat < entry.nbf || claim.iat > entry.exp) {
    const values = { d: day(claim.iat), dev: entry.dev, from: day(entry.nbf), to: day(entry.exp) };
    return { status: "expired", reason: why("key_validity", values), claim };
  }
  return { status: "genuine", reason: why("genuine", { dev: entry.dev, iss: trust.issuer }), claim };
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// The figures of a genuine claim; a figure of the wrong type is left out, never shown half-read.
function figures(c, now) {
  const t = T[lang];
  const rows = [];
  const row = (k, v) => rows.push(`<tr><th>${esc(k)}</th><td>${v}</td></tr>`);
  const text = (v) => typeof v === "string";
  if (text(c.veh)) row(t.vehicle, esc(c.veh));
  if (text(c.gen)) row(t.gen, esc(c.gen.toUpperCase()));
  if (Array.isArray(c.rat) && c.rat.length === 2 && c.rat.every(isInt)) row(t.rated, `${num(c.rat[0])} kWh / ${num(c.rat[1])} Ah`);
  if (text(c.bat)) row(t.bat, esc(c.bat));
  const s = c.soh instanceof Map ? Object.fromEntries(c.soh) : {};
  if ([s.p, s.lo, s.hi].every(isInt)) {
    row(t.soh, `<b class="big">${num(s.p)} %</b><br><small>${esc(fmt(t.interval, { lo: num(s.lo), hi: num(s.hi) }))} · ${esc(Object.hasOwn(t.sohm, s.m) ? t.sohm[s.m] : t.sohm.unknown)}</small>`);
  }
  if (isInt(c.bms)) row(t.bms, `${num(c.bms)} %`);
  if (isInt(c.f3)) row(t.f3, `${num(c.f3)} %`);
  if (isInt(c.imp) && c.imp > 0) row(t.imp, esc(fmt(t.impv, { n: c.imp })));
  if ((c.w === "accept" || c.w === "decline") && isInt(c.wp)) row(t.w, `<b>${esc(t[c.w])}</b> <small>${esc(fmt(t.wp, { p: c.wp }))}</small>`);
  row(t.iat, `${esc(local(c.iat))} <small>(${esc(fmt(t.ago, { n: Math.max(0, Math.floor((now - c.iat) / 86400)) }))})</small>`);
  row(t.dev, esc(c.dev));
  if (c.vin instanceof Uint8Array) row(t.vin, `<code>${hex(c.vin)}</code>`);
  if (c.cert instanceof Uint8Array) row(t.cert, `<code>${hex(c.cert)}</code>`);
  return `<table>${rows.join("")}</table>`;
}

let last = null;

// The verdict box, all of it built before any of it is shown: an earlier verdict never stays on screen
// under a new one. Figures only for "genuine": under "revoked" a thief would choose the numbers.
function show(result) {
  const t = T[lang];
  let html;
  try {
    html = `<h2>${esc(t[result.status])}</h2><p>${esc(t[`${result.status}-h`])}</p>`
      + `<p class="why"><small>${esc(t.why)}: ${esc(say(result.reason))}</small></p>`
      + (result.status === "genuine" ? figures(result.claim, result.now) : "")
      + `<p class="why"><small>${esc(fmt(t.time, { ms: Math.round(result.ms) }))}</small></p>`;
  } catch (e) {
    return show({ ...result, status: "not-genuine", reason: why("not_claim"), claim: null });
  }
  last = result;
  const box = $("verdict");
  box.hidden = false;
  box.dataset.status = result.status;
  box.className = `verdict ${result.status}`;
  box.innerHTML = html;
  if (box.scrollIntoView) box.scrollIntoView({ block: "start" });
  window.bpResult = { status: result.status, reason: say(result.reason), why: result.reason.key, ms: result.ms,
    scanMs: result.scanMs ?? null, claim: result.claim ? { dev: result.claim.dev, iat: result.claim.iat } : null };
}

let latest = 0; // only the newest check may show its verdict (an earlier one can finish later)

async function check(text, started) {
  const mine = ++latest;
  const t0 = performance.now();
  const now = Math.floor(Date.now() / 1000);
  let result;
  try {
    result = await judge(text, now);
  } catch (e) {
    result = e instanceof Refusal ? { status: e.status, reason: e.reason, claim: null }
      : { status: "not-genuine", reason: why("cose"), claim: null }; // a library's own error on hostile bytes
  }
  result.now = now;
  result.ms = performance.now() - t0;
  if (started !== undefined) result.scanMs = performance.now() - started;
  if (mine === latest) show(result);
}

function scanImageData(img) {
  const code = jsQR(img.data, img.width, img.height, { inversionAttempts: "attemptBoth" });
  return code ? code.data : null;
}

let stream = null;

async function startCamera() {
  const t = T[lang];
  if (stream) return stopCamera();
  const started = performance.now();
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch (e) {
    $("status").textContent = fmt(t.nocam, { e: e.message });
    return;
  }
  const video = $("video");
  video.hidden = false;
  video.srcObject = stream;
  await video.play();
  $("scan").textContent = t.stop;
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const tick = () => {
    if (!stream) return;
    if (video.readyState >= 2 && video.videoWidth) {
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      ctx.drawImage(video, 0, 0);
      const text = scanImageData(ctx.getImageData(0, 0, canvas.width, canvas.height));
      if (text) {
        stopCamera();
        check(text, started);
        return;
      }
    }
    setTimeout(tick, 80);
  };
  tick();
}

function stopCamera() {
  if (stream) stream.getTracks().forEach((track) => track.stop());
  stream = null;
  $("video").hidden = true;
  $("scan").textContent = T[lang].scan;
}

async function openImage(file) {
  const started = performance.now();
  const mine = ++latest;
  let text = null;
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, 2400 / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    text = scanImageData(ctx.getImageData(0, 0, canvas.width, canvas.height));
  } catch (e) {
    text = null; // not an image the browser can read: as good as no QR code
  }
  if (text) check(text, started);
  else if (mine === latest) show({ status: "not-genuine", reason: why("noqr"), claim: null, ms: performance.now() - started, now: 0 });
}

function render() {
  const t = T[lang];
  document.documentElement.lang = lang;
  document.title = t.title;
  $("title").textContent = t.title;
  $("intro").textContent = t.intro;
  $("scan").textContent = stream ? t.stop : t.scan;
  $("image-label").textContent = t.image;
  $("paste-label").textContent = t.paste;
  $("check").textContent = t.check;
  $("issuer").textContent = trust instanceof Refusal ? say(trust.reason)
    : fmt(t.list, { iss: trust.issuer, exp: day(trust.expires), key: trust.operator });
  for (const b of document.querySelectorAll("[data-lang]")) b.setAttribute("aria-pressed", String(b.dataset.lang === lang));
  if (last) show(last);
}

async function main() {
  trust = await loadTrust();
  for (const b of document.querySelectorAll("[data-lang]")) b.addEventListener("click", () => { lang = b.dataset.lang; render(); });
  $("scan").addEventListener("click", startCamera);
  $("image").addEventListener("change", (e) => { if (e.target.files[0]) openImage(e.target.files[0]); });
  $("check").addEventListener("click", () => check($("text").value));
  render();
  document.body.dataset.ready = "1";
}

main();
