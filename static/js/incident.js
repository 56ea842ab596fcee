// The timeline follows the incident live: ws/incidents/<id>/?after=<last event id> sends what this
// page lacks, then new events; duplicates are dropped by event id, and a reconnect resumes.
(function () {
  const body = document.getElementById("timeline");
  if (!body) return;
  const incidentId = Number(body.dataset.incident);
  const kinds = JSON.parse(body.dataset.kinds || "{}");
  let last = Math.max(0, ...Array.from(body.querySelectorAll("[data-event]"), (row) => Number(row.dataset.event)));
  let retry = 1000;
  function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); return td; }
  function show(message) {
    const incident = message.incident;
    const badge = document.getElementById("incident-state");
    badge.textContent = incident.state_display;
    badge.className = "badge text-bg-" + incident.colour;
    const summary = document.getElementById("incident-summary");  // not on a tenant's page
    if (summary) summary.textContent = incident.summary;
    const confirm = document.getElementById("confirm-fence");
    if (confirm && !["open", "unfenced"].includes(incident.state)) confirm.remove();
    const event = message.event;
    if (!event || event.id <= last) return;
    last = event.id;
    const row = document.createElement("tr");
    row.dataset.event = event.id;
    cell(row, new Date(event.time).toISOString().slice(11, 19));
    cell(row, kinds[event.kind] || event.kind);
    cell(row, event.message);
    const job = cell(row, "");
    if (event.job) {
      const link = document.createElement("a");
      link.href = `/jobs/${event.job}/`;
      link.textContent = `#${event.job}`;
      job.appendChild(link);
    }
    for (const empty of body.querySelectorAll("tr:not([data-event])")) empty.remove();
    body.appendChild(row);
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/incidents/${incidentId}/?after=${last}`);
    socket.onopen = () => { retry = 1000; };
    socket.onmessage = (message) => show(JSON.parse(message.data));
    socket.onclose = (event) => {
      if (event.code === 4401 || event.code === 4404) return;
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    };
  }
  connect();
})();
