// The Tributary console: polls /api/status every second and draws the tables and charts.
// No framework and no external files: it is served from the binary.
"use strict";

const HISTORY = 120;           // points kept per series (two minutes)
const COLORS = ["#2b6cb0", "#d53f8c", "#2f855a", "#dd6b20", "#6b46c1", "#c53030", "#00838f", "#718096"];
const series = new Map();      // view key -> { color, throughput: [], freshness: [], lag: [], last }
let updates = 0;

const $ = (id) => document.getElementById(id);

function key(v) { return `${v.database}.${v.schema}.${v.name}`; }

function escapeHtml(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function time(micros) {
  return micros ? new Date(micros / 1000).toLocaleTimeString() : "";
}

function number(n, digits = 0) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function rows(tbody, items, render, empty) {
  tbody.innerHTML = items.length
    ? items.map(render).join("")
    : `<tr><td colspan="${tbody.parentElement.tHead.rows[0].cells.length}" class="empty">${empty}</td></tr>`;
}

function push(list, value) {
  list.push(value);
  if (list.length > HISTORY) list.shift();
}

function record(status) {
  const now = status.now_micros / 1e6;
  for (const v of status.views) {
    const k = key(v);
    let s = series.get(k);
    if (!s) {
      s = { color: COLORS[series.size % COLORS.length], throughput: [], freshness: [], lag: [], last: null, rate: 0 };
      series.set(k, s);
    }
    if (s.last) {
      const seconds = Math.max(now - s.last.at, 0.001);
      s.rate = Math.max(v.records - s.last.records, 0) / seconds;
      push(s.throughput, { t: now, y: s.rate });
    }
    s.last = { at: now, records: v.records };
    if (v.freshness_p50_seconds !== null) push(s.freshness, { t: now, y: v.freshness_p50_seconds });
    const lag = v.lag_seconds ?? v.lag_records;
    if (lag !== null && lag !== undefined) push(s.lag, { t: now, y: lag });
  }
}

// A line chart of every view's series, with time on the x axis and a y axis from zero.
function draw(canvas, pick) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  const left = 52, right = 8, top = 8, bottom = 22;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, h);
  let points = 0, max = 0, tMin = Infinity, tMax = -Infinity;
  for (const s of series.values()) {
    for (const p of pick(s)) {
      points += 1;
      max = Math.max(max, p.y);
      tMin = Math.min(tMin, p.t);
      tMax = Math.max(tMax, p.t);
    }
  }
  canvas.dataset.points = String(points);
  canvas.dataset.max = String(max);
  canvas.dataset.updates = String(updates);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7383";
  if (!points) {
    ctx.fillText("waiting for data…", left + 10, h / 2);
    return;
  }
  const span = Math.max(tMax - tMin, 10);
  tMin = tMax - span;
  const yMax = max > 0 ? niceCeiling(max) : 1;
  const x = (t) => left + ((t - tMin) / span) * (w - left - right);
  const y = (v) => top + (1 - v / yMax) * (h - top - bottom);
  ctx.strokeStyle = "#e3e6ec";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i += 1) {
    const v = (yMax * i) / 4;
    ctx.beginPath();
    ctx.moveTo(left, y(v));
    ctx.lineTo(w - right, y(v));
    ctx.stroke();
    ctx.fillText(shortNumber(v), 4, y(v) + 4);
  }
  ctx.fillText(`${Math.round(span)} s`, w - right - 30, h - 6);
  for (const s of series.values()) {
    const list = pick(s);
    if (!list.length) continue;
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    list.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.y)) : ctx.moveTo(x(p.t), y(p.y))));
    ctx.stroke();
    if (list.length === 1) {
      ctx.fillStyle = s.color;
      ctx.fillRect(x(list[0].t) - 2, y(list[0].y) - 2, 4, 4);
      ctx.fillStyle = "#6b7383";
    }
  }
}

function niceCeiling(v) {
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (v <= step * power) return step * power;
  }
  return 10 * power;
}

function shortNumber(v) {
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  if (v >= 10 || v === 0) return v.toFixed(0);
  return v.toFixed(v >= 1 ? 1 : 2);
}

function render(status) {
  const memory = status.query_memory_limit_bytes
    ? `memory pool ${bytes(status.query_memory_reserved_bytes)} of ${bytes(status.query_memory_limit_bytes)}`
    : `memory pool ${bytes(status.query_memory_reserved_bytes)}`;
  const allocated = status.memory_allocated_bytes == null
    ? ""
    : ` (allocated ${bytes(status.memory_allocated_bytes)})`;
  $("server").textContent = `${status.version} · ${status.user} · ${status.sessions} session(s) · resident ${bytes(status.memory_resident_bytes)}${allocated} · ${memory}`;
  const failing = status.views.filter((v) => v.state === "failing").length;
  $("status").textContent = failing ? `${failing} view(s) failing` : "all views healthy";
  $("status").className = `badge ${failing ? "error" : "ok"}`;

  rows($("views").tBodies[0], status.views, (v) => {
    const s = series.get(key(v));
    const lag = v.lag_seconds !== null ? `${number(v.lag_seconds, 1)} s` : v.lag_records !== null ? `${number(v.lag_records)} rec` : "–";
    const fresh = v.freshness_p50_seconds !== null ? `${number(v.freshness_p50_seconds, 2)} / ${number(v.freshness_max_seconds, 2)} s` : "–";
    const state = v.state.split(" ")[0];
    return `<tr data-view="${escapeHtml(key(v))}">
      <td><span style="color:${s.color}">■</span> ${escapeHtml(key(v))}</td>
      <td>${escapeHtml(v.kind)}</td>
      <td>${escapeHtml(v.source ?? "")} ${escapeHtml(v.external_schema)}.${escapeHtml(v.stream)}</td>
      <td><span class="badge ${state}" title="${escapeHtml(v.error ?? "")}">${escapeHtml(v.state)}</span></td>
      <td class="num">${number(v.rows)}</td>
      <td class="num rate">${number(s.rate)}</td>
      <td class="num">${fresh}</td>
      <td class="num">${lag}</td>
      <td class="num">${number(v.skipped)}</td></tr>`;
  }, "No streaming views yet: CREATE MATERIALIZED VIEW … AS SELECT … FROM a stream.");

  rows($("sources").tBodies[0], status.sources, (s) =>
    `<tr><td>${escapeHtml(s.database)}.${escapeHtml(s.schema)}</td><td>${escapeHtml(s.source)}</td><td class="num">${s.views}</td></tr>`,
    "No external schemas FROM KINESIS or FROM KAFKA.");

  rows($("skipped").tBodies[0], status.skipped.slice(0, 15), (e) =>
    `<tr><td>${time(e.time_micros)}</td><td>${escapeHtml(e.schema)}.${escapeHtml(e.name)}</td><td>${escapeHtml(e.shard)}</td>
      <td class="text">${escapeHtml(e.position)}</td><td>${escapeHtml(e.code)}: ${escapeHtml(e.reason)}</td><td class="num">${number(e.size)}</td></tr>`,
    "None since the server started.");

  rows($("refreshes").tBodies[0], status.refreshes.slice(0, 15), (r) =>
    `<tr><td>${time(r.start_micros)}</td><td>${escapeHtml(r.schema)}.${escapeHtml(r.name)}</td><td>${r.type}</td>
      <td class="num">${number(r.records)}</td><td class="num">${number(r.skipped)}</td><td class="num">${number((r.duration_micros ?? 0) / 1000, 1)}</td>
      <td>${escapeHtml(r.status)}</td></tr>`,
    "None yet.");

  rows($("running").tBodies[0], status.running, (q) =>
    `<tr><td>${time(q.start_micros)}</td><td>${escapeHtml(q.user)}</td><td>${escapeHtml(q.database)}</td>
      <td class="num">${number(q.duration_micros / 1000, 1)}</td>
      <td class="num">${bytes(q.memory_bytes)}</td><td class="num">${bytes(q.peak_memory_bytes)}</td>
      <td class="text">${escapeHtml(q.text)}</td></tr>`,
    "None.");

  rows($("queries").tBodies[0], status.queries.slice(0, 15), (q) =>
    `<tr><td>${time(q.start_micros)}</td><td>${escapeHtml(q.user)}</td><td>${escapeHtml(q.database)}</td><td>${escapeHtml(q.command)}</td>
      <td class="num">${number(q.duration_micros / 1000, 1)}</td><td class="num">${bytes(q.peak_memory_bytes)}</td>
      <td><span class="badge ${q.status === "ok" ? "ok" : "error"}">${q.status === "ok" ? "ok" : "error"}</span>${q.status === "ok" ? "" : " " + escapeHtml(q.status)}</td>
      <td class="text">${escapeHtml(q.text)}</td></tr>`,
    "None yet.");

  $("legend").innerHTML = [...series.entries()]
    .map(([k, s]) => `<span style="--swatch:${s.color}">${escapeHtml(k)}</span>`)
    .join("");
  draw($("chart-throughput"), (s) => s.throughput);
  draw($("chart-freshness"), (s) => s.freshness);
  draw($("chart-lag"), (s) => s.lag);
}

async function poll() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const status = await response.json();
    updates += 1;
    record(status);
    render(status);
  } catch (err) {
    $("status").textContent = `cannot reach the server: ${err.message}`;
    $("status").className = "badge error";
  } finally {
    setTimeout(poll, 1000);
  }
}

poll();
