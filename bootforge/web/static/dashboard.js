// bootforge dashboard: confirmation before every action, and live updates over server-sent events.
// Plain JavaScript, no build step; fragments come from the server already escaped.
"use strict";

// Every action form asks first (its data-confirm says what it does).
document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

// Fetch a server-rendered fragment into `element`, at most once per `delay` ms however often asked.
function refresher(element, delay, done) {
  let timer = null;
  const run = () => {
    timer = null;
    fetch(element.dataset.src, { credentials: "same-origin", cache: "no-store" })
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error(String(r.status)))))
      .then((html) => {
        element.innerHTML = html;
        if (done) done();
      })
      .catch(() => {});
  };
  return () => {
    if (timer === null) timer = setTimeout(run, delay);
  };
}

// Fleet: the rows shown are fetched again (one page query) when a provision, failure or maintenance
// event arrives, and every 15 s for what publishes no event (power state sync).
const fleetRows = document.getElementById("fleet-rows");
if (fleetRows) {
  const soon = refresher(fleetRows, 500);
  const events = new EventSource("/ui/events");
  for (const kind of ["provision", "failure", "maintenance"]) events.addEventListener(kind, soon);
  setInterval(soon, 15000);
}

// Node page: one stream (a browser allows six connections per server; tabs add up) carries the
// timeline rows and the console log. The timeline grows as rows come, the summary (states,
// diagnosis, actions) is fetched again after each burst of rows, the console shows text, never HTML.
const timeline = document.getElementById("timeline");
const summary = document.getElementById("summary");
const consoleLog = document.getElementById("console");
function failingUuid() {
  const body = summary && summary.querySelector(".summary-body");
  return body ? body.dataset.failing : "";
}
function markFailing() {
  const failing = failingUuid();
  for (const row of timeline.rows) row.classList.toggle("failing", !!failing && row.dataset.uuid === failing);
}
if (timeline && summary) {
  const soon = refresher(summary, 700, markFailing);
  const stream = new EventSource(summary.dataset.live);
  // The agent's progress (bytes written) comes without timeline rows: while the node is on its way
  // somewhere, the summary is fetched every 3 s as well.
  setInterval(() => {
    const body = summary.querySelector(".summary-body");
    if (body && body.dataset.busy) soon();
  }, 3000);
  const status = document.getElementById("console-status");
  let opened = false;
  stream.addEventListener("open", () => {
    // A reconnect resumes the timeline after its last row but sends the console's end again.
    if (opened) consoleLog.textContent = "";
    opened = true;
  });
  stream.addEventListener("timeline", (event) => {
    const r = JSON.parse(event.data);
    if (timeline.querySelector(`tr[data-id="${r.id}"]`)) return;
    const row = document.createElement("tr");
    row.dataset.id = String(r.id);
    row.dataset.uuid = r.uuid;
    row.className = "sev-" + r.severity + (r.uuid === failingUuid() ? " failing" : "");
    for (const value of [r.created_at.replace("T", " ").slice(0, 23), r.severity, r.event_type, r.event]) {
      const cell = document.createElement("td");
      cell.textContent = value == null ? "" : String(value);
      row.appendChild(cell);
    }
    timeline.appendChild(row);
    soon();
  });
  stream.addEventListener("status", () => {
    status.textContent = "No console log yet: this node's console interface has not captured any output.";
  });
  stream.addEventListener("console", (event) => {
    status.textContent = "";
    const atEnd = consoleLog.scrollTop + consoleLog.clientHeight >= consoleLog.scrollHeight - 4;
    consoleLog.textContent += JSON.parse(event.data).text;
    if (consoleLog.textContent.length > 400000) consoleLog.textContent = consoleLog.textContent.slice(-200000);
    if (atEnd) consoleLog.scrollTop = consoleLog.scrollHeight;
  });
}
