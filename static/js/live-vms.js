// Every badge marked data-vm-state="NAME" follows that VM's state live (ws/vms/).
(function () {
  if (!document.querySelector("[data-vm-state]")) return;
  followLive("/ws/vms/", (vm) => {
    for (const badge of document.querySelectorAll(`[data-vm-state="${CSS.escape(vm.name)}"]`)) {
      badge.textContent = vm.state_display;
      badge.className = "badge text-bg-" + vm.colour;
    }
  });
})();
