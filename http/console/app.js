// cuelog console: one page, hash routes, plain DOM. Every call goes to this server's HTTP API
// with the key kept in sessionStorage. Run streams are read with fetch() (EventSource cannot
// send an Authorization header) and resumed by seq, so nothing is shown twice or skipped.
"use strict";

const KEY_STORE = "cuelog.key";
const RUN_CACHE = "cuelog.run."; // + run id: the events already shown, so a reload resumes
const TERMINAL = new Set(["RunCompleted", "RunFailed", "RunCancelled"]);
let refreshLivePanel = () => {};

// -- small helpers -----------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const enc = encodeURIComponent;
const short = (text, n = 12) => (text && text.length > n ? text.slice(0, n) + "…" : text || "");
const clock = (us) => new Date(us / 1000).toISOString().slice(11, 23);
const pretty = (value) => {
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value));
    } catch {
      return value;
    }
  }
  return JSON.stringify(value);
};

class AuthNeeded extends Error {}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

function headers(extra) {
  const out = { ...(extra || {}) };
  const key = apiKey();
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

async function api(path, { method = "GET", body, signal, accept } = {}) {
  const init = { method, signal, headers: headers(accept ? { Accept: accept } : {}) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    askForKey(apiKey() ? "The key was refused (unknown, revoked or expired)." : "");
    throw new AuthNeeded("API key needed");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      message = (await response.json()).error.message;
    } catch {
      /* not a JSON error body */
    }
    throw new Error(message);
  }
  return accept ? response : response.json();
}

// Reads an SSE body frame by frame: {id, event, data} with data parsed as JSON.
async function* sseFrames(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const frame = { id: null, event: "message", data: [] };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") frame.id = text;
        else if (field === "event") frame.event = text;
        else if (field === "data") frame.data.push(text);
      }
      if (frame.data.length) yield { ...frame, data: JSON.parse(frame.data.join("\n")) };
    }
  }
}

// Follows an event stream from `after`, reconnecting with Last-Event-ID until `isDone()` or
// the signal aborts. Events at or below the last seq seen are dropped, so none is shown twice.
async function follow(path, after, onEvent, { signal, isDone, onState }) {
  let last = after;
  let delay = 250;
  while (!signal.aborted && !isDone()) {
    try {
      const hdrs = headers({ Accept: "text/event-stream" });
      if (last > 0) hdrs["Last-Event-ID"] = String(last);
      const response = await fetch(path, { headers: hdrs, signal });
      if (response.status === 401) {
        askForKey("The key was refused.");
        return;
      }
      if (!response.ok) throw new Error("stream answered " + response.status);
      onState("live");
      delay = 250;
      for await (const frame of sseFrames(response)) {
        const seq = frame.data.seq;
        if (typeof seq !== "number" || seq <= last) continue;
        last = seq;
        onEvent(frame.data);
      }
    } catch (error) {
      if (signal.aborted) return;
      onState("reconnecting: " + error.message);
    }
    if (isDone() || signal.aborted) break;
    onState("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 5000);
  }
  if (!signal.aborted) onState(isDone() ? "finished" : "stopped");
}

// -- key prompt --------------------------------------------------------------------------------

function askForKey(message) {
  document.getElementById("key-prompt").hidden = false;
  document.getElementById("page").hidden = true;
  document.getElementById("key-error").textContent = message || "";
  document.getElementById("key-input").focus();
}

function setUpKeyPrompt() {
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("key-input");
    sessionStorage.setItem(KEY_STORE, input.value.trim());
    input.value = "";
    document.getElementById("key-prompt").hidden = true;
    document.getElementById("page").hidden = false;
    route();
    refreshLivePanel();
  });
  const forget = document.getElementById("forget-key");
  forget.hidden = !apiKey();
  forget.addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    forget.hidden = true;
    route();
  });
}

// -- routing -----------------------------------------------------------------------------------

let pageAbort = new AbortController();

function route() {
  pageAbort.abort(); // ends the previous page's streams
  pageAbort = new AbortController();
  const signal = pageAbort.signal;
  document.getElementById("forget-key").hidden = !apiKey();
  const hash = location.hash.replace(/^#\/?/, "") || "sessions";
  const [name, ...rest] = hash.split("/");
  const arg = decodeURIComponent(rest.join("/"));
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === name);
  }
  const page = document.getElementById("page");
  page.replaceChildren();
  const pages = {
    sessions: sessionsPage,
    session: sessionPage,
    run: runPage,
    tools: toolsPage,
    audit: auditPage,
    loops: loopsPage,
    loop: loopPage,
    runs: runsPage,
    usage: usagePage,
  };
  const render = pages[name] || sessionsPage;
  render(page, arg, signal).catch((error) => {
    if (error instanceof AuthNeeded || signal.aborted) return;
    page.append(h("p", { class: "error" }, error.message));
  });
}

// -- sessions ----------------------------------------------------------------------------------

async function sessionsPage(page, _arg, signal) {
  const agents = await api("/v1/agents?limit=500", { signal });
  const agentSelect = h(
    "select",
    { id: "agent-filter" },
    h("option", { value: "" }, "all agents"),
    agents.data.map((a) => h("option", { value: a.id }, a.id)),
  );
  const search = h("input", { id: "key-search", type: "search", placeholder: "search by key" });
  const rows = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "More");
  let cursor = null;
  let shown = [];
  let waiting = new Set(); // runs with an approval pending

  function paint() {
    const needle = search.value.trim().toLowerCase();
    rows.replaceChildren(
      ...shown
        .filter((s) => !needle || s.key.toLowerCase().includes(needle))
        .map((s) =>
          h(
            "tr",
            { "data-key": s.key },
            h("td", {}, h("a", { href: "#/session/" + enc(s.key) }, s.key)),
            h("td", {}, s.agent_id),
            h("td", {}, s.label || ""),
            h("td", { class: "num" }, s.messages.length),
            h(
              "td",
              {},
              s.current_run
                ? waiting.has(s.current_run)
                  ? h("a", { href: "#/run/" + enc(s.current_run), class: "badge waiting_approval" }, "waiting for approval")
                  : h("a", { href: "#/run/" + enc(s.current_run), class: "badge running" }, "running")
                : "",
            ),
          ),
        ),
    );
  }

  async function load(reset) {
    if (reset) {
      cursor = null;
      shown = [];
    }
    const query = new URLSearchParams({ limit: "100" });
    if (agentSelect.value) query.set("agent_id", agentSelect.value);
    if (cursor) query.set("cursor", cursor);
    const answer = await api("/v1/sessions?" + query, { signal });
    try {
      const approvals = await api("/v1/approvals", { signal });
      waiting = new Set(approvals.data.map((a) => a.run_id));
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthNeeded) throw error;
      waiting = new Set(); // a key that may not list approvals still sees its sessions
    }
    shown = shown.concat(answer.data);
    cursor = answer.next_cursor;
    more.hidden = !cursor;
    paint();
  }

  agentSelect.addEventListener("change", () => load(true));
  search.addEventListener("input", paint);
  search.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && search.value.trim()) {
      location.hash = "#/session/" + enc(search.value.trim());
    }
  });
  more.addEventListener("click", () => load(false));
  page.append(
    h("h1", {}, "Sessions"),
    h("div", { class: "filters" }, agentSelect, search),
    h(
      "table",
      { id: "sessions" },
      h("thead", {}, h("tr", {}, ["key", "agent", "label", "messages", ""].map((t) => h("th", {}, t)))),
      rows,
    ),
    more,
  );
  await load(true);
}

// -- one session -------------------------------------------------------------------------------

function bubble(message, run, seq) {
  const body = [];
  if (message.content) body.push(h("div", { class: "text" }, message.content));
  for (const call of message.tool_calls || []) {
    body.push(h("div", { class: "call" }, "→ ", h("b", {}, call.name), " ", pretty(call.arguments)));
  }
  const who = message.role === "tool" ? "tool " + (message.name || "") : message.role;
  const link = run
    ? h("a", { href: "#/run/" + enc(run), title: "the run that produced this message" }, short(run, 16) + " · seq " + seq)
    : h("span", {}, "seq " + seq);
  return h(
    "div",
    { class: "bubble " + message.role, "data-seq": seq },
    h("div", { class: "who" }, who, " ", link),
    body,
  );
}

async function sessionPage(page, key, signal) {
  const session = await api("/v1/sessions/" + enc(key), { signal });
  const chat = h("div", { id: "chat", class: "chat" });
  const state = h("span", { class: "state" });
  const current = h("p", { class: "current" });
  page.append(
    h("h1", {}, "Session ", h("code", {}, key)),
    h(
      "p",
      { class: "meta" },
      "agent ",
      h("b", {}, session.agent_id),
      session.parent_session ? [" · forked from ", h("a", { href: "#/session/" + enc(session.parent_session) }, session.parent_session), " at seq " + session.parent_seq] : "",
      " · stream ",
      state,
    ),
    current,
    chat,
    h("h2", {}, "Recent runs"),
    h(
      "ul",
      { class: "runs" },
      session.recent_runs.map((r) => h("li", {}, h("a", { href: "#/run/" + enc(r) }, r))),
    ),
  );

  function showCurrent(runId) {
    current.replaceChildren(
      ...(runId ? ["A run is in progress: ", h("a", { href: "#/run/" + enc(runId) }, runId)] : []),
    );
  }
  showCurrent(session.current_run);

  // The conversation is rebuilt from the session's events, so each message knows its run.
  function onEvent(event) {
    const data = event.data || {};
    const add = (messages, run) => {
      for (const message of messages || []) chat.append(bubble(message, run, event.seq));
    };
    if (event.type === "SessionCreated") add(data.history, null);
    else if (event.type === "MessageAccepted") add(data.messages, data.run_id);
    else if (event.type === "RunAssigned") showCurrent(data.run_id);
    else if (event.type === "RunSettled") {
      add(data.messages, data.run_id);
      showCurrent(null);
    } else if (event.type === "SessionReset") {
      chat.append(h("div", { class: "divider", "data-seq": event.seq }, "history reset at seq " + event.seq));
    }
  }
  follow("/v1/sessions/" + enc(key) + "/events", 0, onEvent, {
    signal,
    isDone: () => false,
    onState: (text) => (state.textContent = text),
  });
}

// -- one run -----------------------------------------------------------------------------------

function loadCache(runId) {
  try {
    return JSON.parse(sessionStorage.getItem(RUN_CACHE + runId)) || [];
  } catch {
    return [];
  }
}

function saveCache(runId, events) {
  try {
    // Only the run on screen is kept: the cache is there to make a reload resume, not to archive.
    for (let i = sessionStorage.length - 1; i >= 0; i--) {
      const name = sessionStorage.key(i);
      if (name.startsWith(RUN_CACHE) && name !== RUN_CACHE + runId) sessionStorage.removeItem(name);
    }
    sessionStorage.setItem(RUN_CACHE + runId, JSON.stringify(events));
  } catch {
    /* storage full: a reload then replays from the start, which is still correct */
  }
}

function describe(event) {
  const d = event.data || {};
  switch (event.type) {
    case "RunStarted":
      return ["agent ", h("b", {}, d.agent_id), " · session ", h("a", { href: "#/session/" + enc(d.session_key) }, d.session_key)];
    case "ModelRequested":
      return `step ${d.step}: ${d.model} with ${d.message_count} messages`;
    case "AssistantDelta":
      return h("span", { class: "delta" }, JSON.stringify(d.text));
    case "AssistantMessage":
      return d.message.content ? d.message.content : `tool calls (${d.finish_reason})`;
    case "ToolCallRequested":
      return [h("b", {}, d.call.name), " ", h("code", {}, pretty(d.call.arguments))];
    case "ApprovalRequested":
      return ["approval ", h("code", {}, d.approval_id), " for ", h("b", {}, d.call.name), " ", h("code", {}, pretty(d.call.arguments))];
    case "ApprovalGranted":
      return `${d.approval_id} approved by ${d.by || "?"}`;
    case "ApprovalDenied":
      return `${d.approval_id} denied by ${d.by || "?"} ${d.reason || ""}`;
    case "ToolCallCompleted":
      return [h("b", {}, d.name), " returned ", h("code", { class: "result" }, d.output)];
    case "ToolCallFailed":
      return [h("b", {}, d.name), " failed: ", d.error];
    case "RunCompleted":
      return `completed · ${d.usage ? d.usage.total_tokens : 0} tokens`;
    case "RunFailed":
      return "failed: " + d.reason;
    case "RunCancelled":
      return "cancelled: " + d.reason;
    default:
      return JSON.stringify(d);
  }
}

async function runPage(page, runId, signal) {
  const run = await api("/v1/runs/" + enc(runId), { signal });
  const status = h("span", { id: "run-status", class: "badge " + run.status }, run.status);
  const cancel = h("button", { id: "cancel-run", type: "button", class: "danger" }, "Cancel run");
  const state = h("span", { id: "stream-state", class: "state" });
  const answer = h("div", { id: "answer", class: "answer" });
  const approvals = h("div", { id: "approvals" });
  const rows = h("tbody", { id: "timeline" });
  const deliveries = h("div", { id: "deliveries" });
  page.append(
    h("h1", {}, "Run ", h("code", {}, runId), " ", status),
    h(
      "p",
      { class: "meta" },
      "agent ",
      h("b", {}, run.agent_id),
      " · session ",
      h("a", { href: "#/session/" + enc(run.session_key) }, run.session_key),
      " · stream ",
      state,
      " ",
      cancel,
    ),
    approvals,
    h("h2", {}, "Answer"),
    answer,
    deliveries,
    h("h2", {}, "Timeline"),
    h(
      "table",
      { class: "timeline" },
      h("thead", {}, h("tr", {}, ["seq", "time", "+ms", "type", "actor", "what"].map((t) => h("th", {}, t)))),
      rows,
    ),
  );

  const events = [];
  const pending = new Map(); // approval id -> ApprovalRequested data
  let previousTs = null;
  let finished = false;

  function setStatus(text) {
    status.textContent = text;
    status.className = "badge " + text;
    cancel.disabled = ["completed", "failed", "cancelled"].includes(text);
  }

  function paintApprovals() {
    approvals.replaceChildren(
      ...[...pending.values()].map((a) => {
        const decide = async (decision, button) => {
          button.disabled = true;
          try {
            await api("/v1/approvals/" + enc(a.approval_id), {
              method: "POST",
              body: { decision, args_digest: a.args_digest },
            });
          } catch (error) {
            button.disabled = false;
            if (!(error instanceof AuthNeeded)) alert(error.message);
          }
        };
        const approve = h("button", { type: "button", class: "approve" }, "Approve");
        const deny = h("button", { type: "button", class: "deny danger" }, "Deny");
        approve.addEventListener("click", () => decide("approve", approve));
        deny.addEventListener("click", () => decide("deny", deny));
        return h(
          "div",
          { class: "approval", "data-approval": a.approval_id },
          h("div", {}, "Waiting for approval: ", h("b", {}, a.call.name), " ", h("code", {}, pretty(a.call.arguments))),
          h("div", { class: "digest" }, "args sha256 ", h("code", {}, a.args_digest)),
          approve,
          deny,
        );
      }),
    );
  }

  function show(event) {
    const d = event.data || {};
    const since = previousTs === null ? "" : ((event.ts - previousTs) / 1000).toFixed(1);
    previousTs = event.ts;
    rows.append(
      h(
        "tr",
        { "data-seq": event.seq, class: "ev " + event.type },
        h("td", { class: "num" }, event.seq),
        h("td", {}, clock(event.ts)),
        h("td", { class: "num" }, since),
        h("td", {}, event.type),
        h("td", {}, event.actor || ""),
        h("td", {}, describe(event)),
      ),
    );
    if (event.type === "ModelRequested") answer.append(h("div", { class: "step", "data-step": d.step }));
    if (event.type === "AssistantDelta") {
      let step = answer.querySelector(`[data-step="${d.step}"]`) || answer.appendChild(h("div", { class: "step", "data-step": d.step }));
      step.append(d.text);
    }
    if (event.type === "ApprovalRequested") pending.set(d.approval_id, d);
    if (event.type === "ApprovalGranted" || event.type === "ApprovalDenied") pending.delete(d.approval_id);
    if (event.type.startsWith("Approval")) paintApprovals();
    if (event.type === "ApprovalRequested") setStatus("waiting_approval");
    else if (event.type === "ApprovalGranted" || event.type === "ModelRequested") setStatus("running");
    if (TERMINAL.has(event.type)) {
      finished = true;
      pending.clear();
      paintApprovals();
      setStatus({ RunCompleted: "completed", RunFailed: "failed", RunCancelled: "cancelled" }[event.type]);
    }
  }

  function onEvent(event) {
    events.push(event);
    show(event);
    saveCache(runId, events);
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      const view = await api("/v1/runs/" + enc(runId) + "/cancel", { method: "POST" });
      setStatus(view.status);
    } catch (error) {
      cancel.disabled = false;
      if (!(error instanceof AuthNeeded)) alert(error.message);
    }
  });

  setStatus(run.status);
  showDeliveries(deliveries, runId, signal);
  // Events shown before a reload come back from the cache; the stream resumes after the last.
  let last = 0;
  for (const event of loadCache(runId)) {
    if (event.seq > last) {
      last = event.seq;
      events.push(event);
      show(event);
    }
  }
  await follow("/v1/runs/" + enc(runId) + "/events", last, onEvent, {
    signal,
    isDone: () => finished,
    onState: (text) => (state.textContent = text),
  });
}

// -- runs list ---------------------------------------------------------------------------------

const RUN_STATUSES = ["any", "queued", "running", "waiting_approval", "completed", "failed", "cancelled"];
const SVG = "http://www.w3.org/2000/svg";

// A datetime-local value (read as UTC) as RFC 3339, or "" when empty.
const utcInput = (value) => (value ? value + ":00Z" : "");

async function runsPage(page, arg, signal) {
  const given = new URLSearchParams(arg || "");
  const agents = await api("/v1/agents?limit=500", { signal });
  const agent = h(
    "select",
    { id: "runs-agent" },
    h("option", { value: "" }, "all agents"),
    agents.data.map((a) => h("option", { value: a.id }, a.id)),
  );
  const status = h("select", { id: "runs-status" }, RUN_STATUSES.map((s) => h("option", { value: s }, s)));
  const user = h("input", { id: "runs-user", type: "search", placeholder: "end user" });
  const from = h("input", { id: "runs-from", type: "datetime-local", title: "from (UTC)" });
  const to = h("input", { id: "runs-to", type: "datetime-local", title: "to (UTC)" });
  agent.value = given.get("agent") || "";
  status.value = given.get("status") || "any";
  user.value = given.get("user") || "";
  from.value = (given.get("from") || "").slice(0, 16);
  to.value = (given.get("to") || "").slice(0, 16);
  const rows = h("tbody", { id: "runs" });
  const more = h("button", { type: "button", hidden: true }, "More");
  let cursor = null;
  let generation = 0; // a newer filter's list replaces an older one's answer arriving late

  function filters() {
    const query = new URLSearchParams();
    if (agent.value) query.set("agent", agent.value);
    if (status.value !== "any") query.set("status", status.value);
    if (user.value.trim()) query.set("user", user.value.trim());
    if (from.value) query.set("from", utcInput(from.value));
    if (to.value) query.set("to", utcInput(to.value));
    return query;
  }

  async function load(reset) {
    const query = filters();
    if (reset) {
      generation += 1;
      cursor = null;
      rows.replaceChildren();
      // The filters stay in the address, so a filtered list can be shared or reloaded.
      history.replaceState(null, "", "#/runs/" + query.toString());
    }
    query.set("limit", "50");
    if (cursor) query.set("cursor", cursor);
    const asked = generation;
    const answer = await api("/v1/runs?" + query, { signal });
    if (asked !== generation) return;
    rows.append(
      ...answer.data.map((run) =>
        h(
          "tr",
          { "data-run": run.id },
          h("td", {}, h("a", { href: "#/run/" + enc(run.id) }, short(run.id, 16))),
          h("td", {}, run.agent_id),
          h("td", {}, h("span", { class: "badge " + run.status }, run.status)),
          h("td", {}, run.user_id || ""),
          h("td", {}, when(run.created_at)),
          h("td", { class: "num" }, run.duration_ms === null ? "" : Math.round(run.duration_ms)),
          h("td", { class: "num" }, run.steps),
          h("td", { class: "num" }, run.tool_call_count),
          h("td", { class: "num tokens" }, run.usage.total_tokens),
        ),
      ),
    );
    cursor = answer.next_cursor;
    more.hidden = !cursor;
  }

  for (const input of [agent, status, from, to]) input.addEventListener("change", () => load(true));
  user.addEventListener("change", () => load(true));
  more.addEventListener("click", () => load(false));
  page.append(
    h("h1", {}, "Runs"),
    h("div", { class: "filters" }, agent, status, user, h("label", {}, "from ", from), h("label", {}, "to ", to)),
    h(
      "table",
      {},
      h(
        "thead",
        {},
        h("tr", {}, ["run", "agent", "status", "user", "created", "ms", "steps", "tools", "tokens"].map((t) => h("th", {}, t))),
      ),
      rows,
    ),
    more,
  );
  await load(true);
}

// -- usage ---------------------------------------------------------------------------------------

const PERIODS = { "24h": { interval: "hour", step: 3600, count: 24 }, "7d": { interval: "day", step: 86400, count: 7 }, "30d": { interval: "day", step: 86400, count: 30 } };

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// Bars for every interval of the period (empty ones too, so the time axis is even).
function barChart(id, points, { label, format }) {
  const width = 960;
  const height = 180;
  const top = 16;
  const bottom = 22;
  const max = Math.max(0, ...points.map((p) => p.value));
  const slot = width / Math.max(points.length, 1);
  const bars = points.map((p, i) => {
    const tall = max > 0 ? Math.round(((height - top - bottom) * p.value) / max) : 0;
    return svg(
      "rect",
      {
        class: "bar",
        x: (i * slot + slot * 0.1).toFixed(1),
        y: height - bottom - tall,
        width: (slot * 0.8).toFixed(1),
        height: Math.max(tall, 0),
        "data-start": p.start,
        "data-value": p.value,
      },
      svg("title", {}, `${when(p.start)}: ${format(p.value)} ${label}`),
    );
  });
  const first = points[0];
  const last = points[points.length - 1];
  return svg(
    "svg",
    { id, class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label + " over time" },
    svg("line", { class: "axis", x1: 0, y1: height - bottom, x2: width, y2: height - bottom }),
    bars,
    svg("text", { class: "tick", x: 2, y: 12 }, `max ${format(max)} ${label}`),
    first ? svg("text", { class: "tick", x: 2, y: height - 6 }, when(first.start)) : null,
    last ? svg("text", { class: "tick", x: width - 2, y: height - 6, "text-anchor": "end" }, when(last.start)) : null,
  );
}

const money = (value) => (value >= 100 ? value.toFixed(2) : value.toPrecision(3).replace(/\.?0+$/, ""));

async function usagePage(page, arg, signal) {
  const period = h("select", { id: "usage-period" }, Object.keys(PERIODS).map((p) => h("option", { value: p }, "last " + p)));
  period.value = PERIODS[arg] ? arg : "24h";
  const body = h("div", { id: "usage" });
  page.append(h("h1", {}, "Usage"), h("div", { class: "filters" }, period), body);

  async function load() {
    const { interval, step, count } = PERIODS[period.value];
    history.replaceState(null, "", "#/usage/" + period.value);
    const now = Math.floor(Date.now() / 1000);
    const first = Math.floor((now - (count - 1) * step) / step) * step;
    const from = new Date(first * 1000).toISOString();
    const query = "from=" + enc(from);
    const [summary, costs, series, agents] = await Promise.all([
      api("/v1/usage/summary?" + query, { signal }),
      api("/v1/costs/summary?" + query, { signal }),
      api(`/v1/usage/timeseries?${query}&interval=${interval}`, { signal }),
      api(`/v1/usage/breakdown?${query}&group_by=agent`, { signal }),
    ]);
    const byStart = new Map(series.data.map((p) => [p.start, p]));
    const slots = Array.from({ length: count }, (_, i) => first + i * step);
    const tokens = slots.map((start) => ({ start, value: byStart.get(start)?.total_tokens || 0 }));
    const cost = slots.map((start) => ({ start, value: byStart.get(start)?.cost || 0 }));
    const top = agents.data.slice(0, 10);
    const most = Math.max(1, ...top.map((g) => g.total_tokens));
    body.replaceChildren(
      h(
        "dl",
        { class: "head totals" },
        h("dt", {}, "runs"),
        h("dd", { id: "usage-runs" }, summary.runs),
        h("dt", {}, "tokens"),
        h("dd", { id: "usage-tokens" }, `${summary.total_tokens} (${summary.prompt_tokens} in, ${summary.completion_tokens} out)`),
        h("dt", {}, "cost"),
        h("dd", { id: "usage-cost" }, money(costs.total_cost), costs.unpriced_models.length ? ` (no price for ${costs.unpriced_models.join(", ")})` : ""),
      ),
      h("h2", {}, `Tokens per ${interval}`),
      barChart("chart-tokens", tokens, { label: "tokens", format: (v) => String(v) }),
      h("h2", {}, `Cost per ${interval}`),
      barChart("chart-cost", cost, { label: "cost", format: money }),
      h("h2", {}, "Top agents"),
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, ["agent", "runs", "tokens", "cost", ""].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          { id: "top-agents" },
          top.map((g) =>
            h(
              "tr",
              { "data-agent": g.value },
              h("td", {}, h("a", { href: "#/runs/agent=" + enc(g.value) }, g.value)),
              h("td", { class: "num" }, g.runs),
              h("td", { class: "num tokens" }, g.total_tokens),
              h("td", { class: "num" }, money(g.cost)),
              h("td", {}, h("progress", { max: most, value: g.total_tokens })),
            ),
          ),
        ),
      ),
    );
  }

  period.addEventListener("change", () => load().catch((error) => body.replaceChildren(h("p", { class: "error" }, error.message))));
  await load();
}

// -- loops -------------------------------------------------------------------------------------

const when = (seconds) => (seconds ? new Date(seconds * 1000).toISOString().replace(".000Z", "Z") : "–");

function triggerText(trigger) {
  if (trigger.cron) return `cron ${trigger.cron}` + (trigger.tz ? ` (${trigger.tz})` : " (UTC)");
  if (trigger.every) return `every ${trigger.every} s`;
  return `once at ${trigger.at}`;
}

function loopButtons(loop, onChange) {
  async function act(path, button) {
    button.disabled = true;
    try {
      await api("/v1/loops/" + enc(loop.id) + path, { method: "POST" });
      await onChange();
    } catch (error) {
      if (!(error instanceof AuthNeeded)) alert(error.message);
    } finally {
      button.disabled = false;
    }
  }
  const toggle = h("button", { type: "button", class: "toggle-loop" }, loop.enabled ? "Turn off" : "Turn on");
  const run = h("button", { type: "button", class: "run-loop" }, "Run now");
  toggle.addEventListener("click", () => act("/toggle", toggle));
  run.addEventListener("click", () => act("/run", run));
  return [toggle, " ", run];
}

// A run's webhook deliveries (admin keys only: others see no section).
async function showDeliveries(box, runId, signal) {
  let answer;
  try {
    answer = await api("/v1/webhooks/deliveries?run_id=" + enc(runId), { signal });
  } catch {
    return;
  }
  if (!answer.data.length) return;
  box.replaceChildren(
    h("h2", {}, "Webhook deliveries"),
    ...answer.data.map((d) =>
      h(
        "div",
        { class: "delivery" },
        h("p", { class: "meta" }, h("span", { class: "badge " + (d.status === "delivered" ? "completed" : d.status) }, d.status), " ", d.url, " · id ", h("code", { title: d.id }, short(d.id, 16))),
        h(
          "table",
          {},
          h("thead", {}, h("tr", {}, ["attempt", "at", "outcome", "status", "error"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            d.attempts.map((a) =>
              h("tr", {}, h("td", {}, a.attempt), h("td", {}, when(a.at)), h("td", {}, a.outcome), h("td", {}, a.status_code ?? "–"), h("td", {}, a.error || "")),
            ),
          ),
        ),
      ),
    ),
  );
}

async function loopsPage(page, _arg, signal) {
  const rows = h("tbody", { id: "loops" });
  async function load() {
    const answer = await api("/v1/loops?limit=500", { signal });
    rows.replaceChildren(
      ...answer.data.map((loop) =>
        h(
          "tr",
          { "data-loop": loop.id },
          h("td", {}, h("a", { href: "#/loop/" + enc(loop.id) }, loop.id)),
          h("td", {}, loop.agent),
          h("td", {}, triggerText(loop.trigger)),
          h("td", {}, h("span", { class: "badge " + (loop.enabled ? "completed" : "") }, loop.enabled ? "on" : "off")),
          h("td", { class: "next-fire" }, when(loop.next_fire_at)),
          h("td", {}, loop.fires[0] ? h("span", { class: "badge " + loop.fires[0].status }, loop.fires[0].status) : ""),
          h("td", {}, loopButtons(loop, load)),
        ),
      ),
    );
  }
  page.append(
    h("h1", {}, "Loops"),
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, ["loop", "agent", "trigger", "", "next fire", "last run", ""].map((t) => h("th", {}, t)))),
      rows,
    ),
  );
  await load();
}

async function loopPage(page, loopId, signal) {
  const title = h("h1", {}, "Loop ", h("code", {}, loopId));
  const meta = h("p", { class: "meta" });
  const rows = h("tbody", { id: "fires" });
  async function load() {
    const loop = await api("/v1/loops/" + enc(loopId), { signal });
    meta.replaceChildren(
      "agent ", h("b", {}, loop.agent), " · ", triggerText(loop.trigger),
      " · ", loop.enabled ? "on" : "off", " · next fire ",
      h("span", { id: "next-fire" }, when(loop.next_fire_at)), " ",
      ...loopButtons(loop, load),
    );
    rows.replaceChildren(
      ...loop.fires.map((fire) =>
        h(
          "tr",
          {},
          h("td", {}, fire.manual ? "run now" : when(fire.scheduled_at)),
          h("td", {}, h("a", { href: "#/run/" + enc(fire.run_id) }, fire.run_id)),
          h("td", {}, h("span", { class: "badge " + fire.status }, fire.status)),
          h("td", {}, fire.error || ""),
        ),
      ),
    );
    // Refresh while a fire's run is still going, until the page is left.
    const going = loop.fires.some((f) => !["completed", "failed", "cancelled"].includes(f.status));
    if (going && !signal.aborted) setTimeout(() => signal.aborted || load().catch(() => {}), 1000);
  }
  page.append(
    title,
    meta,
    h("h2", {}, "Fires"),
    h("table", {}, h("thead", {}, h("tr", {}, ["slot", "run", "status", ""].map((t) => h("th", {}, t)))), rows),
  );
  await load();
}

// -- audit -------------------------------------------------------------------------------------

// -- tools: MCP servers, model providers, built-ins ---------------------------------------------

async function toolsPage(page, _arg, signal) {
  const servers = h("tbody", { id: "mcp-servers" });
  const providers = h("tbody", { id: "providers" });
  const builtins = h("tbody", { id: "builtin-tools" });
  const table = (columns, body) =>
    h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), body);
  page.append(
    h("h1", {}, "Tools and models"),
    h("h2", {}, "MCP servers"),
    table(["id", "command or URL", "status", "tools", "restarts", "last error", ""], servers),
    h("h2", {}, "Model providers"),
    table(["id", "base URL", "default model", "API key", "status"], providers),
    h("h2", {}, "Built-in tools"),
    table(["name", "enabled", "approval"], builtins),
  );

  async function paint() {
    const [mcp, registry, tools] = await Promise.all([
      api("/v1/mcp/servers", { signal }),
      api("/v1/providers", { signal }),
      api("/v1/tools", { signal }),
    ]);
    servers.replaceChildren(
      ...mcp.data.map((s) =>
        h(
          "tr",
          { "data-id": s.id },
          h("td", {}, s.id),
          h("td", {}, s.transport === "stdio" ? s.command : s.url),
          h("td", {}, h("span", { class: "badge mcp-" + s.status }, s.status)),
          h("td", { class: "num", title: s.tools.join(", ") }, s.tool_count),
          h("td", { class: "num" }, s.restarts),
          h("td", { class: "error" }, s.last_error || ""),
          h(
            "td",
            {},
            h(
              "button",
              {
                type: "button",
                class: "restart",
                disabled: !s.enabled,
                onclick: async () => {
                  await api("/v1/mcp/servers/" + enc(s.id) + "/restart", { method: "POST" });
                  await paint();
                },
              },
              "Restart",
            ),
          ),
        ),
      ),
    );
    if (!mcp.data.length) servers.append(h("tr", {}, h("td", { colspan: 7, class: "meta" }, "none")));
    providers.replaceChildren(
      ...registry.data.map((p) =>
        h(
          "tr",
          { "data-id": p.id },
          h("td", {}, p.id),
          h("td", {}, h("code", {}, p.base_url)),
          h("td", {}, p.default_model),
          h("td", {}, p.has_api_key ? "set" : "none"),
          h("td", { title: p.error || "" }, h("span", { class: "badge mcp-" + p.status }, p.status)),
        ),
      ),
    );
    if (!registry.data.length) providers.append(h("tr", {}, h("td", { colspan: 5, class: "meta" }, "none")));
    builtins.replaceChildren(
      ...tools.data
        .filter((t) => !t.name.includes("."))
        .map((t) =>
          h(
            "tr",
            { "data-name": t.name },
            h("td", {}, t.name),
            h("td", {}, t.enabled ? "on" : "off"),
            h("td", {}, t.approval_policy),
          ),
        ),
    );
  }

  await paint();
  // Connection status changes by itself (reconnects, crashes): refresh while the page is open.
  while (!signal.aborted) {
    await new Promise((resolve) => setTimeout(resolve, 2000));
    if (signal.aborted) return;
    await paint();
  }
}

async function auditPage(page, _arg, signal) {
  const head = await api("/v1/audit/head", { signal });
  const anchored = head.anchored_seq !== null;
  const bar = h("progress", { id: "verify-progress", max: 1, value: 0 });
  const report = h("div", { id: "verify-report" });
  const verify = h("button", { id: "verify", type: "button" }, "Verify the chain");
  const rows = h("tbody", { id: "activity" });
  const more = h("button", { type: "button", hidden: true }, "More");
  const field = (name, hint) => h("input", { name, placeholder: hint });
  const filters = h(
    "form",
    { class: "filters", id: "activity-filters" },
    field("actor", "actor (key id, agent:…)"),
    field("type", "types, comma separated"),
    field("stream_prefix", "stream prefix (run:, session:…)"),
    h("button", { type: "submit" }, "Filter"),
  );
  page.append(
    h("h1", {}, "Audit"),
    h(
      "dl",
      { class: "head" },
      h("dt", {}, "head seq"),
      h("dd", { id: "head-seq" }, head.seq),
      h("dt", {}, "head hash"),
      h("dd", {}, h("code", { id: "head-hash" }, head.hash)),
      h("dt", {}, "anchor"),
      h(
        "dd",
        { id: "anchor" },
        anchored
          ? [`anchored at seq ${head.anchored_seq} (${new Date(head.anchored_at * 1000).toISOString()}) `, h("code", {}, head.anchored_hash)]
          : "not anchored",
      ),
    ),
    h("div", { class: "verify" }, verify, " ", bar, report),
    h("h2", {}, "Activity"),
    filters,
    h(
      "table",
      { class: "activity" },
      h("thead", {}, h("tr", {}, ["seq", "time", "actor", "stream", "type", "hash"].map((t) => h("th", {}, t)))),
      rows,
    ),
    more,
  );

  verify.addEventListener("click", async () => {
    verify.disabled = true;
    report.textContent = "verifying…";
    try {
      const response = await api("/v1/audit/verify", { method: "POST", accept: "text/event-stream", signal });
      for await (const frame of sseFrames(response)) {
        if (frame.event === "progress") {
          bar.max = Math.max(frame.data.total, 1);
          bar.value = frame.data.checked;
        } else if (frame.event === "report") {
          const r = frame.data;
          bar.max = Math.max(r.checked, 1);
          bar.value = r.checked;
          report.className = r.ok ? "ok" : "error";
          report.textContent = r.ok
            ? `chain intact: ${r.checked} events checked up to seq ${r.head_seq}` + (r.anchored_seq ? `, anchor at seq ${r.anchored_seq} matches` : "")
            : `broken at seq ${r.first_bad_seq}: ${r.reason}`;
        }
      }
    } catch (error) {
      if (!(error instanceof AuthNeeded) && !signal.aborted) {
        report.className = "error";
        report.textContent = error.message;
      }
    } finally {
      verify.disabled = false;
    }
  });

  let cursor = null;
  async function load(reset) {
    const query = new URLSearchParams({ limit: "100" });
    for (const [name, value] of new FormData(filters)) if (value) query.set(name, value);
    if (!reset && cursor) query.set("cursor", cursor);
    if (reset) rows.replaceChildren();
    const answer = await api("/v1/audit/events?" + query, { signal });
    for (const e of answer.data) {
      const stream = e.stream.startsWith("run:")
        ? h("a", { href: "#/run/" + enc(e.stream.slice(4)) }, e.stream)
        : e.stream.startsWith("session:")
          ? h("a", { href: "#/session/" + enc(e.stream.slice(8)) }, e.stream)
          : e.stream;
      rows.append(
        h(
          "tr",
          { "data-seq": e.seq },
          h("td", { class: "num" }, e.seq),
          h("td", {}, new Date(e.ts / 1000).toISOString().replace("T", " ").slice(0, 23)),
          h("td", {}, e.actor || ""),
          h("td", {}, stream),
          h("td", {}, e.type),
          h("td", {}, h("code", { title: e.hash }, short(e.hash, 12))),
        ),
      );
    }
    cursor = answer.next_cursor;
    more.hidden = !cursor;
  }
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    load(true).catch((error) => error instanceof AuthNeeded || alert(error.message));
  });
  more.addEventListener("click", () => load(false));
  await load(true);
}

// -- live panel --------------------------------------------------------------------------------

function parseMetrics(text) {
  const sums = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (match) sums[match[1]] = (sums[match[1]] || 0) + Number(match[3]);
  }
  return sums;
}

function startLivePanel() {
  let before = null;
  const set = (id, value) => (document.getElementById(id).textContent = value);
  async function tick() {
    if (document.getElementById("key-prompt").hidden === false) return;
    try {
      const response = await fetch("/metrics", { headers: headers() });
      if (!response.ok) return;
      const now = { at: performance.now(), m: parseMetrics(await response.text()) };
      const m = now.m;
      set("live-actors", m.cuelog_actors_live ?? "–");
      set("live-sse", m.cuelog_sse_clients ?? "–");
      if (before) {
        const seconds = (now.at - before.at) / 1000;
        const rate = (name) => (((m[name] || 0) - (before.m[name] || 0)) / seconds).toFixed(1);
        set("live-runs", rate("cuelog_runs_finished_total"));
        set("live-appends", rate("cuelog_log_events_appended_total"));
      }
      before = now;
    } catch {
      /* the panel is best effort; the next tick tries again */
    }
  }
  refreshLivePanel = tick;
  tick();
  setInterval(tick, 2000);
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  setUpKeyPrompt();
  route();
  startLivePanel();
});
