// The serial console page: xterm.js wired to ws/vms/<name>/console/serial/ (vms/console_consumer.py).
// Binary frames carry the raw bytes both ways; JSON text frames carry the server's status. It
// reconnects when the connection drops (not when the server refuses: 4401/4403/4404/4409/4410), and
// the server itself follows the VM to another server.
(function () {
  const element = document.getElementById("console");
  if (!element) return;
  const status = document.getElementById("console-status");
  const takeOver = document.getElementById("console-take-over");
  const reconnect = document.getElementById("console-reconnect");
  const term = new Terminal({
    scrollback: Number(element.dataset.scrollback) || 5000,
    convertEol: false,
    cursorBlink: true,
    fontSize: 14,
    rightClickSelectsWord: false,
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(element);
  fit.fit();
  window.xenaoeConsole = term; // for tests and the curious: the terminal's buffer
  const encoder = new TextEncoder();
  const FINAL = {4401: "signed out", 4403: "not allowed", 4404: "no such VM", 4409: "another session has the console",
                 4410: "the VM was deleted"};
  let socket = null;
  let retry = 1000;

  function say(text) { status.textContent = text; }

  function send(data) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
  }

  function connect(force) {
    takeOver.hidden = reconnect.hidden = true;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${element.dataset.consolePath}${force ? "?force=1" : ""}`);
    socket.binaryType = "arraybuffer";
    say("connecting…");
    socket.onopen = () => {
      retry = 1000;
      socket.send(JSON.stringify({type: "resize", cols: term.cols, rows: term.rows}));
    };
    socket.onmessage = (message) => {
      if (typeof message.data === "string") {
        const event = JSON.parse(message.data);
        if (event.type === "status") {
          say({connected: "connected", migrated: "following the VM to another server…", waiting: "waiting for the guest",
               closed: "console closed; waiting", retrying: "retrying…"}[event.state] || event.message || event.state);
          element.dataset.consoleState = event.state;
        }
        return;
      }
      term.write(new Uint8Array(message.data));
    };
    socket.onclose = (event) => {
      element.dataset.consoleState = "closed";
      if (event.code in FINAL) {
        say(FINAL[event.code]);
        if (event.code === 4409) takeOver.hidden = false;
        else reconnect.hidden = false;
        return;
      }
      say(`disconnected; reconnecting in ${retry / 1000} s`);
      setTimeout(() => connect(false), retry);
      retry = Math.min(retry * 2, 15000);
    };
  }

  term.onData((data) => send(data));
  term.onBinary((data) => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(Uint8Array.from(data, (c) => c.charCodeAt(0)));
  });
  // Ctrl+Shift+C / Ctrl+Shift+V copy and paste (plain Ctrl+C goes to the guest).
  term.attachCustomKeyEventHandler((event) => {
    if (event.type !== "keydown" || !event.ctrlKey || !event.shiftKey) return true;
    if (event.code === "KeyC") {
      const selected = term.getSelection();
      if (selected && navigator.clipboard) navigator.clipboard.writeText(selected);
      return false;
    }
    if (event.code === "KeyV") {
      if (navigator.clipboard && navigator.clipboard.readText) navigator.clipboard.readText().then((text) => term.paste(text));
      return false;
    }
    return true;
  });
  element.addEventListener("contextmenu", (event) => {
    if (!navigator.clipboard || !navigator.clipboard.readText) return;
    event.preventDefault();
    navigator.clipboard.readText().then((text) => term.paste(text)).catch(() => {});
  });
  window.addEventListener("resize", () => {
    fit.fit();
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({type: "resize", cols: term.cols, rows: term.rows}));
    }
  });
  takeOver.addEventListener("click", () => connect(true));
  reconnect.addEventListener("click", () => connect(false));
  connect(false);
  term.focus();
})();
