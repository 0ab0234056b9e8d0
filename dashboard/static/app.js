// maskgate dashboard: the little script the pages need. Served locally; no libraries.
// Everything that comes from the API is put into the page with textContent, never as HTML.
"use strict";

const POLL_MS = 3000;
const POLL_PAGE = 100; // events per request while catching up
const POLL_MAX_PAGES = 10; // more than this many pages at once: ask for a reload instead

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

// Forms that change something big ask first (promote, roll back).
function confirmForms() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

function timeText(iso) {
  return iso.slice(0, 19).replace("T", " ") + "Z";
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    td.appendChild(span);
  } else {
    td.textContent = text;
  }
  row.appendChild(td);
  return td;
}

function reviewText(e) {
  if (e.false_positive) return "false positive";
  if (e.review_label) return e.review_label;
  if (e.reviewed) return "reviewed";
  return e.incident ? "open" : "–";
}

function eventRow(e) {
  const row = document.createElement("tr");
  row.dataset.eventId = e.event_id;
  row.dataset.occurredAt = e.occurred_at;
  row.className = "arrived" + (e.incident ? " incident" : "");
  const link = document.createElement("a");
  link.href = "/events/" + encodeURIComponent(e.event_id);
  link.textContent = timeText(e.occurred_at);
  cell(row, "").appendChild(link);
  cell(row, e.gate_id);
  cell(row, e.label);
  cell(row, e.action, "decision " + e.action);
  cell(row, Math.round(e.confidence * 100) + "%");
  const door = cell(row, e.door_status || "–");
  if (e.door_reason) door.title = e.door_reason.replace(/_/g, " "); // why the door answered so
  const review = reviewText(e);
  if (review === "open") {
    const strong = document.createElement("strong");
    strong.textContent = review;
    cell(row, "").appendChild(strong);
  } else {
    cell(row, review);
  }
  return row;
}

// New events appear at the top of the first page of the events list (polling: waitress
// serves a few threads, and a held-open stream per viewer would use them up).
function liveEvents() {
  const table = document.querySelector("table.events[data-live]");
  const status = document.getElementById("live-status");
  if (!table || !status) return;
  const body = table.tBodies[0];
  const seen = new Set([...body.querySelectorAll("tr[data-event-id]")].map((r) => r.dataset.eventId));

  // Everything that arrived since the newest row shown, newest first, following the API's pages:
  // more than one page arrives while a background tab is polled once a minute, and the next poll
  // starts from the newest row, so a page not fetched now would never be shown.
  async function arrivedSince(newest) {
    const url = new URL(status.dataset.api, window.location.origin);
    if (newest) url.searchParams.set("from", newest.dataset.occurredAt);
    url.searchParams.set("limit", String(POLL_PAGE));
    const events = [];
    for (let pages = 0; pages < POLL_MAX_PAGES; pages++) {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      events.push(...data.events);
      if (!data.next_cursor) return { events, complete: true };
      url.searchParams.set("cursor", data.next_cursor);
    }
    return { events, complete: false };
  }

  async function poll() {
    try {
      const { events, complete } = await arrivedSince(body.querySelector("tr[data-occurred-at]"));
      const fresh = events.filter((e) => !seen.has(e.event_id));
      const empty = body.querySelector("tr.empty");
      if (fresh.length && empty) empty.remove();
      for (const e of fresh.reverse()) {
        seen.add(e.event_id);
        body.insertBefore(eventRow(e), body.firstChild);
      }
      if (!complete) {  // too many to add here: the rows below the new ones would have a gap
        status.textContent = "more events arrived than shown: reload";
        status.classList.add("stale");
        return;  // stop polling: a reload shows the list whole
      }
      status.textContent = "live";
      status.classList.remove("stale");
    } catch (error) {
      status.textContent = "live (reconnecting)";
      status.classList.add("stale");
    }
    window.setTimeout(poll, POLL_MS);
  }
  window.setTimeout(poll, POLL_MS);
}

// A running training run's page reloads itself to show the log as it grows.
function refreshRunningLog() {
  const log = document.querySelector("pre.log[data-refresh]");
  if (log) window.setTimeout(() => window.location.reload(), Number(log.dataset.refresh) * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  confirmForms();
  liveEvents();
  refreshRunningLog();
});

window.maskgate = { csrfToken };
