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
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.NOTIFY_RESEND_AFTER_S)
    Delivery.objects.filter(state=DeliveryState.SENDING, updated_at__lt=cutoff).update(
        state=DeliveryState.RETRYING, next_attempt_at=now, updated_at=now,
        last_error="its worker stopped during the attempt; trying again")
    late = list(Delivery.objects.filter(state__in=WAITING_STATES, next_attempt_at__lt=cutoff).values_list(
        "pk", "attempts", "next_attempt_at"))
    resent = {}
    for pk, attempts, due in late:
        # Compare-and-set on the due time: two housekeepers at once send it once.
        if Delivery.objects.filter(pk=pk, attempts=attempts, next_attempt_at=due).update(next_attempt_at=now):
            resent[pk] = attempts
    send_deliveries(list(resent), resent)
    return list(resent)


def prune_events() -> int:
    if not settings.NOTIFY_RETENTION_DAYS:
        return 0
    cutoff = timezone.now() - timedelta(days=settings.NOTIFY_RETENTION_DAYS)
    deleted, _ = Event.objects.filter(created_at__lt=cutoff).delete()
    return deleted
