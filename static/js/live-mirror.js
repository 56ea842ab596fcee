// Every block marked data-mirror="VM" follows that VM's mirror health live: ws/vms/ events that carry
// a "mirror" (sent by storage/guest_health.py when the guest's md says something new).
(function () {
  if (!document.querySelector("[data-mirror]") || window.liveMirrorStarted) return;
  window.liveMirrorStarted = true;  // one socket even if the block is on the page twice
  followLive("/ws/vms/", (vm) => {
    const m = vm.mirror;
    if (!m) return;
    for (const block of document.querySelectorAll(`[data-mirror="${CSS.escape(vm.name)}"]`)) {
      block.dataset.mirrorHealth = m.health;
      const badge = block.querySelector("[data-mirror-badge]");
      badge.textContent = m.health_display;
      badge.className = "badge text-bg-" + m.colour;
      const missing = m.missing_legs.length ? ` · not in sync: leg${m.missing_legs.length > 1 ? "s" : ""} ${m.missing_legs.join(", ")}` : "";
      block.querySelector("[data-mirror-detail]").textContent = (m.detail || "") + missing;
      const bar = block.querySelector("[data-mirror-resync]");
      bar.hidden = m.resync_percent === null;
      if (m.resync_percent !== null) {
        const percent = m.resync_percent.toFixed(1);
        bar.setAttribute("aria-valuenow", percent);
        bar.firstElementChild.style.width = percent + "%";
        bar.firstElementChild.textContent = percent + "%" + (m.resync_eta_s !== null ? `, ${m.resync_eta_s} s left` : "");
      }
      const checked = block.querySelector("[data-mirror-checked]");
      if (checked && m.checked_at) checked.textContent = new Date(m.checked_at).toISOString().slice(11, 19);
    }
  });
})();
