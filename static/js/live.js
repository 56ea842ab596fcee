// followLive(path, onMessage): a websocket to this panel that reconnects with back-off when it
// drops, and stops when the server says the session is gone (4401) or not allowed (4404).
window.followLive = function (path, onMessage) {
  let retry = 1000;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${path}`);
    socket.onopen = () => { retry = 1000; };
    socket.onmessage = (message) => onMessage(JSON.parse(message.data));
    socket.onclose = (event) => {
      if (event.code === 4401 || event.code === 4404) return;
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    };
  }
  connect();
};
