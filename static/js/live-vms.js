// Every badge marked data-vm-state="NAME" follows that VM's state live (ws/vms/).
(function () {
  if (!document.querySelector("[data-vm-state]")) return;
  let retry = 1000;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/vms/`);
    socket.onopen = () => { retry = 1000; };
    socket.onmessage = (message) => {
      const vm = JSON.parse(message.data);
      for (const badge of document.querySelectorAll(`[data-vm-state="${CSS.escape(vm.name)}"]`)) {
        badge.textContent = vm.state_display;
        badge.className = "badge text-bg-" + vm.colour;
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
