"""The one Celery task: it runs any job by id."""
from celery import shared_task

from jobs import runner


@shared_task(name="jobs.run_job", ignore_result=True)
def run_job(job_id: int) -> None:
    # Job kinds register themselves when their modules are imported.
    import vms.jobs  # noqa: F401

    runner.run_job(job_id)
