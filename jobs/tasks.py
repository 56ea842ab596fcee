"""The Celery tasks: one runs any job by id; periodic ones (Celery beat) archive old jobs and end the
jobs of workers that died."""
import datetime
import logging

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from jobs import recovery, retention, runner

logger = logging.getLogger(__name__)


@shared_task(name="jobs.run_job", ignore_result=True, bind=True)
def run_job(self, job_id: int) -> None:
    runner.run_job(job_id, worker=self.request.hostname or "")


@shared_task(name="jobs.expire_stale_jobs", ignore_result=True)
def expire_stale_jobs() -> None:
    """See settings.CELERY_BEAT_SCHEDULE and jobs/recovery.py."""
    for job in recovery.expire_stale_jobs(datetime.timedelta(seconds=settings.JOB_STALE_AFTER_S)):
        logger.warning("job #%s ended: %s", job.pk, job.message)


@worker_ready.connect
def _end_jobs_of_this_workers_previous_life(sender, **_kwargs) -> None:
    """A worker starting under a node name that has RUNNING jobs means its previous run died."""
    hostname = getattr(sender, "hostname", "")
    for job in recovery.expire_jobs_of_worker(hostname):
        logger.warning("job #%s ended: %s", job.pk, job.message)


@shared_task(name="jobs.archive_finished_jobs", ignore_result=True)
def archive_finished_jobs() -> None:
    """See settings.CELERY_BEAT_SCHEDULE and docs/jobs.md."""
    days = settings.JOB_RETENTION_DAYS
    if not days:
        return
    result = retention.archive_finished_jobs(datetime.timedelta(days=days), settings.JOB_ARCHIVE_DIR)
    if result.path:
        logger.info("archived %d jobs (%d log entries) finished before %s to %s",
                    result.jobs, result.entries, result.cutoff.isoformat(), result.path)
