"""N+1 lost, and restored: the cluster's condition told once per change.

Whoever computes N+1 as it stands may report it here: the failover, once the survivors carry the
dead host's guests (the moment it is most often lost), and the housekeeping every minute, which
catches every other cause (a host in maintenance, a VM created over the operator's override, a
host back). The change is a compare-and-set on the condition's row, so two reporters at once tell
it once.
"""
from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from notifications.choices import EventKind, Severity
from notifications.models import ClusterCondition
from notifications.notify import notify
from vms.placement import n_plus_one_shortfalls

CONDITION = "n-plus-one"


def n_plus_one_seen(shortfalls: Sequence[object]) -> bool:
    """Record N+1 as just computed (`shortfalls`: what a CPU server's failure would leave without
    room; empty when it holds). Returns whether that changed it, and so was told."""
    failing = bool(shortfalls)
    detail = "; ".join(str(s) for s in shortfalls)
    ClusterCondition.objects.get_or_create(name=CONDITION)
    with transaction.atomic():
        if not ClusterCondition.objects.filter(name=CONDITION, failing=not failing).update(
                failing=failing, detail=detail, changed_at=timezone.now()):
            return False
        if failing:
            notify(EventKind.N_PLUS_ONE_LOST, Severity.WARNING, "N+1 lost: a CPU server's failure would leave "
                   "guests without room", detail + ". Until capacity is added or a host returns, another failure "
                   "cannot restart every guest.", path=reverse("host-list"))
        else:
            notify(EventKind.N_PLUS_ONE_RESTORED, Severity.INFO, "N+1 restored: every CPU server's guests would "
                   "find room on the others", path=reverse("host-list"))
    return True


def check_n_plus_one() -> bool:
    return n_plus_one_seen(n_plus_one_shortfalls())
