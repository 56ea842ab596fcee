"""Job events on the channel layer: one group per job, `job.<id>`.

Every event is sent after the row it describes is committed, so a browser that receives it can
always re-read the same state from the database (and the backlog it asks for on reconnect).
"""
from __future__ import annotations

from jobs.models import Job, JobLogEntry
from xenaoe_panel.broadcast import send_on_commit


def job_group(job_id: int) -> str:
    return f"job.{job_id}"


def entry_event(job: Job, entry: JobLogEntry | None) -> dict:
    return {
        "type": "job.event",
        "job": job.summary(),
        "entry": entry.as_event() if entry else None,
    }


def publish(job: Job, entry: JobLogEntry | None = None) -> None:
    send_on_commit([job_group(job.pk)], entry_event(job, entry), f"an event of job {job.pk}")
