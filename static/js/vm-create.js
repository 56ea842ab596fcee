// Ask the panel, as the operator types, what each CPU server would have left, whether N+1 holds, which
// members of the chosen anti-affinity groups it runs, and where "automatic" would place the VM (the
// allocator's own answer: this page does not guess the order).
(function () {
  const form = document.getElementById("vm-create-form");
  const table = document.getElementById("capacity");
  if (!form) return;
  for (const el of form.querySelectorAll("input:not([type=hidden]):not([type=checkbox])")) el.classList.add("form-control");
  for (const el of form.querySelectorAll("select")) el.classList.add("form-select");
  if (!table) return;  // the capacity table is for operators only
  let timer = null;
  async function update() {
    const query = new URLSearchParams({memory_mib: parseInt(form.elements["memory_mib"].value || "0", 10) || 0});
    const groups = form.elements["anti_affinity_groups"];
    if (groups) for (const option of groups.selectedOptions) query.append("groups", option.value);
    const override = form.elements["allow_n_plus_one_break"];
    if (override && override.checked) query.set("allow_n_plus_one_break", "1");
    const response = await fetch(`${table.dataset.url}?${query}`, {headers: {"Accept": "application/json"}});
    if (!response.ok) return;
    const data = await response.json();
    const target = form.elements["cpu_server"].value || data.automatic;
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
      const apart = row.querySelector(".apart");
      apart.textContent = server.anti_affinity.map((b) => `${b.members.join(", ")} (${b.group})`).join("; ") || "-";
      apart.classList.toggle("headroom-bad", here && server.anti_affinity.length > 0);
      if (!here) continue;
      const problems = [...server.shortfalls, ...server.anti_affinity.map(
        (b) => `anti-affinity group ${b.group}: the new VM would run beside ${b.members.join(" and ")}`)];
      for (const text of problems) {
        const item = document.createElement("li");
        item.textContent = text;
        notes.appendChild(item);
      }
    }
  }
  form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(update, 200); });
  update();
})();
