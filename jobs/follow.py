"""Follow a job from a terminal: print its log as it grows until it finishes."""
from __future__ import annotations

import time
from collections.abc import Callable

from jobs.models import Job


def follow(job_id: int, write: Callable[[str], None], poll_seconds: float = 0.2,
           start_timeout: float = 15.0) -> Job:
    """Print new log entries until the job finishes. If no worker picks the job up within
    `start_timeout`, say so and return with the job still queued."""
    seen = 0
    started = time.monotonic()
    while True:
        job = Job.objects.get(pk=job_id)
        for entry in job.log.filter(serial__gt=seen).order_by("serial"):
            seen = entry.serial
            write(f"[{entry.time:%H:%M:%S}] {entry.level:<7} {entry.message}")
        if job.finished:
            return job
        if job.state == "queued" and time.monotonic() - started > start_timeout:
            write(f"job #{job.pk} is still queued after {start_timeout:g} s: is a worker running?")
            return job
        time.sleep(poll_seconds)
