// Herald's live dashboard: asks for a token (kept in sessionStorage), then follows the API's
// server-sent events (GET /api/v1/live) and redraws the campaign list and the selected campaign
// when they change; while that stream is down it polls every two seconds and tries the stream
// again. No framework, no build step: this file is served as it is (docs/dashboard.md).
"use strict";

const API = "/api/v1";
const POLL_MS = 2000;
// How long a dropped stream waits before it is tried again (polling meanwhile).
const RECONNECT_MS = 5000;
// Changes within this long are drawn together (stats come about once a second per campaign).
const LIVE_BATCH_MS = 150;
const STEPS = [
  ["qualified", "Qualified"],
  ["sent", "Sent"],
  ["delivered", "Delivered"],
  ["impressions", "Viewed"],
  ["clicks", "Clicked"],
  ["conversions", "Converted"],
];
const COLORS = ["#2f6fde", "#e07b24", "#1f8a4c", "#9b3fc2", "#c2362b", "#2aa1a8"];

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem("herald.token"),
  role: null,
  selected: null,
  timer: null,
  // "live" while the event stream is open, else "polling".
  mode: "polling",
  live: null,
  reconnect: null,
  soon: null,
  // A refresh is under way; another is wanted after it.
  refreshing: false,
  again: false,
};

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, { ...options, headers });
  if (response.status === 401) throw new Unauthorized("the token was refused");
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error((body && body.error) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

const number = (n) => Number(n || 0).toLocaleString("en-US");
const percent = (part, whole) => (whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : "–");
const time = (ms) => new Date(ms).toLocaleTimeString("en-GB");

// --- sign-in -------------------------------------------------------------------------------

function showLogin(message) {
  clearTimeout(state.timer);
  stopLive();
  state.token = null;
  state.role = null;
  sessionStorage.removeItem("herald.token");
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function signIn() {
  try {
    const session = await api("/session");
    state.role = session.role;
    $("who").textContent = `${session.name} (${session.role})`;
    $("login").hidden = true;
    $("app").hidden = false;
    $("sign-out").hidden = false;
    await refresh();
    connectLive();
  } catch (error) {
    showLogin(error instanceof Unauthorized ? "That token was refused." : error.message);
  }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("herald.token", state.token);
  $("token").value = "";
  signIn();
});
$("sign-out").addEventListener("click", () => showLogin());

// --- live updates, polling as the fallback ---------------------------------------------------

function setMode(mode) {
  state.mode = mode;
  document.body.dataset.live = mode;
}

function stopLive() {
  if (state.live) state.live.abort();
  state.live = null;
  clearTimeout(state.reconnect);
  setMode("polling");
}

// One server-sent event block ("event: x\ndata: y") as { event, data }; comments are ignored.
function parseEvent(block) {
  const event = { event: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event.event = line.slice(6).trim();
    else if (line.startsWith("data:")) event.data += line.slice(5).trim();
  }
  return event;
}

// Opens GET /api/v1/live (with fetch: EventSource cannot send the token) and reads it until it
// ends; then polls and tries again after RECONNECT_MS.
async function connectLive() {
  stopLive();
  const controller = new AbortController();
  state.live = controller;
  try {
    const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
    const response = await fetch(`${API}/live`, { headers, signal: controller.signal });
    if (response.status === 401) throw new Unauthorized("the token was refused");
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        onLiveEvent(parseEvent(buffer.slice(0, end)));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (error) {
    if (controller.signal.aborted) return;
    if (error instanceof Unauthorized) return showLogin("The token was refused.");
  }
  if (state.live !== controller) return;
  state.live = null;
  setMode("polling");
  refresh();
  state.reconnect = setTimeout(connectLive, RECONNECT_MS);
}

function onLiveEvent({ event, data }) {
  if (event === "ready") {
    setMode("live");
    clearTimeout(state.timer);
    return refreshSoon();
  }
  // Any campaign's definition, command or lifecycle event may change its status in the list.
  const concernsPage = ["campaign", "events", "lagged"].includes(event) || data === state.selected;
  if (concernsPage && ["campaign", "stats", "events", "lagged"].includes(event)) refreshSoon();
}

function refreshSoon() {
  if (state.soon) return;
  state.soon = setTimeout(() => {
    state.soon = null;
    refresh();
  }, LIVE_BATCH_MS);
}

// One refresh at a time: a change that comes during one is drawn by another right after it, so
// an older answer never overwrites a newer one.
async function refresh() {
  if (state.refreshing) {
    state.again = true;
    return;
  }
  state.refreshing = true;
  clearTimeout(state.timer);
  let signedOut = false;
  try {
    const campaigns = await api("/campaigns");
    drawList(campaigns);
    const wanted = decodeURIComponent(location.hash.replace(/^#campaign=/, ""));
    const selected = campaigns.find((c) => c.id === wanted) || null;
    if (selected) await drawCampaign(selected.id);
    $("detail").hidden = !selected;
    $("updated").textContent = `updated ${time(Date.now())} (${state.mode})`;
  } catch (error) {
    signedOut = error instanceof Unauthorized;
    if (!signedOut) $("updated").textContent = `not updated: ${error.message}`;
  } finally {
    state.refreshing = false;
  }
  if (signedOut) return showLogin("The token was refused.");
  if (state.again) {
    state.again = false;
    return refresh();
  }
  if (state.mode !== "live") state.timer = setTimeout(refresh, POLL_MS);
}

window.addEventListener("hashchange", refresh);

function drawList(campaigns) {
  const rows = campaigns.map((c) => {
    const row = el(
      "tr",
      { "data-campaign-id": c.id },
      el("td", {}, el("a", { href: `#campaign=${encodeURIComponent(c.id)}` }, c.name), el("div", { class: "rate" }, c.id)),
      el("td", {}, c.app),
      el("td", {}, el("span", { class: `status ${c.status}` }, c.status)),
    );
    row.classList.toggle("selected", location.hash === `#campaign=${encodeURIComponent(c.id)}`);
    row.addEventListener("click", () => (location.hash = `campaign=${encodeURIComponent(c.id)}`));
    return row;
  });
  $("campaigns").replaceChildren(...rows);
}

// --- one campaign --------------------------------------------------------------------------

async function drawCampaign(id) {
  const path = `/campaigns/${encodeURIComponent(id)}`;
  const [detail, stats, events, series] = await Promise.all([
    api(path),
    api(`${path}/stats`),
    campaignEvents(path),
    sendsOverTime(path),
  ]);
  if (state.selected !== id) {
    state.selected = id;
    $("action-result").textContent = "";
  }
  $("campaign-name").textContent = detail.name;
  $("campaign-status").textContent = detail.status;
  $("campaign-status").className = `status ${detail.status}`;
  $("actions").hidden = state.role !== "admin";
  drawAb(detail.definition, stats, events);
  drawFunnel(stats);
  drawChart(series);
  drawReasons($("skipped"), stats.skipped, "No user skipped.");
  drawReasons($("failed"), stats.failed, "No send failed.");
  drawEvents(events);
}

// The campaign's lifecycle events, newest first; none if the API cannot list them.
async function campaignEvents(path) {
  try {
    const body = await api(`${path}/events`);
    const events = Array.isArray(body) ? body : body.events || [];
    return events.slice().sort((a, b) => b.timestamp_ms - a.timestamp_ms);
  } catch (error) {
    if (error.status === 404) return [];
    throw error;
  }
}

const kindOf = (event) => String(event.kind).toUpperCase();

function drawAb(definition, stats, events) {
  const ab = definition && definition.what && definition.what.ab;
  $("ab").hidden = !ab;
  if (!ab) return;
  const winner = events.find((e) => kindOf(e) === "WINNER_DECLARED");
  const sent = stats.variants.reduce((sum, v) => sum + v.sent, 0);
  const audience = ab.test_audience;
  if (winner) {
    const details = winner.details || {};
    $("ab-state").textContent = `Decided at ${time(winner.timestamp_ms)} by ${ab.winner_by || "clicks"}; the winner goes to everyone else.`;
    $("ab-winner").textContent = details.winner;
    $("ab-p-value").textContent = details.p_value || "";
    $("ab-p-value-line").hidden = !details.p_value;
    $("ab-winner-line").hidden = false;
  } else {
    const of = audience ? ` of a test audience of ${number(audience)}` : "";
    const after = ab.evaluate_after ? `, evaluated ${ab.evaluate_after} after the audience is full` : "";
    $("ab-state").textContent = `Testing: ${number(sent)} sent${of}${after}; winner by ${ab.winner_by || "clicks"}.`;
    $("ab-winner-line").hidden = true;
  }
}

function drawFunnel(stats) {
  const variants = stats.variants.length ? stats.variants : [];
  const head = el("tr", {}, el("th", {}, "Step"), ...variants.map((v) => el("th", { class: "n" }, `Variant ${v.variant_id}`)), el("th", { class: "n" }, "All"));
  const total = {};
  for (const [key] of STEPS) total[key] = variants.reduce((sum, v) => sum + (v[key] || 0), 0);
  total.qualified = stats.qualified;
  const rows = STEPS.map(([key, label], i) => {
    const cell = (counts, variant) => {
      // Per variant, the qualified are the users given it (most skips come before a variant is
      // chosen); the "All" column has the campaign's qualified, sent to or skipped.
      const value = counts[key] || 0;
      const previous = i === 0 ? null : counts[STEPS[i - 1][0]];
      return el(
        "td",
        { class: "n", "data-variant": variant, "data-step": key, "data-value": value },
        number(value),
        previous === null ? "" : el("span", { class: "rate" }, percent(value, previous)),
      );
    };
    return el("tr", {}, el("th", {}, label), ...variants.map((v) => cell(v, v.variant_id)), cell(total, "all"));
  });
  $("funnel").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

function drawReasons(table, counts, none) {
  const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
  if (!entries.length) return table.replaceChildren(el("tr", {}, el("td", { class: "hint" }, none)));
  table.replaceChildren(...entries.map(([reason, n]) => el("tr", { "data-reason": reason }, el("td", {}, reason), el("td", { class: "n" }, number(n)))));
}

function drawEvents(events) {
  if (!events.length) return $("events").replaceChildren(el("tr", {}, el("td", { class: "hint" }, "No events yet.")));
  $("events").replaceChildren(
    ...events.slice(0, 20).map((e) => {
      const details = Object.entries(e.details || {}).map(([k, v]) => `${k}=${v}`).join(" ");
      return el("tr", {}, el("td", {}, time(e.timestamp_ms)), el("td", {}, kindOf(e)), el("td", {}, details));
    }),
  );
}

// --- sends over time -----------------------------------------------------------------------

// The sends of each variant in every stats snapshot the API kept, by variant.
async function sendsOverTime(path) {
  const series = {};
  for (const point of await api(`${path}/sends`)) {
    (series[point.variant_id] ||= []).push({ t: point.at_ms, sent: point.sent });
  }
  return series;
}

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawChart(bySeries) {
  const chart = $("chart");
  const [width, height, left, right, top, bottom] = [640, 220, 56, 90, 10, 24];
  const series = Object.entries(bySeries);
  const points = series.flatMap(([, p]) => p);
  if (!points.length) return chart.replaceChildren(svg("text", { x: left, y: height / 2 }, "waiting for the first stats snapshot"));
  const t0 = Math.min(...points.map((p) => p.t));
  const t1 = Math.max(t0 + 1000, ...points.map((p) => p.t));
  const max = Math.max(1, ...points.map((p) => p.sent));
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (n) => height - bottom - (n / max) * (height - top - bottom);
  const nodes = [
    svg("line", { x1: left, y1: y(0), x2: width - right, y2: y(0), stroke: "#d8dde6" }),
    svg("line", { x1: left, y1: top, x2: left, y2: y(0), stroke: "#d8dde6" }),
    svg("text", { x: left - 6, y: y(max) + 4, "text-anchor": "end" }, number(max)),
    svg("text", { x: left - 6, y: y(0) + 4, "text-anchor": "end" }, "0"),
    svg("text", { x: left, y: height - 6 }, time(t0)),
    svg("text", { x: width - right, y: height - 6, "text-anchor": "end" }, time(t1)),
  ];
  series.forEach(([variant, p], i) => {
    const color = COLORS[i % COLORS.length];
    const path = p.map((q) => `${x(q.t).toFixed(1)},${y(q.sent).toFixed(1)}`).join(" ");
    const last = p[p.length - 1];
    nodes.push(svg("polyline", { points: path, fill: "none", stroke: color, "stroke-width": 2, "data-variant": variant }));
    nodes.push(svg("circle", { cx: x(last.t), cy: y(last.sent), r: 3, fill: color }));
    nodes.push(svg("text", { x: width - right + 8, y: y(last.sent) + 4, fill: color }, `${variant}: ${number(last.sent)}`));
  });
  chart.replaceChildren(...nodes);
}

// --- admin actions -------------------------------------------------------------------------

for (const button of document.querySelectorAll("#actions button")) {
  button.addEventListener("click", async () => {
    const command = button.dataset.command;
    const id = state.selected;
    if (command === "stop" && !confirm(`Stop ${id}? Only applying its definition again restarts it.`)) return;
    try {
      await api(`/campaigns/${encodeURIComponent(id)}/${command}`, { method: "POST", body: "{}" });
      $("action-result").textContent = `${command} sent for ${id}`;
    } catch (error) {
      if (error instanceof Unauthorized) return showLogin("The token was refused.");
      $("action-result").textContent = `${command} refused: ${error.message}`;
    }
    refresh();
  });
}

if (state.token) signIn();
else showLogin();
