// Every badge marked data-vm-state="NAME" follows that VM's state live (ws/vms/).
(function () {
  if (!document.querySelector("[data-vm-state], [data-vm-uptime]")) return;
  followLive("/ws/vms/", (vm) => {
    for (const badge of document.querySelectorAll(`[data-vm-state="${CSS.escape(vm.name)}"]`)) {
      badge.textContent = vm.state_display;
      badge.className = "badge text-bg-" + vm.colour;
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
