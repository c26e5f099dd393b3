// ztrace viewer: a small single-page app over /api (no framework, no build step).
// Routes: #/ (trace list; #/?service=…&trace_id=… presets its filters), #/trace/<id>[/<span id>] (with that span's panel open), #/services. Every piece of span data is inserted as text.
"use strict";

const app = document.getElementById("app");
const REFRESH_MS = 2000;
let timer = null;

// ---- helpers ---------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fmtDuration(ns) {
  if (ns < 1e3) return ns + "ns";
  if (ns < 1e6) return (ns / 1e3).toFixed(ns < 1e4 ? 1 : 0) + "µs";
  if (ns < 1e9) return (ns / 1e6).toFixed(ns < 1e7 ? 2 : 1) + "ms";
  return (ns / 1e9).toFixed(2) + "s";
}

function fmtTime(ns) {
  const d = new Date(ns / 1e6);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function fmtDate(ns) {
  return new Date(ns / 1e6).toLocaleString();
}

function colour(service) {
  let hash = 2166136261; // FNV-1a, then spread: similar names get distant colours
  for (const ch of service || "") hash = Math.imul(hash ^ ch.codePointAt(0), 16777619) >>> 0;
  hash = Math.imul(hash ^ (hash >>> 15), 2246822507) >>> 0;
  // Hues 20–320: no service is drawn in the red that marks errors.
  return `hsl(${20 + (hash % 300)}, 60%, 50%)`;
}

function swatch(service) {
  return h("span", { class: "svc" }, h("span", { class: "swatch", style: { background: colour(service) } }), service);
}

async function getJSON(url) {
  const resp = await fetch(url, { cache: "no-store" });
  if (!resp.ok) throw new Error(`${resp.status}: ${await resp.text()}`);
  return resp.json();
}

function setNav(name) {
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === name);
}

function stopTimer() {
  if (timer) clearInterval(timer);
  timer = null;
}

// ---- trace list ------------------------------------------------------------------------------

const filters = { service: "", name: "", status: "", min_duration_ms: "", since: "1h", trace_id: "" };
let live = true;

function listQuery() {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v) p.set(k, v);
  p.set("limit", "200");
  return p.toString();
}

async function showList() {
  setNav("traces");
  const services = h("select", { name: "service", onchange: (e) => { filters.service = e.target.value; refresh(); } },
    h("option", { value: "" }, "all"));
  const input = (name, placeholder, width) => h("input", {
    name, placeholder, value: filters[name], style: { width },
    oninput: (e) => { filters[name] = e.target.value.trim(); refresh(); },
  });
  const select = (name, options) => {
    const s = h("select", { name, onchange: (e) => { filters[name] = e.target.value; refresh(); } },
      options.map(([v, label]) => h("option", { value: v }, label)));
    s.value = filters[name];
    return s;
  };
  const dot = h("span", { class: "dot" + (live ? " on" : "") });
  const liveBtn = h("button", { type: "button", onclick: () => {
    live = !live;
    dot.classList.toggle("on", live);
    liveBtn.textContent = live ? "Pause" : "Resume";
  } }, live ? "Pause" : "Resume");
  const tbody = h("tbody");
  const status = h("span", { class: "muted" });
  app.replaceChildren(
    h("div", { class: "filters" },
      h("label", {}, "Service", services),
      h("label", {}, "Span name", input("name", "contains…", "180px")),
      h("label", {}, "Status", select("status", [["", "all"], ["error", "errors"], ["ok", "ok"]])),
      h("label", {}, "Min duration (ms)", input("min_duration_ms", "0", "110px")),
      h("label", {}, "Time range", select("since", [["5m", "last 5 min"], ["15m", "last 15 min"], ["1h", "last hour"],
        ["6h", "last 6 hours"], ["24h", "last 24 hours"], ["", "everything"]])),
      h("label", {}, "Trace id", input("trace_id", "prefix", "150px")),
      h("div", { class: "live" }, dot, status, liveBtn)),
    h("table", { class: "list", id: "trace-list" },
      h("thead", {}, h("tr", {}, ["Start", "Root service", "Root span", "Duration", "Spans", ""].map((t, i) =>
        h("th", { class: i === 3 || i === 4 ? "num" : null }, t)))),
      tbody));

  getJSON("/api/services?minutes=1440").then((data) => {
    for (const s of data.services) services.append(h("option", { value: s.service }, s.service));
    services.value = filters.service;
  }).catch(() => {});

  let inFlight = false;
  async function refresh() {
    if (inFlight) return;
    inFlight = true;
    try {
      const traces = await getJSON("/api/traces?" + listQuery());
      renderRows(tbody, traces);
      status.textContent = `${traces.length} trace${traces.length === 1 ? "" : "s"} · ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      tbody.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "Cannot load traces: " + e.message)));
    } finally {
      inFlight = false;
    }
  }
  await refresh();
  timer = setInterval(() => { if (live) refresh(); }, REFRESH_MS);
}

function renderRows(tbody, traces) {
  if (!traces.length) {
    tbody.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "empty" },
      "No traces yet. Send a request to a service on this host (curl http://…) and it shows up here.")));
    return;
  }
  tbody.replaceChildren(...traces.map((t) => h("tr", {
    class: "row trace-row" + (t.error ? " err" : ""), "data-trace-id": t.trace_id,
    onclick: () => { location.hash = "#/trace/" + t.trace_id; },
  },
  h("td", { class: "mono", title: fmtDate(t.start_unix_nano) }, fmtTime(t.start_unix_nano)),
  h("td", {}, swatch(t.root_service)),
  h("td", {}, h("a", { href: "#/trace/" + t.trace_id }, t.root_name)),
  h("td", { class: "num" }, fmtDuration(t.duration_ns)),
  h("td", { class: "num" }, t.span_count),
  h("td", {}, t.error ? h("span", { class: "badge-err", title: "a span failed" }, "● error") : ""))));
}

// ---- trace page ------------------------------------------------------------------------------

function buildTree(spans) {
  const byId = new Map(spans.map((s) => [s.span_id, { span: s, children: [] }]));
  const roots = [];
  for (const node of byId.values()) {
    const parent = node.span.parent_span_id && byId.get(node.span.parent_span_id);
    if (parent && parent !== node) parent.children.push(node);
    else roots.push(node);
  }
  const order = (a, b) => a.span.start_unix_nano - b.span.start_unix_nano;
  const sortAll = (nodes) => { nodes.sort(order); nodes.forEach((n) => sortAll(n.children)); };
  sortAll(roots);
  return roots;
}

async function showTrace(id, spanId) {
  setNav("traces");
  let data;
  try {
    data = await getJSON("/api/traces/" + encodeURIComponent(id));
  } catch (e) {
    app.replaceChildren(h("div", { class: "empty" }, `Trace ${id} not found (${e.message}).`,
      h("br"), h("a", { href: "#/" }, "Back to the trace list")));
    return;
  }
  const spans = data.spans;
  const t0 = Math.min(...spans.map((s) => s.start_unix_nano));
  const t1 = Math.max(...spans.map((s) => s.end_unix_nano));
  const total = Math.max(t1 - t0, 1);
  const roots = buildTree(spans);
  const rootSpan = roots[0].span;
  const services = [...new Set(spans.map((s) => s.service))];
  const errors = spans.filter((s) => s.status === "error").length;

  const collapsed = new Set();
  const panel = h("aside", { class: "panel", id: "span-panel", hidden: true });
  const rows = h("div", { id: "waterfall-rows" });
  let selected = null;

  const pct = (ns) => (100 * ns / total) + "%";
  function renderRows() {
    const out = [];
    const walk = (node, depth) => {
      const s = node.span;
      const dur = s.end_unix_nano - s.start_unix_nano;
      const hasKids = node.children.length > 0;
      const isCollapsed = collapsed.has(s.span_id);
      const err = s.status === "error";
      const left = s.start_unix_nano - t0;
      out.push(h("div", {
        class: "wf-row span-row" + (err ? " err" : "") + (selected === s.span_id ? " selected" : ""),
        "data-span-id": s.span_id, "data-parent-span-id": s.parent_span_id || "", "data-depth": depth,
        "data-service": s.service, onclick: () => select(s),
      },
      h("div", { class: "wf-label", style: { paddingLeft: (8 + depth * 16) + "px" } },
        h("span", { class: "wf-toggle", onclick: (e) => {
          e.stopPropagation();
          if (!hasKids) return;
          if (isCollapsed) collapsed.delete(s.span_id); else collapsed.add(s.span_id);
          renderRows();
        } }, hasKids ? (isCollapsed ? "▸" : "▾") : ""),
        h("span", { class: "swatch", style: { background: colour(s.service) } }),
        h("span", { class: "wf-service" }, s.service),
        h("span", { class: "wf-name", title: s.name }, s.name)),
      h("div", { class: "wf-track" },
        h("div", { class: "wf-bar" + (err ? " err" : ""), title: `${s.name} ${fmtDuration(dur)}`,
          style: { left: pct(left), width: pct(dur), background: colour(s.service) } }),
        h("span", { class: "wf-dur", style: { left: `calc(${pct(left + dur)})` } }, fmtDuration(dur)))));
      if (!isCollapsed) node.children.forEach((c) => walk(c, depth + 1));
    };
    roots.forEach((r) => walk(r, 0));
    rows.replaceChildren(...out);
  }

  function select(span) {
    selected = span.span_id;
    history.replaceState(null, "", `#/trace/${data.trace_id}/${span.span_id}`);
    renderRows();
    renderPanel(panel, span, () => {
      selected = null;
      panel.hidden = true;
      history.replaceState(null, "", "#/trace/" + data.trace_id);
      renderRows();
    });
  }

  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) =>
    h("span", { class: "tick", style: { left: (f * 100) + "%" } }, fmtDuration(Math.round(f * total))));
  app.replaceChildren(
    h("div", { class: "trace-head" },
      h("h1", {}, swatch(rootSpan.service), " ", rootSpan.name),
      h("div", { class: "meta" },
        h("span", { class: "mono" }, "trace " + data.trace_id),
        h("span", {}, fmtDate(t0)),
        h("span", {}, "duration " + fmtDuration(t1 - t0)),
        h("span", {}, `${spans.length} span${spans.length === 1 ? "" : "s"}`),
        h("span", {}, `${services.length} service${services.length === 1 ? "" : "s"}`),
        errors ? h("span", { class: "badge-err" }, `${errors} error${errors === 1 ? "" : "s"}`) : null)),
    h("div", { class: "trace-body" },
      h("section", { class: "waterfall", id: "waterfall" },
        h("div", { class: "axis" }, h("div", { class: "wf-label" }, ""), h("div", { class: "wf-track" }, ticks)),
        rows),
      panel));
  renderRows();
  const preselected = spanId && spans.find((s) => s.span_id === spanId);
  if (preselected) select(preselected);
}

function kvTable(obj, special) {
  const keys = Object.keys(obj || {}).sort();
  if (!keys.length) return h("p", { class: "muted" }, "none");
  return h("table", { class: "kv" }, keys.map((k) =>
    h("tr", { "data-key": k }, h("td", {}, k), h("td", {}, (special && special(k, obj[k])) || JSON.stringify(obj[k])))));
}

// code.stacktrace: one frame per line, innermost first; the application frame (the span's
// code.function.name, code.file.path and code.line.number) is marked "app".
function stackFrames(text, appFn, appFile, appLine) {
  const appLoc = appFile != null && appLine != null ? `${appFile}:${appLine}` : null;
  let appSeen = false;
  return h("ol", { class: "frames", id: "span-stack" }, String(text).split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
    const raw = line;
    line = line.replace(/^at\s+/, "");
    const m = line.match(/^(.*?)\s*(?:\(([^()]*:\d+(?::\d+)?)\)|\s+at\s+(\S+:\d+(?::\d+)?)|\s+(\S+:\d+(?::\d+)?))$/);
    const fn = m ? m[1] : line.replace(/\s*\([^()]*\)$/, "");
    const loc = m ? m[2] || m[3] || m[4] : null;
    const isApp = !appSeen && appFn != null && fn === appFn && (appLoc == null || loc === appLoc);
    if (isApp) appSeen = true;
    const attrs = { class: isApp ? "frame app" : "frame", "data-frame": raw };
    if (!m) return h("li", attrs, line);
    return h("li", attrs, m[1] || "?", " ", h("span", { class: "loc" }, loc));
  }));
}

function renderPanel(panel, s, close) {
  const dur = s.end_unix_nano - s.start_unix_nano;
  const attrs = Object.assign({}, s.attributes);
  const query = attrs["db.query.text"];
  const stack = attrs["code.stacktrace"];
  delete attrs["db.query.text"];
  delete attrs["code.stacktrace"];
  panel.hidden = false;
  panel.replaceChildren(...[
    h("button", { class: "close", type: "button", onclick: close }, "✕"),
    h("h2", {}, s.name),
    h("div", {}, swatch(s.service), " · ", s.kind, " · ", fmtDuration(dur)),
    h("h3", {}, "Span"),
    kvTable({
      status: s.status + (s.status_message ? ` (${s.status_message})` : ""),
      kind: s.kind, service: s.service, duration: fmtDuration(dur), start: fmtDate(s.start_unix_nano),
      span_id: s.span_id, parent_span_id: s.parent_span_id || "—", trace_id: s.trace_id,
    }, (k, v) => k === "status" && s.status === "error" ? h("span", { class: "status-error" }, v) : String(v)),
    query != null ? [h("h3", {}, "Query"), h("pre", { class: "code", id: "db-query" }, h("code", {}, String(query)))] : null,
    stack != null ? [
      h("h3", {}, "Stack"),
      attrs["code.function.name"] != null ? h("p", { class: "issued-by", id: "span-issued-by" }, "issued by ",
        h("code", {}, String(attrs["code.function.name"])),
        attrs["code.file.path"] != null ? [" at ", h("code", {}, `${attrs["code.file.path"]}:${attrs["code.line.number"] ?? "?"}`)] : null,
        attrs["ztrace.stack"] === "native" ? " (interpreter's native frames)" : null) : null,
      stackFrames(stack, attrs["code.function.name"], attrs["code.file.path"], attrs["code.line.number"])] : null,
    h("h3", {}, "Attributes"),
    h("div", { id: "span-attributes" }, kvTable(attrs)),
    h("h3", {}, "Resource"),
    kvTable(s.resource),
    h("h3", {}, "Events"),
    h("p", { class: "muted" }, "none")].flat().filter((c) => c != null));
}

// ---- services --------------------------------------------------------------------------------

let servicesWindow = "15";

async function showServices() {
  setNav("services");
  const tbody = h("tbody");
  const win = h("select", { onchange: (e) => { servicesWindow = e.target.value; refresh(); } },
    [["5", "last 5 min"], ["15", "last 15 min"], ["60", "last hour"], ["1440", "last 24 hours"]].map(([v, l]) =>
      h("option", { value: v }, l)));
  win.value = servicesWindow;
  app.replaceChildren(
    h("div", { class: "filters" }, h("label", {}, "Window", win)),
    h("table", { class: "list", id: "services" },
      h("thead", {}, h("tr", {}, ["Service", "Requests", "Req/s", "Error rate", "p50", "p95", "p99"].map((t, i) =>
        h("th", { class: i ? "num" : null }, t)))),
      tbody));
  async function refresh() {
    try {
      const data = await getJSON("/api/services?minutes=" + servicesWindow);
      if (!data.services.length) {
        tbody.replaceChildren(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No spans in this window.")));
        return;
      }
      tbody.replaceChildren(...data.services.map((s) => h("tr", {
        class: "row" + (s.errors ? " err" : ""), "data-service": s.service,
        onclick: () => { filters.service = s.service; location.hash = "#/"; },
      },
      h("td", {}, swatch(s.service), s.kind === "client" ? h("span", { class: "muted" }, " (as a client)") : null),
      h("td", { class: "num" }, s.requests),
      h("td", { class: "num" }, s.request_rate.toFixed(s.request_rate < 10 ? 2 : 1)),
      h("td", { class: "num" + (s.errors ? " badge-err" : "") }, (100 * s.error_rate).toFixed(1) + "%"),
      h("td", { class: "num" }, fmtDuration(s.p50_ns)),
      h("td", { class: "num" }, fmtDuration(s.p95_ns)),
      h("td", { class: "num" }, fmtDuration(s.p99_ns)))));
    } catch (e) {
      tbody.replaceChildren(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "Cannot load services: " + e.message)));
    }
  }
  await refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

// ---- routing ---------------------------------------------------------------------------------

function route() {
  stopTimer();
  const hash = location.hash.replace(/^#/, "") || "/";
  const trace = hash.match(/^\/trace\/([0-9a-fA-F]{32})(?:\/([0-9a-fA-F]{16}))?$/);
  if (trace) return showTrace(trace[1].toLowerCase(), trace[2] && trace[2].toLowerCase());
  if (hash === "/services") return showServices();
  const preset = hash.match(/^\/\?(.*)$/);
  if (preset) {
    for (const [k, v] of new URLSearchParams(preset[1])) if (k in filters) filters[k] = v;
  }
  return showList();
}

document.getElementById("search").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("search-id");
  const id = input.value.trim().toLowerCase();
  if (/^[0-9a-f]{32}$/.test(id)) location.hash = "#/trace/" + id;
  else { filters.trace_id = id.replace(/[^0-9a-f]/g, ""); location.hash = "#/"; route(); }
});
window.addEventListener("hashchange", route);
route();

// ---- store health ----------------------------------------------------------------------------

// What is wrong with the trace store (disabled, writes failing: a full disk, a damaged file), in
// a banner above every page, checked every 5 s.
async function checkStore() {
  const banner = document.getElementById("store-banner");
  let text = "";
  try {
    const stats = await getJSON("/api/stats");
    const p = stats.store && stats.store.problem;
    if (!stats.store) {
      text = "The trace store is disabled (see ztrace's log): new spans are not kept here. Capture and export go on.";
    } else if (p) {
      text = `The trace store cannot save spans since ${new Date(p.since_unix_ms).toLocaleString()}: ${p.message}. ` +
        `${p.lost_spans} spans lost; capture and export go on.`;
    } else if (stats.store.read_error) {
      text = `The trace store cannot be read: ${stats.store.read_error}`;
    }
  } catch (e) {
    text = `The trace store cannot be read: ${e.message}`;
  }
  banner.textContent = text;
  banner.hidden = !text;
}
checkStore();
setInterval(checkStore, 5000);
