// Lookaside admin dashboard: pools, backends and their golden signals
// (calls/s, success rate, latency p50/p99), a chart drawn from the stored
// history, and each pool's events as a timeline, refreshed in place every
// two seconds. Plain DOM, no build step; every value from the registry goes
// in through textContent, never as HTML. Unknown values show as "—".
"use strict";

const REFRESH_MS = 2000;
const SIGNAL_MINUTES = 5; // history the chart and percentiles cover
const EVENTS = 12; // timeline entries per pool (signals.js draws them)
const TOKEN_KEY = "lookaside.admin.token";

const $ = (id) => document.getElementById(id);
const cards = new Map(); // pool name -> card refs
let blockedOnToken = false;

// -- token and API -------------------------------------------------------------
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

// A link such as `lookaside up` prints, /#token=..., opens logged in: the
// fragment never reaches the server; the token is stored as the dialog
// would store it, and the fragment is cleared from the address bar.
function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const given = (params.get("token") || "").trim();
  if (!params.has("token")) return;
  if (given) sessionStorage.setItem(TOKEN_KEY, given);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
}

function renderTokenButton() {
  $("token-button").textContent = token() ? "Token set ✓" : "Set token";
  $("token-button").title = token() ? "Click to change or forget the token" : "";
}

let tokenPrompt = null; // one dialog at a time, shared by concurrent callers

function askToken(reason) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = $("token-dialog");
  $("token-reason").textContent = reason;
  $("token-input").value = "";
  $("token-forget").hidden = !token();
  tokenPrompt = new Promise((resolve) => {
    const onClose = () => {
      dialog.removeEventListener("close", onClose);
      if (dialog.returnValue === "forget") sessionStorage.removeItem(TOKEN_KEY);
      resolve(dialog.returnValue === "save" ? $("token-input").value.trim() : "");
    };
    dialog.addEventListener("close", onClose);
    dialog.returnValue = "";
    dialog.showModal();
    $("token-input").focus();
  }).then((value) => {
    tokenPrompt = null;
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    renderTokenButton();
    return value;
  });
  return tokenPrompt;
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(method, path, body, retried = false) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && !retried) {
    const what = method === "GET" ? "Reading the registry" : "Changing the registry";
    const why = token()
      ? "The stored token was refused; enter the right one."
      : `${what} needs the admin token (LOOKASIDE_ADMIN_TOKEN). It is kept in this tab only.`;
    sessionStorage.removeItem(TOKEN_KEY);
    if (await askToken(why)) return api(method, path, body, true);
    throw new ApiError(401, "no token given");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = { detail: response.statusText };
  }
  if (!response.ok) throw new ApiError(response.status, data.detail || response.statusText);
  return data;
}

// -- toasts and status ---------------------------------------------------------
function toast(message, kind = "ok") {
  const node = el("div", { class: `toast ${kind}` }, message);
  $("toasts").append(node);
  setTimeout(() => node.remove(), kind === "error" ? 8000 : 3500);
}

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").className = `chip ${kind}`;
}

// -- actions -------------------------------------------------------------------
async function act(pool, backend, label, method, suffix, body) {
  const path = `/api/v1/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(backend.id)}${suffix}`;
  try {
    await api(method, path, body);
    toast(`${label} ${backend.address}`);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) toast(`${label} ${backend.address} failed: ${err.message}`, "error");
  }
  refresh();
}

const STATE_ACTIONS = {
  serving: [["drain", "Drain"], ["disable", "Disable"]],
  draining: [["undrain", "Undrain"], ["disable", "Disable"]],
  disabled: [["enable", "Enable"]],
  unhealthy: [["disable", "Disable"]],
  ejected: [["reinstate", "Reinstate"], ["disable", "Disable"]],
};

// -- rendering -----------------------------------------------------------------
function newCard(name) {
  const refs = {};
  refs.title = el("h2", {}, name);
  refs.chips = el("div", { class: "chips" });
  refs.spark = svg("svg", { class: "spark", viewBox: `0 0 ${CHART_W} ${CHART_H}`, preserveAspectRatio: "none", role: "img" });
  refs.area = svg("polygon", { class: "area", points: "" });
  refs.line = svg("polyline", { class: "calls", points: "" });
  refs.success = svg("polyline", { class: "success", points: "" });
  refs.spark.append(svg("line", { class: "base", x1: "0", y1: `${CHART_H - 1}`, x2: `${CHART_W}`, y2: `${CHART_H - 1}` }), refs.area, refs.line, refs.success);
  refs.chartTop = el("span", { class: "muted small" });
  refs.chartSpan = el("span", { class: "muted small" });
  refs.r10 = el("span", { class: "big" });
  refs.successRate = el("span", {});
  refs.p50 = el("span", {});
  refs.p99 = el("span", {});
  refs.dropped = el("span", {});
  refs.streams = el("span", {});
  refs.sources = el("span", { class: "sources" });
  refs.timeline = el("ol", { class: "timeline" });
  const stat = (label, value, cls = "") => el("div", { class: `stat ${cls}` }, el("div", { class: "label" }, label), value);
  refs.tbody = el("tbody");
  refs.rows = new Map();
  refs.section = el(
    "section",
    { class: "pool", "data-pool": name },
    el(
      "div",
      { class: "pool-head" },
      el("div", {}, refs.title, refs.chips),
      el(
        "figure",
        { class: "trend" },
        el("div", { class: "chart-top" }, refs.chartTop),
        refs.spark,
        el(
          "figcaption",
          {},
          el("span", { class: "key calls" }, "calls/s"),
          el("span", { class: "key success" }, "success rate"),
          refs.chartSpan,
        ),
      ),
    ),
    el(
      "div",
      { class: "stats" },
      stat("calls/s", refs.r10, "main"),
      stat("success", refs.successRate, "success"),
      stat("p50", refs.p50, "p50"),
      stat("p99", refs.p99, "p99"),
      stat("dropped/s", refs.dropped),
      stat("client streams", refs.streams),
      stat("reported by", refs.sources, "by-source"),
    ),
    el(
      "div",
      { class: "table-wrap" },
      el(
      "table",
      { class: "backends" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ...[
            ["Backend"], ["Zone", "wide"], ["State", "wide-state"], ["Weight", "wide"], ["Calls/s", "num"], ["Success", "num"],
            ["p50", "num wide"], ["p99", "num"], ["In flight", "num wide"], ["Util", "num wide"], ["Lease", "wide"],
            ["Heard", "wide"], [""],
          ].map(([h, cls]) => el("th", cls ? { class: cls } : {}, h)),
        ),
      ),
      refs.tbody,
      ),
    ),
    el("h3", { class: "events-title" }, "Events"),
    refs.timeline,
  );
  return refs;
}

function newRow(pool, id) {
  const r = { backend: null };
  r.addr = el("span", { class: "addr" });
  r.bid = el("span", { class: "muted small" });
  r.zone = el("td");
  r.state = el("span", { class: "badge" });
  r.stateMini = el("span", { class: "mini-badge" }); // in the backend cell on narrow screens
  r.weight = el("input", { type: "number", min: "1", max: "1000", class: "weight", "aria-label": "weight" });
  r.setWeight = el("button", { class: "btn small", type: "button", "data-action": "weight" }, "Set");
  const submitWeight = () => {
    const weight = Number(r.weight.value);
    r.weight.dataset.dirty = "";
    act(pool, r.backend, `Weight ${weight} for`, "PUT", "/weight", { weight });
  };
  r.setWeight.addEventListener("click", submitWeight);
  r.weight.addEventListener("input", () => (r.weight.dataset.dirty = "1"));
  r.weight.addEventListener("keydown", (e) => e.key === "Enter" && submitWeight());
  r.qps = el("td", { class: "num qps" });
  r.success = el("td", { class: "num success" });
  r.p50 = el("td", { class: "num p50 wide" });
  r.p99 = el("td", { class: "num p99" });
  r.inflight = el("td", { class: "num inflight wide" });
  r.util = el("td", { class: "num util wide" });
  r.zone.classList.add("wide");
  r.lease = el("td", { class: "muted wide" });
  r.heard = el("td", { class: "muted wide" });
  r.actions = el("td", { class: "actions" });
  r.tr = el(
    "tr",
    { "data-backend": id },
    el("td", {}, r.addr, el("br"), r.stateMini, r.bid),
    r.zone,
    el("td", { class: "wide-state" }, r.state),
    el("td", { class: "weight-cell wide" }, r.weight, r.setWeight),
    r.qps, r.success, r.p50, r.p99, r.inflight, r.util, r.lease, r.heard, r.actions,
  );
  return r;
}

function updateRow(pool, r, b, sig) {
  r.backend = b;
  r.tr.dataset.address = b.address;
  r.tr.dataset.state = b.state;
  r.addr.textContent = b.host && b.host !== b.ip ? `${b.address} (${b.host})` : b.address;
  r.bid.textContent = b.id;
  r.zone.textContent = b.zone || "—";
  // A backend the panic guard keeps listed is shown as held, not serving.
  const shown = b.held ? "held" : b.state;
  r.state.textContent = shown;
  r.state.className = `badge ${shown}`;
  r.stateMini.textContent = shown;
  r.stateMini.className = `mini-badge ${shown}`;
  const why = b.state === "ejected" ? `${b.detail} · until ${new Date(b.ejected_until_ms).toLocaleTimeString()}` : b.detail;
  const heldWhy = `panic guard holds its removal (${b.held_for}) since ${new Date(b.held_since_ms).toLocaleTimeString()}`;
  r.state.title = b.held ? `${heldWhy}${b.detail ? `: ${b.detail}` : ""}` : b.state === "unhealthy" || b.state === "ejected" ? why : "";
  if (document.activeElement !== r.weight && !r.weight.dataset.dirty) r.weight.value = b.weight;
  r.qps.textContent = loadNumber(b.load, "qps");
  r.inflight.textContent = loadNumber(b.load, "in_flight", 0);
  // -1 means "not reported": unknown, not -100%.
  const util = b.load.utilization;
  r.util.textContent = known(util) && util >= 0 ? `${Math.round(util * 100)}%` : UNKNOWN;
  r.success.textContent = fmtPct(sig && sig.success_rate);
  r.p50.textContent = fmtMs(sig && sig.latency_p50_ms);
  r.p99.textContent = fmtMs(sig && sig.latency_p99_ms);
  r.success.classList.toggle("bad", Boolean(sig && known(sig.success_rate) && sig.success_rate < 0.95));
  r.lease.textContent = lease(b);
  r.heard.textContent = b.static ? "—" : ago(b.last_heard_ms);
  const wanted = (STATE_ACTIONS[b.state] || []).map(([a]) => a).join(",");
  if (r.actions.dataset.set !== wanted) {
    r.actions.dataset.set = wanted;
    r.actions.replaceChildren(
      ...(STATE_ACTIONS[b.state] || []).map(([action, label]) =>
        el(
          "button",
          {
            class: `btn small ${action === "drain" || action === "disable" ? "warn" : "go"}`,
            type: "button",
            "data-action": action,
            onclick: () => act(pool, r.backend, label, "POST", `/${action}`),
          },
          label,
        ),
      ),
    );
  }
}

function updateCard(refs, pool, backends, load, signals, events) {
  refs.chips.replaceChildren(
    el("span", { class: "chip" }, pool.policy.replace("_", " ")),
    el("span", { class: "chip" }, `v${pool.version}`),
    el("span", { class: "chip" }, `${pool.backends.serving}/${pool.backends.total} serving`),
    ...(pool.backends.held ? [el("span", { class: "chip warn" }, `${pool.backends.held} held by the panic guard`)] : []),
    ...(pool.backends.ejected ? [el("span", { class: "chip error" }, `${pool.backends.ejected} ejected`)] : []),
    ...(pool.fallback ? [el("span", { class: "chip warn" }, "fallback")] : []),
    ...pool.drops.filter((d) => d.per_mille > 0).map((d) => el("span", { class: "chip" }, `drop ${d.token} ${d.per_mille}‰`)),
  );
  if (load) {
    const w = Object.fromEntries(load.windows.map((x) => [x.window, x]));
    refs.dropped.textContent = rate(w["10s"].rates.dropped);
    refs.streams.textContent = String(load.streams_total);
    refs.streams.title = load.streams.map((s) => `${s.replica}: ${s.streams}`).join("\n");
    // Finished calls per second over the last minute, per report source.
    const bySource = w["1m"].sources || {};
    refs.sources.replaceChildren(
      ...["grpclb", "xds"].map((name) =>
        el(
          "span",
          { class: `source ${name}`, "data-source": name, title: `${(bySource[name] || {}).reports || 0} reports in the last minute` },
          `${name === "xds" ? "xDS" : name} ${rate((bySource[name] || {}).finished_per_second || 0)}`,
        ),
      ),
    );
  }
  if (signals) {
    refs.r10.textContent = fmtRate(signals.calls_per_s);
    refs.successRate.textContent = fmtPct(signals.success_rate);
    refs.successRate.classList.toggle("bad", known(signals.success_rate) && signals.success_rate < 0.95);
    refs.p50.textContent = fmtMs(signals.latency_p50_ms);
    refs.p99.textContent = fmtMs(signals.latency_p99_ms);
    drawChart(refs, signals);
  }
  if (events) drawTimeline(refs, events);
  const seen = new Set();
  for (const b of backends) {
    seen.add(b.id);
    let r = refs.rows.get(b.id);
    if (!r) {
      r = newRow(pool.name, b.id);
      refs.rows.set(b.id, r);
    }
    updateRow(pool.name, r, b, signals && signals.backends.find((x) => x.id === b.id));
  }
  for (const [id, r] of refs.rows) if (!seen.has(id)) (r.tr.remove(), refs.rows.delete(id));
  refs.tbody.replaceChildren(...backends.map((b) => refs.rows.get(b.id).tr));
  if (!backends.length) refs.tbody.replaceChildren(el("tr", {}, el("td", { colspan: "13", class: "muted" }, "no backends registered")));
}

// -- client streams: grpclb and xDS side by side ----------------------------------
const TYPES = [
  ["LDS", "envoy.config.listener.v3.Listener"],
  ["RDS", "envoy.config.route.v3.RouteConfiguration"],
  ["CDS", "envoy.config.cluster.v3.Cluster"],
  ["EDS", "envoy.config.endpoint.v3.ClusterLoadAssignment"],
];

function versionCell(t) {
  if (!t) return el("td", { class: "ver muted" }, UNKNOWN);
  const acked = t.acked_version === null ? UNKNOWN : t.acked_version || '""';
  const cell = el("td", { class: "ver" }, acked);
  if (t.nacked_version !== null) {
    const nack = el("span", { class: `nack${t.nacking ? " bad" : ""}`, title: t.nack_error || "" }, `NACK ${t.nacked_version || '""'}`);
    cell.append(" ", nack);
  }
  cell.dataset.nacking = t.nacking ? "1" : "0";
  return cell;
}

function drawStreams(body) {
  const grpclbByPool = body.grpclb.pools.map((p) => `${p.pool} ${p.streams_total}`).join(" · ");
  $("streams-summary").replaceChildren(
    el("span", { class: "chip", "data-kind": "grpclb" }, `grpclb ${body.grpclb.streams_total}`),
    el("span", { class: "chip", "data-kind": "xds" }, `xDS ${body.xds.streams_total}`),
    ...(body.xds.nacking ? [el("span", { class: "chip error", "data-kind": "nacking" }, `${body.xds.nacking} NACKing`)] : []),
    el("span", { class: "muted small" }, grpclbByPool),
  );
  const rows = [];
  for (const r of body.xds.replicas) {
    for (const s of r.streams) {
      const byType = Object.fromEntries(s.types.map((t) => [t.type_url.split("/").pop(), t]));
      const tr = el(
        "tr",
        { "data-stream": s.stream_id },
        el("td", { class: "addr" }, s.node_id),
        el("td", { class: "addr wide" }, s.peer),
        el("td", { class: "wide" }, r.replica),
        el("td", { class: "wide" }, new Date(s.opened_ms).toLocaleTimeString()),
        ...TYPES.map(([, name]) => versionCell(byType[name])),
      );
      const errors = s.types.filter((t) => t.nacking && t.nack_error).map((t) => t.nack_error);
      if (errors.length) tr.title = errors.join("\n");
      rows.push(tr);
    }
    const hidden = r.streams_total - r.streams.length;
    if (hidden > 0) rows.push(el("tr", {}, el("td", { colspan: "8", class: "muted" }, `${r.replica}: ${hidden} more not listed`)));
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "8", class: "muted" }, "no xDS streams")));
  $("xds-streams").replaceChildren(...rows);
}

// -- refresh loop --------------------------------------------------------------
let refreshing = false;
let again = false;

async function refresh() {
  if (blockedOnToken) return;
  if (refreshing) {
    again = true; // an action landed mid-refresh: refresh once more after
    return;
  }
  refreshing = true;
  try {
    await refreshOnce();
  } finally {
    refreshing = false;
  }
  if (again) {
    again = false;
    await refresh();
  }
}

async function refreshOnce() {
  try {
    const [{ pools }, streams] = await Promise.all([api("GET", "/api/v1/pools"), api("GET", "/api/v1/streams")]);
    drawStreams(streams);
    const details = await Promise.all(
      pools.map(async (p) => {
        const base = `/api/v1/pools/${encodeURIComponent(p.name)}`;
        const [backends, load, signals, events] = await Promise.all([
          api("GET", `${base}/backends`),
          api("GET", `${base}/load`),
          api("GET", `${base}/signals?minutes=${SIGNAL_MINUTES}`),
          api("GET", `${base}/events?limit=${EVENTS}`),
        ]);
        return [p, backends.backends, load, signals, events.events];
      }),
    );
    const names = new Set(pools.map((p) => p.name));
    for (const [name, refs] of cards) if (!names.has(name)) (refs.section.remove(), cards.delete(name));
    for (const [pool, backends, load, signals, events] of details) {
      let refs = cards.get(pool.name);
      if (!refs) cards.set(pool.name, (refs = newCard(pool.name)));
      updateCard(refs, pool, backends, load, signals, events);
    }
    $("pools").replaceChildren(...pools.map((p) => cards.get(p.name).section));
    $("empty").hidden = pools.length > 0;
    $("notice").hidden = true;
    setStatus(`live · ${new Date().toLocaleTimeString()}`, "ok");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      blockedOnToken = true;
      $("notice").textContent = "Reading the registry needs the admin token. Use “Set token” above.";
      $("notice").hidden = false;
      setStatus("token needed", "warn");
    } else if (err instanceof ApiError && err.status === 404) {
      // a pool went away between two requests; the next refresh settles it
    } else {
      setStatus(err instanceof ApiError ? `error ${err.status}` : "unreachable", "error");
      $("notice").textContent = err.message;
      $("notice").hidden = false;
    }
  }
}

async function loop() {
  await refresh();
  setTimeout(loop, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  renderTokenButton();
  $("token-cancel").addEventListener("click", () => $("token-dialog").close("cancel"));
  $("token-forget").addEventListener("click", () => $("token-dialog").close("forget"));
  $("token-button").addEventListener("click", async () => {
    await askToken("Enter the admin token (LOOKASIDE_ADMIN_TOKEN). It is kept in this tab only.");
    blockedOnToken = false;
    refresh();
  });
  loop();
});
