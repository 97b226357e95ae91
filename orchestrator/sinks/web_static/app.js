// ecapture live view: reads records from the apply's websocket, pairs requests with their
// answers, filters, and shows one entry in detail. Captured text only ever reaches the page as
// textContent / attribute values (never as HTML), and the server's CSP allows no inline script.
"use strict";

const MAX_ROWS = 5000;
const BACKOFF_MS = [250, 500, 1000, 2000, 3000];
const TOKEN = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);

const state = {
  entries: [],            // oldest first; each has a <tr> in #rows (newest on top)
  byId: new Map(),
  nextId: 1,
  pendingHttp: new Map(),  // connection key → [entries waiting for a response] (HTTP/1.1, in order)
  pendingH2: new Map(),    // connection key + stream id → entry
  pendingSql: new Map(),   // connection key → [entries waiting for a result]
  records: 0,
  run: null, upto: 0,      // where this page is in the server's stream, to resume after a reconnect
  missedBefore: 0,         // records missed on earlier connections
  missedNow: 0,            // ... and on this one
  filter: () => true,
  selected: null,
  paused: false,
  held: [],                // records that arrived while paused
  attempt: 0,
  ws: null,
};

// ------------------------------------------------------------------ DOM helpers (text only)
function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined && text !== null) n.textContent = String(text);
  return n;
}

function fmtTime(ns) {
  if (!ns) return "";
  const d = new Date(Number(ns) / 1e6);
  const p = (v, w = 2) => String(v).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function fmtSize(n) {
  if (n === undefined || n === null || n === "") return "";
  n = Number(n);
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} k`;
  return `${(n / 1048576).toFixed(1)} M`;
}

function fmtMs(ms) {
  if (ms === undefined || ms === null) return "";
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2);
}

function headerValue(headers, name) {
  if (!headers) return undefined;
  const want = name.toLowerCase();
  for (const k of Object.keys(headers)) if (k.toLowerCase() === want) return headers[k];
  return undefined;
}

function oneLine(s, max = 400) {
  s = String(s ?? "").replace(/\s+/g, " ").trim();
  return s.length > max ? s.slice(0, max) + "…" : s;
}

// ------------------------------------------------------------------ records → entries
function connKey(r) {
  const c = r.conn ? `${r.conn.local}|${r.conn.remote}` : `fd${r.fd ?? "?"}`;
  return `${r.profile}|${r.target}|${r.pid}|${c}`;
}

function newEntry(r, kind) {
  const e = {
    id: state.nextId++, kind, type: r.type, ts: r.ts, pid: r.pid, comm: r.comm ?? "", profile: r.profile ?? "",
    target: r.target ?? "", host: r.conn ? r.conn.remote : "", method: "", what: "", status: null, ms: null,
    size: null, req: null, resp: null, records: [r], tr: null, hay: null,
  };
  state.entries.push(e);
  state.byId.set(e.id, e);
  return e;
}

function httpRequest(r) {
  const e = newEntry(r, "http");
  e.req = r;
  e.method = r.method ?? "";
  e.what = r.path ?? "";
  e.host = r.authority || headerValue(r.headers, "host") || e.host;
  e.size = r.body_len ?? null;
  const key = connKey(r);
  if (r.stream_id !== undefined) state.pendingH2.set(`${key}#${r.stream_id}`, e);
  else {
    const q = state.pendingHttp.get(key) || [];
    q.push(e);
    state.pendingHttp.set(key, q);
  }
  return e;
}

function httpResponse(r) {
  const key = connKey(r);
  let e = null;
  if (r.stream_id !== undefined) {
    e = state.pendingH2.get(`${key}#${r.stream_id}`) || null;
    state.pendingH2.delete(`${key}#${r.stream_id}`);
  } else if (r.status === null || r.status >= 200) {
    const q = state.pendingHttp.get(key);
    if (q && q.length) e = q.shift();
    if (q && !q.length) state.pendingHttp.delete(key);
  }
  if (e === null || !state.byId.has(e.id)) {     // its request came before this page (or was cleared)
    e = newEntry(r, "http");
    e.method = r.request?.method ?? "";
    e.what = r.request?.path ?? "";
  } else {
    e.records.push(r);
  }
  e.resp = r;
  e.status = r.status;
  e.ms = r.latency_ms ?? null;
  e.size = r.body_len ?? e.size;
  return e;
}

function sqlVerb(r) {
  if (r.command) return String(r.command).replace(/^COM_(STMT_)?/, "").toLowerCase();
  return r.statement ? "execute" : "query";
}

function sqlQuery(r) {
  const e = newEntry(r, "sql");
  e.req = r;
  e.method = sqlVerb(r);
  e.what = r.sql ?? r.statement ?? "";
  const key = connKey(r);
  const q = state.pendingSql.get(key) || [];
  q.push(e);
  state.pendingSql.set(key, q);
  return e;
}

function sqlResult(r) {
  const key = connKey(r);
  const q = state.pendingSql.get(key);
  let e = q && q.length ? q.shift() : null;
  if (q && !q.length) state.pendingSql.delete(key);
  if (e === null || !state.byId.has(e.id)) {
    e = newEntry(r, "sql");
    e.method = sqlVerb(r);
    e.what = r.sql ?? r.statement ?? (r.auth ? `login ${r.user ?? ""}@${r.database ?? ""}` : "");
  } else {
    e.records.push(r);
    if (!e.what && r.sql) e.what = r.sql;
  }
  e.resp = r;
  e.status = r.status ?? null;
  e.ms = r.latency_ms ?? null;
  e.size = r.row_count ?? r.affected_rows ?? null;
  return e;
}

function other(r) {
  const t = r.type;
  if (t.endsWith(".command")) {
    const e = newEntry(r, "cmd");
    e.method = t.split(".")[0];
    e.what = r.command ?? "";
    e.req = r;
    return e;
  }
  if (t === "loss") {
    const e = newEntry(r, "loss");
    e.what = `lost ${r.count} at ${r.stage}${r.sink ? ` (${r.sink})` : ""}`;
    e.method = "loss";
    return e;
  }
  if (t === "data") {
    const e = newEntry(r, "data");
    e.method = r.direction ?? "";
    e.size = r.len ?? null;
    e.what = r.encoding ? `<${r.len} bytes, binary>` : oneLine(r.data, 200);
    e.req = r;
    return e;
  }
  if (t === "parse_error") {
    const e = newEntry(r, "error");
    e.what = oneLine(r.error ?? r.message ?? JSON.stringify(r), 300);
    return e;
  }
  const e = newEntry(r, "other");
  e.method = t;
  if (t === "uprobe.call") e.what = `${r.symbol ?? ""}(${oneLine(JSON.stringify(r.args ?? {}), 300)})`;
  else e.what = oneLine(JSON.stringify(r), 300);
  return e;
}

function take(r) {
  state.records++;
  switch (r.type) {
    case "http.request": return httpRequest(r);
    case "http.response": return httpResponse(r);
    case "mysql.query": case "pg.query": return sqlQuery(r);
    case "mysql.result": case "pg.result": return sqlResult(r);
    default: return other(r);
  }
}

// ------------------------------------------------------------------ rows
function statusCell(e, td) {
  td.className = "c-status st";
  if (e.kind === "http") {
    if (e.status === null || e.status === undefined) {
      td.textContent = e.resp ? "?" : "…";
      td.classList.add("spend");
    } else {
      td.textContent = String(e.status);
      td.classList.add(`s${String(e.status)[0]}`);
    }
  } else if (e.kind === "sql") {
    td.textContent = e.resp ? String(e.status ?? "") : "…";
    td.classList.add(!e.resp ? "spend" : e.status === "error" ? "serr" : "s2");
  } else {
    td.textContent = "";
  }
}

function fillRow(e) {
  const tr = e.tr;
  const c = tr.children;
  c[0].textContent = fmtTime(e.ts);
  c[1].replaceChildren(el("span", `kind k-${e.kind}`, e.kind));
  c[2].textContent = e.pid ?? "";
  c[3].textContent = e.comm;
  c[3].title = e.comm;
  c[4].textContent = e.host;
  c[4].title = e.host;
  c[5].textContent = e.method;
  c[6].textContent = oneLine(e.what, 400);
  c[6].title = oneLine(e.what, 2000);
  statusCell(e, c[7]);
  c[8].textContent = fmtMs(e.ms);
  c[8].className = "c-ms" + (e.ms >= 1000 ? " very-slow" : e.ms >= 200 ? " slow" : "");
  c[9].textContent = e.kind === "sql" ? (e.size === null ? "" : `${e.size} rows`) : fmtSize(e.size);
  tr.className = `r-${e.kind}` + (state.selected === e ? " sel" : "");
  e.hay = null;
  tr.hidden = !state.filter(e);
}

function addRow(e) {
  const tr = document.createElement("tr");
  for (const cls of ["c-time", "c-kind", "c-pid", "c-comm", "c-host", "c-method", "c-what", "c-status", "c-ms", "c-size"]) {
    tr.appendChild(el("td", cls));
  }
  tr.dataset.id = String(e.id);
  e.tr = tr;
  fillRow(e);
  $("rows").prepend(tr);
}

function trim() {
  while (state.entries.length > MAX_ROWS) {
    const e = state.entries.shift();
    state.byId.delete(e.id);
    if (e.tr) e.tr.remove();
    if (state.selected === e) select(null);
  }
}

function ingest(records) {
  const touched = new Set();
  for (const r of records) touched.add(take(r));
  for (const e of touched) {
    if (!state.byId.has(e.id)) continue;
    if (e.tr) fillRow(e); else addRow(e);
    if (state.selected === e) showDetail(e);
  }
  trim();
  updateCounts();
}

function onRecords(records) {
  if (state.paused) {
    state.held.push(...records);
    if (state.held.length > MAX_ROWS * 4) state.held.splice(0, state.held.length - MAX_ROWS * 4);
    updateCounts();
    return;
  }
  ingest(records);
}

function updateCounts() {
  const shown = state.entries.reduce((n, e) => n + (e.tr && !e.tr.hidden ? 1 : 0), 0);
  const held = state.paused && state.held.length ? ` · ${state.held.length} held` : "";
  $("counts").textContent = `${state.records} records · ${shown}/${state.entries.length} rows${held}`;
  $("empty").hidden = state.entries.length > 0;
  const missed = state.missedBefore + state.missedNow;
  $("missed").hidden = missed === 0;
  $("missed").textContent = `missed ${missed}`;
}

// ------------------------------------------------------------------ filter
// Terms, all of which must match: key:value (pid comm host path status method type profile target),
// free text, "quoted values", and -term to exclude.
const KEYS = new Set(["pid", "comm", "host", "path", "status", "method", "type", "profile", "target", "text"]);

function tokenize(q) {
  const out = [];
  const re = /(-?)(?:([a-z]+):)?(?:"([^"]*)"?|(\S+))/gi;
  let m;
  while ((m = re.exec(q)) !== null) {
    if (m[0] === "") { re.lastIndex++; continue; }
    let key = m[2] ? m[2].toLowerCase() : null;
    let value = m[3] !== undefined ? m[3] : m[4] ?? "";
    if (key && !KEYS.has(key)) { value = `${m[2]}:${value}`; key = null; }   // e.g. a URL: free text
    out.push({ neg: m[1] === "-", key: key === "text" ? null : key, value: value.toLowerCase() });
  }
  return out.filter((t) => t.value !== "" || t.key);
}

function statusTest(v) {
  if (v === "pending") return (e) => (e.kind === "http" || e.kind === "sql") && !e.resp;
  const cls = /^([1-5])xx$/.exec(v);
  if (cls) return (e) => typeof e.status === "number" && Math.floor(e.status / 100) === Number(cls[1]);
  const cmp = /^(>=|<=|>|<|=)?(\d{3})$/.exec(v);
  if (cmp) {
    const n = Number(cmp[2]);
    const op = cmp[1] || "=";
    return (e) => typeof e.status === "number" && (op === "=" ? e.status === n : op === ">=" ? e.status >= n
      : op === "<=" ? e.status <= n : op === ">" ? e.status > n : e.status < n);
  }
  return (e) => typeof e.status === "string" && e.status.toLowerCase() === v;
}

function haystack(e) {
  if (e.hay === null) {
    const parts = [e.kind, e.type, e.pid, e.comm, e.host, e.method, e.what, e.status, e.profile, e.target];
    for (const r of e.records) {
      if (r.headers) for (const [k, v] of Object.entries(r.headers)) parts.push(k, Array.isArray(v) ? v.join(" ") : v);
      if (r.body && !r.body_encoding) parts.push(String(r.body).slice(0, 20000));
      if (r.conn) parts.push(r.conn.local, r.conn.remote);
      if (r.error) parts.push(typeof r.error === "string" ? r.error : JSON.stringify(r.error));
      if (r.error_message) parts.push(r.error_message);
    }
    e.hay = parts.filter((p) => p !== null && p !== undefined).join("\n").toLowerCase();
  }
  return e.hay;
}

function termTest(t) {
  const v = t.value;
  const has = (s) => String(s ?? "").toLowerCase().includes(v);
  switch (t.key) {
    case "pid": return (e) => String(e.pid) === v;
    case "comm": return (e) => has(e.comm);
    case "host": return (e) => has(e.host) || e.records.some((r) => r.conn && has(r.conn.remote));
    case "path": return (e) => has(e.what);
    case "method": return (e) => has(e.method);
    case "type": return (e) => e.kind === v || e.records.some((r) => r.type.toLowerCase() === v);
    case "profile": return (e) => has(e.profile);
    case "target": return (e) => has(e.target);
    case "status": return statusTest(v);
    default: return (e) => haystack(e).includes(v);
  }
}

function compileFilter(q) {
  const tests = tokenize(q).map((t) => { const f = termTest(t); return t.neg ? (e) => !f(e) : f; });
  return tests.length ? (e) => tests.every((f) => f(e)) : () => true;
}

function applyFilter() {
  state.filter = compileFilter($("filter").value);
  for (const e of state.entries) if (e.tr) e.tr.hidden = !state.filter(e);
  updateCounts();
}

// ------------------------------------------------------------------ detail pane
function section(parent, title, note) {
  const h = el("div", "d-sec");
  h.appendChild(el("span", null, title));
  if (note) h.appendChild(el("span", "note", note));
  parent.appendChild(h);
}

function headersTable(parent, headers) {
  const names = Object.keys(headers || {});
  if (!names.length) { parent.appendChild(el("div", "muted", "(none)")); return; }
  const t = el("table", "hdrs");
  for (const k of names) {
    for (const v of Array.isArray(headers[k]) ? headers[k] : [headers[k]]) {
      const tr = el("tr");
      tr.appendChild(el("td", "hn", k));
      tr.appendChild(el("td", null, v));
      t.appendChild(tr);
    }
  }
  parent.appendChild(t);
}

function bodyBlock(parent, r) {
  if (!r.body && !r.body_len) { parent.appendChild(el("div", "muted", "(empty)")); return; }
  let text = r.body ?? "";
  let note = "";
  if (r.body_encoding === "base64") {
    note = "binary, shown as base64";
  }
  if (r.truncated) note = (note ? note + "; " : "") + "truncated";
  if (note) parent.appendChild(el("div", "muted", `${fmtSize(r.body_len)} — ${note}`));
  if (!r.body_encoding) {
    const ct = String(headerValue(r.headers, "content-type") ?? "");
    if (ct.includes("json")) { try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* as is */ } }
  }
  parent.appendChild(el("pre", "body", text.length > 200000 ? text.slice(0, 200000) + "\n…" : text));
}

function meta(parent, pairs) {
  const dl = el("dl", "d-meta");
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "") continue;
    dl.appendChild(el("dt", null, k));
    dl.appendChild(el("dd", null, v));
  }
  parent.appendChild(dl);
}

function resultGrid(parent, r) {
  const cols = r.columns || [];
  const rows = r.rows || [];
  if (!cols.length) return;
  const t = el("table", "grid");
  const head = el("tr");
  for (const c of cols) head.appendChild(el("th", null, typeof c === "string" ? c : c.name ?? JSON.stringify(c)));
  t.appendChild(head);
  for (const row of rows.slice(0, 200)) {
    const tr = el("tr");
    for (const v of Array.isArray(row) ? row : Object.values(row)) tr.appendChild(el("td", null, v === null ? "NULL" : v));
    t.appendChild(tr);
  }
  parent.appendChild(t);
  if (rows.length > 200) parent.appendChild(el("div", "muted", `… ${rows.length - 200} more rows`));
}

function showDetail(e) {
  const pane = $("detail");
  pane.replaceChildren();
  if (!e) { pane.appendChild(el("div", "placeholder", "Select a row to see its headers and body.")); return; }
  const first = e.records[0];
  const title = el("div", "d-title");
  title.appendChild(el("span", `kind k-${e.kind}`, e.kind));
  if (e.method) title.appendChild(el("span", null, e.method));
  title.appendChild(el("span", null, oneLine(e.what, 300)));
  if (e.status !== null && e.status !== undefined) {
    const st = el("span", "st", `→ ${e.status}`);
    if (typeof e.status === "number") st.classList.add(`s${String(e.status)[0]}`);
    else if (e.status === "error") st.classList.add("serr");
    title.appendChild(st);
  }
  if (e.ms !== null) title.appendChild(el("span", "muted", `${fmtMs(e.ms)} ms`));
  pane.appendChild(title);
  meta(pane, [
    ["time", fmtTime(e.ts)], ["process", `${e.comm} [${e.pid}]${first.tid && first.tid !== first.pid ? ` tid ${first.tid}` : ""}`],
    ["profile", `${e.profile} / ${e.target}`], ["local", first.conn?.local], ["remote", first.conn?.remote],
    ["tls", first.tls], ["version", e.req?.version ?? e.resp?.version], ["host", e.kind === "http" ? e.host : ""],
    ["stream", first.stream_id],
  ]);
  if (e.kind === "http") {
    if (e.req) {
      section(pane, "Request headers");
      headersTable(pane, e.req.headers);
      section(pane, "Request body", e.req.body_len ? fmtSize(e.req.body_len) : "");
      bodyBlock(pane, e.req);
    } else {
      pane.appendChild(el("div", "muted", "The request came before this page connected."));
    }
    if (e.resp) {
      section(pane, "Response headers");
      headersTable(pane, e.resp.headers);
      section(pane, "Response body", e.resp.body_len ? fmtSize(e.resp.body_len) : "");
      bodyBlock(pane, e.resp);
    } else {
      section(pane, "Response");
      pane.appendChild(el("div", "muted", "no answer yet"));
    }
  } else if (e.kind === "sql") {
    section(pane, "Statement");
    pane.appendChild(el("pre", "body", e.what || "(none)"));
    if (e.resp) {
      const r = e.resp;
      section(pane, "Result", r.status ?? "");
      meta(pane, [["rows", r.row_count], ["affected", r.affected_rows], ["tag", r.tag],
                  ["error", r.error_message ?? (r.error ? (typeof r.error === "string" ? r.error : JSON.stringify(r.error)) : "")],
                  ["user", r.user], ["database", r.database]]);
      resultGrid(pane, r);
    }
  } else if (e.kind === "cmd") {
    section(pane, "Command");
    pane.appendChild(el("pre", "body", e.what));
  } else if (e.kind === "data") {
    section(pane, `Data (${first.direction ?? ""})`, fmtSize(first.len));
    pane.appendChild(el("pre", "body", first.data ?? ""));
  }
  const raw = el("details", "raw");
  raw.appendChild(el("summary", null, `records (JSON, ${e.records.length})`));
  raw.appendChild(el("pre", "body", e.records.map((r) => JSON.stringify(r, null, 2)).join("\n\n")));
  pane.appendChild(raw);
}

function select(e) {
  if (state.selected && state.selected.tr) state.selected.tr.classList.remove("sel");
  state.selected = e;
  if (e && e.tr) e.tr.classList.add("sel");
  showDetail(e);
}

function moveSelection(step) {
  const rows = Array.from($("rows").children).filter((tr) => !tr.hidden);
  if (!rows.length) return;
  let i = state.selected && state.selected.tr ? rows.indexOf(state.selected.tr) : -1;
  i = Math.max(0, Math.min(rows.length - 1, i + step));
  const e = state.byId.get(Number(rows[i].dataset.id));
  select(e);
  rows[i].scrollIntoView({ block: "nearest" });
}

// ------------------------------------------------------------------ the connection
function setConn(cls, text) {
  const c = $("conn");
  c.className = `chip conn ${cls}`;
  c.textContent = text;
}

function socketUrl() {
  const u = new URL("socket", location.href);
  u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  u.search = "";
  u.searchParams.set("token", TOKEN);
  if (state.run) u.searchParams.set("since", `${state.run}:${state.upto}`);
  return u.toString();
}

function connect() {
  let ws;
  try {
    ws = new WebSocket(socketUrl());
  } catch (err) {
    retry();
    return;
  }
  state.ws = ws;
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (_) { return; }
    if (msg.kind === "hello") {
      if (state.run && msg.run !== state.run) state.upto = 0;   // a new apply: its stream starts again
      state.run = msg.run;
      state.missedBefore += state.missedNow + (msg.gap || 0);
      state.missedNow = 0;
      state.attempt = 0;
      setConn("live", `live · ${msg.listen}`);
      updateCounts();
    } else if (msg.kind === "records") {
      state.upto = msg.upto;
      state.missedNow = msg.missed || 0;
      onRecords(msg.records || []);
    }
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    retry();
  };
}

async function retry() {
  const wait = BACKOFF_MS[Math.min(state.attempt, BACKOFF_MS.length - 1)] * (0.8 + Math.random() * 0.4);
  state.attempt++;
  let refused = false;
  try {
    const r = await fetch(`ping?token=${encodeURIComponent(TOKEN)}`, { cache: "no-store" });
    refused = r.status === 401 || r.status === 403;
  } catch (_) { /* the server is away: apply restarting */ }
  if (refused) setConn("refused", TOKEN ? "token refused: open the URL ecapture apply printed" : "no token in the URL");
  else setConn("connecting", `reconnecting (try ${state.attempt})…`);
  setTimeout(connect, wait);
}

// ------------------------------------------------------------------ controls
function init() {
  $("filter").addEventListener("input", applyFilter);
  $("help-btn").addEventListener("click", () => {
    const h = $("help");
    h.hidden = !h.hidden;
    $("help-btn").setAttribute("aria-expanded", String(!h.hidden));
  });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "resume" : "pause";
    $("pause").classList.toggle("on", state.paused);
    if (!state.paused && state.held.length) { const held = state.held; state.held = []; ingest(held); }
    updateCounts();
  });
  $("clear").addEventListener("click", () => {
    for (const e of state.entries) if (e.tr) e.tr.remove();
    state.entries = [];
    state.byId.clear();
    state.pendingHttp.clear(); state.pendingH2.clear(); state.pendingSql.clear();
    select(null);
    updateCounts();
  });
  $("rows").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr");
    if (tr) select(state.byId.get(Number(tr.dataset.id)) || null);
  });
  document.addEventListener("keydown", (ev) => {
    const inFilter = document.activeElement === $("filter");
    if (ev.key === "/" && !inFilter) { ev.preventDefault(); $("filter").focus(); }
    else if (ev.key === "?" && !inFilter) { $("help-btn").click(); }
    else if (ev.key === "Escape") { if (inFilter) $("filter").blur(); else select(null); }
    else if ((ev.key === "ArrowDown" || ev.key === "ArrowUp") && !inFilter) {
      ev.preventDefault();
      moveSelection(ev.key === "ArrowDown" ? 1 : -1);
    }
  });
  updateCounts();
  if (!TOKEN) setConn("refused", "no token in the URL");
  connect();
}

init();
