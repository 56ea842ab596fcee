// Live migration panel (templates/jobs/includes/migration_progress.html): draws the structured
// progress that the vm.migrate job writes into its log entries (entry.data.migration) — phase,
// memory, rate, time left, downtime, and an SVG chart of bytes/s. Entries come from the page
// (those rendered with it) and from job.js, which re-dispatches every websocket entry as a
// "job-entry" event and every job summary as "job-summary": one stream, one socket.
(function () {
  const panel = document.getElementById("migration-panel");
  if (!panel) return;
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const W = 600, H = 140, PAD = {left: 58, right: 8, top: 8, bottom: 22};
  const phases = {
    starting: "setting up", copying: "copying memory (first pass)", iterating: "copying dirtied memory",
    switchover: "switching over (guest paused)", finishing: "handing over to the target",
    cancelling: "cancelling: the guest stays on the source", completed: "completed",
  };
  const samples = [];
  let lastSerial = 0;
  let cap = null;

  function bytes(n) {
    if (n == null) return "–";
    if (n === 0) return "0 MiB";
    if (n >= 1 << 30) return (n / (1 << 30)).toFixed(2) + " GiB";
    if (n >= 10 << 20) return (n / (1 << 20)).toFixed(0) + " MiB";
    return (n / (1 << 20)).toFixed(1) + " MiB";
  }
  const rate = (n) => (n == null ? "–" : bytes(n) + "/s");
  function seconds(s) {
    if (s == null) return "–";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  }

  function show(m) {
    const pass = m.iteration > 1 ? ` (pass ${m.iteration})` : "";
    let phase = (phases[m.phase] || m.phase) + (m.phase === "iterating" ? pass : "");
    if (m.throttle_percent) phase += `, vCPUs throttled ${m.throttle_percent} %`;
    $("migration-phase").textContent = phase;
    const percent = Math.max(0, Math.min(100, m.percent || 0));
    const bar = $("migration-bar");
    bar.style.width = percent + "%";
    bar.textContent = percent.toFixed(0) + " %";
    bar.classList.toggle("bg-success", m.phase === "completed");
    bar.classList.toggle("bg-warning", m.phase === "cancelling");
    const progress = $("migration-progress");
    progress.setAttribute("aria-valuenow", percent.toFixed(0));
    progress.setAttribute("aria-valuetext", `${percent.toFixed(0)} % of ${bytes(m.memory_total)} on the target`);
    $("migration-processed").textContent = bytes(m.memory_processed);
    $("migration-remaining").textContent = bytes(m.memory_remaining);
    $("migration-total").textContent = bytes(m.memory_total);
    $("migration-rate").textContent = rate(m.bytes_per_second);
    // QEMU measures the dirty rate from the second pass on (it compares against the first).
    $("migration-dirty").textContent = m.phase === "completed" || m.phase === "finishing" ? "–"
      : (m.iteration <= 1 && !m.dirty_bytes_per_second ? "measured from pass 2" : rate(m.dirty_bytes_per_second));
    $("migration-eta").textContent = m.phase === "completed" ? "done"
      : m.eta_seconds == null ? (m.phase === "copying" || m.phase === "iterating" ? "no estimate yet" : "–")
      : seconds(m.eta_seconds);
    $("migration-pass").textContent = m.iteration || "–";
    $("migration-elapsed").textContent = seconds(m.elapsed_seconds);
    if (m.phase === "completed") {
      $("migration-downtime").textContent = m.downtime_ms == null ? "not reported" : m.downtime_ms + " ms";
    }
    if (m.max_mib_per_s) cap = m.max_mib_per_s * (1 << 20);
  }

  function line(points, attrs) {
    const path = document.createElementNS(SVG, "polyline");
    path.setAttribute("points", points.map((p) => p.join(",")).join(" "));
    path.setAttribute("fill", "none");
    for (const [k, v] of Object.entries(attrs)) path.setAttribute(k, v);
    return path;
  }

  function text(x, y, content, anchor) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "11");
    t.setAttribute("fill", "#6c757d"); t.setAttribute("text-anchor", anchor || "start");
    t.textContent = content;
    return t;
  }

  function chart() {
    const svg = $("migration-chart");
    for (const old of svg.querySelectorAll("polyline, text, line, circle")) old.remove();
    const points = samples.filter((m) => m.memory_total && m.phase !== "completed");
    if (!points.length) return;
    const tMax = Math.max(1, ...samples.map((m) => m.elapsed_seconds || 0));
    const yMax = Math.max(1, cap || 0, ...points.map((m) => Math.max(m.bytes_per_second, m.dirty_bytes_per_second || 0)));
    const x = (t) => PAD.left + (W - PAD.left - PAD.right) * t / tMax;
    const y = (v) => H - PAD.bottom - (H - PAD.top - PAD.bottom) * v / yMax;
    const axis = document.createElementNS(SVG, "line");
    axis.setAttribute("x1", PAD.left); axis.setAttribute("x2", W - PAD.right);
    axis.setAttribute("y1", y(0)); axis.setAttribute("y2", y(0)); axis.setAttribute("stroke", "#adb5bd");
    svg.append(axis, text(PAD.left - 4, y(yMax) + 10, rate(yMax), "end"), text(PAD.left - 4, y(0), "0", "end"),
               text(W - PAD.right, H - 6, seconds(tMax), "end"), text(PAD.left, H - 6, "0 s"));
    if (cap) svg.append(line([[x(0), y(cap)], [x(tMax), y(cap)]], {stroke: "#dc3545", "stroke-dasharray": "2 3"}));
    svg.append(line(points.map((m) => [x(m.elapsed_seconds), y(m.dirty_bytes_per_second || 0)]),
                    {stroke: "#fd7e14", "stroke-width": 1.5, "stroke-dasharray": "6 4"}));
    svg.append(line(points.map((m) => [x(m.elapsed_seconds), y(m.bytes_per_second)]),
                    {stroke: "#0d6efd", "stroke-width": 2}));
    for (const m of points) {  // a dot per sample: the first one shows before there is a line
      const dot = document.createElementNS(SVG, "circle");
      dot.setAttribute("cx", x(m.elapsed_seconds)); dot.setAttribute("cy", y(m.bytes_per_second));
      dot.setAttribute("r", 2.5); dot.setAttribute("fill", "#0d6efd");
      svg.append(dot);
    }
    const last = points[points.length - 1];
    const peak = Math.max(...points.map((m) => m.bytes_per_second));
    $("migration-chart-desc").textContent = `${points.length} samples over ${seconds(last.elapsed_seconds)}: ` +
      `copy rate peak ${rate(peak)}, last ${rate(last.bytes_per_second)}; guest dirtying ${rate(last.dirty_bytes_per_second)}.`;
  }

  function take(serial, m) {
    if (serial <= lastSerial) return;  // the page's entries and the socket's backlog overlap
    lastSerial = serial;
    samples.push(m);
    show(m);
    chart();
  }

  function finished(job) {
    if (!job.finished || job.state === "succeeded") return;
    const phase = $("migration-phase");
    phase.textContent = job.state === "cancelled"
      ? "cancelled: the guest keeps running on the source" : `${job.state}: see the message above`;
    $("migration-bar").classList.add(job.state === "cancelled" ? "bg-warning" : "bg-danger");
    $("migration-eta").textContent = "–";
  }

  for (const row of panel.querySelectorAll("#migration-backlog [data-serial]")) {
    take(+row.dataset.serial, JSON.parse(row.querySelector("script").textContent));
  }
  document.addEventListener("job-entry", (event) => {
    const entry = event.detail;
    if (entry.data && entry.data.migration) take(entry.serial, entry.data.migration);
  });
  document.addEventListener("job-summary", (event) => finished(event.detail));
  finished(JSON.parse($("job-summary").textContent));
})();
