// The EdgeCascade operator dashboard: plain JS, no library, nothing fetched but this cloud's API.
//
// The admin token is asked for once and kept in sessionStorage (this tab only); every call
// sends it as a bearer token. A 401 forgets it and asks again. Everything shown comes from
// the cloud's JSON API and is written with textContent (never as HTML): device and gateway
// names come from the field.
"use strict";

const TOKEN_KEY = "edgecascade.admin-token";
const POLL_MS = 3000; // fleet and charts
const SLOW_POLL_MS = 6000; // jobs and model versions
const API = new URL("..", window.location.href); // the page is served at <cloud>/dashboard/
const SVG_NS = "http://www.w3.org/2000/svg";
const TIER_COLOURS = {
  gateway: "#2b8a3e",
  gateway_cache: "#94d82d",
  cloud: "#1c7ed6",
  gateway_degraded: "#e8590c",
  gateway_cache_degraded: "#f59f00",
};
const LATENCY_COLOURS = { p50: "#1c7ed6", p90: "#f08c00", p99: "#e03131" };

const MAX_CLASS_NAME = 64; // as the API bounds a group's class name
const state = { classes: [], cursor: null, timers: [], objectUrls: [], groupUrls: [] };

// ------------------------------------------------------------------------------ helpers
function $(id) {
  return document.getElementById(id);
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell);
    else td.textContent = cell === null || cell === undefined ? "–" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren(...rows);
  if (!rows.length) {
    const td = el("td", empty, { colspan: String(columns), class: "empty" });
    const tr = document.createElement("tr");
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString([], { hour12: false });
}

function when(unix) {
  return unix ? new Date(unix * 1000).toLocaleString([], { hour12: false }) : "–";
}

function className(index) {
  if (index === null || index === undefined) return "–";
  const name = state.classes[index];
  return name ? `${index} ${name}` : String(index);
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

// ---------------------------------------------------------------------------- API calls
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) throw new ApiError(401, "no token");
  const headers = { Authorization: `Bearer ${token}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(new URL(path, API), init);
  if (response.status === 401) {
    signOut("The token was refused: sign in again.");
    throw new ApiError(401, "token refused");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).message || message;
    } catch (e) {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, message);
  }
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.blob();
}

// ------------------------------------------------------------------------------ sign-in
function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  $("app").hidden = true;
  $("forget").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await refreshFleet();
  } catch (e) {
    if (e.status !== 401) $("login-error").textContent = e.message;
    return;
  }
  start();
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("forget").hidden = false;
  const every = (fn, ms) => {
    fn();
    state.timers.push(setInterval(fn, ms));
  };
  every(safely(refreshFleet), POLL_MS);
  every(safely(refreshTraffic), POLL_MS);
  every(safely(refreshJobs), SLOW_POLL_MS);
  every(safely(refreshFederated), SLOW_POLL_MS);
  every(safely(refreshModels), SLOW_POLL_MS);
  every(safely(refreshDrift), SLOW_POLL_MS);
  safely(() => loadExamples(true))();
  safely(loadGroups)();
}

function safely(fn) {
  return async () => {
    try {
      await fn();
    } catch (e) {
      if (e.status !== 401) setStatus(e.message, true);
    }
  };
}

// -------------------------------------------------------------------------------- fleet
async function refreshFleet() {
  const fleet = await call("GET", "v1/fleet");
  state.classes = fleet.cloud.classes || [];
  const cloud = fleet.cloud.model;
  $("served").textContent = `cloud serves ${cloud.name} v${cloud.version}`;
  const nodes = [row(["cloud", cloud.name, cloud.version, "now", null, null, null, null, "serving"])];
  nodes[0].dataset.node = "cloud";
  for (const g of fleet.gateways) {
    const latency = g.latency_ms.count ? `${g.latency_ms.p50} / ${g.latency_ms.p99}` : "–";
    const pending = g.outbox ? g.outbox.pending : null;
    const status = el("span", g.stale ? "stale" : "ok", { class: g.stale ? "bad" : "good" });
    const tr = row([
      `gateway ${g.gateway_id}`,
      g.model.name,
      g.model.version,
      ago(g.age),
      g.requests,
      g.devices_seen,
      latency,
      pending,
      status,
    ]);
    tr.dataset.gateway = g.gateway_id;
    tr.title = `token ${g.token}; heartbeat every ${g.interval} s`;
    nodes.push(tr);
  }
  fill($("nodes").tBodies[0], nodes, "", 9);
  const devices = fleet.devices.map((d) => {
    const tr = row([
      d.device_id,
      ago(fleet.now - d.last_seen),
      d.seen_by.join(", "),
      d.gateway_requests,
      d.cloud_requests,
      d.hard_examples,
    ]);
    tr.dataset.device = d.device_id;
    return tr;
  });
  fill($("devices").tBodies[0], devices, "No device seen yet.", 6);
  setStatus(`updated ${clock(fleet.now)}`, false);
}

// ------------------------------------------------------------------------------- charts
const CHART = { width: 640, height: 240, left: 48, right: 12, top: 12, bottom: 28 };

function chartFrame(chart, since, until, yMax, yLabel) {
  const plotW = CHART.width - CHART.left - CHART.right;
  const plotH = CHART.height - CHART.top - CHART.bottom;
  const x = (t) => CHART.left + ((t - since) / Math.max(until - since, 1e-9)) * plotW;
  const y = (v) => CHART.top + plotH - (v / yMax) * plotH;
  const axes = svg("g", { class: "axes" });
  for (const fraction of [0, 0.5, 1]) {
    const value = yMax * fraction;
    axes.appendChild(svg("line", { x1: CHART.left, x2: CHART.width - CHART.right, y1: y(value), y2: y(value) }));
    const label = svg("text", { x: CHART.left - 6, y: y(value) + 4, "text-anchor": "end" });
    label.textContent = yLabel(value);
    axes.appendChild(label);
  }
  for (const [t, anchor] of [[since, "start"], [until, "end"]]) {
    const label = svg("text", { x: x(t), y: CHART.height - 8, "text-anchor": anchor });
    label.textContent = clock(t);
    axes.appendChild(label);
  }
  chart.replaceChildren(axes);
  return { x, y, plotW };
}

function legend(box, entries) {
  box.replaceChildren(
    ...entries.map(([name, colour]) => {
      const item = el("span", name, { class: "key" });
      item.style.setProperty("--key", colour);
      return item;
    }),
  );
}

// The x axis starts at the window's start, or at the oldest data when the fleet is younger.
function firstTime(traffic) {
  const times = traffic.mix.concat(traffic.latency).map((p) => p.t);
  if (!times.length) return traffic.since;
  return Math.max(traffic.since, Math.min(...times) - 2 * traffic.bucket_seconds);
}

function drawMix(traffic) {
  const chart = $("mix-chart");
  const since = firstTime(traffic);
  const { x, y, plotW } = chartFrame(chart, since, traffic.until, 1, (v) => `${Math.round(v * 100)}%`);
  const span = Math.max(traffic.until - since, 1e-9);
  const barW = Math.max(2, (traffic.bucket_seconds / span) * plotW - 1);
  traffic.tiers.forEach((tier, i) => {
    let d = "";
    for (const point of traffic.mix) {
      const below = traffic.tiers.slice(0, i).reduce((sum, t) => sum + point.shares[t], 0);
      const share = point.shares[tier];
      if (share <= 0) continue;
      const top = y(below + share);
      const left = Math.max(CHART.left, x(point.t) - barW);
      d += `M${left.toFixed(1)} ${top.toFixed(1)}h${barW.toFixed(1)}V${y(below).toFixed(1)}H${left.toFixed(1)}Z`;
    }
    if (!d) return;
    const path = svg("path", { d, fill: TIER_COLOURS[tier] || "#868e96", class: "series", "data-tier": tier });
    const title = svg("title");
    title.textContent = tier;
    path.appendChild(title);
    chart.appendChild(path);
  });
  legend($("mix-legend"), traffic.tiers.map((t) => [t, TIER_COLOURS[t] || "#868e96"]));
  if (!traffic.mix.length) chart.appendChild(noData());
}

function drawLatency(traffic) {
  const chart = $("latency-chart");
  const top = Math.max(1, ...traffic.latency.map((p) => p.p99)) * 1.1;
  const { x, y } = chartFrame(chart, firstTime(traffic), traffic.until, top, (v) => v.toFixed(v < 10 ? 1 : 0));
  for (const [name, colour] of Object.entries(LATENCY_COLOURS)) {
    const points = traffic.latency.map((p) => [x(p.t), y(p[name])]);
    if (!points.length) continue;
    if (points.length === 1) points.push([points[0][0] - 6, points[0][1]]); // a short tick for one point
    const d = points.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)} ${py.toFixed(1)}`).join("");
    chart.appendChild(svg("path", { d, stroke: colour, fill: "none", class: "series line", "data-series": name }));
    for (const [px, py] of points.slice(0, traffic.latency.length)) {
      chart.appendChild(svg("circle", { cx: px, cy: py, r: 2.5, fill: colour, "data-series": name }));
    }
  }
  legend($("latency-legend"), Object.entries(LATENCY_COLOURS));
  if (!traffic.latency.length) chart.appendChild(noData());
}

function noData() {
  const text = svg("text", { x: CHART.width / 2, y: CHART.height / 2, "text-anchor": "middle", class: "no-data" });
  text.textContent = "no heartbeat with traffic in this window yet";
  return text;
}

async function refreshTraffic() {
  const traffic = await call("GET", `v1/fleet/traffic?minutes=${$("window").value}`);
  drawMix(traffic);
  drawLatency(traffic);
}

// ------------------------------------------------------------------------ hard examples
async function loadExamples(fresh) {
  if (fresh) {
    state.cursor = null;
    for (const url of state.objectUrls) URL.revokeObjectURL(url);
    state.objectUrls = [];
    $("example-list").replaceChildren();
  }
  const query = new URLSearchParams({ limit: "24" });
  if ($("unlabelled").checked) query.set("labelled", "false");
  if (state.cursor) query.set("cursor", state.cursor);
  const page = await call("GET", `v1/hard-examples?${query}`);
  for (const example of page.examples) $("example-list").appendChild(exampleCard(example));
  state.cursor = page.next_cursor;
  $("more-examples").hidden = !page.next_cursor;
  if (!$("example-list").children.length) {
    $("example-list").appendChild(el("p", "No hard example to show.", { class: "empty" }));
  }
}

function exampleCard(example) {
  const card = el("article", null, { class: "card", "data-id": example.id });
  const picture = el("div", null, { class: "picture" });
  if (example.has_raw) {
    const img = el("img", null, { alt: `raw input of ${example.id.slice(0, 12)}` });
    picture.appendChild(img);
    call("GET", `v1/hard-examples/${encodeURIComponent(example.id)}/raw.png`)
      .then((blob) => {
        const url = URL.createObjectURL(blob);
        state.objectUrls.push(url);
        img.src = url;
      })
      .catch((e) => picture.replaceChildren(el("span", e.message, { class: "error" })));
  } else {
    picture.appendChild(el("span", "features only", { class: "no-raw" }));
  }
  card.appendChild(picture);
  const facts = el("dl");
  const fact = (name, value, cls) => {
    facts.appendChild(el("dt", name));
    facts.appendChild(el("dd", value, cls ? { class: cls } : {}));
  };
  fact("device", example.device_id);
  fact("model", `v${example.model_version}, ${example.tier}`);
  fact("reasons", example.reasons.join(", "));
  fact("predicted", `${className(example.predicted)} (${(example.confidence * 100).toFixed(0)}%)`);
  fact("teacher", className(example.teacher_label));
  fact("label", labelText(example), "label");
  card.appendChild(facts);
  const select = el("select", null, { "aria-label": "human label" });
  const count = Math.max(state.classes.length, 1 + Math.max(example.predicted, example.teacher_label ?? 0));
  for (let i = 0; i < count; i++) select.appendChild(el("option", className(i), { value: String(i) }));
  select.value = String(example.label ?? example.predicted);
  const save = el("button", "Save label", { type: "button" });
  save.addEventListener("click", async () => {
    save.disabled = true;
    try {
      const stored = await call("PUT", `v1/hard-examples/${encodeURIComponent(example.id)}/label`, {
        label: Number(select.value),
      });
      card.querySelector("dd.label").textContent = labelText(stored);
      card.classList.add("labelled");
    } catch (e) {
      setStatus(e.message, true);
    } finally {
      save.disabled = false;
    }
  });
  const form = el("div", null, { class: "labelling" });
  form.append(select, save);
  card.appendChild(form);
  return card;
}

function labelText(example) {
  return example.label_source ? `${className(example.label)} (${example.label_source})` : "none";
}

// ----------------------------------------------------------------------- unknown inputs
// Groups are loaded on sign-in and after each action, not polled: a poll would wipe a name
// being typed into a card's form.
async function loadGroups() {
  const listing = await call("GET", "v1/unknown-groups");
  for (const url of state.groupUrls) URL.revokeObjectURL(url);
  state.groupUrls = [];
  const cards = listing.groups.map(groupCard);
  if (!cards.length) cards.push(el("p", "No group yet.", { class: "empty" }));
  $("group-list").replaceChildren(...cards);
  $("ungrouped").textContent = `${listing.ungrouped} unknown examples in no group.`;
  $("ungrouped").dataset.count = String(listing.ungrouped);
}

async function groupNow() {
  const button = $("group-unknown");
  const message = $("unknown-message");
  button.disabled = true;
  try {
    const report = await call("POST", "v1/unknown-groups/refresh");
    const total = (key) => report.cuts.reduce((sum, cut) => sum + cut[key], 0);
    message.textContent =
      `${total("new_groups")} new groups, ${total("joined")} joined existing ones, ` +
      `${total("ungrouped")} left for later`;
  } catch (e) {
    message.textContent = e.message;
  } finally {
    button.disabled = false;
  }
  await safely(loadGroups)();
}

function groupCard(group) {
  const card = el("article", null, { class: "card group", "data-group": String(group.id) });
  if (group.class_name !== null) card.classList.add("labelled");
  card.appendChild(groupPicture(group));
  const facts = el("dl");
  const fact = (name, value, cls) => {
    facts.appendChild(el("dt", name));
    facts.appendChild(el("dd", value, cls ? { class: cls } : {}));
  };
  fact("group", group.id);
  fact("cut", group.cut);
  fact("size", group.size);
  fact("created", when(group.created_at));
  fact("class", group.class_name === null ? "unnamed" : `${group.class_index} ${group.class_name}`, "class");
  card.appendChild(facts);
  if (group.class_name === null) card.appendChild(namingForm(card, group));
  return card;
}

function groupPicture(group) {
  const picture = el("div", null, { class: "picture" });
  if (!group.has_images) {
    picture.appendChild(el("span", "features only", { class: "no-raw" }));
    return picture;
  }
  const img = el("img", null, { alt: `raw inputs of group ${group.id}` });
  picture.appendChild(img);
  call("GET", `v1/unknown-groups/${group.id}/examples.png`)
    .then((blob) => {
      const url = URL.createObjectURL(blob);
      state.groupUrls.push(url);
      img.src = url;
    })
    .catch((e) => picture.replaceChildren(el("span", e.message, { class: "error" })));
  return picture;
}

function namingForm(card, group) {
  const form = el("form", null, { class: "labelling" });
  const name = el("input", null, {
    type: "text",
    required: "",
    maxlength: String(MAX_CLASS_NAME),
    placeholder: "class name",
    "aria-label": "class name",
  });
  const save = el("button", "Name", { type: "submit" });
  const error = el("p", null, { class: "error" });
  form.append(name, save);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    save.disabled = true;
    error.textContent = "";
    try {
      const named = await call("PUT", `v1/unknown-groups/${group.id}`, { class_name: name.value.trim() });
      card.replaceWith(groupCard(named));
    } catch (e) {
      error.textContent = e.message;
    } finally {
      save.disabled = false;
    }
  });
  const box = el("div");
  box.append(form, error);
  return box;
}

async function refreshDrift() {
  const listing = await call("GET", "v1/drift-events?limit=50");
  const rows = listing.events.map((event) => {
    const tr = row([
      event.site,
      event.device_id,
      event.model_version,
      when(event.detected_at),
      when(event.received_at),
    ]);
    tr.dataset.example = event.example_id;
    tr.title = `hard example ${event.example_id}`;
    return tr;
  });
  fill($("drift-table").tBodies[0], rows, "No drift reported.", 5);
}

// ------------------------------------------------------------------------- retraining
async function refreshJobs() {
  const { jobs } = await call("GET", "v1/jobs");
  const rows = jobs.map((job) => {
    const bar = el("progress", null, { max: "1", value: String(job.progress) });
    const cell = el("span");
    cell.append(bar, ` ${Math.round(job.progress * 100)}%`);
    const result = job.error || (job.metrics ? summary(job.metrics) : null);
    const tr = row([
      job.id,
      job.state,
      job.trigger,
      cell,
      job.stage,
      when(job.created_at),
      job.candidate_version,
      result,
    ]);
    tr.dataset.job = String(job.id);
    tr.dataset.state = job.state;
    return tr;
  });
  fill($("job-table").tBodies[0], rows, "No retraining job yet.", 8);
}

function summary(metrics) {
  return Object.entries(metrics)
    .filter(([, v]) => typeof v === "number" || typeof v === "boolean" || typeof v === "string")
    .slice(0, 4)
    .map(([k, v]) => `${k} ${typeof v === "number" ? Number(v.toFixed(3)) : v}`)
    .join(", ");
}

async function startRetraining() {
  const message = $("retrain-message");
  try {
    const job = await call("POST", "v1/retrain");
    message.textContent = `job ${job.id} ${job.state}`;
  } catch (e) {
    message.textContent = e.message;
  }
  await safely(refreshJobs)();
}

// ---------------------------------------------------------------- collaborative training
async function refreshFederated() {
  const { runs } = await call("GET", "v1/federated/runs");
  const rows = runs.map((run) => {
    const gate = run.error || (run.gate ? run.gate.reason || summary(run.gate) : null);
    const tr = row([
      run.id,
      run.state,
      run.strategy,
      `${run.rounds_done}/${run.rounds_planned}`,
      run.stage,
      when(run.started),
      run.candidate_version,
      gate,
    ]);
    tr.dataset.run = String(run.id);
    tr.dataset.state = run.state;
    return tr;
  });
  fill($("federated-table").tBodies[0], rows, "No collaborative training run yet.", 8);
}

// ------------------------------------------------------------------------ model versions
async function refreshModels() {
  let listing;
  try {
    listing = await call("GET", "v1/models");
  } catch (e) {
    if (e.status !== 404) throw e;
    $("current-model").textContent = "This cloud has no model registry ([registry] models_dir).";
    $("rollback").hidden = true;
    return;
  }
  const current = listing.current;
  $("current-model").textContent = current
    ? `current: v${current.version}${current.rollback_of ? ` (rollback of v${current.rollback_of})` : ""}`
    : "no version promoted";
  $("current-model").dataset.version = current ? String(current.version) : "";
  const rows = listing.models.map((model) => {
    const promote = el("button", "Promote", { type: "button", "data-version": String(model.version) });
    promote.disabled = model.current;
    promote.addEventListener("click", () => release(`v1/models/${model.version}/promote`, `promote v${model.version}`));
    const tr = row([
      model.version,
      model.name || model.error,
      model.current ? "current" : "",
      model.signed ? "yes" : "no",
      when(model.registered_at),
      model.metrics ? summary(model.metrics) : null,
      promote,
    ]);
    tr.dataset.version = String(model.version);
    return tr;
  });
  fill($("model-table").tBodies[0], rows, "No version registered.", 7);
}

async function release(path, what) {
  if (!window.confirm(`Really ${what}? Gateways and devices will switch.`)) return;
  const message = $("models-message");
  try {
    const result = await call("POST", path);
    const announced = result.announced ? "announced" : `not announced${result.error ? `: ${result.error}` : ""}`;
    message.textContent = `now serving v${result.current.version} (${announced})`;
  } catch (e) {
    message.textContent = e.message;
  }
  await Promise.all([safely(refreshModels)(), safely(refreshFleet)()]);
}

// --------------------------------------------------------------------------------- wiring
document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("forget").addEventListener("click", () => signOut(""));
  $("window").addEventListener("change", safely(refreshTraffic));
  $("unlabelled").addEventListener("change", safely(() => loadExamples(true)));
  $("reload-examples").addEventListener("click", safely(() => loadExamples(true)));
  $("more-examples").addEventListener("click", safely(() => loadExamples(false)));
  $("group-unknown").addEventListener("click", groupNow);
  $("retrain").addEventListener("click", startRetraining);
  $("rollback").addEventListener("click", () => release("v1/models/rollback", "roll back to the previous version"));
  if (sessionStorage.getItem(TOKEN_KEY)) start();
  else signOut("");
});
