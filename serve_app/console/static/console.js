// serveflow console: one page, hash routes, the public API as its only source.
// Every value that comes from the API is written with textContent / setAttribute, never as HTML.

const API_ROOT = new URL("../", document.baseURI);
const TOKEN_KEY = "serveflow.token";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const RUN_STATUSES = ["queued", "pending", "running", "succeeded", "failed", "cancelled"];
const PAGE_SIZE = 25;
const main = document.getElementById("main");
let refreshTimer = null;
let generation = 0; // bumped on every navigation: stale refreshes stop themselves

class AuthNeeded extends Error {}

// ------------------------------------------------------------------ DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "css") Object.assign(el.style, value); // CSSOM: allowed by the CSP, unlike style=""
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function field(text, control) {
  // A label of its own (its name is exactly ``text``) beside its control.
  return h("div", { class: "field" }, h("label", { for: control.id }, text), control);
}

function badge(status) {
  const s = String(status || "unknown");
  return h("span", { class: `badge s-${s.replace(/[^a-z_]/g, "")}` }, s);
}

function when(ts) {
  if (ts === null || ts === undefined) return "—";
  const d = new Date(ts * 1000);
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

function replicaText(replicas) {
  // {"RUNNING": 2} or {target, running} -> "2 running" / "1 of 2 running"
  if (!replicas || typeof replicas !== "object") return "—";
  if ("target" in replicas || "running" in replicas) return `${replicas.running ?? "?"} of ${replicas.target ?? "?"} running`;
  const parts = Object.entries(replicas).map(([state, n]) => `${n} ${String(state).toLowerCase()}`);
  return parts.length ? parts.join(", ") : "none (scaled to zero)";
}

function ms(value) {
  if (value === null || value === undefined) return "—";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${value.toFixed(1)} ms`;
}

function json(value) {
  return h("pre", {}, JSON.stringify(value, null, 2));
}

function table(headers, rows, { narrow = [] } = {}) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, headers.map((t, i) => h("th", { scope: "col", class: narrow.includes(i) ? "hide-narrow" : null }, t)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) => h("td", { class: narrow.includes(i) ? "hide-narrow" : null }, c))))),
    ),
  );
}

function errorBox(error) {
  if (!error) return null;
  return h("p", { class: "error", role: "alert" }, `${error.code || "error"}: ${error.message || ""}`);
}

function runLink(id, label) {
  return h("a", { href: `#/runs/${encodeURIComponent(id)}` }, label || id);
}

// ------------------------------------------------------------------ API

async function api(path, { method = "GET", params, body } = {}) {
  const url = new URL(path, API_ROOT);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
  }
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let doc;
  try {
    doc = await resp.json();
  } catch {
    doc = { success: false, error: { code: "bad_response", message: `HTTP ${resp.status}` } };
  }
  if (resp.status === 401) throw new AuthNeeded((doc.error && doc.error.message) || "a token is required");
  return { status: resp.status, doc };
}

// ------------------------------------------------------------------ routing

const routes = [
  [/^\/?$/, overview, "overview"],
  [/^\/runs\/?$/, runsPage, "runs"],
  [/^\/runs\/([^/]+)$/, runPage, "runs"],
  [/^\/workflows\/?$/, workflowsPage, "workflows"],
  [/^\/workflows\/([^/]+)$/, workflowPage, "workflows"],
  [/^\/schedules\/?$/, schedulesPage, "schedules"],
  [/^\/events\/?$/, eventsPage, "events"],
];

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = raw.split("?");
  return { path, query: new URLSearchParams(query) };
}

async function render() {
  generation += 1;
  const mine = generation;
  clearTimeout(refreshTimer);
  const { path, query } = parseHash();
  const match = routes.find(([re]) => re.test(path));
  const [re, view, nav] = match || [null, notFound, ""];
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const args = re ? path.match(re).slice(1).map(decodeURIComponent) : [];
  try {
    await view({ args, query, live: () => mine === generation });
  } catch (exc) {
    if (mine !== generation) return;
    if (exc instanceof AuthNeeded) return showLogin(exc.message);
    show(h("h1", {}, "Something went wrong"), h("p", { class: "error", role: "alert" }, String(exc && exc.message ? exc.message : exc)));
  }
  updateSession();
}

function show(...nodes) {
  main.replaceChildren(...nodes.flat().filter(Boolean));
}

function refreshIn(seconds, live, fn) {
  refreshTimer = setTimeout(async () => {
    if (!live() || document.hidden) return live() && refreshIn(seconds, live, fn);
    try {
      await fn();
    } catch (exc) {
      if (exc instanceof AuthNeeded) return showLogin(exc.message);
    }
    if (live()) refreshIn(seconds, live, fn);
  }, seconds * 1000);
}

function updateSession() {
  const el = document.getElementById("session");
  el.replaceChildren();
  if (sessionStorage.getItem(TOKEN_KEY)) {
    el.append(
      "token set · ",
      h("button", { type: "button", class: "secondary", onclick: () => { sessionStorage.removeItem(TOKEN_KEY); render(); } }, "Sign out"),
    );
  }
}

function showLogin(message) {
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "current-password", required: true });
  const form = h(
    "form",
    {
      onsubmit: (ev) => {
        ev.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        render();
      },
    },
    field("API token (Authorization: Bearer …)", input),
    h("p", {}, h("button", { type: "submit" }, "Continue")),
  );
  show(h("h1", {}, "Sign in"), h("p", { class: "notice", role: "alert" }, `The API needs a bearer token: ${message}`), form);
  input.focus();
}

function notFound() {
  show(h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", { href: "#/" }, "Back to the overview")));
}

// ------------------------------------------------------------------ overview

async function overview({ live }) {
  const draw = async () => {
    const { doc } = await api("v1/status");
    if (!live()) return;
    show(h("h1", {}, "Overview ", badge(doc.status)), ...statusSections(doc));
  };
  await draw();
  refreshIn(3, live, draw);
}

function statusSections(doc) {
  const parts = { ...(doc.components || {}), ...(doc.pools || {}) };
  const deployments = doc.deployments || {};
  const rows = Object.entries(parts).map(([name, c]) => {
    const details = c.details || {};
    const serveState = deployments[name] || deployments[`HandlerWorker_${name}`] || details.serve || {};
    const replicas = details.replicas || (serveState.replica_states ? serveState.replica_states : null);
    const last = details.last_error ? `${details.last_error} (${when(details.last_error_at)})` : "—";
    return [
      h("span", { class: "name" }, name),
      badge(c.status),
      c.error || "—",
      when(c.since),
      replicaText(replicas),
      last,
    ];
  });
  const tasks = doc.tasks || {};
  const history = (tasks.history && tasks.history.buckets) || [];
  const total = history.reduce((n, b) => n + b.tasks, 0);
  const failed = history.reduce((n, b) => n + b.failed, 0);
  const peak = Math.max(1, ...history.map((b) => b.tasks));
  const slowest = Math.max(1, ...history.map((b) => b.mean_ms || 0));
  const bucketS = (tasks.history && tasks.history.bucket_s) || 10;
  const latest = history.filter((b) => b.tasks).slice(-6);
  const mean = latest.length ? latest.reduce((n, b) => n + b.mean_ms * b.tasks, 0) / latest.reduce((n, b) => n + b.tasks, 0) : null;
  const resources = doc.resources || {};
  return [
    h("h2", {}, "Deployments and pools"),
    table(["name", "status", "error", "since", "replicas", "last error"], rows, { narrow: [3, 5] }),
    h("h2", {}, "Tasks, last 10 minutes (this Coordinator)"),
    h(
      "div",
      { class: "cards" },
      h("div", { class: "card" }, h("h3", {}, "Throughput"), `${total} tasks, ${failed} failed · ${(total / (history.length * bucketS || 1)).toFixed(2)}/s`),
      h("div", { class: "card" }, h("h3", {}, "Latency (last minute)"), `mean ${ms(mean)} · max ${ms(latest.length ? Math.max(...latest.map((b) => b.max_ms)) : null)}`),
      h("div", { class: "card" }, h("h3", {}, "In flight"), Object.entries(tasks.inflight || {}).map(([pool, n]) => `${pool}: ${n}`).join(", ") || "none"),
    ),
    h(
      "div",
      { class: "cards" },
      h(
        "div",
        { class: "card", role: "img", "aria-label": `tasks per ${bucketS} seconds over the last 10 minutes` },
        h("h3", {}, `Tasks per ${bucketS} s`),
        h("div", { class: "spark" }, history.map((b) => h("span", { class: b.failed ? "fail" : null, title: `${new Date(b.start * 1000).toLocaleTimeString()}: ${b.tasks} tasks, ${b.failed} failed`, css: { height: `${Math.round((100 * b.tasks) / peak)}%` } }))),
      ),
      h(
        "div",
        { class: "card", role: "img", "aria-label": `mean task latency per ${bucketS} seconds over the last 10 minutes` },
        h("h3", {}, "Mean latency"),
        h("div", { class: "spark" }, history.map((b) => h("span", { title: `${new Date(b.start * 1000).toLocaleTimeString()}: mean ${ms(b.mean_ms)}, max ${ms(b.max_ms)}`, css: { height: `${b.mean_ms ? Math.max(2, Math.round((100 * b.mean_ms) / slowest)) : 0}%` } }))),
      ),
    ),
    h("h2", {}, "Cluster resources"),
    resources.error ? errorBox({ code: "unavailable", message: resources.error }) : json(resources),
  ];
}

// ------------------------------------------------------------------ runs

async function runsPage({ query, live }) {
  const status = query.get("status") || "";
  const workflow = query.get("workflow") || "";
  const before = query.get("before") || "";
  const trail = (query.get("trail") || "").split(",").filter(Boolean); // cursors of the pages before this one
  const [{ doc }, defs] = await Promise.all([
    api("v1/runs", { params: { status, workflow, limit: PAGE_SIZE, before } }),
    api("v1/workflows"),
  ]);
  if (!live()) return;
  const names = ((defs.doc && defs.doc.workflows) || []).map((w) => w.name);
  const statusSel = h("select", { id: "f-status", name: "status" }, h("option", { value: "" }, "any"), RUN_STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  const wfSel = h("select", { id: "f-workflow", name: "workflow" }, h("option", { value: "" }, "any"), names.map((n) => h("option", { value: n, selected: n === workflow }, n)));
  const go = (extra) => {
    const p = new URLSearchParams({ status: statusSel.value, workflow: wfSel.value, ...extra });
    for (const [k, v] of [...p.entries()]) if (!v) p.delete(k);
    location.hash = `#/runs?${p}`;
  };
  const filters = h(
    "form",
    { class: "toolbar", onsubmit: (ev) => { ev.preventDefault(); go({}); } },
    field("Status", statusSel),
    field("Workflow", wfSel),
    h("button", { type: "submit" }, "Filter"),
  );
  if (!doc.success) return show(h("h1", {}, "Runs"), filters, errorBox(doc.error));
  const runs = doc.runs || [];
  const rows = runs.map((r) => [
    runLink(r.run_id, r.run_id.slice(0, 12)),
    r.workflow,
    badge(r.status),
    r.queue_position ? `#${r.queue_position} in line` : "",
    when(r.created_at),
    r.parent_run_id ? runLink(r.parent_run_id, "parent") : "",
    r.error ? r.error.message : "",
  ]);
  const pager = h(
    "div",
    { class: "toolbar" },
    h("button", { type: "button", class: "secondary", disabled: !before, onclick: () => go({ before: trail.at(-1) || "", trail: trail.slice(0, -1).join(",") }) }, "← Newer"),
    h("button", { type: "button", class: "secondary", disabled: runs.length < PAGE_SIZE, onclick: () => go({ before: String(runs.at(-1).created_at), trail: [...trail, before].join(",") }) }, "Older →"),
  );
  show(
    h("h1", {}, "Runs"),
    filters,
    runs.length ? table(["run", "workflow", "status", "queue", "created", "parent", "error"], rows, { narrow: [4, 5] }) : h("p", { class: "muted" }, "No runs match."),
    pager,
  );
  refreshIn(5, live, () => (live() ? runsPage({ query, live }) : null));
}

async function runPage({ args: [runId], live }) {
  const draw = async () => {
    const { doc } = await api(`v1/runs/${encodeURIComponent(runId)}`);
    if (!live()) return null;
    if (!doc.success) {
      show(h("h1", {}, "Run"), errorBox(doc.error), h("p", {}, h("a", { href: "#/runs" }, "All runs")));
      return null;
    }
    const run = doc.run;
    const def = await definitionOf(run.workflow);
    const [children] = await Promise.all([api("v1/runs", { params: { parent_run_id: run.run_id, limit: 200 } })]);
    if (!live()) return null;
    const cancel = h(
      "button",
      {
        type: "button",
        class: "danger",
        disabled: TERMINAL.has(run.status),
        onclick: async () => {
          cancel.disabled = true;
          const res = await api(`v1/runs/${encodeURIComponent(run.run_id)}/cancel`, { method: "POST" });
          if (!res.doc.success) main.append(errorBox(res.doc.error));
          await draw();
        },
      },
      "Cancel run",
    );
    const kids = (children.doc && children.doc.runs) || [];
    const signals = [...new Set(run.steps.filter((st) => st.task_type.startsWith("signal:")).map((st) => st.task_type.slice(7)))];
    show(
      h("h1", {}, `Run ${run.run_id} `, badge(run.status)),
      h(
        "dl",
        { class: "kv" },
        h("dt", {}, "workflow"), h("dd", {}, h("a", { href: `#/workflows/${encodeURIComponent(run.workflow)}` }, run.workflow)),
        h("dt", {}, "created"), h("dd", {}, when(run.created_at)),
        h("dt", {}, "started"), h("dd", {}, when(run.started_at)),
        h("dt", {}, "finished"), h("dd", {}, when(run.finished_at)),
        h("dt", {}, "priority"), h("dd", {}, String(run.priority)),
        run.concurrency_key ? [h("dt", {}, "concurrency key"), h("dd", {}, run.concurrency_key)] : null,
        run.queue_position ? [h("dt", {}, "queue position"), h("dd", {}, String(run.queue_position))] : null,
        run.parent_run_id ? [h("dt", {}, "parent run"), h("dd", {}, runLink(run.parent_run_id), ` (step ${run.parent_step})`)] : null,
        h("dt", {}, "trace"), h("dd", {}, run.trace_id || "—"),
      ),
      h("p", {}, cancel),
      errorBox(run.error),
      signals.length && !TERMINAL.has(run.status) ? signalForm(run, signals, draw) : null,
      h("h2", {}, "Steps"),
      dag(def ? def.upstream : {}, run.steps.map((s) => s.name), Object.fromEntries(run.steps.map((s) => [s.name, s]))),
      table(["step", "runs", "status", "attempts", "duration", "progress", "error / child"], run.steps.map(stepRow), { narrow: [1] }),
      kids.length ? [h("h2", {}, `Child runs (${kids.length})`), table(["run", "workflow", "step", "status"], kids.map((c) => [runLink(c.run_id, c.run_id.slice(0, 12)), c.workflow, c.parent_step, badge(c.status)]))] : null,
      h("h2", {}, "Input"),
      json(run.input),
      h("h2", {}, "Output"),
      json(run.output),
    );
    return run;
  };
  const run = await draw();
  if (run && !TERMINAL.has(run.status)) {
    refreshIn(1, live, async () => {
      const again = await draw();
      if (again && TERMINAL.has(again.status)) clearTimeout(refreshTimer);
    });
  }
}

function signalForm(run, names, redraw) {
  const name = h("select", { id: "signal-name", name: "signal" }, names.map((n) => h("option", { value: n }, n)));
  const payload = h("textarea", { id: "signal-payload", name: "payload", spellcheck: "false", rows: 3 }, "{}");
  const outcome = h("div", { "aria-live": "polite" });
  return h(
    "form",
    {
      class: "card",
      onsubmit: async (ev) => {
        ev.preventDefault();
        outcome.replaceChildren();
        let value;
        try {
          value = JSON.parse(payload.value || "null");
        } catch (exc) {
          outcome.append(errorBox({ code: "invalid_json", message: exc.message }));
          return;
        }
        const { doc } = await api(`v1/runs/${encodeURIComponent(run.run_id)}/signals/${encodeURIComponent(name.value)}`, { method: "POST", body: { payload: value } });
        if (!doc.success) return outcome.append(errorBox(doc.error));
        await redraw();
      },
    },
    h("h3", {}, "Send a signal"),
    h("div", { class: "toolbar" }, field("Signal", name), h("button", { type: "submit" }, "Send signal")),
    field("Payload (JSON)", payload),
    outcome,
  );
}

function stepRow(s) {
  const progress = s.map
    ? h("div", {}, h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": s.map.total, "aria-valuenow": s.map.done, "aria-label": `${s.name} elements done` }, h("span", { css: { width: `${s.map.total ? Math.round((100 * s.map.done) / s.map.total) : 100}%` } })), `${s.map.done}/${s.map.total}${s.map.failed ? `, ${s.map.failed} failed` : ""}`)
    : "";
  const child = s.child_run_id ? runLink(s.child_run_id, "child run") : null;
  const failedItems = s.map && s.map.failed_items && s.map.failed_items.length
    ? h("div", {}, s.map.failed_items.map((f) => h("div", { class: "error" }, `element ${f.index}: ${f.error ? f.error.message : ""}`)))
    : null;
  return [
    s.name,
    s.task_type,
    badge(s.status),
    String(s.attempts),
    s.duration_ms === null || s.duration_ms === undefined ? "—" : ms(s.duration_ms),
    progress,
    h(
      "div",
      {},
      s.error ? h("span", { class: "error" }, `${s.error.code}: ${s.error.message}`) : null,
      s.status === "running" && s.task_type.startsWith("signal:") ? h("div", {}, `waiting for signal ${s.task_type.slice(7)}${s.wake_at ? `, until ${when(s.wake_at)}` : ""}`) : null,
      s.status === "running" && s.task_type === "sleep" && s.wake_at ? h("div", {}, `sleeping until ${when(s.wake_at)}`) : null,
      child,
      failedItems,
    ),
  ];
}

const definitions = new Map();
async function definitionOf(name) {
  if (!definitions.has(name)) {
    const { doc } = await api(`v1/workflows/${encodeURIComponent(name)}`);
    definitions.set(name, doc && doc.upstream ? doc : null);
  }
  return definitions.get(name);
}

// ------------------------------------------------------------------ the DAG

function dag(deps, order, states) {
  // Layers by longest path from a root; within a layer, the definition's order.
  const level = {};
  const visit = (name, seen = new Set()) => {
    if (level[name] !== undefined) return level[name];
    if (seen.has(name)) return 0;
    seen.add(name);
    const up = (deps[name] || []).filter((d) => order.includes(d));
    level[name] = up.length ? 1 + Math.max(...up.map((d) => visit(d, seen))) : 0;
    return level[name];
  };
  order.forEach((n) => visit(n));
  const layers = [];
  for (const name of order) (layers[level[name]] ||= []).push(name);
  const W = 150, H = 40, GX = 50, GY = 14;
  const pos = {};
  layers.forEach((names, col) => names.forEach((name, row) => { pos[name] = { x: 10 + col * (W + GX), y: 10 + row * (H + GY) }; }));
  const width = 20 + layers.length * (W + GX) - GX;
  const height = 20 + Math.max(1, ...layers.map((l) => l.length)) * (H + GY) - GY;
  const edges = [];
  for (const name of order) {
    for (const d of deps[name] || []) {
      if (!pos[d]) continue;
      const a = pos[d], b = pos[name];
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      edges.push(svg("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
    }
  }
  const nodes = order.map((name) => {
    const st = states[name];
    const status = st ? st.status : "definition";
    const label = name.length > 18 ? `${name.slice(0, 17)}…` : name;
    const extra = st && st.map ? ` ${st.map.done}/${st.map.total}` : "";
    return svg(
      "g",
      { class: `node s-${status}`, transform: `translate(${pos[name].x},${pos[name].y})`, tabindex: 0, role: "img", "aria-label": `${name}: ${status}${extra}` },
      svg("title", {}, `${name}: ${status}${st ? `, ${st.attempts} attempt(s)` : ""}${extra}`),
      svg("rect", { width: W, height: H }),
      svg("text", { x: 8, y: 17 }, label),
      svg("text", { x: 8, y: 32 }, `${status}${extra}`),
    );
  });
  const marker = svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9aa1ab" })));
  return h("div", { class: "dag" }, svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "group", "aria-label": "workflow steps" }, marker, edges, nodes));
}

// ------------------------------------------------------------------ workflows

async function workflowsPage({ live }) {
  const { doc } = await api("v1/workflows");
  if (!live()) return;
  if (!doc.workflows) return show(h("h1", {}, "Workflows"), errorBox(doc.error));
  show(
    h("h1", {}, "Workflows"),
    table(
      ["workflow", "steps", "description"],
      doc.workflows.map((w) => [h("a", { href: `#/workflows/${encodeURIComponent(w.name)}` }, w.name), String(w.steps.length), w.description || ""]),
    ),
  );
}

function skeleton(schema) {
  // A starting input from the schema: required properties with an empty value of their type.
  const out = {};
  const props = (schema && schema.properties) || {};
  for (const name of (schema && schema.required) || Object.keys(props)) {
    const type = props[name] && props[name].type;
    out[name] = type === "integer" || type === "number" ? 0 : type === "boolean" ? false : type === "array" ? [] : type === "object" ? {} : "";
  }
  return out;
}

async function workflowPage({ args: [name], live }) {
  const { doc } = await api(`v1/workflows/${encodeURIComponent(name)}`);
  if (!live()) return;
  if (!doc.steps) return show(h("h1", {}, name), errorBox(doc.error));
  const input = h("textarea", { id: "run-input", name: "input", spellcheck: "false" }, JSON.stringify(skeleton(doc.input_schema), null, 2));
  const priority = h("select", { id: "run-priority", name: "priority" }, h("option", { value: "" }, "workflow default"), [1, 2, 3].map((p) => h("option", { value: p }, String(p))));
  const problem = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    {
      onsubmit: async (ev) => {
        ev.preventDefault();
        problem.replaceChildren();
        let value;
        try {
          value = JSON.parse(input.value || "{}");
        } catch (exc) {
          problem.append(errorBox({ code: "invalid_json", message: exc.message }));
          return;
        }
        const body = { input: value };
        if (priority.value) body.priority = Number(priority.value);
        const { doc: res } = await api(`v1/workflows/${encodeURIComponent(name)}/runs`, { method: "POST", body });
        if (!res.success) {
          problem.append(errorBox(res.error));
          const errs = (res.error && res.error.details && res.error.details.errors) || [];
          if (errs.length) problem.append(h("ul", {}, errs.map((e) => h("li", { class: "error" }, `${(e.loc || []).join(".")}: ${e.msg}`))));
          return;
        }
        location.hash = `#/runs/${encodeURIComponent(res.run_id)}`;
      },
    },
    field("Run input (JSON)", input),
    h("div", { class: "toolbar" }, field("Priority", priority), h("button", { type: "submit", id: "start-run" }, "Start run")),
    problem,
  );
  show(
    h("h1", {}, `Workflow ${doc.name}`),
    doc.description ? h("p", {}, doc.description) : null,
    doc.concurrency ? h("p", { class: "muted" }, `Concurrency: key ${doc.concurrency.key || "(whole workflow)"}, at most ${doc.concurrency.max_runs} at once`) : null,
    h("h2", {}, "Steps"),
    dag(doc.upstream || {}, doc.steps.map((s) => s.name), {}),
    table(
      ["step", "runs", "map", "when"],
      doc.steps.map((s) => [s.name, s.task_type || `workflow:${s.workflow}`, s.map ? `over ${s.map.over}, ${s.map.max_parallel} at once` : "", s.when || ""]),
    ),
    h("h2", {}, "Input schema"),
    doc.input_schema ? json(doc.input_schema) : h("p", { class: "muted" }, "Any JSON object."),
    h("h2", {}, "Start a run"),
    form,
    h("p", {}, h("a", { href: `#/runs?workflow=${encodeURIComponent(doc.name)}` }, `Runs of ${doc.name}`)),
  );
}

// ------------------------------------------------------------------ events and dead letters

async function eventsPage({ live }) {
  const draw = async () => {
    const [status, letters, events] = await Promise.all([api("v1/status"), api("v1/dead-letters", { params: { limit: 100 } }), api("v1/events", { params: { limit: 1000 } })]);
    if (!live()) return;
    const subs = (status.doc.components && status.doc.components.Coordinator && status.doc.components.Coordinator.details.subscriptions) || [];
    const outcome = h("div", { "aria-live": "polite" });
    const replay = (d) => async () => {
      const res = await api(`v1/dead-letters/${encodeURIComponent(d.subscription)}/${d.event.seq}/replay`, { method: "POST" });
      if (!res.doc.success) return outcome.replaceChildren(errorBox(res.doc.error));
      await draw();
    };
    const recent = ((events.doc && events.doc.events) || []).slice(-50).reverse();
    show(
      h("h1", {}, "Events"),
      h("h2", {}, "Subscriptions"),
      Array.isArray(subs) && subs.length
        ? table(["subscription", "types", "delivers to", "position", "lag"], subs.map((s) => [s.name, s.types.join(", "), s.target, String(s.position), String(s.lag)]))
        : h("p", { class: "muted" }, "No subscriptions are configured."),
      h("h2", {}, "Dead letters"),
      outcome,
      letters.doc.dead_letters && letters.doc.dead_letters.length
        ? table(
            ["subscription", "event", "type", "attempts", "error", "dead since", ""],
            letters.doc.dead_letters.map((d) => [
              d.subscription,
              `${d.event.id} (#${d.event.seq})`,
              d.event.type,
              String(d.attempts),
              d.error ? `${d.error.code}: ${d.error.message}` : "",
              `${when(d.dead_at)}${d.replayed_at ? ` · replayed ${when(d.replayed_at)}` : ""}`,
              h("button", { type: "button", class: "secondary", onclick: replay(d), "aria-label": `Replay ${d.event.id} to ${d.subscription}` }, "Replay"),
            ]),
            { narrow: [5] },
          )
        : h("p", { class: "muted" }, "No dead letters."),
      h("h2", {}, "Latest events"),
      recent.length
        ? table(["#", "id", "type", "key", "payload", "appended"], recent.map((e) => [String(e.seq), e.id, e.type, e.key || "", JSON.stringify(e.payload), when(e.appended_at)]), { narrow: [4] })
        : h("p", { class: "muted" }, "No events yet."),
    );
  };
  await draw();
  refreshIn(5, live, draw);
}

// ------------------------------------------------------------------ schedules

async function schedulesPage({ live }) {
  const draw = async () => {
    const { doc } = await api("v1/schedules");
    if (!live()) return;
    if (!doc.success) return show(h("h1", {}, "Schedules"), errorBox(doc.error));
    const outcome = h("div", { "aria-live": "polite" });
    const act = (name, action) => async () => {
      const res = await api(`v1/schedules/${encodeURIComponent(name)}/${action}`, { method: "POST" });
      if (!res.doc.success) return outcome.replaceChildren(errorBox(res.doc.error));
      if (action === "trigger") location.hash = `#/runs/${encodeURIComponent(res.doc.run_id)}`;
      else await draw();
    };
    const rows = (doc.schedules || []).map((s) => [
      s.name,
      h("a", { href: `#/workflows/${encodeURIComponent(s.workflow)}` }, s.workflow),
      `${s.cron} (${s.timezone})`,
      `${s.overlap} / ${s.catch_up}`,
      s.paused ? badge("paused") : badge("active"),
      when(s.last_tick),
      when(s.next_fire),
      h(
        "div",
        { class: "toolbar" },
        s.paused
          ? h("button", { type: "button", class: "secondary", onclick: act(s.name, "resume"), "aria-label": `Resume ${s.name}` }, "Resume")
          : h("button", { type: "button", class: "secondary", onclick: act(s.name, "pause"), "aria-label": `Pause ${s.name}` }, "Pause"),
        h("button", { type: "button", onclick: act(s.name, "trigger"), "aria-label": `Trigger ${s.name} now` }, "Trigger now"),
      ),
    ]);
    show(
      h("h1", {}, "Schedules"),
      outcome,
      rows.length ? table(["schedule", "workflow", "cron", "overlap / catch-up", "state", "last tick", "next fire", ""], rows, { narrow: [3, 5] }) : h("p", { class: "muted" }, "No schedules are configured."),
      h("p", {}, h("a", { href: "#/runs" }, "Runs"), " started by a schedule have the idempotency key schedule.<name>.<tick>."),
    );
  };
  await draw();
  refreshIn(5, live, draw);
}

window.addEventListener("hashchange", () => {
  render();
  main.focus({ preventScroll: true });
});
render();
