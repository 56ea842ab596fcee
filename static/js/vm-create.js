// Ask the panel, as the operator types, what each CPU server would have left and whether N+1 holds.
(function () {
  const form = document.getElementById("vm-create-form");
  const table = document.getElementById("capacity");
  if (!form) return;
  for (const el of form.querySelectorAll("input:not([type=hidden]):not([type=checkbox])")) el.classList.add("form-control");
  for (const el of form.querySelectorAll("select")) el.classList.add("form-select");
  if (!table) return;  // the capacity table is for operators only
  let timer = null;
  async function update() {
    const memory = parseInt(form.elements["memory_mib"].value || "0", 10) || 0;
    const chosen = form.elements["cpu_server"].value;
    const response = await fetch(`${table.dataset.url}?memory_mib=${memory}`, {headers: {"Accept": "application/json"}});
    if (!response.ok) return;
    const data = await response.json();
    const fitting = data.servers.filter((s) => s.fits);
    const safe = fitting.filter((s) => s.keeps_n_plus_one);
    const pool = safe.length ? safe : fitting;
    const automatic = pool.reduce((best, s) => (best === null || s.free_mib > best.free_mib ? s : best), null);
    const target = chosen || (automatic && automatic.name);
    const notes = document.getElementById("shortfalls");
    notes.replaceChildren();
    for (const server of data.servers) {
      const row = table.querySelector(`tr[data-server="${CSS.escape(server.name)}"]`);
      if (!row) continue;
      const here = server.name === target;
      const after = row.querySelector(".after");
      after.textContent = `${here ? server.free_after_mib : server.free_mib} MiB${here ? " ←" : ""}`;
      after.classList.toggle("headroom-bad", here && !server.fits);
      const n1 = row.querySelector(".nplus1");
      n1.textContent = !server.fits ? "does not fit" : server.keeps_n_plus_one ? "kept" : "broken";
      n1.classList.toggle("headroom-bad", !server.fits || !server.keeps_n_plus_one);
      if (here) for (const text of server.shortfalls) {
        const item = document.createElement("li");
        item.textContent = text;
        notes.appendChild(item);
      }
    }
  }
  form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(update, 200); });
  update();
})();
