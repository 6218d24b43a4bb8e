// bastion's operator dashboard: plain ES module, no build step, no dependency.
//
// It reads three JSON endpoints next to it (/ui/api/...): the SLO summary of a window, the
// recent requests (metadata only) and one request's path. Everything inserted into the page
// goes through textContent or attributes, never innerHTML: tenants, targets and outcomes come
// from callers and providers and are treated as untrusted text. The page's CSP allows scripts
// and styles from bastion only, so positions are set through the CSSOM (element.style.x),
// which CSP permits, never through style attributes.

const API = new URL("../api/", import.meta.url); // /ui/static/app.js -> /ui/api/
const KEY_STORE = "bastion.adminKey";
const WINDOW_STORE = "bastion.window";
const REFRESH_MS = 5000;
const WINDOWS = { 300: "Last 5 minutes", 3600: "Last hour", 86400: "Last 24 hours" };
const SVG = "http://www.w3.org/2000/svg";
const REQUEST_ID = /^[A-Za-z0-9_.:\-]{1,200}$/;

const state = {
  window: Number(sessionStorage.getItem(WINDOW_STORE)) in WINDOWS
    ? Number(sessionStorage.getItem(WINDOW_STORE)) : 300,
  live: true,
  needAuth: false,
  loading: 0,
  seq: { summary: 0, requests: 0, detail: 0 },
  open: null, // the request id shown in the drill-down
  lastSummary: null,
  lastRows: null,
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- the JSON API

class ApiError extends Error {
  constructor(status, error, message) {
    super(message);
    this.status = status;
    this.code = error && error.code;
    this.type = error && error.type;
  }
}

function adminKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

async function api(path, params = {}) {
  const url = new URL(path, API);
  for (const [name, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined && value !== false) {
      url.searchParams.set(name, String(value));
    }
  }
  const headers = { accept: "application/json" };
  const key = adminKey();
  if (key) headers.authorization = `Bearer ${key}`;
  let resp;
  try {
    resp = await fetch(url, { headers, cache: "no-store", credentials: "omit" });
  } catch (exc) {
    throw new ApiError(0, null, `the gateway did not answer (${exc.message})`);
  }
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (!resp.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(resp.status, error, error.message || `HTTP ${resp.status}`);
  }
  return body;
}

// ---------------------------------------------------------------- DOM helpers

/** An element; string children become text nodes (never parsed as HTML). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.setAttribute("class", value);
    else if (name === "text") el.textContent = String(value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function show(el, visible) {
  el.classList.toggle("hidden", !visible);
}

// ---------------------------------------------------------------- formatting

const isNum = (v) => typeof v === "number" && Number.isFinite(v);

function fmtMs(v) {
  if (!isNum(v)) return "—";
  if (v < 1) return `${v.toFixed(2)} ms`;
  if (v < 10) return `${v.toFixed(1)} ms`;
  if (v < 1000) return `${Math.round(v)} ms`;
  return `${(v / 1000).toFixed(v < 10000 ? 2 : 1)} s`;
}

function fmtPct(r) {
  if (!isNum(r)) return "—";
  const p = r * 100;
  if (p === 0) return "0%";
  if (p < 0.1) return "<0.1%";
  return `${p.toFixed(p >= 99.95 ? 0 : 1)}%`;
}

function fmtUsd(v) {
  if (!isNum(v)) return "—";
  if (v === 0) return "$0.00";
  if (v >= 1000) return `$${Math.round(v).toLocaleString("en-US")}`;
  if (v >= 1) return `$${v.toFixed(2)}`;
  if (v >= 0.01) return `$${v.toFixed(4)}`;
  if (v < 0.000001) return "<$0.000001";
  return `$${v.toFixed(6)}`;
}

const fmtInt = (v) => (isNum(v) ? Math.round(v).toLocaleString("en-US") : "—");
const pad = (n) => String(n).padStart(2, "0");

function fmtClock(ts, withSeconds = true) {
  const d = new Date(ts * 1000);
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return withSeconds ? `${hm}:${pad(d.getSeconds())}` : hm;
}

function fmtTime(ts) {
  if (!isNum(ts)) return "—";
  const d = new Date(ts * 1000);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return sameDay ? fmtClock(ts) : `${day.slice(5)} ${fmtClock(ts)}`;
}

function fmtFull(ts) {
  if (!isNum(ts)) return "—";
  const d = new Date(ts * 1000);
  const ms = String(d.getMilliseconds()).padStart(3, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtClock(ts)}.${ms}`;
}

/** A round top for a chart axis (at least ``floor``) whose half is round too: 1, 2, 4, 6, 8,
 * 10, 20, 40, ... times a power of ten. */
function niceMax(v, floor) {
  if (!(v > floor)) return floor;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 4, 6, 8, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmtRate(requests, windowS) {
  const perMin = requests / (windowS / 60);
  if (perMin === 0) return "0/min";
  if (perMin < 0.1) return `${(perMin * 60).toFixed(1)}/h`;
  return `${perMin.toFixed(perMin < 100 ? 1 : 0)}/min`;
}

function outcomeClass(outcome) {
  return outcome === "ok" ? "ok" : "bad";
}

function statusBadge(status, outcome) {
  const cls = !isNum(status) ? "s0" : status >= 500 ? "s5" : status >= 400 ? "s4" : "s2";
  return h("span", { class: "status-cell" },
    h("span", { class: `status ${cls}`, text: isNum(status) ? status : "—" }),
    outcome && outcome !== "ok" ? h("span", { class: "outcome", text: outcome }) : null);
}

// ---------------------------------------------------------------- banner and auth

function showBanner(message) {
  $("error-message").textContent = message;
  show($("error-banner"), true);
}

function hideBanner() {
  show($("error-banner"), false);
}

function requireAuth(error) {
  state.needAuth = true;
  const had = adminKey();
  const msg = $("auth-error");
  if (error.status === 403) {
    msg.textContent = `${error.message}. The dashboard's data needs the admin API.`;
  } else if (had) {
    sessionStorage.removeItem(KEY_STORE);
    msg.textContent = `The key was refused: ${error.message}.`;
  } else {
    msg.textContent = "";
  }
  show(msg, Boolean(msg.textContent));
  hideBanner();
  show($("auth-panel"), true);
  show($("dashboard"), false);
  show($("sign-out"), false);
  closeDrawer(false);
  $("admin-key").focus();
}

function authed() {
  if (!state.needAuth) {
    show($("sign-out"), Boolean(adminKey()));
    return;
  }
  state.needAuth = false;
  show($("auth-panel"), false);
  show($("dashboard"), true);
  show($("sign-out"), Boolean(adminKey()));
}

function failed(error, what) {
  if (error.status === 401 || error.status === 403) {
    requireAuth(error);
  } else {
    showBanner(`Could not load ${what}: ${error.message}` +
      (error.code ? ` (${error.code})` : ""));
    $("dashboard").classList.add("stale");
  }
}

// ---------------------------------------------------------------- loading

function requestParams() {
  return {
    limit: $("filter-limit").value,
    tenant: $("filter-tenant").value.trim(),
    outcome: $("filter-outcome").value.trim(),
    errors: $("filter-errors").checked ? "1" : "",
  };
}

async function loadSummary() {
  const seq = ++state.seq.summary;
  const summary = await api("summary", { window_s: state.window });
  if (seq === state.seq.summary) renderSummary(summary);
}

async function loadRequests() {
  const seq = ++state.seq.requests;
  const list = await api("requests", requestParams());
  if (seq === state.seq.requests) renderRequests(list.data || []);
}

async function refresh(parts = ["summary", "requests"]) {
  if (state.needAuth) return;
  state.loading += 1;
  document.body.classList.add("loading");
  try {
    await Promise.all(parts.map((p) => (p === "summary" ? loadSummary() : loadRequests())));
    authed();
    hideBanner();
    $("dashboard").classList.remove("stale");
  } catch (error) {
    failed(error, "the dashboard data");
  } finally {
    state.loading -= 1;
    if (!state.loading) document.body.classList.remove("loading");
  }
}

function tick() {
  if (state.live && !state.needAuth && !state.loading && !document.hidden) refresh();
}

// ---------------------------------------------------------------- summary

function setTile(id, text, raw, tone = "") {
  const el = $(id);
  el.textContent = text;
  el.dataset.value = raw === null || raw === undefined ? "" : String(raw);
  const tile = el.closest(".tile");
  tile.classList.remove("warn", "bad", "good");
  if (tone) tile.classList.add(tone);
}

function renderSummary(sm) {
  state.lastSummary = sm;
  $("window-label").textContent = WINDOWS[state.window] || `Last ${sm.window_s} s`;
  $("updated").textContent = fmtClock(sm.now);
  $("updated").setAttribute("datetime", new Date(sm.now * 1000).toISOString());
  $("config-hash").textContent = sm.config || "—";
  show($("truncated"), Boolean(sm.truncated));

  const lat = sm.latency_ms || {};
  const ttft = sm.ttft_ms || {};
  const cache = sm.cache || {};
  setTile("v-requests", fmtInt(sm.requests), sm.requests);
  $("s-requests").textContent = `${fmtInt(sm.errors)} failed · ${sm.truncated ? "≥ " : ""}` +
    fmtRate(sm.requests, sm.window_s);
  setTile("v-p50", fmtMs(lat.p50), lat.p50);
  setTile("v-p95", fmtMs(lat.p95), lat.p95);
  setTile("v-p99", fmtMs(lat.p99), lat.p99);
  setTile("v-ttft", fmtMs(ttft.p95), ttft.p95);
  $("s-ttft").textContent = isNum(ttft.p50) ? `p50 ${fmtMs(ttft.p50)}` : "no streams";
  const er = sm.error_rate;
  setTile("v-error-rate", sm.requests ? fmtPct(er) : "—", er,
    !sm.requests ? "" : er >= 0.05 ? "bad" : er > 0.01 ? "warn" : "good");
  $("s-error-rate").textContent = `${fmtInt(sm.errors)} of ${fmtInt(sm.requests)} requests`;
  const fr = sm.fallback_rate;
  setTile("v-fallback-rate", sm.requests ? fmtPct(fr) : "—", fr, fr > 0.1 ? "warn" : "");
  $("s-fallback-rate").textContent = `${fmtInt(fr * sm.requests)} of ${fmtInt(sm.requests)} requests`;
  setTile("v-cache", fmtPct(cache.hit_rate), cache.hit_rate);
  $("s-cache").textContent = cache.lookups
    ? `${fmtInt(cache.hits)} of ${fmtInt(cache.lookups)} lookups` : "no lookups";
  setTile("v-cost", fmtUsd(sm.cost_usd), sm.cost_usd);
  const tenants = (sm.cost_by_tenant || []).length;
  $("s-cost").textContent = `${tenants} tenant${tenants === 1 ? "" : "s"}`;

  renderErrors(sm);
  renderTenants(sm);
  renderBreakers(sm.breakers || {});
  renderChart(sm);

  const outcomes = $("outcomes");
  outcomes.replaceChildren(...["ok", ...Object.keys(sm.errors_by_class || {})]
    .map((o) => h("option", { value: o })));
}

function emptyRow(cols, text) {
  return h("tr", { class: "empty-row" }, h("td", { colspan: cols, text }));
}

function renderErrors(sm) {
  const rows = Object.entries(sm.errors_by_class || {}).sort((a, b) => b[1] - a[1]);
  $("errors-count").textContent = rows.length ? `${fmtInt(sm.errors)} total` : "";
  $("errors-body").replaceChildren(...(rows.length ? rows.map(([cls, n]) =>
    h("tr", { dataset: { errorClass: cls } },
      h("td", {}, h("button", { type: "button", class: "link mono", title: "Show these requests",
        text: cls, dataset: { outcome: cls } })),
      h("td", { class: "num", text: fmtInt(n) }),
      h("td", { class: "num", text: fmtPct(sm.requests ? n / sm.requests : null) })))
    : [emptyRow(3, sm.requests ? "No errors in this window." : "No requests in this window.")]));
}

function renderTenants(sm) {
  const rows = sm.cost_by_tenant || [];
  $("tenants-count").textContent = rows.length ? fmtUsd(sm.cost_usd) : "";
  $("tenants-body").replaceChildren(...(rows.length ? rows.map((t) =>
    h("tr", { dataset: { tenant: t.tenant } },
      h("td", { class: "mono", text: t.tenant }),
      h("td", { class: "num", text: fmtInt(t.requests) }),
      h("td", { class: "num", text: fmtUsd(t.cost_usd) })))
    : [emptyRow(3, "No requests in this window.")]));
}

const BREAKER_ORDER = { open: 0, half_open: 1, closed: 2 };

function renderBreakers(breakers) {
  const entries = Object.entries(breakers).sort((a, b) =>
    (BREAKER_ORDER[a[1]] ?? 3) - (BREAKER_ORDER[b[1]] ?? 3) || a[0].localeCompare(b[0]));
  const open = entries.filter(([, st]) => st !== "closed").length;
  const count = $("breaker-count");
  count.textContent = entries.length ? (open ? `${open} not closed` : "all closed") : "";
  count.classList.toggle("alert", open > 0);
  $("breakers").replaceChildren(...(entries.length ? entries.map(([target, st]) =>
    h("div", { class: `breaker ${String(st).replace(/[^a-z_]/g, "")}`, "data-testid": "breaker",
      dataset: { target, state: st }, title: `${target}: ${st}` },
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("span", { class: "target mono", text: target }),
      h("span", { class: "state", text: String(st).replace("_", "-") })))
    : [h("p", { class: "muted", text: "No targets configured." })]));
}

// ---------------------------------------------------------------- the chart

function renderChart(sm) {
  const box = $("chart");
  const W = Math.max(320, box.clientWidth || 720);
  const H = 200;
  const pad = { l: 40, r: 52, t: 12, b: 24 };
  const bucket = sm.window_s <= 3600 ? 60 : 900;
  const end = Math.floor(sm.now / bucket) * bucket;
  const start = Math.floor((sm.now - sm.window_s) / bucket) * bucket;
  const slots = [];
  for (let t = start; t <= end; t += bucket) slots.push({ t, req: 0, err: 0, p95: null });
  for (const p of sm.series || []) {
    const i = Math.floor((Math.floor(p.minute / bucket) * bucket - start) / bucket);
    if (i < 0 || i >= slots.length) continue;
    slots[i].req += p.requests;
    slots[i].err += p.errors;
    if (isNum(p.p95_ms)) slots[i].p95 = Math.max(slots[i].p95 ?? 0, p.p95_ms);
  }
  const yMax = niceMax(Math.max(...slots.map((x) => x.req)), 2);
  const pMax = niceMax(Math.max(...slots.map((x) => x.p95 ?? 0)), 0.1);
  const plotW = W - pad.l - pad.r;
  const plotH = H - pad.t - pad.b;
  const bw = plotW / slots.length;
  const y = (v) => pad.t + plotH - (v / yMax) * plotH;
  const yp = (v) => pad.t + plotH - (v / pMax) * plotH;

  const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `Requests, errors and p95 latency per ${bucket / 60} min` });
  for (const f of [0, 0.5, 1]) {
    const gy = pad.t + plotH - f * plotH;
    svg.append(
      s("line", { x1: pad.l, x2: W - pad.r, y1: gy, y2: gy, class: f ? "gridline" : "axis" }),
      s("text", { x: pad.l - 6, y: gy + 3, class: "tick", "text-anchor": "end",
        text: fmtInt(f * yMax) }),
      s("text", { x: W - pad.r + 6, y: gy + 3, class: "tick p95", "text-anchor": "start",
        text: f ? fmtMs(f * pMax) : "" }));
  }
  const gap = Math.min(3, bw * 0.2);
  slots.forEach((slot, i) => {
    const x = pad.l + i * bw;
    const g = s("g", { class: "slot" });
    g.append(s("title", {
      text: `${fmtClock(slot.t, false)}${bucket > 60 ? ` (+${bucket / 60} min)` : ""} · ` +
        `${slot.req} request${slot.req === 1 ? "" : "s"} · ${slot.err} error` +
        `${slot.err === 1 ? "" : "s"}${isNum(slot.p95) ? ` · ${bucket > 60 ? "worst-minute " : ""}` +
        `p95 ${fmtMs(slot.p95)}` : ""}` }));
    g.append(s("rect", { x, y: pad.t, width: bw, height: plotH, class: "hover" }));
    if (slot.req) {
      g.append(s("rect", { x: x + gap / 2, y: y(slot.req), width: Math.max(1, bw - gap),
        height: Math.max(1, plotH - (y(slot.req) - pad.t)), class: "bar req", rx: 1.5 }));
    }
    if (slot.err) {
      g.append(s("rect", { x: x + gap / 2, y: y(slot.err), width: Math.max(1, bw - gap),
        height: Math.max(1, plotH - (y(slot.err) - pad.t)), class: "bar err", rx: 1.5 }));
    }
    svg.append(g);
  });
  const points = slots.map((slot, i) => (isNum(slot.p95)
    ? [pad.l + i * bw + bw / 2, yp(slot.p95)] : null)).filter(Boolean);
  if (points.length > 1) {
    svg.append(s("polyline", { class: "line p95",
      points: points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ") }));
  }
  for (const [px, py] of points) svg.append(s("circle", { cx: px, cy: py, r: 2.5, class: "pt" }));
  const labels = slots.length > 2 ? [0, Math.floor((slots.length - 1) / 2), slots.length - 1]
    : slots.map((_, i) => i);
  for (const i of labels) {
    svg.append(s("text", { x: pad.l + i * bw + bw / 2, y: H - 6, class: "tick",
      "text-anchor": "middle", text: fmtClock(slots[i].t, false) }));
  }
  if (!sm.requests) {
    svg.append(s("text", { x: pad.l + plotW / 2, y: pad.t + plotH / 2, class: "nodata",
      "text-anchor": "middle", text: "No requests in this window" }));
  }
  box.replaceChildren(svg);
}

// ---------------------------------------------------------------- recent requests

function filtersActive() {
  const p = requestParams();
  return Boolean(p.tenant || p.outcome || p.errors);
}

function renderRequests(rows) {
  state.lastRows = rows;
  const body = $("requests-body");
  body.replaceChildren(...rows.map((ev) => {
    const tr = h("tr", {
      class: `row ${outcomeClass(ev.outcome)}${ev.request_id === state.open ? " selected" : ""}`,
      tabindex: 0, dataset: { requestId: ev.request_id, outcome: ev.outcome },
      "data-testid": "request-row", title: "Open this request" },
    h("td", { class: "time", text: fmtTime(ev.ts), title: fmtFull(ev.ts) }),
    h("td", { class: "mono id", text: ev.request_id }),
    h("td", { class: "mono", text: ev.tenant ?? "—" }),
    h("td", { text: ev.route ?? "—" }),
    h("td", {}, statusBadge(ev.status, ev.outcome)),
    h("td", { class: "mono target", text: ev.target ?? "—" }),
    h("td", { class: "num", text: fmtMs(ev.latency_ms) }),
    h("td", {}, ev.cache ? h("span", { class: `pill cache-${ev.cache}`, text: ev.cache }) : "—"),
    h("td", {}, ev.fallback ? h("span", { class: "pill fallback", text: "fallback" }) : ""));
    return tr;
  }));
  const empty = $("requests-empty");
  empty.textContent = filtersActive() ? "No requests match these filters."
    : "No requests recorded yet. Requests to /v1 appear here as soon as they finish.";
  show(empty, rows.length === 0);
}

// ---------------------------------------------------------------- drill-down

function stageOf(st) {
  if (Array.isArray(st)) return { name: st[0], start: st[1], ms: st[2], outcome: st[3] };
  return { name: st.name, start: st.start_ms, ms: st.ms ?? st.duration_ms, outcome: st.outcome };
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v, cls]) => [
    h("dt", { text: k }),
    h("dd", { class: cls || "" }, v instanceof Node ? v : String(v ?? "—")),
  ]));
}

function section(title, testid, ...content) {
  return h("section", { class: "dd-section", "data-testid": testid },
    h("h3", { text: title }), ...content);
}

function waterfall(ev) {
  const stages = (ev.stages || []).map(stageOf);
  const attempts = ev.attempts || [];
  const steps = ev.contract_steps || [];
  const rows = [
    ...stages.map((st) => ({ kind: "stage", label: st.name, start: st.start, ms: st.ms,
      outcome: st.outcome, called: true })),
    ...attempts.map((a) => ({ kind: "attempt", label: `${a.target} #${a.n}`, start: a.start_ms,
      ms: a.ms, outcome: a.outcome, called: a.called !== false })),
    ...steps.map((c) => ({ kind: "contract", label: `${c.phase} · ${c.target}`,
      start: c.start_ms, ms: c.ms, outcome: c.valid ? "valid" : "invalid", called: true })),
  ];
  const total = Math.max(isNum(ev.latency_ms) ? ev.latency_ms : 0,
    ...rows.map((r) => (isNum(r.start) ? r.start : 0) + (isNum(r.ms) ? r.ms : 0)), 0.001);
  const wf = h("div", { class: "waterfall", "data-testid": "waterfall" });
  const axis = h("div", { class: "wf-row wf-axis" }, h("span", { class: "wf-label" }),
    h("span", { class: "wf-track" },
      h("span", { class: "wf-tick start", text: "0" }),
      h("span", { class: "wf-tick mid", text: fmtMs(total / 2) }),
      h("span", { class: "wf-tick end", text: fmtMs(total) })),
    h("span", { class: "wf-ms" }));
  wf.append(axis);
  let kind = null;
  for (const r of rows) {
    if (r.kind !== kind) {
      kind = r.kind;
      wf.append(h("div", { class: "wf-group", text: { stage: "Stages", attempt: "Upstream attempts",
        contract: "Output contract" }[kind] }));
    }
    const bar = h("span", { class: `wf-bar ${r.kind} ${r.outcome === "ok" || r.outcome === "valid"
      ? "ok" : "bad"}${r.called ? "" : " skipped"}`, title: `${r.label}: ${r.outcome}` +
      `${r.called ? "" : " (skipped, not called)"} · start ${fmtMs(r.start)} · ${fmtMs(r.ms)}` });
    const left = isNum(r.start) ? Math.min(100, (r.start / total) * 100) : 0;
    bar.style.left = `${left}%`;
    bar.style.width = `${Math.max(0.6, Math.min(100 - left, ((r.ms || 0) / total) * 100))}%`;
    wf.append(h("div", { class: `wf-row ${r.kind}`, dataset: { kind: r.kind, outcome: r.outcome ?? "" },
      "data-testid": `wf-${r.kind}` },
      h("span", { class: "wf-label mono", text: r.label, title: r.label }),
      h("span", { class: "wf-track" }, bar),
      h("span", { class: "wf-ms", text: fmtMs(r.ms) })));
  }
  if (!rows.length) wf.append(h("p", { class: "muted", text: "No timings were recorded." }));
  return wf;
}

function attemptsTable(ev) {
  const attempts = ev.attempts || [];
  if (!attempts.length) {
    return h("p", { class: "muted", "data-testid": "no-attempts",
      text: "No upstream attempt: the request ended before routing to a target." });
  }
  return h("table", { class: "compact", "data-testid": "attempts" },
    h("thead", {}, h("tr", {}, ["Target", "Try", "Outcome", "Start", "Duration", "Call"]
      .map((c, i) => h("th", { class: i >= 3 && i <= 4 ? "num" : "", text: c })))),
    h("tbody", {}, attempts.map((a) => h("tr", {
      "data-testid": "attempt", dataset: { target: a.target, outcome: a.outcome,
        called: String(a.called !== false) } },
    h("td", { class: "mono", text: a.target }),
    h("td", { class: "num", text: a.n }),
    h("td", {}, h("span", { class: `pill ${outcomeClass(a.outcome)}`, text: a.outcome })),
    h("td", { class: "num", text: fmtMs(a.start_ms) }),
    h("td", { class: "num", text: fmtMs(a.ms) }),
    h("td", { text: a.called === false ? "skipped" : "called" })))));
}

function violationsText(v) {
  if (Array.isArray(v)) return v.length ? v.map((x) => (typeof x === "string" ? x
    : JSON.stringify(x))).join("; ") : "—";
  if (v === null || v === undefined || v === 0) return "—";
  if (isNum(v)) return `${v} violation${v === 1 ? "" : "s"}`; // a count: texts may quote output
  return typeof v === "string" ? v : JSON.stringify(v);
}

function contractTable(steps) {
  return h("table", { class: "compact", "data-testid": "contract-steps" },
    h("thead", {}, h("tr", {}, ["Target", "Phase", "Result", "Violations", "Duration"]
      .map((c, i) => h("th", { class: i === 4 ? "num" : "", text: c })))),
    h("tbody", {}, steps.map((c) => h("tr", {},
      h("td", { class: "mono", text: c.target ?? "—" }),
      h("td", { text: c.phase ?? "—" }),
      h("td", {}, h("span", { class: `pill ${c.valid ? "ok" : "bad"}`,
        text: c.valid ? "valid" : "invalid" })),
      h("td", { class: "wrap", text: violationsText(c.violations) }),
      h("td", { class: "num", text: fmtMs(c.ms) })))));
}

function retrievedTable(chunks) {
  return h("table", { class: "compact", "data-testid": "retrieved" },
    h("thead", {}, h("tr", {}, h("th", { text: "Chunk id" }), h("th", { class: "num",
      text: "Score" }))),
    h("tbody", {}, chunks.map((c) => {
      const [id, score] = Array.isArray(c) ? c : [c.chunk_id ?? c.id, c.score];
      return h("tr", {}, h("td", { class: "mono", text: id }),
        h("td", { class: "num", text: isNum(score) ? score.toFixed(4) : "—" }));
    })));
}

function renderDetail(ev) {
  const tokens = isNum(ev.prompt_tokens) || isNum(ev.completion_tokens)
    ? `${fmtInt(ev.prompt_tokens ?? 0)} in · ${fmtInt(ev.completion_tokens ?? 0)} out` : "—";
  const overhead = isNum(ev.latency_ms) && isNum(ev.upstream_ms)
    ? fmtMs(Math.max(0, ev.latency_ms - ev.upstream_ms)) : "—";
  const head = h("div", { class: "dd-head" },
    statusBadge(ev.status, ev.outcome),
    ev.fallback ? h("span", { class: "pill fallback", text: "fallback" }) : null,
    h("span", { class: "mono muted", text: `${ev.method ?? ""} ${ev.path ?? ""}` }));
  const body = $("dd-body");
  body.replaceChildren();
  append(body, [
    head,
    h("div", { class: "dd-stats" },
      stat("Latency", fmtMs(ev.latency_ms), "dd-latency"),
      stat("Upstream", fmtMs(ev.upstream_ms)),
      stat("Outside upstream", overhead),
      isNum(ev.ttft_ms) ? stat("TTFT", fmtMs(ev.ttft_ms)) : null,
      stat("Tokens", tokens, "dd-tokens"),
      stat("Cost", fmtUsd(ev.cost_usd), "dd-cost")),
    section("Overview", "dd-overview", kv([
      ["Time", fmtFull(ev.ts)],
      ["Tenant", ev.tenant, "mono"],
      ["Key id", ev.key_id, "mono"],
      ["Route", ev.route],
      ["Priority", ev.priority],
      ["Target", ev.target, "mono"],
      ["Calls", ev.calls],
      ["Cache", ev.cache],
      ["Prompt", ev.prompt, "mono"],
      ["Contract", ev.contract],
      ev.trace_id ? ["Trace id", ev.trace_id, "mono"] : null,
    ])),
    section("Timeline", "dd-timeline", waterfall(ev)),
    section("Attempts", "dd-attempts", attemptsTable(ev)),
    (ev.contract_steps || []).length
      ? section("Contract checks", "dd-contract", contractTable(ev.contract_steps)) : null,
    (ev.retrieved || []).length
      ? section("Retrieved chunks", "dd-retrieved", retrievedTable(ev.retrieved)) : null,
    h("details", { class: "dd-section raw" }, h("summary", { text: "Raw event (metadata only)" }),
      h("pre", { class: "mono", text: JSON.stringify(ev, null, 2) }))]);
}

function stat(label, value, testid) {
  return h("div", { class: "stat", "data-testid": testid || null },
    h("div", { class: "label", text: label }), h("div", { class: "value", text: value }));
}

async function openRequest(id) {
  id = (id || "").trim();
  if (!id) return;
  state.open = id;
  if (location.hash !== `#${id}`) history.replaceState(null, "", `#${encodeURIComponent(id)}`);
  document.querySelectorAll("#requests-body tr.selected").forEach((tr) =>
    tr.classList.remove("selected"));
  document.querySelectorAll("#requests-body tr").forEach((tr) => {
    if (tr.dataset.requestId === id) tr.classList.add("selected");
  });
  $("dd-title").textContent = id;
  $("dd-body").replaceChildren(h("p", { class: "muted", text: "Loading…" }));
  show($("drilldown"), true);
  const drawer = $("drilldown");
  drawer.dataset.requestId = id;
  drawer.dataset.state = "loading";
  if (!REQUEST_ID.test(id)) {
    $("dd-body").replaceChildren(h("p", { class: "notice", "data-testid": "dd-not-found",
      text: "That does not look like a request id." }));
    drawer.dataset.state = "error";
    return;
  }
  const seq = ++state.seq.detail;
  try {
    const ev = await api(`requests/${encodeURIComponent(id)}`);
    if (seq !== state.seq.detail) return;
    authed();
    renderDetail(ev);
    drawer.dataset.state = "loaded";
  } catch (error) {
    if (seq !== state.seq.detail) return;
    drawer.dataset.state = "error";
    if (error.status === 401 || error.status === 403) {
      state.pending = id;
      requireAuth(error);
      return;
    }
    $("dd-body").replaceChildren(h("p", { class: "notice",
      "data-testid": error.status === 404 ? "dd-not-found" : "dd-error",
      text: error.status === 404 ? `Not found: ${error.message}`
        : `Could not load this request: ${error.message}` }));
  }
}

function closeDrawer(clearHash = true) {
  state.open = null;
  state.seq.detail += 1;
  show($("drilldown"), false);
  document.querySelectorAll("#requests-body tr.selected").forEach((tr) =>
    tr.classList.remove("selected"));
  if (clearHash && location.hash) history.replaceState(null, "", location.pathname + location.search);
}

function hashId() {
  try {
    return decodeURIComponent(location.hash.slice(1));
  } catch {
    return location.hash.slice(1);
  }
}

// ---------------------------------------------------------------- wiring

function setWindow(seconds) {
  state.window = seconds;
  sessionStorage.setItem(WINDOW_STORE, String(seconds));
  document.querySelectorAll("#window-select button").forEach((b) =>
    b.setAttribute("aria-pressed", String(Number(b.dataset.window) === seconds)));
  $("window-label").textContent = WINDOWS[seconds];
}

function setLive(live) {
  state.live = live;
  const btn = $("live-toggle");
  btn.setAttribute("aria-pressed", String(live));
  btn.querySelector(".label").textContent = live ? "Live" : "Paused";
  btn.title = live ? "Auto-refresh every 5 seconds: click to pause" : "Paused: click to resume";
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function wire() {
  $("window-select").addEventListener("click", (e) => {
    const btn = e.target.closest("button[data-window]");
    if (!btn) return;
    setWindow(Number(btn.dataset.window));
    refresh(["summary"]);
  });
  $("live-toggle").addEventListener("click", () => {
    setLive(!state.live);
    if (state.live) refresh();
  });
  $("refresh-now").addEventListener("click", () => refresh());
  $("lookup-form").addEventListener("submit", (e) => {
    e.preventDefault();
    openRequest($("lookup-id").value);
  });
  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("admin-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    $("admin-key").value = "";
    state.needAuth = false;
    show($("auth-panel"), false);
    show($("dashboard"), true);
    refresh();
    const pending = state.pending || (location.hash ? hashId() : null);
    state.pending = null;
    if (pending) openRequest(pending);
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    show($("sign-out"), false);
    refresh();
  });
  const reload = debounce(() => refresh(["requests"]), 250);
  $("filters").addEventListener("input", reload);
  $("filters").addEventListener("change", reload);
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("errors-body").addEventListener("click", (e) => {
    const btn = e.target.closest("button[data-outcome]");
    if (!btn) return;
    $("filter-outcome").value = btn.dataset.outcome;
    refresh(["requests"]);
  });
  const body = $("requests-body");
  body.addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-request-id]");
    if (tr) openRequest(tr.dataset.requestId);
  });
  body.addEventListener("keydown", (e) => {
    const tr = e.target.closest("tr[data-request-id]");
    if (tr && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();
      openRequest(tr.dataset.requestId);
    }
  });
  $("dd-close").addEventListener("click", () => closeDrawer());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.open) closeDrawer();
  });
  window.addEventListener("hashchange", () => {
    const id = hashId();
    if (id && id !== state.open) openRequest(id);
    else if (!id && state.open) closeDrawer(false);
  });
  window.addEventListener("resize", debounce(() => {
    fitDrawer();
    if (state.lastSummary) renderChart(state.lastSummary);
  }, 150));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) tick();
  });
}

/** The drawer opens below the top bar, whose controls stay usable (its height varies when
 * the controls wrap). */
function fitDrawer() {
  const bar = document.querySelector(".topbar");
  document.documentElement.style.setProperty("--topbar-h", `${bar.offsetHeight}px`);
}

function start() {
  fitDrawer();
  wire();
  setWindow(state.window);
  setLive(true);
  refresh();
  if (location.hash.length > 1) openRequest(hashId());
  setInterval(tick, REFRESH_MS);
}

start();
