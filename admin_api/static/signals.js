// Drawing for the Lookaside dashboard: DOM helpers, number formats in which
// an unknown value is "—" (never 0 or -100%), the golden-signals chart
// (calls/s and success rate) and the events timeline. Loaded before app.js,
// which keeps the state, the API calls and the refresh loop.
"use strict";

const CHART_W = 300; // chart width in viewBox units
const CHART_H = 60;
const UNKNOWN = "—";

// -- tiny DOM helper ---------------------------------------------------------
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

// -- formatting ----------------------------------------------------------------
function rate(value) {
  if (!value) return "0";
  if (value >= 1000) return `${(value / 1000).toFixed(1)}k`;
  if (value >= 100) return value.toFixed(0);
  return value.toFixed(1);
}

function ago(ms) {
  if (!ms) return "—";
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 1) return "now";
  if (s < 90) return `${s}s ago`;
  if (s < 5400) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

function lease(b) {
  if (b.static) return "static";
  const s = Math.round((b.lease_expires_ms - Date.now()) / 1000);
  return s >= 0 ? `${s}s left` : "expired";
}

function loadNumber(load, key, digits = 1) {
  return key in load ? Number(load[key]).toFixed(digits) : UNKNOWN;
}

const known = (v) => v !== null && v !== undefined && Number.isFinite(Number(v));
const fmtRate = (v) => (known(v) ? rate(Number(v)) : UNKNOWN);
const fmtPct = (v) => (known(v) ? `${(Number(v) * 100).toFixed(Number(v) >= 0.999 ? 0 : 1)}%` : UNKNOWN);
function fmtMs(v) {
  if (!known(v)) return UNKNOWN;
  const n = Number(v);
  if (n >= 1000) return `${(n / 1000).toFixed(2)} s`;
  return `${n >= 10 ? n.toFixed(0) : n.toFixed(n >= 1 ? 1 : 2)} ms`;
}
function clock(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false });
}

// The chart: calls/s (area, scaled to the top value) and success rate (line,
// 0..100%) over time. Stored 5 s samples when there are some, else the
// balancers' 10 s buckets of client reports; the live value ends the line.
function drawChart(refs, signals) {
  let series = signals.history.filter((p) => known(p.calls_per_s));
  if (series.length < 2) series = signals.reported;
  const now = signals.ts_ms;
  const points = [...series];
  if (known(signals.calls_per_s)) points.push({ ts_ms: now, calls_per_s: signals.calls_per_s });
  const span = Math.max(60_000, now - (points.length ? points[0].ts_ms : now));
  const x = (ts) => (((ts - (now - span)) / span) * CHART_W).toFixed(1);
  const top = Math.max(1, ...points.map((p) => Number(p.calls_per_s) || 0));
  const y = (v, max) => (CHART_H - 2 - (v / max) * (CHART_H - 8)).toFixed(1);
  const calls = points.map((p) => `${x(p.ts_ms)},${y(Number(p.calls_per_s) || 0, top)}`);
  refs.line.setAttribute("points", calls.join(" "));
  refs.area.setAttribute("points", calls.length ? `${x(points[0].ts_ms)},${CHART_H - 1} ${calls.join(" ")} ${x(now)},${CHART_H - 1}` : "");
  const ok = signals.history.filter((p) => known(p.success_rate));
  refs.success.setAttribute("points", ok.map((p) => `${x(p.ts_ms)},${y(p.success_rate, 1)}`).join(" "));
  refs.chartTop.textContent = `max ${rate(top)} calls/s`;
  refs.chartSpan.textContent = points.length ? `last ${Math.round(span / 60000)} min` : "no calls yet";
  refs.spark.dataset.points = String(points.length);
}

function drawTimeline(refs, events) {
  const items = events.slice(0, EVENTS).map((e) =>
    el(
      "li",
      { class: `event ${e.kind}`, "data-kind": e.kind },
      el("time", { datetime: new Date(e.ts_ms).toISOString() }, clock(e.ts_ms)),
      el("span", { class: "kind" }, e.kind.replaceAll("_", " ")),
      el("span", { class: "who muted small" }, e.backend || "pool"),
      el("span", { class: "what small" }, e.detail.length > 90 ? `${e.detail.slice(0, 89)}…` : e.detail),
    ),
  );
  refs.timeline.replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "no events yet")]));
}
