"""The one place where the panel says "this happened": `notify(...)`.

It writes the event and one delivery per target that should hear of it, in the caller's transaction
(a rolled-back change notifies nobody, and a committed one has its deliveries on record even if the
message to the worker is lost: notifications/tasks.py sends such ones again), and queues their
sending once that transaction commits. Sending happens in a worker of the default queue, never the
high-availability one, which stays free for failovers. A failure here is logged and swallowed: the
change being reported must never fail for its notification.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import DatabaseError, transaction

from notifications.choices import EventKind, Severity
from notifications.models import Delivery, Event, Target

logger = logging.getLogger(__name__)
# notifications.tasks.deliver, by name: the callers need not import the tasks (nor Celery's worker side).
DELIVER = "notifications.deliver"


def notify(kind: str, severity: int, subject: str, details: str = "", *, vm: Any = None, tenant: Any = None,
           path: str = "") -> Event | None:
    """Tell every target that hears of it and wants it. `vm` (and its tenant, unless `tenant` is
    given) makes it an event a tenant's users may hear of; without either it is for operators."""
    if tenant is None and vm is not None and vm.tenant_id is not None:
        tenant = vm.tenant
    try:
        with transaction.atomic():  # a savepoint: a refused insert leaves the caller's transaction usable
            event = Event.objects.create(kind=kind, severity=severity, subject=subject[:200], details=details,
                                         vm=vm, vm_name=vm.name if vm is not None else "", tenant=tenant,
                                         tenant_slug=tenant.slug if tenant is not None else "", path=path)
            deliveries = Delivery.objects.bulk_create([Delivery(event=event, target=t) for t in recipients(event)])
    except DatabaseError:
        logger.exception("could not record the notification %s: %s", kind, subject)
        return None
    queue_on_commit([d.pk for d in deliveries])
    return event


def recipients(event: Event) -> list[Target]:
    targets = Target.objects.filter(enabled=True, min_severity__lte=event.severity).select_related(
        "owner__membership__tenant")
    return [t for t in targets if t.wants(event) and t.hears_of(event)]


def send_test(target: Target) -> Delivery:
    """A test event to this target only, whatever its filter: what the "Send a test" button does."""
    with transaction.atomic():
        event = Event.objects.create(kind=EventKind.TEST, severity=Severity.INFO,
                                     subject=f"Test notification for {target.name}",
                                     details="Sent from the panel's \"Send a test\" button: nothing happened.",
                                     path=target.get_absolute_url())
        delivery = Delivery.objects.create(event=event, target=target)
    queue_on_commit([delivery.pk])
    return delivery


def queue_on_commit(delivery_ids: list[int]) -> None:
    if delivery_ids:
        transaction.on_commit(lambda: send_deliveries(delivery_ids))


def send_deliveries(delivery_ids: list[int], attempts: dict[int, int] | None = None) -> None:
    """One message per delivery, each carrying the attempts made so far (the worker's claim checks
    it: a duplicate message finds the count moved on and does nothing). A broker that cannot be
    reached is logged; the deliveries wait on record and are sent again later."""
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    for pk in delivery_ids:
        try:
            current_app.send_task(DELIVER, (pk, (attempts or {}).get(pk, 0)), queue=queue)
        except Exception:
            logger.warning("could not queue notification delivery #%s; it is sent again later", pk, exc_info=True)
