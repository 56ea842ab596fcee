"""The Celery tasks: one runs any job by id; periodic ones (Celery beat) archive old jobs and
recover jobs whose worker died or whose message was lost."""
import datetime
import logging

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from jobs import recovery, retention, runner

logger = logging.getLogger(__name__)


@shared_task(name="jobs.run_job", ignore_result=True, bind=True)
def run_job(self, job_id: int, wake: str = "") -> None:
    """Run a queued job, or (with its `wake` token) resume one that waited outside a worker."""
    runner.run_job(job_id, worker=self.request.hostname or "", wake=wake)


@shared_task(name="jobs.recover_jobs", ignore_result=True)
def recover_jobs() -> None:
    """See settings.CELERY_BEAT_SCHEDULE and jobs/recovery.py."""
    for job in recovery.expire_stale_jobs():
        logger.warning("job #%s ended: %s", job.pk, job.message)
    for job in recovery.resend_lost_messages(datetime.timedelta(seconds=settings.JOB_RESEND_AFTER_S)):
        logger.warning("job #%s: no worker took its message; sent again", job.pk)
    if settings.JOB_UNCLAIMED_AFTER_S:
        for job in recovery.end_unclaimed_jobs(datetime.timedelta(seconds=settings.JOB_UNCLAIMED_AFTER_S)):
            logger.warning("job #%s ended: %s", job.pk, job.message)


@worker_ready.connect
def _end_jobs_of_this_workers_previous_life(sender, **_kwargs) -> None:
    """A worker starting under a node name that holds RUNNING jobs means its previous run died."""
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
