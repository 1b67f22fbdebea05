// The quench console: one ES module, no dependencies, no build step. It reads and writes
// through the admin API (/api/v1) with the session cookie; every write carries the session's
// CSRF token. Text from the service (finding titles, keys, outputs) is only ever set as text
// (textContent), never parsed as HTML: the page's policy requires Trusted Types and allows
// none, so an HTML sink would throw.

import { highlight, lineDiff, offsetOf } from "./editor.js";

const ROLES = ["viewer", "approver", "editor", "admin"];
const POLL_MS = 10000;

let session = null; // {person, role, csrf}
let pollTimer = null;

const $ = (id) => document.getElementById(id);

// Builds an element: h("a", {href: "#/x", class: "y", onclick: f}, "text", child, ...).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function can(role) {
  return session !== null && ROLES.indexOf(session.role) >= ROLES.indexOf(role);
}

class ApiError extends Error {
  constructor(status, code, message, diagnostics) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code || "error";
    // A refused playbook's problems, with line and column.
    this.diagnostics = diagnostics || null;
  }
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf;
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (response.status === 401 && path.startsWith("/api/")) {
    session = null;
    showSignIn("Your session has ended; sign in again.");
    throw new ApiError(401, "unauthorized", "not signed in");
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code, error.message, data && data.diagnostics);
  }
  return data;
}

const get = (path) => call("GET", path);
const post = (path, body) => call("POST", path, body === undefined ? {} : body);

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// ---- formatting -------------------------------------------------------------------------

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours}h ${m % 60}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// A datetime-local field's value (the browser's time zone) as RFC 3339, for the API.
function instant(local) {
  return local ? new Date(local).toISOString() : "";
}

function until(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  return seconds >= 0 ? `in ${duration(seconds)}` : `${duration(-seconds)} ago`;
}

function status(text) {
  return h("span", { class: `status status-${text}` }, text);
}

function fact(label, value) {
  return h("span", {}, `${label} `, h("b", {}, value));
}

function json(value) {
  return h("pre", {}, JSON.stringify(value, null, 2));
}

function folded(label, value) {
  if (value === null || value === undefined) return "";
  return h("details", {}, h("summary", {}, label), json(value));
}

function message(kind, text) {
  return h("div", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

function failure(error) {
  const code = error.code ? `${error.code}: ` : "";
  return message("error", `${code}${error.message}`);
}

function page(title, ...children) {
  const main = $("main");
  main.replaceChildren(h("h1", {}, title), ...children);
  document.title = `${title} · quench`;
}

// ---- sign-in ----------------------------------------------------------------------------

// The ways the service offers to sign in (GET /console/session), read at start.
let offered = { methods: ["token"], issuer: null };

// What a refused single sign-on comes back with (`#signin_error=<code>`).
const SIGNIN_ERRORS = {
  provider_unreachable: "The identity provider could not be reached; try again, or tell the operator.",
  login_expired: "That sign-in was not started here or took too long; start again.",
  denied: "The identity provider did not sign you in.",
  unverified: "The identity provider's answer did not verify; the attempt was logged.",
  no_verified_email: "Your identity provider account has no verified email.",
  no_role: "You are in no group that gives a role in quench; ask the operator.",
  sessions_unavailable: "You were signed in at the identity provider, but quench could not record the session; try again in a moment.",
};

function showSignIn(note, kind = "info") {
  stopPolling();
  $("nav").hidden = true;
  $("who").hidden = true;
  const input = h("input", {
    id: "token",
    type: "password",
    autocomplete: "off",
    placeholder: "API token",
    "aria-label": "API token",
  });
  const notice = h("div", {});
  if (note) notice.append(message(kind, note));
  const form = h(
    "form",
    {
      id: "sign-in",
      onsubmit: async (event) => {
        event.preventDefault();
        notice.replaceChildren();
        try {
          await signInWithToken(input.value);
        } catch (error) {
          notice.replaceChildren(failure(error));
        }
      },
    },
    h("label", { for: "token" }, "Sign in with an API token"),
    input,
    h("button", { class: "primary", type: "submit" }, "Sign in"),
  );
  let host = offered.issuer || "";
  try {
    host = new URL(offered.issuer).host;
  } catch {
    // Shown as configured.
  }
  const sso = offered.methods.includes("oidc")
    ? h("p", {}, h("a", { href: "/console/oidc/login", id: "sso", class: "button primary" }, `Sign in with ${host}`))
    : "";
  $("main").replaceChildren(
    h(
      "div",
      { class: "signin card" },
      h("h1", {}, "Sign in to quench"),
      notice,
      sso,
      offered.methods.includes("token") ? form : "",
    ),
  );
  document.title = "Sign in · quench";
}

async function signInWithToken(token) {
  const response = await fetch("/console/session", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    credentials: "same-origin",
    body: JSON.stringify({ token: token.trim() }),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code, error.message);
  }
  signedIn(data);
}

function signedIn(view) {
  session = { person: view.person, role: view.role, csrf: view.csrf, partitions: view.partitions || 1 };
  $("person").textContent = session.person;
  $("role").textContent = session.role;
  $("nav").hidden = false;
  $("who").hidden = false;
  startPolling();
  route();
}

async function signOut() {
  let ended = null;
  try {
    ended = await call("POST", "/console/sign-out", {});
  } catch {
    // Signed out either way.
  }
  session = null;
  // A single sign-on session ends at the identity provider too, which sends the browser back.
  if (ended && ended.logout_url) {
    location.assign(ended.logout_url);
    return;
  }
  showSignIn("Signed out.");
}

// ---- live updates -----------------------------------------------------------------------

// Polling every 10 s works without anything else; run events over Server-Sent Events
// (GET /api/v1/events) make the inbox, its badge and an open run follow within a moment.
let live = null;
let liveTimer = null;

function typing() {
  return document.activeElement && ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
}

function startPolling() {
  stopPolling();
  refreshBadge();
  pollTimer = setInterval(() => {
    refreshBadge();
    if (currentView() === "inbox" && !typing()) route();
  }, POLL_MS);
  if (window.EventSource) {
    live = new EventSource("/api/v1/events");
    live.addEventListener("run", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      onRunEvent(event);
    });
    // This stream fell behind, or came back after a break: whatever is shown may be stale.
    live.addEventListener("resync", () => onRunEvent(null));
    let opened = false;
    live.addEventListener("ready", () => {
      if (opened) onRunEvent(null);
      opened = true;
    });
    live.addEventListener("open", () => document.body.classList.add("live"));
    live.addEventListener("error", () => document.body.classList.remove("live"));
  }
}

function stopPolling() {
  if (pollTimer) clearInterval(pollTimer);
  pollTimer = null;
  if (live) live.close();
  live = null;
  document.body.classList.remove("live");
}

// What a run event changes on the page now shown; redrawn once per burst.
function onRunEvent(event) {
  const [path] = location.hash.replace(/^#\/?/, "").split("?");
  const [view, ...rest] = path.split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  const gates = event === null || ["waiting", "decided", "run_completed", "run_failed", "run_cancelled", "run_restarted"].includes(event.kind);
  if (gates) refreshBadge();
  const redraw =
    event === null ||
    ((view || "inbox") === "inbox" && gates) ||
    // The run shown (the runs list is not redrawn under a hand reaching for a filter).
    (view === "runs" && arg !== null && arg === event.run_id);
  if (!redraw || typing()) return;
  clearTimeout(liveTimer);
  liveTimer = setTimeout(route, 300);
}

async function refreshBadge() {
  try {
    const inbox = await get("/api/v1/inbox");
    setBadge(inbox.count);
  } catch {
    // The next poll tries again.
  }
}

function setBadge(count) {
  const badge = $("badge");
  badge.textContent = String(count);
  badge.hidden = count === 0;
}

/** The end of an id: run ids are UUIDv7, whose first digits are a timestamp runs share. */
function shortId(id) {
  return id.length > 8 ? `…${id.slice(-8)}` : id;
}

/**
 * A filter form: submitting it puts its fields in the view's hash, which renders the view again.
 * `fields` are [name, label, type?] (text inputs by default); `before` and `after` are extra
 * controls.
 */
function filterForm(view, filters, fields, { id, before = [], label = "Filter", after = [] } = {}) {
  const form = h(
    "form",
    {
      class: "filters",
      id,
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = `#/${view}${query(Object.fromEntries(new FormData(form).entries()))}`;
      },
    },
    before,
    fields.map(([name, text, type = "text"]) =>
      h("input", { name, type, placeholder: text, "aria-label": text, title: text, value: filters[name] }),
    ),
    h("button", { type: "submit", class: "primary" }, label),
    after,
  );
  return form;
}

// ---- views ------------------------------------------------------------------------------

async function inboxView() {
  const inbox = await get("/api/v1/inbox");
  setBadge(inbox.count);
  const intro = h(
    "p",
    { class: "facts" },
    `Approvals waiting for ${inbox.person}: ${inbox.count}.`,
    can("approver") ? "" : ` Your role (${session.role}) cannot answer gates; runs and audit are yours to read.`,
  );
  const recent = [...document.querySelectorAll("#inbox article.gate[data-answered-at]")].filter(
    (card) => Date.now() - Number(card.dataset.answeredAt) < 60000,
  );
  const same = (card, gate) => card.dataset.run === gate.run_id && card.dataset.gate === gate.gate;
  const cards = [
    ...recent,
    ...inbox.gates.filter((gate) => !recent.some((card) => same(card, gate))).map(gateCard),
  ];
  if (cards.length === 0) {
    page("Inbox", intro, h("p", { class: "empty", id: "inbox-empty" }, "Nothing waits for you."));
    return;
  }
  page("Inbox", intro, h("div", { id: "inbox" }, cards));
}

function gateCard(gate) {
  const result = h("div", { class: "result" });
  const card = h(
    "article",
    { class: "card gate", "data-run": gate.run_id, "data-gate": gate.gate },
    h("h3", {}, gate.finding_title || gate.question),
    h(
      "div",
      { class: "facts" },
      fact("playbook", gate.playbook),
      fact("key", gate.key),
      fact("waited", duration(gate.waited_secs)),
      fact("deadline", `${until(gate.deadline)} (then ${gate.on_timeout})`),
      fact("reminders", gate.reminders),
      gate.escalations ? fact("escalated", gate.escalations) : "",
      gate.quorum > 1 ? fact("answers", `${gate.answers} of ${gate.quorum}`) : "",
    ),
    h("p", {}, gate.question),
    h("p", { class: "facts" }, h("a", { href: `#/runs/${encodeURIComponent(gate.run_id)}` }, "the run's timeline")),
  );
  if (gate.items && gate.items.length > 0) {
    for (const item of gate.items) {
      const facts = Object.entries(item)
        .filter(([name]) => name !== "id")
        .map(([name, value]) => fact(name, typeof value === "object" ? JSON.stringify(value) : value));
      const itemResult = h("div", { class: "result" });
      card.append(
        h(
          "div",
          { class: "item", "data-item": item.id },
          h("div", {}, h("code", {}, item.id)),
          h("div", { class: "facts" }, facts),
          answerControls(gate, item.id, itemResult),
          itemResult,
        ),
      );
    }
  } else {
    card.append(answerControls(gate, null, result), result);
  }
  return card;
}

function answerControls(gate, item, result) {
  if (!can("approver")) return "";
  const row = h("div", { class: "actions" });
  for (const choice of gate.choices) {
    const asks = gate.comment_for && gate.comment_for[choice];
    row.append(
      h(
        "button",
        {
          type: "button",
          class: "choice",
          "data-choice": choice,
          onclick: () => {
            if (asks) {
              askComment(row, asks, (comment) => answer(gate, item, choice, comment, result, row));
            } else {
              answer(gate, item, choice, null, result, row);
            }
          },
        },
        choice,
      ),
    );
  }
  return row;
}

function askComment(row, question, send) {
  const input = h("input", { type: "text", class: "comment", placeholder: question, "aria-label": question, size: 40 });
  const form = h(
    "form",
    {
      class: "actions",
      onsubmit: (event) => {
        event.preventDefault();
        if (input.value.trim() === "") return;
        send(input.value.trim());
      },
    },
    h("label", {}, question, " ", input),
    h("button", { type: "submit", class: "primary" }, "Send"),
  );
  row.after(form);
  input.focus();
}

async function answer(gate, item, choice, comment, result, row) {
  for (const button of row.querySelectorAll("button")) button.disabled = true;
  const body = { choice };
  if (item) body.item = item;
  if (comment) body.comment = comment;
  try {
    const outcome = await post(
      `/api/v1/runs/${encodeURIComponent(gate.run_id)}/gates/${encodeURIComponent(gate.gate)}/decision`,
      body,
    );
    const text = outcome.outcome === "decided"
      ? `Answered ${choice}: the gate is decided and the run goes on.`
      : `Answered ${choice}: recorded, ${outcome.answers} of ${outcome.quorum} answers.`;
    result.replaceChildren(message("info", text));
    markAnswered(row);
    refreshBadge();
  } catch (error) {
    result.replaceChildren(failure(error));
    markAnswered(row);
    for (const button of row.querySelectorAll("button")) button.disabled = false;
  }
}

// A card just answered keeps its outcome on screen for a minute, through redraws.
function markAnswered(row) {
  const card = row.closest("article.gate");
  if (card) card.dataset.answeredAt = String(Date.now());
}

async function runsView(params) {
  const filters = {
    state: params.get("state") || "",
    playbook: params.get("playbook") || "",
    key: params.get("key") || "",
    kind: params.get("kind") || "",
    q: params.get("q") || "",
    since: params.get("since") || "",
    until: params.get("until") || "",
    id_prefix: params.get("id_prefix") || "",
  };
  const cursor = params.get("cursor") || "";
  // The time inputs hold local time; the API takes RFC 3339.
  const stateSelect = h(
    "select",
    { name: "state", "aria-label": "state" },
    ["", "open", "running", "waiting", "completed", "failed", "cancelled"].map((value) =>
      h("option", { value, selected: value === filters.state }, value || "any state"),
    ),
  );
  const form = filterForm(
    "runs",
    filters,
    [
      ["q", "text in title or key"],
      ["playbook", "playbook"],
      ["key", "finding key"],
      ["kind", "finding kind"],
      ["since", "started since", "datetime-local"],
      ["until", "started before", "datetime-local"],
      ["id_prefix", "run id prefix"],
    ],
    { id: "run-filters", before: [stateSelect], label: "Search" },
  );
  let list;
  try {
    list = await get(
      `/api/v1/runs${query({ ...filters, since: instant(filters.since), until: instant(filters.until), cursor, limit: 50 })}`,
    );
  } catch (error) {
    page("Runs", form, failure(error));
    return;
  }
  const rows = list.runs.map((run) =>
    h(
      "tr",
      { class: "clickable", "data-run": run.id, onclick: () => (location.hash = `#/runs/${encodeURIComponent(run.id)}`) },
      h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(run.id)}`, title: run.id }, shortId(run.id))),
      h("td", {}, run.title || ""),
      h("td", {}, run.playbook),
      h("td", {}, h("code", {}, run.key)),
      h("td", {}, status(run.status), run.step ? ` at ${run.step}` : ""),
      h("td", {}, run.mode),
      h("td", {}, when(run.started_at)),
      h("td", {}, run.failure || run.cancelled || ""),
    ),
  );
  const table = rows.length
    ? h(
        "table",
        { id: "runs" },
        h("thead", {}, h("tr", {}, ["run", "finding", "playbook", "key", "status", "mode", "started", "why"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows),
      )
    : h("p", { class: "empty" }, list.next ? "No match among the newest runs read; look further back below." : "No run matches.");
  const pager = h("div", { class: "pager" });
  if (list.next) {
    pager.append(h("a", { href: `#/runs${query({ ...filters, cursor: list.next })}` }, "Older runs →"));
  }
  page("Runs", form, table, pager);
}

async function runView(id) {
  const detail = await get(`/api/v1/runs/${encodeURIComponent(id)}`);
  const run = detail.run;
  const result = h("div", {});
  const parts = [
    h(
      "div",
      { class: "card" },
      h(
        "div",
        { class: "facts" },
        fact("status", run.status),
        fact("playbook", `${run.playbook} @ ${run.version.slice(0, 12)}`),
        fact("key", run.key),
        fact("mode", run.mode),
        fact("started", when(run.started_at)),
        run.ended_at ? fact("ended", when(run.ended_at)) : "",
      ),
      run.failure ? message("error", `failed: ${run.failure}`) : "",
      run.cancelled ? message("info", `cancelled: ${run.cancelled}`) : "",
      folded("finding", detail.finding),
      folded("owner", detail.owner),
    ),
  ];
  const open = run.status === "running" || run.status === "waiting";
  if (open && can("editor")) {
    const reason = h("input", { name: "reason", placeholder: "why cancel", "aria-label": "reason", size: 40 });
    parts.push(
      h(
        "form",
        {
          class: "actions",
          id: "cancel",
          onsubmit: async (event) => {
            event.preventDefault();
            try {
              await post(`/api/v1/runs/${encodeURIComponent(id)}/cancel`, { reason: reason.value || null });
              route();
            } catch (error) {
              result.replaceChildren(failure(error));
            }
          },
        },
        reason,
        h("button", { type: "submit", class: "danger" }, "Cancel run"),
      ),
    );
  }
  if (run.status === "failed" && can("editor")) {
    const failed = detail.steps.find((step) => step.phase === "main" && step.status === "failed");
    const reason = h("input", { name: "reason", placeholder: "why restart", "aria-label": "restart reason", size: 40 });
    parts.push(
      h(
        "form",
        {
          class: "actions",
          id: "restart",
          onsubmit: async (event) => {
            event.preventDefault();
            try {
              await post(`/api/v1/runs/${encodeURIComponent(id)}/restart`, { reason: reason.value || null });
              route();
            } catch (error) {
              result.replaceChildren(failure(error));
            }
          },
        },
        reason,
        h("button", { type: "submit" }, failed ? `Restart from ${failed.id}` : "Restart from the failed step"),
      ),
    );
  }
  parts.push(result, h("h2", {}, "Steps"));
  parts.push(
    h(
      "table",
      { id: "steps" },
      h("thead", {}, h("tr", {}, ["step", "action", "status", "attempt", "started", "finished", "detail"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        detail.steps.map((step) =>
          h(
            "tr",
            { "data-step": step.id },
            h("td", {}, step.phase === "main" ? step.id : `${step.id} (${step.phase})`),
            h("td", {}, h("code", {}, step.action || "")),
            h("td", {}, status(step.status), step.choice ? ` → ${step.choice}` : ""),
            h("td", {}, step.restarts ? `${step.attempt} (restarted ${step.restarts}×)` : step.attempt),
            h("td", {}, when(step.started_at)),
            h("td", {}, when(step.finished_at)),
            h(
              "td",
              {},
              step.error ? h("div", { class: "bad" }, step.error) : "",
              step.decided_by && step.decided_by.length ? h("div", {}, `by ${step.decided_by.join(", ")} via ${step.via || "?"}`) : "",
              step.requests && step.requests.length ? folded(`requests (${step.requests.length})`, step.requests) : "",
              folded("output", step.output),
            ),
          ),
        ),
      ),
    ),
  );
  if (detail.gates.length) {
    parts.push(h("h2", {}, "Approvals"));
    for (const gate of detail.gates) {
      parts.push(
        h(
          "div",
          { class: "card" },
          h("h3", {}, gate.question),
          h(
            "div",
            { class: "facts" },
            fact("approvers", gate.approvers.join(", ")),
            fact("deadline", when(gate.deadline)),
            fact("on timeout", gate.on_timeout),
            gate.decision ? fact("decision", `${gate.decision} by ${gate.decided_by.join(", ")}`) : fact("decision", gate.closed ? "closed" : "open"),
          ),
          gate.answers.length ? folded(`answers (${gate.answers.length})`, gate.answers) : "",
        ),
      );
    }
  }
  parts.push(h("h2", {}, "Audit"), auditTable(detail.audit));
  page(`Run ${run.id}`, ...parts);
}

function auditTable(entries) {
  if (!entries.length) return h("p", { class: "empty" }, "No audit entry.");
  return h(
    "table",
    { class: "audit" },
    h("thead", {}, h("tr", {}, ["seq", "at", "kind", "actor", "run", "step", "detail"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      entries.map((entry) =>
        h(
          "tr",
          {},
          h("td", {}, entry.seq),
          h("td", {}, when(entry.at)),
          h("td", {}, entry.kind, entry.allowed === false ? h("span", { class: "bad" }, " (refused)") : ""),
          h("td", {}, entry.actor ? `${entry.actor.id} via ${entry.actor.via}` : ""),
          h("td", {}, entry.run_id ? h("a", { href: `#/runs/${encodeURIComponent(entry.run_id)}`, title: entry.run_id }, shortId(entry.run_id)) : ""),
          h("td", {}, entry.step || ""),
          h("td", {}, folded("detail", entry.detail)),
        ),
      ),
    ),
  );
}

async function playbooksView() {
  const list = await get("/api/v1/playbooks");
  const parts = [
    h(
      "table",
      { id: "playbooks" },
      h("thead", {}, h("tr", {}, ["name", "version", "state", "trigger", "owner", "file"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        list.playbooks.map((playbook) =>
          h(
            "tr",
            {},
            h("td", {}, h("a", { href: `#/playbooks/${encodeURIComponent(playbook.name)}` }, playbook.name)),
            h("td", {}, h("code", {}, playbook.version.slice(0, 12))),
            h("td", {}, playbook.enabled ? h("span", { class: "ok" }, "loaded") : h("span", { class: "warn" }, "disabled")),
            h("td", {}, playbook.trigger),
            h("td", {}, playbook.owner || ""),
            h("td", {}, playbook.file || ""),
          ),
        ),
      ),
    ),
  ];
  if (can("editor")) parts.unshift(h("p", {}, h("a", { href: "#/edit", class: "button", id: "new-playbook" }, "New playbook")));
  if (list.refused && list.refused.length) {
    parts.push(h("h2", {}, "Refused at load"));
    for (const refused of list.refused) {
      parts.push(
        h(
          "div",
          { class: "card refused", "data-file": refused.file },
          h("h3", {}, refused.file),
          h(
            "p",
            { class: "facts" },
            refused.serving
              ? `Version ${refused.serving.slice(0, 12)} of ${refused.playbook} keeps serving.`
              : "Nothing serves in its place.",
          ),
          diagnosticList(refused.diagnostics),
          can("editor") && refused.playbook
            ? h("a", { href: `#/edit/${encodeURIComponent(refused.playbook)}`, class: "button fix" }, "Fix in the editor")
            : "",
        ),
      );
    }
  }
  page("Playbooks", ...parts);
}

async function playbookView(name) {
  const path = `/api/v1/playbooks/${encodeURIComponent(name)}`;
  const [history, detail] = await Promise.all([get(`${path}/history`), get(path).catch(() => null)]);
  const source = h("div", {});
  const result = h("div", {});
  const versionSource = async (version) =>
    (await get(`${path}/versions/${encodeURIComponent(version)}`)).source;
  const current = history.versions.find((entry) => entry.current);
  const show = async (version) => {
    try {
      source.replaceChildren(h("h2", {}, `Version ${version.slice(0, 12)}`), h("pre", { class: "source" }, await versionSource(version)));
    } catch (error) {
      source.replaceChildren(failure(error));
    }
  };
  const diff = async (version) => {
    try {
      const [before, after] = await Promise.all([versionSource(version), versionSource(current.version)]);
      const lines = lineDiff(before, after);
      source.replaceChildren(
        h("h2", {}, `From ${version.slice(0, 12)} to the current ${current.version.slice(0, 12)}`),
        lines === null
          ? message("info", "Too long to compare here.")
          : h(
              "pre",
              { class: "source diff" },
              lines.map((line) => h("span", { class: `diff-${{ " ": "same", "-": "del", "+": "add" }[line.kind]}` }, `${line.kind} ${line.text}`)),
            ),
      );
    } catch (error) {
      source.replaceChildren(failure(error));
    }
  };
  const restore = async (version) => {
    const reason = `Make version ${version.slice(0, 12)} of ${name} current again?`;
    if (!window.confirm(reason)) return;
    try {
      const applied = await post("/api/v1/playbooks", { source: await versionSource(version), file: `${name}.yaml` });
      result.replaceChildren(message("info", `Restored: version ${applied.version.slice(0, 12)} is current.`));
      await playbookView(name);
    } catch (error) {
      result.replaceChildren(failure(error));
    }
  };
  const toggle = async (enable) => {
    try {
      await post(`${path}/${enable ? "enable" : "disable"}`);
      await playbookView(name);
    } catch (error) {
      result.replaceChildren(failure(error));
    }
  };
  const controls = [];
  if (can("editor")) {
    controls.push(h("a", { href: `#/edit/${encodeURIComponent(name)}`, class: "button", id: "edit" }, "Edit"));
    if (detail) {
      controls.push(
        detail.enabled
          ? h("button", { type: "button", id: "disable", onclick: () => toggle(false) }, "Disable")
          : h("button", { type: "button", id: "enable", onclick: () => toggle(true) }, "Enable"),
      );
    }
  }
  page(
    `Playbook ${name}`,
    detail
      ? h(
          "p",
          { class: "facts" },
          fact("state", detail.enabled ? "loaded" : "disabled"),
          fact("trigger", detail.trigger),
          detail.owner ? fact("owner", detail.owner) : "",
          detail.file ? fact("file", detail.file) : "",
        )
      : "",
    h("div", { class: "actions" }, controls),
    result,
    h("h2", {}, "History"),
    h(
      "table",
      { id: "history" },
      h("thead", {}, h("tr", {}, ["version", "current since", "by", ""].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        history.versions.map((entry) =>
          h(
            "tr",
            { "data-version": entry.version },
            h("td", {}, h("code", {}, entry.version.slice(0, 12)), entry.current ? " (current)" : ""),
            h("td", {}, when(entry.at)),
            h("td", {}, entry.by),
            h(
              "td",
              {},
              h("button", { type: "button", onclick: () => show(entry.version) }, "source"),
              current && !entry.current ? h("button", { type: "button", class: "diff", onclick: () => diff(entry.version) }, "diff to current") : "",
              can("editor") && !entry.current ? h("button", { type: "button", class: "restore", onclick: () => restore(entry.version) }, "restore") : "",
            ),
          ),
        ),
      ),
    ),
    source,
  );
  if (current) show(current.version);
}

function diagnosticList(diagnostics, onPick) {
  return h(
    "ul",
    { class: "diagnostics" },
    diagnostics.map((diagnostic) =>
      h(
        "li",
        {
          class: `diagnostic ${diagnostic.severity}`,
          "data-line": diagnostic.line,
          onclick: onPick ? () => onPick(diagnostic) : undefined,
        },
        h("span", { class: "where" }, `${diagnostic.line}:${diagnostic.column}`),
        " ",
        h("b", {}, diagnostic.severity),
        ` [${diagnostic.code}] ${diagnostic.message}`,
        diagnostic.help ? h("div", { class: "help" }, `help: ${diagnostic.help}`) : "",
      ),
    ),
  );
}

const TEMPLATE = `schema: quench.playbook/v1
name: my-playbook
description: What this playbook is for.
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: tell
    uses: note
    with:
      message: "{{ finding.title }}"
`;

// The editor: highlighting and the compiler's diagnostics as one types (POST /api/v1/validate,
// the compiler of `quench validate`, nothing applied), then apply.
async function editorView(name) {
  let source = TEMPLATE;
  let origin = "a new playbook";
  if (name) {
    const list = await get("/api/v1/playbooks");
    const refused = (list.refused || []).find((file) => file.playbook === name);
    if (refused) {
      source = refused.source;
      origin = `${refused.file}, refused at load`;
    } else {
      source = (await get(`/api/v1/playbooks/${encodeURIComponent(name)}`)).source;
      origin = `the current version of ${name}`;
    }
  }
  const file = `${name || "new"}.yaml`;
  const textarea = h("textarea", {
    id: "source",
    spellcheck: "false",
    autocomplete: "off",
    autocapitalize: "off",
    wrap: "off",
    "aria-label": "playbook source",
  });
  textarea.value = source;
  const shown = h("pre", { class: "highlight", "aria-hidden": "true" });
  const state = h("p", { id: "check-status", class: "facts" }, "Checking…");
  const diagnostics = h("div", { id: "diagnostics" });
  const result = h("div", {});
  let latest = [];
  let sequence = 0;
  let timer = null;
  const paint = () => {
    shown.replaceChildren(...highlight(h, textarea.value, latest));
    shown.scrollTop = textarea.scrollTop;
    shown.scrollLeft = textarea.scrollLeft;
  };
  const pick = (diagnostic) => {
    const at = offsetOf(textarea.value, diagnostic.line, diagnostic.column);
    textarea.focus();
    textarea.setSelectionRange(at, at);
  };
  const check = async () => {
    const mine = ++sequence;
    try {
      const checked = await post("/api/v1/validate", { source: textarea.value, file });
      if (mine !== sequence) return;
      latest = checked.diagnostics;
      const errors = latest.filter((d) => d.severity === "error").length;
      const warnings = latest.length - errors;
      state.className = `facts ${checked.ok ? "ok" : "bad"}`;
      state.textContent = checked.ok
        ? `It compiles: ${checked.name} version ${checked.version.slice(0, 12)}${checked.current ? " (already current)" : ""}${warnings ? `, ${warnings} warning(s)` : ""}.`
        : `${errors} error(s)${warnings ? `, ${warnings} warning(s)` : ""}: applying it would be refused.`;
      diagnostics.replaceChildren(diagnosticList(latest, pick));
      paint();
    } catch (error) {
      if (mine === sequence) state.replaceChildren(failure(error));
    }
  };
  textarea.addEventListener("input", () => {
    latest = [];
    paint();
    state.textContent = "Checking…";
    clearTimeout(timer);
    timer = setTimeout(check, 250);
  });
  textarea.addEventListener("scroll", () => {
    shown.scrollTop = textarea.scrollTop;
    shown.scrollLeft = textarea.scrollLeft;
  });
  textarea.addEventListener("keydown", (event) => {
    // Tab indents (YAML has no tabs): two spaces.
    if (event.key === "Tab" && !event.shiftKey) {
      event.preventDefault();
      textarea.setRangeText("  ", textarea.selectionStart, textarea.selectionEnd, "end");
      textarea.dispatchEvent(new Event("input"));
    }
  });
  const apply = h(
    "button",
    {
      type: "button",
      class: "primary",
      id: "apply",
      onclick: async () => {
        try {
          const applied = await post("/api/v1/playbooks", { source: textarea.value, file });
          result.replaceChildren(
            message("info", `Applied: ${applied.name} version ${applied.version.slice(0, 12)} is current${applied.changed ? "" : " (it already was)"}, written to ${applied.file}.`),
            h("a", { href: `#/playbooks/${encodeURIComponent(applied.name)}` }, "Its history"),
          );
          await check();
        } catch (error) {
          result.replaceChildren(failure(error));
        }
      },
    },
    "Apply",
  );
  // The playbook's offline tests (quench test) against the text as it is, before applying:
  // the test files beside the playbooks that name it, or the test file pasted below.
  const testFile = h("textarea", {
    id: "test-file",
    class: "test-file",
    spellcheck: "false",
    wrap: "off",
    rows: 8,
    placeholder: "schema: quench.playbook-test/v1 …",
    "aria-label": "test file",
  });
  const tested = h("div", { id: "test-results" });
  const runTests = h(
    "button",
    {
      type: "button",
      id: "run-tests",
      onclick: async () => {
        tested.replaceChildren(message("info", "Running the tests…"));
        try {
          const ran = await post("/api/v1/test", { source: textarea.value, tests: testFile.value.trim() ? testFile.value : null });
          tested.replaceChildren(testResults(ran));
        } catch (error) {
          if (error.diagnostics) {
            latest = error.diagnostics;
            diagnostics.replaceChildren(diagnosticList(latest, pick));
            paint();
          }
          tested.replaceChildren(failure(error));
        }
      },
    },
    "Run tests",
  );
  page(
    name ? `Edit ${name}` : "New playbook",
    h("p", { class: "facts" }, `From ${origin}. Checked as you type by the compiler of quench validate; nothing changes until you apply.`),
    h("div", { class: "editor" }, shown, textarea),
    state,
    diagnostics,
    h("div", { class: "actions" }, apply, runTests),
    result,
    h("details", {}, h("summary", {}, "Test file (optional: without one, the files in the playbooks directory's tests/ that name this playbook run)"), testFile),
    tested,
  );
  paint();
  await check();
}

function testResults(ran) {
  if (!ran.files.length) {
    return message("info", `No test file names ${ran.playbook}: add one to the playbooks directory's tests/, or paste one above.`);
  }
  const summary = message(ran.failed ? "error" : "info", `${ran.passed} passed, ${ran.failed} failed.`);
  const files = ran.files.map((file) =>
    h(
      "div",
      { class: "card", "data-file": file.file },
      h("h3", {}, file.file),
      file.error ? h("pre", { class: "bad" }, file.error) : "",
      h(
        "ul",
        { class: "cases" },
        file.cases.map((one) =>
          h(
            "li",
            { "data-case": one.name, class: one.passed ? "ok" : "bad" },
            `${one.passed ? "✓" : "✗"} ${one.name}`,
            one.failures.length ? h("ul", {}, one.failures.map((text) => h("li", {}, text))) : "",
          ),
        ),
      ),
    ),
  );
  return h("div", {}, summary, ...files);
}

async function auditView(params) {
  // A cluster with several partitions keeps one audit chain per partition: the page shows
  // one at a time (the list, the export), picked here; "Verify chain" verifies them all.
  const partitions = (session && session.partitions) || 1;
  const asked = Number.parseInt(params.get("partition") || "0", 10);
  const partition = partitions > 1 ? String(asked >= 0 && asked < partitions ? asked : 0) : "";
  const filters = {
    run: params.get("run") || "",
    key: params.get("key") || "",
    kind: params.get("kind") || "",
    actor: params.get("actor") || "",
    since: params.get("since") || "",
    until: params.get("until") || "",
  };
  const before = params.get("before") || "";
  const verified = h("div", {});
  const picker =
    partitions > 1
      ? h(
          "label",
          { class: "partition", title: "Each partition keeps its own audit chain" },
          "Partition ",
          h(
            "select",
            {
              name: "partition",
              id: "partition",
              onchange: (event) => event.target.form.requestSubmit(),
            },
            Array.from({ length: partitions }, (_, n) =>
              h("option", { value: String(n), selected: String(n) === partition }, String(n)),
            ),
          ),
        )
      : "";
  const form = filterForm(
    "audit",
    filters,
    [
      ...["run", "key", "kind", "actor"].map((name) => [name, name]),
      ["since", "at or after", "datetime-local"],
      ["until", "before", "datetime-local"],
    ],
    {
      before: [picker],
      after: [
    h(
      "button",
      {
        type: "button",
        id: "verify",
        onclick: async () => {
          verified.replaceChildren(message("info", partitions > 1 ? "Verifying every partition's chain…" : "Verifying the chain…"));
          try {
            const result = await get("/api/v1/audit/verify");
            verified.replaceChildren(
              result.ok
                ? message(
                    "info",
                    partitions > 1
                      ? `Every partition's chain verifies: ${result.entries} entries in ${partitions} chains.`
                      : `The chain verifies: ${result.entries} entries, head ${result.head.slice(0, 16)}.`,
                  )
                : message("error", `The chain is broken at ${result.first_bad}: ${result.reason}`),
            );
          } catch (error) {
            verified.replaceChildren(failure(error));
          }
        },
      },
      "Verify chain",
    ),
      ],
    },
  );
  const list = await get(
    `/api/v1/audit${query({ ...filters, since: instant(filters.since), until: instant(filters.until), before, limit: 100, partition })}`,
  );
  const pager = h("div", { class: "pager" });
  if (list.next) pager.append(h("a", { href: `#/audit${query({ ...filters, partition, before: list.next })}` }, "Older entries →"));
  // The export is the whole stored log up to its newest entry (JSON Lines, each line as hashed),
  // which verifies on its own: `quench audit verify --file`.
  const newest = await get(`/api/v1/audit${query({ limit: 1, partition })}`);
  const through = newest.entries.length ? newest.entries[0].seq : null;
  const exported =
    through !== null
      ? h(
          "p",
          { class: "facts" },
          h(
            "a",
            {
              id: "export",
              href: `/api/v1/audit/export${query({ partition, before: through + 1 })}`,
              download: partition
                ? `quench-audit-partition-${partition}-through-${through}.jsonl`
                : `quench-audit-through-${through}.jsonl`,
            },
            partition ? `Export partition ${partition}'s log through entry ${through}` : `Export the log through entry ${through}`,
          ),
          " (JSON Lines; verify it on its own with quench audit verify --file).",
        )
      : "";
  page(partition ? `Audit log · partition ${partition}` : "Audit log", form, verified, exported, auditTable(list.entries), pager);
}

async function dlqView(params) {
  const cursor = params.get("cursor") || "";
  const list = await get(`/api/v1/dlq${query({ cursor, limit: 50 })}`);
  const result = h("div", {});
  const rows = list.messages.map((entry) =>
    h(
      "tr",
      {},
      h("td", {}, entry.seq),
      h("td", {}, h("code", {}, entry.original_subject || entry.subject)),
      h("td", {}, entry.reason || ""),
      h("td", {}, when(entry.at)),
      h("td", {}, entry.size),
      h("td", {}, h("details", {}, h("summary", {}, "body"), h("pre", {}, entry.body))),
      h(
        "td",
        {},
        can("admin")
          ? h(
              "button",
              {
                type: "button",
                onclick: async () => {
                  try {
                    const replayed = await post(`/api/v1/dlq/${entry.seq}/replay`);
                    result.replaceChildren(message("info", `Replayed ${replayed.seq} to ${replayed.subject}.`));
                  } catch (error) {
                    result.replaceChildren(failure(error));
                  }
                },
              },
              "replay",
            )
          : "",
      ),
    ),
  );
  const pager = h("div", { class: "pager" });
  if (list.next) pager.append(h("a", { href: `#/dlq${query({ cursor: list.next })}` }, "More →"));
  page(
    "Dead letters",
    result,
    rows.length
      ? h("table", {}, h("thead", {}, h("tr", {}, ["seq", "subject", "reason", "at", "bytes", "", ""].map((t) => h("th", {}, t)))), h("tbody", {}, rows))
      : h("p", { class: "empty" }, "No dead letter."),
    pager,
  );
}

async function inventoryView(params) {
  const filters = {
    kind: params.get("kind") || "",
    project: params.get("project") || "",
    owner: params.get("owner") || "",
    risk: params.get("risk") || "",
  };
  const cursor = params.get("cursor") || "";
  const form = filterForm(
    "inventory",
    filters,
    ["kind", "project", "owner", "risk"].map((name) => [name, name]),
  );
  let list;
  try {
    list = await get(`/api/v1/inventory${query({ ...filters, cursor, limit: 100 })}`);
  } catch (error) {
    page("Inventory", form, failure(error));
    return;
  }
  const rows = list.identities.map((identity) =>
    h(
      "tr",
      {},
      h("td", {}, h("a", { href: `#/inventory/${encodeURIComponent(identity.id)}` }, identity.id)),
      h("td", {}, identity.kind),
      h("td", {}, (identity.attributes && identity.attributes.owner) || ""),
      h("td", {}, (identity.attributes && identity.attributes.purpose) || ""),
      h("td", {}, (identity.risks || []).map((risk) => risk.id).join(", ")),
      h("td", {}, when(identity.changed_at)),
    ),
  );
  const pager = h("div", { class: "pager" });
  if (list.next) pager.append(h("a", { href: `#/inventory${query({ ...filters, cursor: list.next })}` }, "More →"));
  page(
    "Inventory",
    form,
    rows.length
      ? h("table", {}, h("thead", {}, h("tr", {}, ["identity", "kind", "owner", "purpose", "risks", "changed"].map((t) => h("th", {}, t)))), h("tbody", {}, rows))
      : h("p", { class: "empty" }, "No identity matches."),
    pager,
  );
}

async function identityView(id) {
  const detail = await get(`/api/v1/inventory/${encodeURIComponent(id)}`);
  const runs = await get(`/api/v1/runs${query({ key: id, limit: 20 })}`).catch(() => ({ runs: [] }));
  page(
    `Identity ${id}`,
    h("div", { class: "card" }, json(detail.identity)),
    h("h2", {}, "Remediation history"),
    runs.runs.length
      ? h("ul", {}, runs.runs.map((run) => h("li", {}, h("a", { href: `#/runs/${encodeURIComponent(run.id)}` }, `${run.playbook}`), " ", status(run.status), ` ${when(run.started_at)}`)))
      : h("p", { class: "empty" }, "No run for this key."),
    h("h2", {}, "Changes"),
    json(detail.history),
  );
}

async function campaignsView() {
  const list = await get("/api/v1/campaigns");
  page(
    "Campaigns",
    list.campaigns.length
      ? h(
          "table",
          {},
          h("thead", {}, h("tr", {}, ["campaign", "playbook", "started", "by", "keys", "messages", "completed"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            list.campaigns.map((campaign) =>
              h(
                "tr",
                {},
                h("td", {}, h("a", { href: `#/campaigns/${encodeURIComponent(campaign.id)}` }, campaign.name)),
                h("td", {}, campaign.playbook),
                h("td", {}, when(campaign.started_at)),
                h("td", {}, campaign.started_by),
                h("td", {}, campaign.identities),
                h("td", {}, campaign.parts),
                h("td", {}, campaign.completed_at ? when(campaign.completed_at) : "running"),
              ),
            ),
          ),
        )
      : h("p", { class: "empty" }, "No campaign yet. Start one with `quench campaign start`."),
  );
}

async function campaignView(id) {
  const detail = await get(`/api/v1/campaigns/${encodeURIComponent(id)}`);
  page(`Campaign ${id}`, json(detail));
}

// ---- routing ----------------------------------------------------------------------------

function currentView() {
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  return path.split("/")[0] || "inbox";
}

// Renders run one after another, and a render asked for while others wait replaces them: a
// slow earlier page can never be drawn over a later one.
let routing = Promise.resolve();
let queued = 0;

function route() {
  queued += 1;
  routing = routing
    .then(async () => {
      queued -= 1;
      if (queued === 0) await render();
    })
    // A failed render must not stop the ones after it.
    .catch((error) => page("Error", failure(error)));
  return routing;
}

async function render() {
  // A redraw a run event asked for is this one (or is for a page no longer shown).
  clearTimeout(liveTimer);
  if (!session) return;
  const [path, search] = location.hash.replace(/^#\/?/, "").split("?");
  const params = new URLSearchParams(search || "");
  const [view, ...rest] = path.split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.dataset.view === (view || "inbox"));
  }
  try {
    switch (view || "inbox") {
      case "inbox":
        return await inboxView();
      case "runs":
        return await (arg ? runView(arg) : runsView(params));
      case "playbooks":
        return await (arg ? playbookView(arg) : playbooksView());
      case "edit":
        return await editorView(arg);
      case "audit":
        return await auditView(params);
      case "dlq":
        return await dlqView(params);
      case "inventory":
        return await (arg ? identityView(arg) : inventoryView(params));
      case "campaigns":
        return await (arg ? campaignView(arg) : campaignsView());
      default:
        page("Not found", h("p", {}, "No such page. "), h("a", { href: "#/inbox" }, "Go to the inbox"));
    }
  } catch (error) {
    if (error.status === 401) return;
    page("Error", failure(error));
  }
}

async function start() {
  $("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  // The login link of `quench up` carries its token in the fragment, which no request sends;
  // it is taken out of the address bar (and history) before anything else.
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = fragment.get("token");
  const refusedSignIn = fragment.get("signin_error");
  if (refusedSignIn) history.replaceState(null, "", `${location.pathname}#/inbox`);
  if (token) {
    history.replaceState(null, "", `${location.pathname}#/inbox`);
    try {
      await signInWithToken(token);
      return;
    } catch (error) {
      showSignIn(`The login link did not work (${error.message}); paste a token instead.`);
      return;
    }
  }
  try {
    const view = await (await fetch("/console/session", { credentials: "same-origin" })).json();
    offered = { methods: view.methods || [], issuer: view.issuer || null };
    if (view.signed_in) signedIn(view);
    else if (refusedSignIn) showSignIn(SIGNIN_ERRORS[refusedSignIn] || "The sign-in was refused.", "error");
    else showSignIn();
  } catch {
    showSignIn("The service did not answer; reload to try again.");
  }
}

start();
