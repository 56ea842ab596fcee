// Every badge marked data-host-state="NAME" data-host-kind="cpu|disk" follows that host's state live
// (ws/hosts/); elements marked data-host-missed / data-host-error show its missed checks and last error.
(function () {
  if (!document.querySelector("[data-host-state]")) return;
  function matching(attr, host) {
    return document.querySelectorAll(`[${attr}="${CSS.escape(host.name)}"][data-host-kind="${host.kind}"]`);
  }
  followLive("/ws/hosts/", (host) => {
    for (const badge of matching("data-host-state", host)) {
      badge.textContent = host.state_display;
      badge.className = "badge text-bg-" + host.colour;
    }
    for (const el of matching("data-host-missed", host)) el.textContent = host.missed_checks;
    for (const el of matching("data-host-error", host)) el.textContent = host.last_check_error || "none";
    for (const el of matching("data-host-seen", host)) {
      if (host.last_seen_at) el.textContent = new Date(host.last_seen_at).toISOString().replace("T", " ").slice(0, 19) + " UTC";
    }
  });
})();

// Incident state badges (data-incident-state="ID", dashboard and incident list) follow ws/incidents/;
// a new incident shows on reload.
(function () {
  if (!document.querySelector("[data-incident-state]")) return;
  followLive("/ws/incidents/", (event) => {
    const incident = event.incident;
    for (const badge of document.querySelectorAll(`[data-incident-state="${incident.id}"]`)) {
      badge.textContent = incident.state_display;
      badge.className = "badge text-bg-" + incident.colour;
    }
  });
})();
