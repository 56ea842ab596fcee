// Live job page: follow the job over its websocket, resuming after the last serial shown.
(function () {
  const summary = JSON.parse(document.getElementById("job-summary").textContent);
  const log = document.getElementById("job-log");
  const live = document.getElementById("job-live");
  const colours = {queued: "secondary", running: "primary", succeeded: "success", failed: "danger",
                   errored: "danger", cancelled: "warning"};
  let lastSerial = 0;
  for (const row of log.querySelectorAll("tr[data-serial]")) lastSerial = Math.max(lastSerial, +row.dataset.serial);
  let retry = 500;

  function showJob(job) {
    document.dispatchEvent(new CustomEvent("job-summary", {detail: job}));
    const bar = document.getElementById("job-progress-bar");
    bar.style.width = job.percent + "%";
    bar.textContent = job.percent + " %";
    document.getElementById("job-progress").setAttribute("aria-valuenow", job.percent);
    bar.classList.toggle("bg-success", job.state === "succeeded");
    bar.classList.toggle("bg-danger", job.state === "failed" || job.state === "errored");
    const state = document.getElementById("job-state");
    state.textContent = job.state.charAt(0).toUpperCase() + job.state.slice(1);
    state.className = "badge text-bg-" + (colours[job.state] || "secondary");
    document.getElementById("job-step").textContent = job.total_steps ? `Step ${job.step} of ${job.total_steps}` : "";
    const message = document.getElementById("job-message");
    message.textContent = job.message;
    message.className = job.state === "failed" || job.state === "errored" ? "text-danger fw-semibold" : "";
    const cancel = document.getElementById("job-cancel-form");
    if (cancel && job.finished) cancel.remove();
  }

  function addEntry(entry) {
    if (entry.serial <= lastSerial) return;  // already shown (backlog and live can overlap)
    lastSerial = entry.serial;
    document.dispatchEvent(new CustomEvent("job-entry", {detail: entry}));  // for panels such as migration.js
    const row = document.createElement("tr");
    row.className = "level-" + entry.level;
    row.dataset.serial = entry.serial;
    const time = new Date(entry.time).toLocaleTimeString([], {hour12: false});
    for (const text of [entry.serial, time, entry.total_steps ? `${entry.step}/${entry.total_steps}` : "", entry.message]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    log.appendChild(row);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/jobs/${summary.id}/?after=${lastSerial}`);
    socket.onopen = () => { live.textContent = "live"; retry = 500; };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.entry) addEntry(event.entry);
      if (event.job) { showJob(event.job); if (event.job.finished) { live.textContent = "finished"; socket.close(1000); } }
    };
    socket.onclose = (event) => {
      if (event.code === 1000 || event.code === 4404) return;
      if (event.code === 4401) { live.textContent = "session expired: reload to log in"; return; }
      live.textContent = "reconnecting…";
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }
  showJob(summary);
  if (!summary.finished) connect();
})();
