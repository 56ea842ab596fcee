// Rows marked data-job-live="ID" (jobs not finished when the page was drawn) follow their job over
// ws/jobs/ID/: the state badge and the progress bar move as the worker reports.
(function () {
  for (const row of document.querySelectorAll("[data-job-live]")) {
    // after=a serial no job reaches: no backlog, only the job's state now and what follows.
    followLive(`/ws/jobs/${row.dataset.jobLive}/?after=2147483647`, (message) => {
      const job = message.job;
      const badge = row.querySelector("[data-job-state]");
      if (badge && job.state_display) {
        badge.textContent = job.state_display;
        badge.className = "badge text-bg-" + job.colour;
      }
      const bar = row.querySelector(".progress");
      if (bar) {
        const width = job.finished && job.state !== "succeeded" ? 100 : job.percent;
        bar.setAttribute("aria-valuenow", job.percent);
        const fill = bar.querySelector(".progress-bar");
        fill.style.width = `${width}%`;
        if (job.colour) fill.className = "progress-bar bg-" + job.colour;
      }
    });
  }
})();
