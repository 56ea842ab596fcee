// The graphical console page: noVNC (vendored, ES modules, no build step) over
// ws/vms/<name>/console/vnc/ (vms/console_consumer.py). When the display goes (the guest stopped or
// moved to another server) the page reconnects, and the panel finds the VM where it runs now.
import RFB from "../vendor/novnc/core/rfb.js";

const screen = document.getElementById("vnc");
const status = document.getElementById("vnc-status");
const scale = document.getElementById("vnc-scale");
let rfb = null;
let retry = 1000;

function say(text, state) {
  status.textContent = text;
  screen.dataset.vncState = state;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  say("connecting…", "connecting");
  rfb = new RFB(screen, `${scheme}://${location.host}${screen.dataset.vncPath}`);
  rfb.scaleViewport = scale.checked;
  rfb.resizeSession = false;
  rfb.addEventListener("connect", () => {
    retry = 1000;
    screen.dataset.vncConnections = String(Number(screen.dataset.vncConnections || 0) + 1);
    say("connected", "connected");
    rfb.focus();
  });
  rfb.addEventListener("disconnect", () => {
    rfb = null;
    // noVNC does not pass the close code on; a refused socket (signed out, not allowed) is the page's
    // own 404/403 on reload, so retrying with back-off is all that is left to do here.
    say(`display gone (the guest stopped or moved); reconnecting in ${retry / 1000} s`, "reconnecting");
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  });
  rfb.addEventListener("securityfailure", (event) => say(`refused: ${event.detail.reason || "security"}`, "closed"));
}

document.getElementById("vnc-ctrl-alt-del").addEventListener("click", () => { if (rfb) rfb.sendCtrlAltDel(); });
scale.addEventListener("change", () => { if (rfb) rfb.scaleViewport = scale.checked; });
window.xenaoeVnc = () => rfb; // for tests: the current connection
connect();
