"""The Celery tasks: one runs any job by id; one, on Celery beat's daily schedule, archives old jobs."""
import datetime
import logging

from celery import shared_task
from django.conf import settings

from jobs import retention, runner

logger = logging.getLogger(__name__)


@shared_task(name="jobs.run_job", ignore_result=True)
def run_job(job_id: int) -> None:
    # Job kinds register themselves when their modules are imported.
    import vms.jobs  # noqa: F401

    runner.run_job(job_id)


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
