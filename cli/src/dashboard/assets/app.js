// rollgate dashboard: plain JavaScript, no build step. The server (`rollgate dashboard`) turns
// the coordinator's messages into view JSON; this file lays them out. Live updates arrive as
// server-sent events: /api/live (fleet, rollout list, event lines) and
// /api/rollouts/ID/live (one rollout). Every text goes in through textContent, never as HTML.
"use strict";

const state = { fleet: null, rollouts: null, events: [], rollout: null, watch: null };
const MAX_EVENTS = 50;
const view = document.getElementById("view");

// el("td", {class: "x"}, "text", child, ...): an element with attributes and children.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// box.replaceChildren(...), skipping null and flattening arrays.
function fill(box, ...children) {
  box.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function badge(word) {
  return el("span", { class: "badge s-" + word }, word.replace(/_/g, " "));
}

function ago(ms) {
  if (!ms) return "-";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  return Math.floor(s / 86400) + "d ago";
}

function progress(percent, label) {
  return el("progress", { max: 100, value: percent, "aria-label": label }, percent + "%");
}

function table(caption, headers, rows) {
  return el("div", { class: "scroll" },
    el("table", { "aria-label": caption },
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)));
}

function showProblem(text) {
  const p = document.getElementById("problem");
  p.hidden = !text;
  p.textContent = text ? "Coordinator: " + text : "";
}

function problemText(p) {
  return p.error + (p.retrying ? " (the dashboard keeps trying)" : "");
}

function setLive(up, text) {
  const l = document.getElementById("live");
  l.textContent = text;
  l.classList.toggle("down", !up);
}

// ---- the fleet stream (always open) -------------------------------------------------------

function openFleetStream() {
  const es = new EventSource("/api/live");
  es.onopen = () => setLive(true, "live");
  // The browser retries by itself, but not after a refusal (a restarted dashboard has a new
  // login token).
  es.onerror = () => setLive(false, es.readyState === EventSource.CLOSED
    ? "disconnected: open the address rollgate dashboard printed" : "reconnecting…");
  es.addEventListener("fleet", (m) => { state.fleet = JSON.parse(m.data); showProblem(""); refresh(); });
  es.addEventListener("rollouts", (m) => { state.rollouts = JSON.parse(m.data); refresh(); });
  es.addEventListener("problem", (m) => showProblem(problemText(JSON.parse(m.data))));
  es.addEventListener("event", (m) => {
    const e = JSON.parse(m.data);
    // A reconnected stream sends the recent events again.
    if (state.events.some((x) => x.id === e.id)) return;
    state.events.push(e);
    if (state.events.length > MAX_EVENTS) state.events.shift();
    const box = document.getElementById("events");
    if (box) box.textContent = newestFirst();
  });
}

function newestFirst() {
  return state.events.length ? state.events.map((e) => e.line).reverse().join("\n") : "No events in the last 10 minutes.";
}

// ---- routing ------------------------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (state.watch && !(parts[0] === "rollout" && parts[1] === state.rollout?.id)) {
    state.watch.close();
    state.watch = null;
  }
  view.replaceChildren();
  if (parts[0] === "rollout" && parts[1]) return mountRollout(parts[1]);
  if (parts[0] === "rollouts") return mountRollouts();
  if (parts[0] === "history" && parts[1]) return mountHistory(parts[1]);
  return mountFleet();
}

// Called on every fleet/rollout-list update: redraws the parts that show them.
function refresh() {
  const f = document.getElementById("fleet-body");
  if (f) fillFleet(f);
  const r = document.getElementById("rollouts-body");
  if (r) fillRollouts(r, view.dataset.view === "fleet");
}

// ---- fleet view ---------------------------------------------------------------------------

function mountFleet() {
  view.dataset.view = "fleet";
  const labelFilter = el("input", { id: "filter-label", type: "search", placeholder: "site=eu-1", list: "label-values" });
  const versionFilter = el("select", { id: "filter-version" }, el("option", { value: "" }, "any version"));
  labelFilter.addEventListener("input", refresh);
  versionFilter.addEventListener("change", refresh);
  view.append(
    el("h2", {}, "Rollouts in progress"),
    el("div", { id: "rollouts-body" }),
    el("h2", {}, "Fleet"),
    el("div", { class: "filters" },
      el("label", {}, "Filter by label (key=value)", labelFilter, el("datalist", { id: "label-values" })),
      el("label", {}, "Filter by version", versionFilter)),
    el("div", { id: "fleet-body" }),
    el("h2", {}, "Recent events"),
    el("pre", { id: "events", "aria-label": "Recent events, newest first", tabindex: 0 }, newestFirst()));
  refresh();
}

function hostMatches(h, label, version) {
  if (label) {
    const [k, v] = label.split("=");
    const have = h.labels[k.trim()];
    if (have === undefined || (v !== undefined && v.trim() !== "" && have !== v.trim())) return false;
  }
  if (version) return h.services.some((s) => (s.version || "none") === version);
  return true;
}

function fillLabelChoices(f) {
  const list = document.getElementById("label-values");
  if (list.dataset.key === f.labels.join(",")) return;
  list.dataset.key = f.labels.join(",");
  fill(list, f.labels.map((l) => el("option", { value: l })));
}

function fillVersionFilter(f) {
  const select = document.getElementById("filter-version");
  const chosen = select.value;
  const versions = [...new Set(f.versions.map((v) => v.version))].sort();
  fill(select, el("option", { value: "" }, "any version"),
    versions.map((v) => el("option", { value: v, selected: v === chosen }, v)));
}

function fillFleet(box) {
  const f = state.fleet;
  if (!f) { box.replaceChildren(el("p", { class: "muted" }, "loading…")); return; }
  fillVersionFilter(f);
  if (view.dataset.view === "fleet") {
    document.title = f.total + " hosts" + (f.offline ? ", " + f.offline + " offline" : "") + (f.unhealthy ? ", " + f.unhealthy + " unhealthy" : "") + " · rollgate";
  }
  fillLabelChoices(f);
  const label = document.getElementById("filter-label").value.trim();
  const version = document.getElementById("filter-version").value;
  const hosts = f.hosts.filter((h) => hostMatches(h, label, version));
  const cards = el("div", { class: "cards", id: "fleet-counts" },
    el("div", { class: "card" }, el("span", { class: "n", id: "count-hosts" }, f.total), "hosts"),
    el("div", { class: "card" + (f.offline ? " bad" : "") }, el("span", { class: "n", id: "count-offline" }, f.offline), "offline"),
    el("div", { class: "card" + (f.unhealthy ? " bad" : "") }, el("span", { class: "n", id: "count-unhealthy" }, f.unhealthy), "unhealthy"),
    f.versions.map((v) => el("div", { class: "card" }, el("span", { class: "n" }, v.hosts),
      v.service + " ", el("a", { href: "#/history/" + encodeURIComponent(v.service) }, v.version))),
    f.sites.map((s) => el("div", { class: "card" }, el("span", { class: "n" }, s.connected + "/" + s.hosts),
      "site " + s.site + " connected")));
  const rows = hosts.map((h) => el("tr", { class: h.attention, "data-host": h.id },
    el("th", { scope: "row" }, h.id),
    el("td", {}, h.site),
    el("td", {}, Object.entries(h.labels).map(([k, v]) => k + "=" + v).join(" ")),
    el("td", {}, badge(h.connected ? "ok" : "offline"), h.connected ? "" : " last seen " + ago(h.last_seen_ms)),
    el("td", { class: "services" }, h.services.map((s) => el("div", {},
      s.service + " " + (s.version || "none") + " ", badge(s.health),
      s.updating_for ? " updating (" + s.updating_for + ")" : "",
      s.detail && s.health !== "healthy" ? el("span", { class: "muted" }, " " + s.detail) : null))),
    el("td", {}, h.attention === "ok" ? "" : badge(h.attention))));
  fill(box, cards,
    el("p", { class: "muted", id: "fleet-shown" }, "showing " + hosts.length + " of " + f.total + " hosts"),
    table("Hosts", ["Host", "Site", "Labels", "Connection", "Services", "Attention"], rows));
}

// ---- rollout list -------------------------------------------------------------------------

function mountRollouts() {
  view.dataset.view = "rollouts";
  view.append(el("h2", {}, "Rollouts"), el("div", { id: "rollouts-body" }));
  refresh();
}

function fillRollouts(box, activeOnly) {
  const list = state.rollouts;
  if (!list) { box.replaceChildren(el("p", { class: "muted" }, "loading…")); return; }
  const rs = list.rollouts.filter((r) => !activeOnly || !r.ended);
  if (!rs.length) {
    box.replaceChildren(el("p", { class: "muted", id: "no-rollouts" },
      activeOnly ? "No rollout in progress." : "No rollouts yet: start one with rollgate rollout start SPEC.toml"));
    return;
  }
  const rows = rs.map((r) => el("tr", { "data-rollout": r.id },
    el("th", { scope: "row" }, el("a", { href: "#/rollout/" + encodeURIComponent(r.id) }, r.id)),
    el("td", {}, el("a", { href: "#/history/" + encodeURIComponent(r.service) }, r.service), " → " + r.version),
    el("td", {}, badge(r.phase)),
    el("td", {}, progress(r.percent, "progress of " + r.id), " " + r.done + "/" + r.total + " done, " + r.failed + " failed"),
    el("td", {}, r.waiting || r.unreadable || ""),
    el("td", {}, r.created_by || "-"),
    el("td", {}, ago(r.created_at_ms))));
  box.replaceChildren(table("Rollouts", ["Rollout", "Service", "Phase", "Progress", "Waiting for", "Started by", "Started"], rows));
}

// ---- one rollout --------------------------------------------------------------------------

function mountRollout(id) {
  view.dataset.view = "rollout";
  view.append(el("h2", {}, "Rollout " + id),
    el("div", { id: "action-result", role: "status", "aria-live": "polite" }),
    el("div", { id: "rollout-body" }, el("p", { class: "muted" }, "loading…")));
  if (!state.watch) {
    state.rollout = { id };
    const es = new EventSource("/api/rollouts/" + encodeURIComponent(id) + "/live");
    es.addEventListener("rollout", (m) => {
      state.rollout = JSON.parse(m.data);
      showProblem("");
      const box = document.getElementById("rollout-body");
      if (box) fillRollout(box, state.rollout);
    });
    es.addEventListener("problem", (m) => {
      const p = JSON.parse(m.data);
      const box = document.getElementById("rollout-body");
      // A refusal (no such rollout, not allowed) is this view's answer, not an outage.
      if (!p.retrying && box) fill(box, el("p", { class: "reason", id: "rollout-refused" }, p.error));
      else showProblem(problemText(p));
    });
    es.addEventListener("end", () => { es.close(); if (state.watch === es) state.watch = null; });
    state.watch = es;
  } else if (state.rollout.service) {
    fillRollout(document.getElementById("rollout-body"), state.rollout);
  }
}

// "Waiting: paused by …", or the coordinator's words as they are when they say it already
// ("waiting at the canary gate: …").
function sentence(text, label) {
  return text.toLowerCase().startsWith(label.slice(0, -2).toLowerCase()) ? text : label + text;
}

function fact(name, value, id) {
  return [el("dt", {}, name), el("dd", { id }, value)];
}

function fillRollout(box, r) {
  // The tab says it too (a wall screen shows several tabs, or a laptop's tab bar).
  document.title = r.phase.replace(/_/g, " ") + " " + r.percent + "% · " + r.service + " " + r.version + " · rollgate";
  const budget = r.unavailable + " of " + r.max_unavailable + " allowed unavailable";
  const facts = el("dl", { class: "facts" },
    fact("Service", [el("a", { href: "#/history/" + encodeURIComponent(r.service) }, r.service), " → " + r.version]),
    fact("Phase", badge(r.phase), "rollout-phase"),
    fact("Started by", (r.created_by || "the coordinator") + ", " + ago(r.created_at_ms), "rollout-by"),
    fact("Wave", r.wave + " of " + r.waves, "rollout-wave"),
    fact("Gate", r.gate || "none", "rollout-gate"),
    fact("Budget", budget, "rollout-budget"),
    r.group_by ? fact("Per " + r.group_by, r.groups.map((g) => g.group + ": " + g.unavailable + "/" + g.max_unavailable).join(", "), "rollout-groups") : null,
    fact("Hosts", r.done + " done, " + r.failed + " failed (max " + r.max_failures + "), " + r.total + " in all", "rollout-counts"),
    r.rollback_of ? fact("Rolls back", el("a", { href: "#/rollout/" + r.rollback_of }, r.rollback_of)) : null,
    r.rolled_back_by ? fact("Rolled back by", el("a", { href: "#/rollout/" + r.rolled_back_by }, r.rolled_back_by)) : null);
  const waves = r.wave_progress.map((w) => el("div", { class: "wave" },
    el("span", {}, w.name + (w.current ? " (now)" : "") + ": " + w.done + "/" + w.total + " done, " + w.failed + " failed "),
    progress(w.percent, "progress of " + w.name)));
  fillActions(box, r);
  const hostRows = r.hosts.map((h) => el("tr", { "data-host": h.id, class: h.connected ? null : "offline" },
    el("th", { scope: "row" }, h.id),
    el("td", {}, h.wave),
    el("td", {}, h.group || "-"),
    el("td", { class: "state" }, badge(h.state), h.holds_slot ? " (slot)" : ""),
    el("td", { class: "step" }, h.progress),
    el("td", {}, h.version || "-"),
    el("td", {}, badge(h.health)),
    el("td", {}, h.connected ? "yes" : "no")));
  const notes = r.hosts.filter((h) => h.note).map((h) => el("li", {}, h.note));
  fill(part(box, "rollout-summary"), facts,
    el("div", {}, "Overall: ", progress(r.percent, "progress of rollout " + r.id), " " + r.percent + "%"),
    waves,
    r.waiting ? el("p", { class: "waiting", id: "rollout-waiting" }, sentence(r.waiting, "Waiting: ")) : null,
    r.reason ? el("p", { class: "reason", id: "rollout-reason" }, "Reason: " + r.reason) : null);
  fill(part(box, "rollout-hosts"),
    table("Hosts of rollout " + r.id, ["Host", "Wave", "Group", "State", "Step", "Version", "Health", "Connected"], hostRows),
    notes.length ? el("ul", { class: "notes", "aria-label": "Host notes" }, notes) : null);
}

// The rollout view's parts, made once in order: summary, actions, hosts.
function part(box, id) {
  let p = document.getElementById(id);
  if (!p) {
    box.replaceChildren(el("div", { id: "rollout-summary" }),
      el("div", { id: "rollout-actions", class: "actions", role: "group", "aria-label": "Actions" }),
      el("div", { id: "rollout-hosts" }));
    p = document.getElementById(id);
  }
  return p;
}

// The buttons are redrawn only when the actions change, so a click never lands on a button
// that a live update just replaced.
function fillActions(box, r) {
  const bar = part(box, "rollout-actions");
  const key = r.id + ":" + r.actions.map((a) => a.action).join(",");
  if (bar.dataset.key === key) return;
  bar.dataset.key = key;
  fill(bar, r.actions.map((a) => {
    const b = el("button", { type: "button", "data-action": a.action, class: a.action === "abort" || a.action === "rollback" ? "danger" : null }, a.action);
    b.addEventListener("click", () => confirmAction(r.id, a));
    return b;
  }));
}

function confirmAction(id, a) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = a.action[0].toUpperCase() + a.action.slice(1) + " rollout " + id + "?";
  document.getElementById("confirm-text").textContent = a.consequence;
  document.getElementById("confirm-yes").textContent = a.action;
  dialog.returnValue = "";
  dialog.onclose = () => { if (dialog.returnValue === "ok") act(id, a.action); };
  dialog.showModal();
}

async function act(id, action) {
  const out = document.getElementById("action-result");
  out.textContent = action + " " + id + "…";
  try {
    const resp = await fetch("/api/rollouts/" + encodeURIComponent(id) + "/" + action, { method: "POST" });
    const body = await resp.json().catch(() => ({ error: resp.status + " " + resp.statusText }));
    if (!resp.ok) { out.textContent = action + " refused: " + body.error; return; }
    out.textContent = action + " done: rollout " + body.id + " is " + body.phase.replace(/_/g, " ");
    if (body.id !== id) location.hash = "#/rollout/" + encodeURIComponent(body.id);
  } catch (e) {
    out.textContent = action + " failed: " + e;
  }
}

// ---- a service's release history ----------------------------------------------------------

async function mountHistory(service) {
  view.dataset.view = "history";
  const box = el("div", { id: "history-body" }, el("p", { class: "muted" }, "loading…"));
  view.append(el("h2", {}, "Release history of " + service), box);
  const resp = await fetch("/api/history/" + encodeURIComponent(service));
  const body = await resp.json().catch(() => ({ error: resp.status + " " + resp.statusText }));
  if (!resp.ok) { box.replaceChildren(el("p", { class: "reason" }, body.error)); return; }
  if (!body.entries.length) { box.replaceChildren(el("p", { class: "muted" }, "No releases yet.")); return; }
  box.replaceChildren(table("Release history of " + service, ["Version", "sha256", "Size", "Rollout", "When"],
    body.entries.map((e) => el("tr", {},
      el("th", { scope: "row" }, e.version), el("td", {}, e.sha256), el("td", {}, e.size),
      el("td", {}, e.rollout_id ? el("a", { href: "#/rollout/" + encodeURIComponent(e.rollout_id) }, e.rollout_id) : "-"),
      el("td", {}, ago(e.at_ms))))));
}

window.addEventListener("hashchange", route);
openFleetStream();
route();
