"""The audit log's periodic task (Celery beat): its archive, by its own retention."""
import datetime
import logging

from celery import shared_task
from django.conf import settings

from audit import retention

logger = logging.getLogger(__name__)


@shared_task(name="audit.archive_events", ignore_result=True)
def archive_events() -> None:
    """See settings.CELERY_BEAT_SCHEDULE and docs/operations.md ("Audit log", "Retention")."""
    days = settings.AUDIT_RETENTION_DAYS
    if not days:
        return
    result = retention.archive_audit_events(datetime.timedelta(days=days), settings.JOB_ARCHIVE_DIR)
    if result.path:
        logger.info("archived %d audit events from before %s to %s",
                    result.events, result.cutoff.isoformat(), result.path)
