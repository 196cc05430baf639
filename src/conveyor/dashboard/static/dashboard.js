// Conveyor dashboard: a client of the HTTP API, in plain JavaScript (no build step, no
// framework, nothing loaded from the internet). Views are picked by the URL hash:
//   #/                      overview: every queue, workers, breakers
//   #/queue/<name>?state=…  one queue's jobs, filters, bulk actions
//   #/job/<id>              one job: payload, attempts, actions
//   #/schedules             schedules with pause/resume
// Every piece of data is put into the page with textContent (never innerHTML), and the
// server's Content-Security-Policy forbids inline script, so a job payload cannot inject
// code.
"use strict";

const ROOT = document.querySelector('meta[name="conveyor-root"]').content;
const TOKEN_KEY = "conveyor.dashboard.token";
const QUEUES_KEY = "conveyor.dashboard.queues"; // queues a tenant opened (it cannot list them)
const STATES = ["scheduled", "pending", "running", "completed", "failed", "cancelled"];
// The queue page also has a tab for flow parents waiting for their children (the
// overview keeps to the six states, to fit its table on a laptop screen).
const TAB_STATES = [...STATES, "waiting-children"];
const FINISHED = ["completed", "failed", "cancelled"];
// What an empty state tab means, so an empty table reads as an answer, not a glitch.
const EMPTY_HINT = {
  "waiting-children": "Flow parents waiting for their children to finish appear here.",
  scheduled: "Delayed jobs and jobs waiting for a retry appear here.",
  pending: "Jobs waiting for a worker appear here.",
  running: "Jobs a worker is running now appear here.",
  completed: "Finished jobs appear here until retention cleans them.",
  failed: "Jobs that used all their attempts (the dead-letter state) appear here.",
  cancelled: "Cancelled jobs appear here.",
};
const PAGE_SIZE = 50;
// Event kind -> the state the job is in afterwards (for in-place row updates).
const STATE_AFTER = {
  enqueued: null, started: "running", completed: "completed", failed: "failed",
  retried: null, stalled: "pending", released: "pending", cancelled: "cancelled", ready: "pending",
  promoted: "pending", progress: "running",
};

const session = { admin: false, tenant: null, signedIn: false };
let teardown = () => {};

// --- small DOM helpers -----------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  for (const child of children) el.append(child);
  return el;
}

function $(selector, scope) {
  return (scope || document).querySelector(selector);
}

function toast(message, kind) {
  const box = $("#toast");
  box.textContent = message;
  box.dataset.kind = kind || "info";
  box.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.classList.remove("show"), 5000);
}

// --- time and numbers ----------------------------------------------------------------
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.max(0, Math.round(seconds * 1000))}ms`;
  let rest = Math.floor(seconds);
  const d = Math.floor(rest / 86400); rest -= d * 86400;
  const hr = Math.floor(rest / 3600); rest -= hr * 3600;
  const m = Math.floor(rest / 60); const sec = rest - m * 60;
  const two = (n) => String(n).padStart(2, "0");
  if (d) return `${d}d${two(hr)}h`;
  if (hr) return `${hr}h${two(m)}m`;
  if (m) return `${m}m${two(sec)}s`;
  return `${sec}s`;
}

function when(epochSeconds) {
  if (epochSeconds === null || epochSeconds === undefined) return h("span", { text: "–" });
  const date = new Date(epochSeconds * 1000);
  const delta = Date.now() / 1000 - epochSeconds;
  const label = delta >= 0 ? `${duration(delta)} ago` : `in ${duration(-delta)}`;
  return h("time", { datetime: date.toISOString(), title: date.toLocaleString(), text: label });
}

// Durations as operators type them: 90, 45s, 30m, 12h, 7d, 1h30m (status.parse_duration).
function parseDuration(text) {
  const raw = String(text).trim().toLowerCase();
  if (/^\d+(\.\d+)?$/.test(raw)) return Number(raw);
  const units = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 };
  const parts = [...raw.matchAll(/(\d+(?:\.\d+)?)([smhdw])/g)];
  if (!raw || parts.map((p) => p[0]).join("") !== raw) return null;
  return parts.reduce((sum, p) => sum + Number(p[1]) * units[p[2]], 0);
}

const pretty = (value) => JSON.stringify(value, null, 2);
const shortId = (id) => (id.length > 24 ? `${id.slice(0, 8)}…${id.slice(-8)}` : id);

// --- the API ---------------------------------------------------------------------------
class HttpError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(ROOT + path, {
    method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : null;
  if (response.status === 401) {
    signOut("Your token was refused: sign in again.");
    throw new HttpError(401, data);
  }
  if (!response.ok) throw new HttpError(response.status, data);
  return data;
}

// A WebSocket subprotocol may only hold token characters: base64url of the UTF-8 token.
function bearerProtocol(token) {
  const bytes = new TextEncoder().encode(token);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return "conveyor.bearer." + btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// Live updates over `WS /ws/jobs`. Browsers cannot put headers on a WebSocket, so the
// token travels as a subprotocol (never in the URL, which access logs and the browser
// history keep). After a restart
// (1012), an overflow (1013) or a lost connection it reconnects with `since=`, so no
// event is missed.
function live(params, onEvent, onOpen) {
  let socket = null;
  let closed = false;
  let delay = 500;
  let timer = null;
  const since = {};
  function open() {
    const query = new URLSearchParams(params);
    const token = sessionStorage.getItem(TOKEN_KEY);
    const protocols = token ? ["conveyor.v1", bearerProtocol(token)] : ["conveyor.v1"];
    const positions = Object.entries(since).map(([q, id]) => `${q}:${id}`).join(",");
    if (positions) query.set("since", positions);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}${ROOT}/ws/jobs?${query}`, protocols);
    socket.onopen = () => {
      // A view left while the socket was connecting: close now that it may be closed
      // without the browser logging an error.
      if (closed) socket.close(1000);
    };
    socket.onmessage = (message) => {
      if (closed) return;
      const frame = JSON.parse(message.data);
      if (frame.type === "subscribed") {
        delay = 500;
        // Queues declared with events=False send nothing: say so (all of them: the
        // badge; some: its tooltip names them).
        const quiet = frame.not_streamed || [];
        setLive(quiet.length && quiet.length === frame.queues.length ? "quiet" : true);
        $("#live").title = quiet.length
          ? `Not streamed (events=False), refresh to see changes: ${quiet.join(", ")}` : "";
        if (onOpen) onOpen();
      } else if (frame.type === "event") {
        since[frame.queue] = frame.id;
        onEvent(frame);
      }
    };
    socket.onclose = (event) => {
      if (closed) return; // left on purpose: the next view owns the badge now
      setLive(false);
      if (event.code === 4401) return signOut("Your token was refused: sign in again.");
      if (event.code >= 4000) return toast(`Live updates stopped: ${event.reason}`, "error");
      timer = setTimeout(open, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  open();
  return () => {
    closed = true;
    clearTimeout(timer);
    if (socket && socket.readyState === WebSocket.OPEN) socket.close(1000);
  };
}

function setLive(on) {
  const badge = $("#live");
  // "quiet": connected, but no watched queue has an event log (events=False).
  badge.dataset.live = on === "quiet" ? "quiet" : on ? "on" : "off";
  badge.textContent = on === "quiet" ? "Not streamed" : on ? "Live" : "Offline";
}

// Run `fn` at most once per `wait` ms, trailing: bursts of events cost one reload.
function throttle(fn, wait) {
  let timer = null;
  let last = 0;
  return () => {
    if (timer) return;
    const due = Math.max(0, last + wait - Date.now());
    timer = setTimeout(async () => {
      timer = null;
      last = Date.now();
      try { await fn(); } catch (error) { reportError(error); }
    }, due);
  };
}

function reportError(error) {
  if (error instanceof HttpError && error.status === 401) return;
  toast(error.message || String(error), "error");
}

// --- confirmation dialog ------------------------------------------------------------------
// A <dialog> opened with showModal(): focus moves into it, Escape cancels, and focus
// returns to the button that opened it. `extra` holds optional form fields.
function confirmAction(title, text, okLabel, extra) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel || "Confirm";
  const holder = $("#confirm-extra");
  holder.replaceChildren(...(extra ? [extra] : []));
  const opener = document.activeElement;
  dialog.returnValue = "";
  dialog.showModal();
  (extra ? extra.querySelector("input, select") : $("#confirm-cancel")).focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (opener && opener.focus) opener.focus();
      resolve(dialog.returnValue === "ok");
    }, { once: true });
  });
}

async function act(button, label, call, done) {
  // Busy (aria-disabled) while the request runs, so a double press sends one request.
  // Not `disabled`: that would blur the focused button and strand keyboard users.
  if (button.dataset.busy) return;
  button.dataset.busy = "1";
  button.setAttribute("aria-disabled", "true");
  try {
    await call();
    toast(label, "ok");
    if (done) await done();
  } catch (error) {
    reportError(error);
  } finally {
    delete button.dataset.busy;
    button.removeAttribute("aria-disabled");
  }
}

// --- sparklines ---------------------------------------------------------------------------
function sparkline(values, label, kind, max) {
  const width = 72; // 60 one-minute points: wider adds no detail, and the table must fit 1280 px
  const height = 28;
  const top = Math.max(max ?? Math.max(...values, 0), 1e-9);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const points = values
    .map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`)
    .join(" ");
  return s(
    "svg",
    { class: `spark ${kind}`, viewBox: `0 0 ${width} ${height}`, width, height,
      role: "img", "aria-label": label, preserveAspectRatio: "none" },
    s("title", {}, document.createTextNode(label)),
    s("polyline", { points, fill: "none", "stroke-width": 1.5 }),
  );
}

function sparkCells(history) {
  if (!history) return [h("span", { class: "muted", text: "…" }), h("span", { class: "muted", text: "…" })];
  const done = history.completed;
  const failed = history.failed;
  const total = done.reduce((a, b) => a + b, 0) + failed.reduce((a, b) => a + b, 0);
  const rates = done.map((c, i) => (c + failed[i] ? failed[i] / (c + failed[i]) : 0));
  const failedSum = failed.reduce((a, b) => a + b, 0);
  const rate = total ? Math.round((100 * failedSum) / total) : 0;
  const perMin = done.map((c, i) => c + failed[i]);
  return [
    h("span", { class: "spark-cell" },
      // A count over the last hour, not a rate: "2074/h" after 90 s of running misled.
      sparkline(perMin, `Jobs finished per minute, last hour: ${total} in all`, "throughput"),
      h("span", { class: "num", title: "jobs finished (completed or failed) in the last hour",
        text: total.toLocaleString("en") })),
    h("span", { class: "spark-cell" },
      sparkline(rates, `Failure rate per minute, last hour: ${rate}% overall`, "failures", 1),
      h("span", { class: "num", text: `${rate}%` })),
  ];
}

// --- views ---------------------------------------------------------------------------------
function heading(text, extra) {
  return h("div", { class: "title" }, h("h1", { tabindex: "-1", text }), extra || null);
}

function stateBadge(state, id) {
  return h("span", { class: "badge", "data-state": state, id, text: state });
}

function crumbs(...items) {
  return h("nav", { "aria-label": "Breadcrumb", class: "crumbs" },
    h("ol", {}, items.map(([label, href]) =>
      h("li", {}, href ? h("a", { href, text: label }) : h("span", { "aria-current": "page", text: label })))));
}

function queueHref(queue, params) {
  const query = new URLSearchParams(params || {}).toString();
  return `#/queue/${encodeURIComponent(queue)}${query ? `?${query}` : ""}`;
}

const jobHref = (id) => `#/job/${encodeURIComponent(id)}`;

// Overview: every queue's depths and sparklines, the workers, the breakers.
function overview(view) {
  if (!session.admin) return tenantHome(view);
  const engineLine = h("p", { class: "muted", id: "engine" });
  const queuesBody = h("tbody", { id: "queues-body" });
  const workersBody = h("tbody", { id: "workers-body" });
  const breakers = h("section", { id: "breakers", hidden: true, "aria-labelledby": "breakers-title" });
  view.append(
    heading("Overview"),
    engineLine,
    h("section", { "aria-labelledby": "queues-title", class: "card" },
      h("h2", { id: "queues-title", text: "Queues" }),
      h("div", { class: "table-wrap" },
        h("table", { class: "responsive", id: "queues" },
          h("caption", { class: "sr-only", text: "Jobs per state of every queue" }),
          h("thead", {}, h("tr", {},
            ["Queue", ...STATES.map((st) => st[0].toUpperCase() + st.slice(1)), "Oldest pending",
              "Finished (last hour)", "Failure rate (last hour)", "Status"].map((t) => h("th", { scope: "col", text: t })))),
          queuesBody))),
    h("section", { "aria-labelledby": "workers-title", class: "card" },
      h("h2", { id: "workers-title", text: "Workers" }),
      h("div", { class: "table-wrap" },
        h("table", { class: "responsive", id: "workers" },
          h("thead", {}, h("tr", {},
            ["Worker", "Host", "Queues", "In flight", "Processed", "Last heartbeat"]
              .map((t) => h("th", { scope: "col", text: t })))),
          workersBody))),
    breakers,
  );

  let history = {};
  let names = [];
  let stopLive = () => {};

  async function loadStatus() {
    const doc = await api("GET", "/admin/workers/status");
    const engine = doc.engine;
    engineLine.textContent = `Engine ${engine.url}: ${engine.status}` +
      (engine.latency_ms !== null ? `, ${engine.latency_ms} ms` : "") +
      (engine.durable ? "" : " (not durable)") + (engine.error ? ` — ${engine.error}` : "");
    engineLine.dataset.status = engine.status;
    renderQueues(doc.queues);
    renderWorkers(doc.workers);
    renderBreakers(doc);
    const current = doc.queues.map((q) => q.queue);
    if (current.join(",") !== names.join(",")) {
      names = current;
      stopLive();
      stopLive = names.length ? live({ queue: names.join(",") }, onEvent) : () => {};
      loadHistory();
    }
  }

  async function loadHistory() {
    if (!names.length) return;
    const query = new URLSearchParams(names.map((n) => ["queue", n]));
    history = (await api("GET", `/dashboard/api/throughput?${query}`)).queues;
    for (const row of queuesBody.rows) {
      const cells = sparkCells(history[row.dataset.queue]);
      row.querySelector("[data-col=throughput]").replaceChildren(cells[0]);
      row.querySelector("[data-col=failures]").replaceChildren(cells[1]);
    }
  }

  function renderQueues(rows) {
    if (!rows.length) {
      queuesBody.replaceChildren(h("tr", {}, h("td", { colspan: 11, class: "empty",
        text: "No queue has held a job yet." })));
      return;
    }
    queuesBody.replaceChildren(...rows.map((q) => {
      const sparks = sparkCells(history[q.queue]);
      return h("tr", { "data-queue": q.queue },
        h("th", { scope: "row", "data-label": "Queue", class: "queue-name" }, h("a", { href: queueHref(q.queue), text: q.queue })),
        STATES.map((st) => h("td", { class: "num", "data-label": st, "data-count": st },
          q[st] ? h("a", { href: queueHref(q.queue, { state: st }), text: q[st].toLocaleString("en") }) : "0")),
        h("td", { "data-label": "Oldest pending", text: duration(q.oldest_pending_age_seconds) }),
        h("td", { "data-label": "Finished (last hour)", "data-col": "throughput" }, sparks[0]),
        h("td", { "data-label": "Failure rate (last hour)", "data-col": "failures" }, sparks[1]),
        h("td", { "data-label": "Status", "data-col": "status" }, q.paused
          ? h("span", { class: "badge", "data-state": "paused", text: "paused" })
          : h("span", { class: "muted", text: "active" }),
        // The limits in effect and why pending jobs wait: a forgotten limit is otherwise
        // an idle worker next to a backlog.
        Object.keys(q.limits || {}).length ? h("div", { class: "note", "data-col": "limits",
          text: `limits: ${Object.entries(q.limits).map(([k, v]) => `${k.replace("_", " ")} ${v}`).join(", ")}` }) : null,
        (q.held_back || []).length ? h("div", { class: "note held", "data-col": "held-back",
          text: `held back: ${q.held_back.join("; ")}` }) : null));
    }));
  }

  function renderWorkers(rows) {
    if (!rows.length) {
      workersBody.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "empty", text: "No worker is alive." })));
      return;
    }
    workersBody.replaceChildren(...rows.map((w) => h("tr", { "data-worker": w.id },
      h("th", { scope: "row", "data-label": "Worker", text: w.id }),
      h("td", { "data-label": "Host", text: `${w.host ?? "?"} (pid ${w.pid ?? "?"})` }),
      h("td", { "data-label": "Queues", text: (w.queues || []).join(", ") }),
      h("td", { "data-label": "In flight", class: "num", text: `${w.in_flight ?? 0} / ${w.concurrency ?? "?"}` }),
      h("td", { "data-label": "Processed", class: "num", text: `${w.processed ?? "–"} (${w.failed ?? 0} failed)` }),
      h("td", { "data-label": "Last heartbeat", text: w.last_heartbeat_age_seconds === null
        ? "–" : `${duration(w.last_heartbeat_age_seconds)} ago` }))));
  }

  // Circuit breakers: rendered only when the status document carries them (a future
  // `breakers` list, or workers reporting `dependencies`); otherwise the section stays
  // hidden rather than showing an empty box.
  function renderBreakers(doc) {
    const found = [];
    for (const b of doc.breakers || []) found.push(b);
    for (const w of doc.workers || []) {
      for (const [name, info] of Object.entries(w.dependencies || w.breakers || {})) {
        found.push({ name, worker: w.id, ...(typeof info === "object" ? info : { state: info }) });
      }
    }
    const open = found.filter((b) => (b.state || "").toLowerCase() !== "closed");
    breakers.hidden = open.length === 0;
    if (!open.length) return breakers.replaceChildren();
    breakers.className = "card";
    breakers.replaceChildren(
      h("h2", { id: "breakers-title", text: "Open circuit breakers" }),
      h("ul", {}, open.map((b) => h("li", {},
        `${b.name}: ${b.state || "open"}${b.worker ? ` (worker ${b.worker})` : ""}`))));
  }

  const refresh = throttle(loadStatus, 1000);
  function onEvent(event) {
    refresh();
    if (FINISHED.includes(event.kind)) refreshHistory();
  }
  // Sparklines move by the minute: a few seconds of lag is fine and keeps reads cheap.
  const refreshHistory = throttle(loadHistory, 3000);
  const poll = setInterval(() => refresh(), 5000); // heartbeats change without events
  const pollHistory = setInterval(() => refreshHistory(), 30000);
  loadStatus().catch(reportError);
  return () => { clearInterval(poll); clearInterval(pollHistory); stopLive(); };
}

// A tenant token cannot list queues or see queue-wide numbers: it opens a queue by name.
function tenantHome(view) {
  const known = JSON.parse(sessionStorage.getItem(QUEUES_KEY) || "[]");
  const input = h("input", { id: "open-queue", name: "queue", required: true, pattern: "[A-Za-z0-9_.\\-]{1,64}",
    autocomplete: "off", spellcheck: "false" });
  view.append(
    heading("Overview"),
    h("p", { class: "notice", text: `Read-only view for tenant “${session.tenant}”: you see your own jobs ` +
      "only. Queue-wide numbers, workers and operations need the admin token." }),
    h("form", { class: "card inline", onsubmit: (e) => {
      e.preventDefault();
      location.hash = queueHref(input.value.trim());
    } },
      h("label", { for: "open-queue", text: "Queue name" }), input,
      h("button", { type: "submit", class: "primary", text: "Open queue" })),
    known.length ? h("section", { class: "card", "aria-labelledby": "recent-title" },
      h("h2", { id: "recent-title", text: "Recently opened" }),
      h("ul", {}, known.map((q) => h("li", {}, h("a", { href: queueHref(q), text: q }))))) : null,
  );
  return () => {};
}

// Queue: jobs of one state with filters, cursor pagination and bulk actions.
function queueView(view, name, params) {
  if (!session.admin) {
    const known = JSON.parse(sessionStorage.getItem(QUEUES_KEY) || "[]");
    if (!known.includes(name)) sessionStorage.setItem(QUEUES_KEY, JSON.stringify([name, ...known].slice(0, 20)));
  }
  const chosen = TAB_STATES.includes(params.get("state"));
  const state = chosen ? params.get("state") : "pending";
  const filters = { tenant: params.get("tenant") || "", task: params.get("task") || "", q: params.get("q") || "" };
  const cursors = [null]; // cursor of each page visited, so "Previous" needs no server support
  let page = 0;
  let nextCursor = null;
  let jobs = [];
  let paused = false;

  const tabs = h("ul", { class: "tabs", id: "state-tabs" });
  const pausedBadge = h("span", { class: "badge", "data-state": "paused", text: "paused", hidden: true, id: "paused-badge" });
  const body = h("tbody", { id: "jobs-body" });
  const pager = h("div", { class: "pager" });
  const shown = h("p", { class: "muted", id: "shown", role: "status" });
  const actions = h("div", { class: "toolbar", role: "group", "aria-label": "Queue actions" });

  const field = (id, label, value, hint) => [
    h("label", { for: id, text: label }),
    h("input", { id, name: id, value, autocomplete: "off", spellcheck: "false", "aria-describedby": hint ? "filter-hint" : null }),
  ];
  const form = h("form", { class: "filters card", id: "filters", onsubmit: (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const next = { state };
    for (const key of ["tenant", "task", "q"]) if (String(data.get(key) || "").trim()) next[key] = String(data.get(key)).trim();
    location.hash = queueHref(name, next);
  } },
    h("div", {}, ...field("tenant", "Tenant", filters.tenant)),
    h("div", {}, ...field("task", "Task", filters.task, true)),
    h("div", {}, ...field("q", "Text in payload or error", filters.q, true)),
    h("button", { type: "submit", text: "Apply filters" }),
    h("p", { id: "filter-hint", class: "hint", text: "Tenant is filtered by the server across every page. " +
      "Task and text narrow the jobs of the page already fetched (the API filters by state and tenant " +
      "only), so a page may show fewer rows than it holds." }));
  if (!session.admin) { form.querySelector("#tenant").disabled = true; }

  view.append(
    crumbs(["Overview", "#/"], [name, null]),
    heading(name, pausedBadge),
    h("nav", { "aria-label": "Job states" }, tabs),
    session.admin ? actions : h("p", { class: "notice", text: "Read-only: tenant tokens cannot operate queues." }),
    form,
    shown,
    h("div", { class: "table-wrap" },
      h("table", { class: "responsive", id: "jobs" },
        h("caption", { class: "sr-only", text: `${state} jobs of ${name}` }),
        h("thead", {}, h("tr", {}, ["Job", "Task", "Tenant", "Attempts",
          state === "scheduled" ? "Due" : FINISHED.includes(state) ? "Finished" : "Created",
          FINISHED.includes(state) ? "Error / result" : "Progress"].map((t) => h("th", { scope: "col", text: t })))),
        body)),
    pager,
  );

  function renderTabs(counts) {
    tabs.replaceChildren(...TAB_STATES.map((st) => h("li", {}, h("a", {
      href: queueHref(name, { ...nonEmpty(filters), state: st }),
      "aria-current": st === state ? "page" : null, "data-tab": st,
    }, st, counts ? h("span", { class: "count", "data-count": st, text: counts[st].toLocaleString("en") }) : null))));
  }

  function renderActions() {
    if (!session.admin) return;
    const toggle = actions.querySelector("#pause-toggle");
    if (toggle) {
      // Update in place: replacing the buttons would drop keyboard focus after an action.
      toggle.textContent = paused ? "Resume queue" : "Pause queue";
      return;
    }
    actions.replaceChildren(
      h("button", { type: "button", id: "pause-toggle", onclick: (e) => togglePause(e.currentTarget),
        text: paused ? "Resume queue" : "Pause queue" }),
      h("button", { type: "button", id: "retry-all", onclick: (e) => retryAll(e.currentTarget), text: "Retry all failed" }),
      h("button", { type: "button", id: "clean", class: "danger", onclick: (e) => clean(e.currentTarget), text: "Clean old jobs…" }),
    );
  }

  async function togglePause(button) {
    const verb = paused ? "resume" : "pause";
    const ok = await confirmAction(`${paused ? "Resume" : "Pause"} ${name}?`, paused
      ? "Workers will claim jobs from this queue again."
      : "Workers stop claiming from this queue; producers keep enqueueing and jobs wait as pending.",
    paused ? "Resume" : "Pause");
    if (!ok) return;
    await act(button, `Queue ${name} ${verb}d`, () => api("POST", `/queues/${encodeURIComponent(name)}/${verb}`), loadCounts);
  }

  async function retryAll(button) {
    const ok = await confirmAction(`Retry every failed job of ${name}?`,
      "Each failed job goes back to pending with a fresh attempt budget.", "Retry all");
    if (!ok) return;
    let count = 0;
    await act(button, "Retried", async () => {
      count = (await api("POST", `/queues/${encodeURIComponent(name)}/retry-all`, { state: "failed" })).count;
    }, async () => { toast(`${count} failed job(s) sent back to pending`, "ok"); await reload(); });
  }

  async function clean(button) {
    const extra = h("div", { class: "fields" },
      h("label", { for: "clean-state", text: "Jobs in state" }),
      h("select", { id: "clean-state" }, FINISHED.map((st) => h("option", { value: st, text: st }))),
      h("label", { for: "clean-age", text: "Finished more than (e.g. 7d, 12h, 30m, 0)" }),
      h("input", { id: "clean-age", value: "7d", required: true, autocomplete: "off" }));
    const ok = await confirmAction(`Delete old jobs of ${name}?`,
      "Deleted jobs cannot be brought back.", "Delete", extra);
    if (!ok) return;
    const older = parseDuration(extra.querySelector("#clean-age").value);
    if (older === null) return toast("Age must look like 90, 45s, 30m, 12h or 7d", "error");
    const cleanState = extra.querySelector("#clean-state").value;
    let count = 0;
    await act(button, "Cleaned", async () => {
      count = (await api("POST", `/queues/${encodeURIComponent(name)}/clean`,
        { state: cleanState, older_than: older })).count;
    }, async () => { toast(`${count} ${cleanState} job(s) deleted`, "ok"); await reload(); });
  }

  async function loadCounts() {
    if (!session.admin) { renderTabs(null); return; }
    const stats = await api("GET", `/queues/${encodeURIComponent(name)}/stats`);
    if (!chosen && !stats[state]) {
      // No state in the link: open on the first state that has jobs, not an empty tab.
      const first = TAB_STATES.find((st) => stats[st] > 0);
      if (first && first !== state) {
        location.replace(queueHref(name, { ...nonEmpty(filters), state: first }));
        return;
      }
    }
    paused = stats.paused;
    pausedBadge.hidden = !paused;
    renderTabs(stats);
    renderActions();
  }

  async function loadPage() {
    const query = new URLSearchParams({ queue: name, state, limit: String(PAGE_SIZE) });
    if (filters.tenant && session.admin) query.set("tenant", filters.tenant);
    if (cursors[page]) query.set("cursor", cursors[page]);
    const result = await api("GET", `/jobs?${query}`);
    jobs = result.jobs;
    nextCursor = result.next_cursor;
    renderJobs();
  }

  function matches(job) {
    if (filters.task && !job.task.toLowerCase().includes(filters.task.toLowerCase())) return false;
    if (!filters.q) return true;
    const haystack = [JSON.stringify(job.payload), ...job.errors.map((e) => `${e.type} ${e.message}`)]
      .join("\n").toLowerCase();
    return haystack.includes(filters.q.toLowerCase());
  }

  function renderJobs() {
    const rows = jobs.filter(matches);
    const narrowed = filters.task || filters.q;
    shown.textContent = `Page ${page + 1}: ${rows.length} job(s)` +
      (narrowed ? ` match the task/text filter out of ${jobs.length} on this page` : "");
    body.replaceChildren(...(rows.length ? rows.map(jobRow) : [h("tr", {}, h("td", { colspan: 6, class: "empty",
      text: jobs.length ? "No job on this page matches the filters." : `No ${state} jobs. ${EMPTY_HINT[state]}` }))]));
    pager.replaceChildren(
      h("button", { type: "button", id: "first-page", disabled: page === 0,
        onclick: () => { page = 0; loadPage().catch(reportError); }, text: "First page" }),
      h("button", { type: "button", id: "prev-page", disabled: page === 0,
        onclick: () => { page -= 1; loadPage().catch(reportError); }, text: "Previous" }),
      h("button", { type: "button", id: "next-page", disabled: !nextCursor,
        onclick: () => { cursors[page + 1] = nextCursor; page += 1; loadPage().catch(reportError); }, text: "Next page" }),
    );
  }

  function jobRow(job) {
    const time = state === "scheduled" ? job.scheduled_at
      : FINISHED.includes(state) ? job.finished_at : job.created_at;
    const last = job.errors.length ? job.errors[job.errors.length - 1] : null;
    let detail;
    if (state === "failed" || (state === "cancelled" && last)) {
      detail = h("span", { class: "error-text", text: last ? `${last.type}: ${last.message}` : "–" });
    } else if (state === "completed") {
      detail = h("code", { text: job.result === null ? "–" : JSON.stringify(job.result).slice(0, 80) });
    } else {
      detail = progressOf(job.progress);
    }
    return h("tr", { "data-job": job.id },
      h("th", { scope: "row", "data-label": "Job" },
        h("a", { href: jobHref(job.id), title: job.id, text: shortId(job.id.split(":").pop()) }),
        " ", stateBadge(job.state)),
      h("td", { "data-label": "Task", text: job.task }),
      h("td", { "data-label": "Tenant", text: job.tenant ?? "–" }),
      h("td", { "data-label": "Attempts", class: "num", text: `${job.attempt} / ${job.max_attempts}` }),
      h("td", { "data-label": "Time" }, when(time)),
      h("td", { "data-label": "Detail" }, detail));
  }

  async function reload() {
    await Promise.all([loadCounts(), loadPage()]);
  }

  const refreshCounts = throttle(loadCounts, 1000);
  const refreshPage = throttle(loadPage, 1000);
  function onEvent(event) {
    refreshCounts();
    const row = body.querySelector(`tr[data-job="${CSS.escape(event.job_id)}"]`);
    const after = STATE_AFTER[event.kind];
    if (row && after) {
      const badge = row.querySelector(".badge");
      badge.dataset.state = after;
      badge.textContent = after;
    }
    // The first page is where new jobs appear: keep it current. Later pages are only
    // updated in place, so rows do not shift under the reader.
    if (page === 0) refreshPage();
  }
  renderTabs(null);
  reload().catch(reportError);
  const stop = live(nonEmpty({ queue: name, tenant: session.admin ? filters.tenant : "" }), onEvent);
  return stop;
}

function nonEmpty(obj) {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v));
}

function progressOf(value) {
  if (value === null || value === undefined) return h("span", { class: "muted", text: "–" });
  if (typeof value === "number") {
    const pct = Math.max(0, Math.min(100, value));
    return h("span", { class: "progress" }, h("progress", { max: 100, value: pct, "aria-label": `${pct}%` }), ` ${pct}%`);
  }
  return h("code", { text: JSON.stringify(value).slice(0, 80) });
}

function policyText(p, which) {
  if (!p) return "–";
  const from = p[`${which}_from`];
  if (from === "unknown") return "set by the task in the worker's code (not registered in this API's app)";
  const value = which === "timeout"
    ? (p.timeout_seconds === null ? "no limit" : `${p.timeout_seconds}s`) : p.backoff_text;
  return `${value} (${from === "job" ? "set on this job" : "task default"})`;
}

// Job: everything about one job, its attempts, and retry/cancel/promote.
function jobView(view, id) {
  const queue = id.includes(":") ? id.slice(0, id.lastIndexOf(":")) : "";
  const content = h("div", { id: "job" });
  view.append(crumbs(["Overview", "#/"], [queue, queueHref(queue)], [shortId(id), null]), content);

  async function load() {
    const [job, flow] = await Promise.all([
      api("GET", `/jobs/${encodeURIComponent(id)}`),
      api("GET", `/flows/${encodeURIComponent(id)}`),
    ]);
    render(job, flow);
    followFlow(job.queue, flow);
  }

  // The flow tree shows every flow job's state, so it follows their events too: one
  // socket on the flow's queue (a flow lives in one queue), filtered here to the tree's
  // ids, opened once the job turns out to be in a flow (the job socket covers the rest).
  // A caller who may see this job may watch its queue (api/auth.py `sees`).
  let flowIds = new Set();
  let stopFlow = null;
  function followFlow(queueName, flow) {
    const ids = new Set();
    const walk = (n) => { ids.add(n.id); n.children.forEach(walk); };
    if (flow) walk(flow);
    ids.delete(id); // its own events come through the job socket
    flowIds = ids;
    if (ids.size && !stopFlow) {
      stopFlow = live({ queue: queueName }, (event) => { if (flowIds.has(event.job_id)) refresh(); });
    }
  }

  // The flow this job belongs to, from its root: a tree of links with each job's state
  // (null when the job is not part of a flow).
  function flowCard(flow) {
    if (!flow || (!flow.children.length && flow.id === id)) return null;
    const node = (n) => h("li", { "data-job": n.id },
      n.id === id ? h("strong", { "aria-current": "true", text: `${n.task} (this job)` })
        : h("a", { href: jobHref(n.id), text: n.task }),
      " ", stateBadge(n.state),
      n.policy && n.policy !== "fail_parent" ? h("span", { class: "muted", text: ` on failure: ${n.policy}` }) : null,
      n.children.length ? h("ul", {}, n.children.map(node)) : null,
      n.truncated ? h("p", { class: "muted", text: "… more jobs not shown" }) : null);
    return h("section", { class: "card", "aria-labelledby": "flow-title" },
      h("h2", { id: "flow-title", text: "Flow" }),
      h("ul", { class: "flow-tree", id: "flow-tree" }, node(flow)));
  }

  function render(job, flow) {
    // The page is rebuilt on every event: keep keyboard focus on the same control (or
    // the heading, when that control is now disabled) instead of dropping it to <body>.
    const focusedId = content.contains(document.activeElement) ? document.activeElement.id : null;
    const hadFocus = focusedId !== null;
    const buttons = [];
    if (session.admin) {
      buttons.push(
        h("button", { type: "button", id: "job-retry", class: "primary",
          disabled: !["failed", "cancelled"].includes(job.state), text: "Retry",
          onclick: (e) => act(e.currentTarget, "Job sent back to pending",
            () => api("POST", `/jobs/${encodeURIComponent(id)}/retry`), load) }),
        h("button", { type: "button", id: "job-promote",
          disabled: job.state !== "scheduled", text: "Run now (promote)",
          onclick: (e) => act(e.currentTarget, "Job promoted",
            () => api("POST", `/jobs/${encodeURIComponent(id)}/promote`), load) }),
        h("button", { type: "button", id: "job-cancel", class: "danger",
          disabled: !["scheduled", "pending", "running", "waiting-children"].includes(job.state), text: "Cancel…",
          onclick: async (e) => {
            const button = e.currentTarget;
            if (await confirmAction("Cancel this job?", "A running job's worker loses its lease; " +
              "the job will not run again unless retried. A flow parent's unfinished " +
              "children are cancelled with it.", "Cancel job")) {
              await act(button, "Job cancelled", () => api("POST", `/jobs/${encodeURIComponent(id)}/cancel`), load);
            }
          } }),
      );
    }
    const options = [
      ["Task", job.task], ["Queue", job.queue], ["Tenant", job.tenant ?? "–"],
      ["Attempts", `${job.attempt} / ${job.max_attempts}`], ["Priority", job.priority],
      // What the worker applies, and where it comes from (the job, or its task's defaults).
      ["Timeout", policyText(job.in_effect, "timeout")],
      ["Backoff", policyText(job.in_effect, "backoff")],
      ["Dedupe key", job.dedupe_key ?? "–"], ["Worker", job.worker ?? "–"],
    ];
    const timeline = [["Created", job.created_at, null]];
    if (job.scheduled_at) timeline.push(["Due", job.scheduled_at, null]);
    for (const e of job.errors) timeline.push([`Attempt ${e.attempt} failed`, e.at, e]);
    if (job.started_at) timeline.push([`Attempt ${job.attempt} started`, job.started_at, null]);
    if (job.finished_at) timeline.push([job.state[0].toUpperCase() + job.state.slice(1), job.finished_at, null]);
    timeline.sort((a, b) => (a[1] || 0) - (b[1] || 0));

    content.replaceChildren(
      heading(`Job ${shortId(id.split(":").pop())}`, stateBadge(job.state, "job-state")),
      h("p", { class: "muted mono", text: job.id }),
      buttons.length ? h("div", { class: "toolbar", role: "group", "aria-label": "Job actions" }, buttons)
        : h("p", { class: "notice", text: "Read-only: tenant tokens cannot operate jobs from here." }),
      h("div", { class: "grid" },
        h("section", { class: "card", "aria-labelledby": "opts-title" },
          h("h2", { id: "opts-title", text: "Options" }),
          h("dl", { class: "pairs" }, options.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: String(v) })]))),
        h("section", { class: "card", "aria-labelledby": "progress-title" },
          h("h2", { id: "progress-title", text: "Progress and result" }),
          h("div", { id: "job-progress" }, progressOf(job.progress)),
          h("h3", { text: "Result" }),
          h("pre", { class: "json", id: "job-result", tabindex: "0", text: job.result === null ? "–" : pretty(job.result) }))),
      flowCard(flow),
      h("section", { class: "card", "aria-labelledby": "timeline-title" },
        h("h2", { id: "timeline-title", text: "Timeline" }),
        h("ol", { class: "timeline", id: "timeline" }, timeline.map(([label, at, error]) => h("li", {},
          h("strong", { text: label }), " ", when(at),
          error ? h("div", { class: "error-text", text: `${error.type}: ${error.message}` }) : null,
          error && error.traceback ? h("details", {}, h("summary", { text: "Traceback" }),
            h("pre", { tabindex: "0", text: error.traceback })) : null)))),
      h("section", { class: "card", "aria-labelledby": "payload-title" },
        h("h2", { id: "payload-title", text: "Payload" }),
        h("pre", { class: "json", id: "job-payload", tabindex: "0", text: pretty(job.payload) })),
    );
    if (hadFocus) {
      const again = focusedId ? content.querySelector(`#${CSS.escape(focusedId)}`) : null;
      (again && !again.disabled ? again : content.querySelector("h1")).focus();
    }
  }

  const refresh = throttle(load, 150);
  load().catch(reportError);
  const stopJob = live({ job: id }, refresh);
  return () => {
    stopJob();
    if (stopFlow) stopFlow();
  };
}

// Schedules: next/last run, pause and resume.
function schedulesView(view) {
  view.append(heading("Schedules"));
  if (!session.admin) {
    view.append(h("p", { class: "notice", text: "Schedules are queue-wide: they need the admin token." }));
    return () => {};
  }
  const box = h("div", { id: "schedules" });
  view.append(box);

  async function load() {
    const doc = await api("GET", "/dashboard/api/schedules");
    // Rebuilt on every load: keep focus on the same row's button for keyboard users.
    const focusedRow = box.contains(document.activeElement)
      ? document.activeElement.closest("tr[data-schedule]") : null;
    const refocus = focusedRow ? focusedRow.dataset.schedule : null;
    if (!doc.configured) {
      box.replaceChildren(h("p", { class: "notice", id: "no-scheduler", text:
        "Scheduler not configured: no schedule is stored and no scheduler is running. Define " +
        "schedules with app.cron(...) / app.every(...) and run `conveyor scheduler`." }));
      return;
    }
    if (!doc.schedules.length) {
      box.replaceChildren(h("p", { class: "notice", id: "no-schedules", text:
        "No schedule yet. Add one with `conveyor schedules add NAME --cron '0 3 * * *' --task T`, " +
        "or in code with app.cron(...) / app.every(...)." }));
      return;
    }
    box.replaceChildren(
      h("p", { class: "muted", id: "leader", text: doc.leader
        ? `Leading scheduler: ${doc.leader.holder} (lease ${doc.leader.ttl_seconds.toFixed(0)}s)`
        : "No scheduler is running: schedules are stored but nothing enqueues them." }),
      h("div", { class: "table-wrap" }, h("table", { class: "responsive" },
        h("thead", {}, h("tr", {}, ["Name", "Schedule", "Task", "Queue", "Next run", "Last run", "Source", "Status", ""]
          .map((t) => h("th", { scope: "col", text: t })))),
        h("tbody", {}, doc.schedules.map((sc) => h("tr", { "data-schedule": sc.name },
          h("th", { scope: "row", "data-label": "Name", text: sc.name }),
          h("td", { "data-label": "Schedule", text: sc.error ? `invalid: ${sc.error}`
            : `${sc.kind} ${sc.expr}${sc.kind === "cron" ? ` (${sc.timezone})` : ""}` }),
          h("td", { "data-label": "Task", text: sc.task }),
          h("td", { "data-label": "Queue", text: sc.queue ?? "task default" }),
          h("td", { "data-label": "Next run" }, when(sc.next_run)),
          h("td", { "data-label": "Last run" }, when(sc.last_run)),
          h("td", { "data-label": "Source", text: sc.source }),
          h("td", { "data-label": "Status" }, sc.paused
            ? h("span", { class: "badge", "data-state": "paused", text: "paused" })
            : h("span", { class: "muted", text: "active" }),
            // Why the latest occurrence was not enqueued; `text`, never HTML.
            sc.last_error ? h("div", { class: "error", "data-last-error": "", text:
              `last error: ${sc.last_error.type}: ${sc.last_error.message}` }) : null),
          h("td", { "data-label": "Action" }, h("button", { type: "button",
            "aria-label": `${sc.paused ? "Resume" : "Pause"} schedule ${sc.name}`,
            text: sc.paused ? "Resume" : "Pause",
            onclick: (e) => act(e.currentTarget, `Schedule ${sc.name} ${sc.paused ? "resumed" : "paused"}`,
              () => api("POST", `/dashboard/api/schedules/${encodeURIComponent(sc.name)}/${sc.paused ? "resume" : "pause"}`),
              load) }))))))));
    if (refocus) {
      const again = box.querySelector(`tr[data-schedule="${CSS.escape(refocus)}"] button`);
      if (again) again.focus();
    }
  }
  // No live feed for schedules (they are not jobs): the badge says the page polls.
  const badge = $("#live");
  badge.dataset.live = "poll";
  badge.textContent = "Polling";
  load().catch(reportError);
  const poll = setInterval(() => load().catch(reportError), 15000);
  return () => clearInterval(poll);
}

// --- routing and session ----------------------------------------------------------------------
function route() {
  teardown();
  teardown = () => {};
  setLive(false);
  const view = $("#view");
  view.replaceChildren();
  if (!session.signedIn) return;
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  let nav = "overview";
  if (parts[0] === "queue" && parts[1]) teardown = queueView(view, parts[1], params);
  else if (parts[0] === "job" && parts[1]) teardown = jobView(view, parts[1]);
  else if (parts[0] === "schedules") { nav = "schedules"; teardown = schedulesView(view); }
  else teardown = overview(view);
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === nav && parts[0] !== "queue" && parts[0] !== "job") link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const title = $("h1", view);
  document.title = `${title ? title.textContent : "Conveyor"} · Conveyor`;
  // Move focus to the new heading after navigation (not on first load), so keyboard and
  // screen-reader users land on the content that changed.
  if (route.ran && title) title.focus();
  route.ran = true;
}

async function startSession() {
  // Never answers 401: it says whether the stored token (or none, on an open API) works.
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(`${ROOT}/dashboard/api/session`, {
    headers: token ? { Authorization: `Bearer ${token}` } : {}, cache: "no-store",
  });
  const info = await response.json();
  Object.assign(session, { admin: info.admin, tenant: info.tenant, signedIn: info.signed_in });
  $("#login").hidden = info.signed_in;
  $("#signout").hidden = !(info.signed_in && info.auth);
  $("#nav-schedules").parentElement.hidden = info.signed_in && !info.admin;
  $("#who").textContent = !info.signed_in ? "" : info.admin ? (info.auth ? "admin" : "open API (no tokens)")
    : `tenant ${info.tenant} · read-only`;
  if (!info.signed_in) {
    $("#login-error").textContent = token ? info.reason : "";
    $("#token").focus();
  }
  route();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  session.signedIn = false;
  teardown();
  teardown = () => {};
  $("#view").replaceChildren();
  $("#login").hidden = false;
  $("#signout").hidden = true;
  $("#who").textContent = "";
  $("#login-error").textContent = message || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    startSession().catch(reportError);
  });
  $("#signout").addEventListener("click", () => { signOut("Signed out."); startSession().catch(reportError); });
  window.addEventListener("hashchange", route);
  startSession().catch(reportError);
});
