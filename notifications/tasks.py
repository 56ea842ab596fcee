"""Celery tasks of the default queue (never high availability's): sending one delivery, retried with
exponential backoff; the housekeeping every minute (settings.CELERY_BEAT_SCHEDULE)."""
import logging

from celery import shared_task

from notifications import delivery, housekeeping
from notifications.n_plus_one import check_n_plus_one

logger = logging.getLogger(__name__)


@shared_task(name="notifications.deliver", bind=True, ignore_result=True, max_retries=None)
def deliver(self, delivery_id: int, attempts: int = 0) -> None:
    """Attempt number `attempts + 1` of a delivery; a failure worth retrying comes back as the same
    task after its backoff (the count of attempts is delivery.py's, not Celery's)."""
    delay = delivery.attempt(delivery_id, attempts)
    if delay is not None:
        raise self.retry(args=(delivery_id, attempts + 1), countdown=delay)


@shared_task(name="notifications.housekeeping", ignore_result=True)
def run_housekeeping() -> None:
    resent = housekeeping.resend_lost()
    if resent:
        logger.warning("notification deliveries %s had lost their message: sent again", resent)
    check_n_plus_one()
    housekeeping.prune_events()
