"""Job events on the channel layer: one group per job, `job.<id>`.

Every event is sent after the row it describes is committed, so a browser that receives it can
always re-read the same state from the database (and the backlog it asks for on reconnect).
"""
from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from jobs.models import Job, JobLogEntry

logger = logging.getLogger(__name__)


def job_group(job_id: int) -> str:
    return f"job.{job_id}"


def entry_event(job: Job, entry: JobLogEntry | None) -> dict:
    return {
        "type": "job.event",
        "job": job.summary(),
        "entry": entry.as_event() if entry else None,
    }


def publish(job: Job, entry: JobLogEntry | None = None) -> None:
    event = entry_event(job, entry)

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(job_group(job.pk), event)
        except Exception:  # a browser missing a live event re-reads the log; the job goes on
            logger.warning("could not publish event of job %s", job.pk, exc_info=True)

    transaction.on_commit(send)
