"""One attempt at a delivery, as a worker makes it: claimed, recorded, sent, recorded again.

The claim is a compare-and-set on the number of attempts the message carries, so that a message
delivered twice by the broker (or sent again by the housekeeping) sends once. The attempt is
written (SENDING, attempts + 1) before anything leaves the panel: a worker dying mid-send leaves
that trace, and the housekeeping tries it again. A failure worth retrying waits longer each time
(NOTIFY_RETRY_BASE_S doubled per attempt, at most NOTIFY_RETRY_MAX_S) until NOTIFY_MAX_ATTEMPTS.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from notifications import transports
from notifications.choices import WAITING_STATES, DeliveryState
from notifications.models import Delivery

logger = logging.getLogger(__name__)


def backoff_s(attempts: int) -> int:
    """How long to wait after the `attempts`-th failed attempt."""
    return min(settings.NOTIFY_RETRY_BASE_S * 2 ** max(attempts - 1, 0), settings.NOTIFY_RETRY_MAX_S)


def claim(delivery_id: int, attempts: int) -> Delivery | None:
    claimed = Delivery.objects.filter(pk=delivery_id, attempts=attempts, state__in=WAITING_STATES).update(
        state=DeliveryState.SENDING, attempts=F("attempts") + 1, updated_at=timezone.now())
    if not claimed:
        return None
    return Delivery.objects.select_related("event", "target__owner__membership__tenant").get(pk=delivery_id)


def attempt(delivery_id: int, attempts: int) -> int | None:
    """Make attempt number `attempts + 1`; returns the seconds to wait before the next one, or None
    when there is none to make (sent, given up, or not this message's to make)."""
    delivery = claim(delivery_id, attempts)
    if delivery is None:
        logger.info("notification delivery #%s: not waiting for attempt %s; nothing to do", delivery_id, attempts + 1)
        return None
    try:
        code = transports.send(delivery)
    except transports.TransportError as exc:
        return _failed(delivery, exc)
    except Exception as exc:  # a bug must not leave the delivery SENDING for ever
        logger.exception("notification delivery #%s raised", delivery_id)
        return _failed(delivery, transports.TransportError(f"unexpected {type(exc).__name__}: {exc}",
                                                           permanent=True))
    Delivery.objects.filter(pk=delivery.pk).update(state=DeliveryState.SENT, sent_at=timezone.now(),
                                                   response_code=code, last_error="", updated_at=timezone.now())
    return None


def _failed(delivery: Delivery, exc: transports.TransportError) -> int | None:
    last = exc.permanent or delivery.attempts >= settings.NOTIFY_MAX_ATTEMPTS
    delay = None if last else backoff_s(delivery.attempts)
    Delivery.objects.filter(pk=delivery.pk).update(
        state=DeliveryState.FAILED if last else DeliveryState.RETRYING, last_error=str(exc)[:1000],
        response_code=exc.response_code, updated_at=timezone.now(),
        next_attempt_at=timezone.now() + timedelta(seconds=delay or 0))
    logger.warning("notification delivery #%s attempt %s failed%s: %s", delivery.pk, delivery.attempts,
                   "" if delay is None else f" (again in {delay} s)", exc)
    return delay
