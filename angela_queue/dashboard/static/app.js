// angela-queue dashboard: polls /api/snapshot and redraws. Hand-written, no dependencies.
// Every value from the database goes in through textContent, never as HTML.
"use strict";

const POLL_MS = 1500;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

const secs = (v, d = 1) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(d)} s`);
const num = (v) => (v === null || v === undefined ? "–" : String(v));
const sum = (rows, key) => rows.reduce((a, r) => a + (r[key] || 0), 0);

// Headers starting with "<" are left-aligned text columns.
function table(node, headers, rows, empty) {
  node.replaceChildren();
  node.append(el("tr", {}, ...headers.map((h) =>
    h.startsWith("<") ? el("th", { class: "l" }, h.slice(1)) : el("th", {}, h))));
  for (const r of rows) node.append(r);
  if (!rows.length) node.append(el("tr", {}, el("td", { class: "l empty", colspan: headers.length }, empty)));
}

function tiles(data) {
  const q = data.queues;
  const live = data.workers.filter((w) => w.status !== "dead");
  const unhealthy = live.filter((w) => w.health !== "ok").length;
  const items = [
    ["pending", sum(q, "pending"), false],
    ["running", sum(q, "running"), false],
    ["done", sum(q, "done_1h"), false, "done, last hour"],
    ["failed", sum(q, "failed_1h"), sum(q, "failed_1h") > 0, "failed, last hour"],
    ["dropped", sum(q, "dropped"), sum(q, "dropped") > 0, "dropped, held"],
    ["past-target", sum(q, "pending_past_target"), sum(q, "pending_past_target") > 0, "past target now"],
    ["workers", live.length, false, "workers"],
    ["unhealthy", unhealthy, unhealthy > 0, "workers not ok"],
  ];
  $("tiles").replaceChildren(...items.map(([key, n, bad, label]) =>
    el("div", { class: `tile${bad ? " bad" : ""}` },
      el("div", { class: "n", "data-testid": `tile-${key}` }, n),
      el("div", { class: "l" }, label || key))));
}

function throughput(points) {
  const box = $("throughput");
  const w = 900, h = 120, pad = 18;
  const max = Math.max(1, ...points.map((p) => p.done + p.failed + p.dropped));
  const bw = (w - pad) / points.length;
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h + 14}`, preserveAspectRatio: "none", role: "img" });
  chart.append(svg("line", { x1: pad, x2: w, y1: h, y2: h, stroke: "#e3e6eb" }));
  const label = svg("text", { x: 0, y: 10, "font-size": 10, fill: "#6b7585" });
  label.textContent = String(max);
  chart.append(label);
  points.forEach((p, i) => {
    let y = h;
    for (const [key, color] of [["done", "#2f9e5b"], ["failed", "#d64545"], ["dropped", "#8a94a6"]]) {
      const bh = (p[key] / max) * (h - 4);
      if (bh <= 0) continue;
      y -= bh;
      const rect = svg("rect", { x: pad + i * bw + 1, y, width: Math.max(1, bw - 2), height: bh, fill: color });
      const title = svg("title");
      title.textContent = `${new Date(p.at).toLocaleTimeString()}: ${p[key]} ${key}`;
      rect.append(title);
      chart.append(rect);
    }
  });
  const total = points.reduce((a, p) => a + p.done, 0);
  box.replaceChildren(chart, el("div", { class: "legend" },
    el("i", { style: "background:#2f9e5b" }), "done",
    el("i", { style: "background:#d64545" }), "failed",
    el("i", { style: "background:#8a94a6" }), "dropped",
    el("span", { "data-testid": "throughput-done" }, `  ·  ${total} done in the window`)));
}

function waits(queues) {
  const rows = queues.filter((q) => q.started_1h > 0 || q.pending > 0);
  const box = $("waits");
  if (!rows.length) { box.replaceChildren(el("div", { class: "empty" }, "nothing waited in the last hour")); return; }
  box.replaceChildren(...rows.map((q) => {
    const oldest = q.oldest_pending_age_s;
    const scale = Math.max(q.target_wait_s, q.wait_p95_s || 0, oldest || 0) * 1.15 || 1;
    const x = (v) => `${Math.min(100, (v / scale) * 100)}%`;
    const late = (q.wait_p95_s || 0) > q.target_wait_s || (oldest || 0) > q.target_wait_s;
    const bar = svg("svg", { role: "img" });
    bar.append(svg("rect", { x: 0, y: 4, width: "100%", height: 10, fill: "#eef0f3" }));
    bar.append(svg("rect", { x: 0, y: 4, width: x(q.wait_p95_s || 0), height: 10, fill: late ? "#d64545" : "#3a6ff7" }));
    bar.append(svg("rect", { x: 0, y: 7, width: x(q.wait_p50_s || 0), height: 4, fill: "#fff", opacity: 0.6 }));
    if (oldest !== null) bar.append(svg("circle", { cx: x(oldest), cy: 9, r: 4, fill: "#d98e04" }));
    bar.append(svg("rect", { x: x(q.target_wait_s), y: 0, width: 2, height: 18, fill: "#1d2430" }));
    return el("div", { class: "wait-row", "data-testid": `wait-${q.queue}-${q.tier}` },
      el("span", {}, `${q.queue} · ${q.tier}`), bar,
      el("span", { class: `txt${late ? " over" : ""}` },
        `p50 ${secs(q.wait_p50_s, 2)} · p95 ${secs(q.wait_p95_s, 2)} · oldest ${secs(oldest)} · target ${q.target_wait_s} s`));
  }));
}

function queues(rows) {
  table($("queues"),
    ["<queue", "<tier", "pending", "scheduled", "running", "oldest / target", "done 1h", "failed 1h", "dropped 1h", "retrying", "SLO breaches 1h"],
    rows.map((q) => {
      const late = q.oldest_pending_age_s !== null && q.oldest_pending_age_s > q.target_wait_s;
      return el("tr", {}, el("td", {}, q.queue), el("td", { class: "l" }, q.tier),
        el("td", { "data-testid": `pending-${q.queue}-${q.tier}` }, q.pending), el("td", {}, q.scheduled),
        el("td", {}, q.running),
        el("td", { class: late ? "over" : "" }, `${secs(q.oldest_pending_age_s)} / ${q.target_wait_s} s`),
        el("td", {}, q.done_1h), el("td", {}, q.failed_1h), el("td", {}, q.dropped_1h),
        el("td", {}, q.retrying), el("td", {}, q.slo_breaches_1h));
    }), "no activity in the last hour");
}

function workers(rows) {
  table($("workers"),
    ["id", "<host", "pid", "<queues", "<status", "<health", "heartbeat", "done", "failed", "avg ms", "current task"],
    rows.map((w) => el("tr", { "data-testid": `worker-${w.id}` },
      el("td", {}, w.id), el("td", { class: "l" }, w.hostname), el("td", {}, w.pid),
      el("td", { class: "l" }, (w.queues || []).join(", ")), el("td", { class: "l" }, w.status),
      el("td", { class: "l" }, el("span", { class: `badge ${w.health}` }, w.health)),
      el("td", {}, secs(w.heartbeat_age_s)), el("td", {}, w.tasks_completed), el("td", {}, w.tasks_failed),
      el("td", {}, w.avg_processing_ms === null ? "–" : w.avg_processing_ms.toFixed(1)),
      el("td", {}, num(w.current_task_id)))),
    "no workers in the last hour");
}

async function post(url, what) {
  try {
    const res = await fetch(url, { method: "POST", credentials: "same-origin", headers: { "X-Angela-Queue": "1" } });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error || res.statusText);
    $("message").textContent = body.requeued
      ? `${what}: ${body.requeued} back to pending`
      : `${what}: nothing moved (${body.left_behind} left: no room in the queue, or no longer ${what.includes("retry") ? "failed" : "dropped"})`;
  } catch (e) {
    $("message").textContent = `${what} failed: ${e.message}`;
  }
  refresh();
}

// Tracebacks a user opened stay open across refreshes.
const openErrors = new Set();
function errorDetails(id, summary, full) {
  const node = el("details", { ontoggle: () => (node.open ? openErrors.add(id) : openErrors.delete(id)) },
    el("summary", {}, summary), el("pre", {}, full));
  if (openErrors.has(id)) node.open = true;
  return node;
}

function failures(rows) {
  table($("failures"), ["id", "<queue", "<kind", "<tier", "attempts", "failed at", "<error", ""],
    rows.map((t) => {
      const lines = (t.last_error || "").trim().split("\n");
      return el("tr", { "data-testid": `failure-${t.id}` },
        el("td", {}, t.id), el("td", { class: "l" }, t.queue), el("td", { class: "l" }, t.kind),
        el("td", { class: "l" }, t.tier), el("td", {}, `${t.attempts}/${t.max_attempts}`),
        el("td", {}, t.finished_at ? new Date(t.finished_at).toLocaleTimeString() : "–"),
        el("td", { class: "err" }, errorDetails(t.id, lines[lines.length - 1], t.last_error || "")),
        el("td", {}, el("button", { "data-testid": `retry-${t.id}`, onclick: (ev) => { ev.target.disabled = true; post(`/api/tasks/${t.id}/retry`, `retry of task ${t.id}`); } }, "retry")));
    }), "no failed tasks");
}

function dropped(data) {
  const perQueue = {};
  for (const q of data.queues) if (q.dropped) perQueue[q.queue] = (perQueue[q.queue] || 0) + q.dropped;
  const box = $("dropped");
  const names = Object.keys(perQueue).sort();
  if (!names.length) { box.replaceChildren(el("div", { class: "empty" }, "no dropped tasks")); return; }
  const list = el("table", {});
  table(list, ["id", "<queue", "<kind", "<tier", "priority", "enqueued", "<why"],
    data.dropped_tasks.map((t) => el("tr", {}, el("td", {}, t.id), el("td", { class: "l" }, t.queue),
      el("td", { class: "l" }, t.kind), el("td", { class: "l" }, t.tier), el("td", {}, t.priority),
      el("td", {}, new Date(t.enqueued_at).toLocaleTimeString()), el("td", { class: "err" }, t.last_error || ""))), "");
  box.replaceChildren(...names.map((name) => el("div", { class: "dropq" },
    el("strong", {}, name), el("span", { "data-testid": `dropped-${name}` }, `${perQueue[name]} dropped`),
    el("button", { "data-testid": `requeue-${name}`, onclick: (ev) => { ev.target.disabled = true; post(`/api/queues/${encodeURIComponent(name)}/requeue-dropped`, `requeue of ${name}`); } }, "requeue dropped"))), list);
}

let timer = null;
async function refresh() {
  clearTimeout(timer);
  try {
    const res = await fetch("/api/snapshot", { credentials: "same-origin", cache: "no-store" });
    if (!res.ok) throw new Error((await res.json().catch(() => ({}))).error || res.statusText);
    const data = await res.json();
    tiles(data); throughput(data.throughput); waits(data.queues); queues(data.queues);
    workers(data.workers); failures(data.failures); dropped(data);
    $("conn").textContent = "live"; $("conn").className = "conn live";
    $("updated").textContent = `updated ${new Date(data.at).toLocaleTimeString()}`;
  } catch (e) {
    $("conn").textContent = `no data: ${e.message}`; $("conn").className = "conn down";
  }
  timer = setTimeout(refresh, POLL_MS);
}

refresh();
