// The wizard's quota panel: as the user types, what the tenant would have left after this VM,
// and a warning before submitting when it would not fit. The server checks again, atomically.
(function () {
  const form = document.getElementById("vm-create-form");
  const panel = document.getElementById("quota-panel");
  if (!form || !panel) return;
  const body = panel.querySelector("tbody");
  const problems = document.getElementById("quota-problems");
  const wanted = () => ({
    vms: 1,
    vcpus: parseInt(form.elements["vcpus"].value || "0", 10) || 0,
    memory_mib: parseInt(form.elements["memory_mib"].value || "0", 10) || 0,
    disk_mib: parseInt(form.elements["disk_mib"].value || "0", 10) || 0,
  });

  function render(usage) {
    body.replaceChildren();
    for (const use of usage) {
      const row = document.createElement("tr");
      row.dataset.resource = use.resource;
      row.dataset.used = use.used;
      row.dataset.limit = use.limit;
      row.dataset.unit = use.unit;
      row.dataset.label = use.label;
      for (const text of [use.title, use.used, use.limit, use.remaining]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      row.lastChild.className = "after";
      body.appendChild(row);
    }
  }

  function update() {
    const need = wanted();
    problems.replaceChildren();
    for (const row of body.querySelectorAll("tr[data-resource]")) {
      const left = Number(row.dataset.limit) - Number(row.dataset.used) - (need[row.dataset.resource] || 0);
      const unit = row.dataset.unit ? ` ${row.dataset.unit}` : "";
      const cell = row.querySelector(".after");
      cell.textContent = `${left}${unit}`;
      cell.classList.toggle("headroom-bad", left < 0);
      if (left < 0) {
        const item = document.createElement("li");
        item.textContent = `Over the ${row.dataset.label} quota by ${-left}${unit}.`;
        problems.appendChild(item);
      }
    }
  }

  async function load(tenant) {
    if (tenant === "") { panel.hidden = true; return; }
    const query = tenant === undefined ? "" : `?tenant=${encodeURIComponent(tenant)}`;
    const response = await fetch(panel.dataset.url + query, {headers: {"Accept": "application/json"}});
    if (!response.ok) { panel.hidden = true; return; }
    render((await response.json()).usage);
    panel.hidden = false;
    update();
  }

  const tenantField = form.elements["tenant"];
  if (tenantField) {
    tenantField.addEventListener("change", () => load(tenantField.value));
    load(tenantField.value);
  } else {
    update();
  }
  form.addEventListener("input", update);
})();
