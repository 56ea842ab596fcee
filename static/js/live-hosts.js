// Every badge marked data-host-state="NAME" data-host-kind="cpu|disk" follows that host's state live
// (ws/hosts/); elements marked data-host-missed / data-host-error show its missed checks and last error.
(function () {
  if (!document.querySelector("[data-host-state]")) return;
  let retry = 1000;
  function matching(attr, host) {
    return document.querySelectorAll(`[${attr}="${CSS.escape(host.name)}"][data-host-kind="${host.kind}"]`);
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/hosts/`);
    socket.onopen = () => { retry = 1000; };
    socket.onmessage = (message) => {
      const host = JSON.parse(message.data);
      for (const badge of matching("data-host-state", host)) {
        badge.textContent = host.state_display;
        badge.className = "badge text-bg-" + host.colour;
      }
      for (const el of matching("data-host-missed", host)) el.textContent = host.missed_checks;
      for (const el of matching("data-host-error", host)) el.textContent = host.last_check_error || "none";
      for (const el of matching("data-host-seen", host)) {
        if (host.last_seen_at) el.textContent = new Date(host.last_seen_at).toISOString().replace("T", " ").slice(0, 19) + " UTC";
      }
    };
    socket.onclose = (event) => {
      if (event.code === 4401 || event.code === 4404) return;
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    };
  }
  connect();
})();

// Incident state badges (data-incident-state="ID", dashboard and incident list) follow ws/incidents/;
// a new incident shows on reload.
(function () {
  if (!document.querySelector("[data-incident-state]")) return;
  let retry = 1000;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/incidents/`);
    socket.onopen = () => { retry = 1000; };
    socket.onmessage = (message) => {
      const incident = JSON.parse(message.data).incident;
      for (const badge of document.querySelectorAll(`[data-incident-state="${incident.id}"]`)) {
        badge.textContent = incident.state_display;
        badge.className = "badge text-bg-" + incident.colour;
      }
    };
    socket.onclose = (event) => {
      if (event.code === 4401 || event.code === 4404) return;
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    };
  }
  connect();
})();
