// Every badge marked data-vm-state="NAME" follows that VM's state live (ws/vms/).
(function () {
  if (!document.querySelector("[data-vm-state], [data-vm-uptime], [data-vm-actions]")) return;
  followLive("/ws/vms/", (vm) => {
    for (const badge of document.querySelectorAll(`[data-vm-state="${CSS.escape(vm.name)}"]`)) {
      badge.textContent = vm.state_display;
      badge.className = "badge text-bg-" + vm.colour;
    }
    // The buttons depend on the state (Start for a stopped VM, Shut down for a running one): when
    // it changes, take them from the page as the server draws it now.
    for (const actions of document.querySelectorAll(`[data-vm-actions="${CSS.escape(vm.name)}"]`)) {
      if (actions.dataset.state === vm.state) continue;
      actions.dataset.state = vm.state;
      fetch(location.pathname, {headers: {"Accept": "text/html"}}).then((response) => response.ok ? response.text() : null)
        .then((html) => {
          if (!html) return;
          const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(actions.id);
          if (fresh) actions.replaceWith(document.importNode(fresh, true));
        });
    }
    for (const uptime of document.querySelectorAll(`[data-vm-uptime="${CSS.escape(vm.name)}"]`)) {
      if (!("running_since" in vm)) continue;
      if (vm.running_since) {
        const since = document.createElement("time");
        since.dateTime = vm.running_since;
        since.textContent = "since " + new Date(vm.running_since).toISOString().slice(0, 19).replace("T", " ") + " UTC";
        uptime.replaceChildren(since);
      } else {
        uptime.textContent = "not running";
      }
    }
  });
})();
