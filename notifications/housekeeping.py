"""Deliveries nobody is working on, and old events: run every minute by Celery beat
(notifications.housekeeping, with the N+1 check).

- A delivery waiting past its due time by NOTIFY_RESEND_AFTER_S lost its message (the broker was
  down when it was queued, or restarted): its message is sent again. It is sent once whatever
  arrives (the claim in delivery.py).
- One left SENDING that long had its worker die mid-attempt: it may or may not have gone out, and
  is tried again (a receiver tells a repeat by its X-XenAoE-Delivery header).
- Events older than NOTIFY_RETENTION_DAYS go, with their deliveries.
"""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from notifications.choices import WAITING_STATES, DeliveryState
from notifications.models import Delivery, Event
from notifications.notify import send_deliveries


def resend_lost() -> list[int]:
    """Send again every delivery whose message was lost, or whose worker died; returns their ids.
    Each change is a compare-and-set: two housekeepers at once send each one once."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.NOTIFY_RESEND_AFTER_S)
    resent: dict[int, int] = {}
    stuck = Delivery.objects.filter(state=DeliveryState.SENDING, updated_at__lt=cutoff)
    for pk, attempts, updated in stuck.values_list("pk", "attempts", "updated_at"):
        if Delivery.objects.filter(pk=pk, state=DeliveryState.SENDING, attempts=attempts, updated_at=updated).update(
                state=DeliveryState.RETRYING, next_attempt_at=now, updated_at=now,
                last_error="its worker stopped during the attempt; trying again"):
            resent[pk] = attempts
    late = Delivery.objects.filter(state__in=WAITING_STATES, next_attempt_at__lt=cutoff)
    for pk, attempts, due in late.values_list("pk", "attempts", "next_attempt_at"):
        if Delivery.objects.filter(pk=pk, attempts=attempts, next_attempt_at=due).update(next_attempt_at=now):
            resent[pk] = attempts
    send_deliveries(list(resent), resent)
    return list(resent)


def prune_events() -> int:
    if not settings.NOTIFY_RETENTION_DAYS:
        return 0
    cutoff = timezone.now() - timedelta(days=settings.NOTIFY_RETENTION_DAYS)
    _, deleted = Event.objects.filter(created_at__lt=cutoff).delete()
    return deleted.get(Event._meta.label, 0)
