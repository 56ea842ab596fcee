// The dashboard, live: on an event that may change a part of the page (a host's state, a VM's state or
// placement, an incident, a job's progress), that part is fetched again from the server
// (GET /?fragment=NAME) and swapped in, debounced; the page without JavaScript is the same HTML.
// Events come from ws/hosts/, ws/vms/, ws/incidents/ and, for each job shown, ws/jobs/ID/.
(function () {
  const parts = {};
  for (const el of document.querySelectorAll("[data-fragment]")) parts[el.dataset.fragment] = el;
  if (!Object.keys(parts).length) return;
  const status = document.getElementById("dashboard-live");
  const DEBOUNCE_MS = 300;
  const NO_BACKLOG = 2147483647;  // ws/jobs/ID/?after=N: only the job's summary, then live events
  const dirty = new Set();
  let timer = null;
  let fetching = false;

  function mark(...names) {
    for (const name of names) if (parts[name]) dirty.add(name);
    if (!timer) timer = setTimeout(flush, DEBOUNCE_MS);
  }

  async function flush() {
    timer = null;
    if (fetching) { timer = setTimeout(flush, DEBOUNCE_MS); return; }  // one round at a time, in order
    fetching = true;
    const names = [...dirty];
    dirty.clear();
    try {
      await Promise.all(names.map(async (name) => {
        const response = await fetch(`${location.pathname}?fragment=${name}`,
                                     {credentials: "same-origin", headers: {Accept: "text/html"}});
        if (response.redirected || response.status === 401 || response.status === 403) {
          status.textContent = "session expired: reload to log in";
          return;
        }
        if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
        parts[name].innerHTML = await response.text();
      }));
      status.textContent = "live, updated " + new Date().toLocaleTimeString([], {hour12: false});
    } catch (error) {
      for (const name of names) dirty.add(name);  // try again with the next event or the next round
      status.textContent = "could not refresh: retrying";
      setTimeout(() => mark(), 5000);
    } finally {
      fetching = false;
      followJobs();
    }
  }

  // A websocket that reconnects with back-off; after a reconnect the parts it feeds are fetched again,
  // since events sent while it was away are lost.
  function follow(path, onMessage, feeds) {
    let retry = 1000;
    let opened = false;
    let stopped = false;
    let socket = null;
    function connect() {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      socket = new WebSocket(`${scheme}://${location.host}${path}`);
      socket.onopen = () => {
        retry = 1000;
        if (opened) mark(...feeds);
        opened = true;
      };
      socket.onmessage = (message) => onMessage(JSON.parse(message.data));
      socket.onclose = (event) => {
        if (stopped || event.code === 4404) return;
        if (event.code === 4401) { status.textContent = "session expired: reload to log in"; return; }
        status.textContent = "reconnecting…";
        setTimeout(connect, retry);
        retry = Math.min(retry * 2, 15000);
      };
    }
    connect();
    return {stop() { stopped = true; socket.close(1000); }};
  }

  follow("/ws/hosts/", () => mark("capacity", "incidents"), ["capacity", "incidents"]);
  follow("/ws/vms/", () => mark("capacity", "jobs"), ["capacity", "jobs"]);
  follow("/ws/incidents/", () => mark("incidents", "jobs"), ["incidents", "jobs"]);

  // One socket per job shown; the bar moves in place, the row is fetched again when the job ends.
  const jobs = new Map();
  function showProgress(job) {
    const row = document.querySelector(`[data-job-live="${job.id}"]`);
    const bar = row && row.querySelector("[data-job-bar]");
    if (!bar) return;
    bar.style.width = job.percent + "%";
    bar.textContent = job.percent + " %";
    bar.parentElement.setAttribute("aria-valuenow", job.percent);
  }
  function followJobs() {
    const shown = new Set([...document.querySelectorAll("[data-job-live]")].map((row) => row.dataset.jobLive));
    for (const [id, socket] of jobs) {
      if (!shown.has(id)) { socket.stop(); jobs.delete(id); }
    }
    for (const id of shown) {
      if (jobs.has(id)) continue;
      let first = true;  // the socket's first message is the state the row already shows
      jobs.set(id, follow(`/ws/jobs/${id}/?after=${NO_BACKLOG}`, (event) => {
        if (!event.job) return;
        showProgress(event.job);
        if (!first || event.job.finished) mark("jobs");
        first = false;
        // A job that ends may have moved guests or changed an incident.
        if (event.job.finished) mark("capacity", "incidents");
      }, ["jobs"]));
    }
  }
  followJobs();
  // A job that no event announces (a cluster verify started elsewhere) still shows within a while.
  setInterval(() => { if (!document.hidden) mark("jobs"); }, 30000);
})();
