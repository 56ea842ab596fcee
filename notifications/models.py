"""Notifications: where people want to hear of things (`Target`), what happened (`Event`) and each
attempt to tell one target of one event (`Delivery`, the log shown on the target's page)."""
from __future__ import annotations

from typing import Any, Self
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.urls import reverse
from django.utils import timezone

from notifications.choices import (
    DELIVERY_STATE_COLOURS,
    SUBSCRIBABLE_KINDS,
    VM_KINDS,
    DeliveryState,
    EventKind,
    Severity,
    TargetKind,
)
from tenants.access import is_operator, tenant_of
from xenaoe_panel.colours import StateColourMixin

WEBHOOK_SCHEMES = ("http", "https")  # URLField also takes ftp://, which no webhook speaks


class TargetQuerySet(models.QuerySet):
    def visible_to(self, user: Any) -> Self:
        """Operators see every target; a tenant's user their own; anyone else none."""
        if is_operator(user):
            return self.all()
        if tenant_of(user) is None:
            return self.none()
        return self.filter(owner=user)


class Target(models.Model):
    """An email address or a webhook URL someone wants events sent to. What reaches it is what its
    owner may see: an operator's target hears of everything, a tenant's user's only of the events
    of the tenant's VMs (`hears_of`); its filter narrows that down (`wants`)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notify_targets")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=8, choices=TargetKind.choices)
    email = models.EmailField(blank=True)
    url = models.URLField("URL", max_length=500, blank=True)
    # The webhook's signing secret, encrypted (notifications/secrets.py): the panel must sign with
    # it, so it cannot be a hash, and a dump of the database alone must not give it away.
    secret_encrypted = models.TextField(blank=True, editable=False)
    # Empty: every kind the owner may hear of.
    kinds = models.JSONField(default=list, blank=True)
    min_severity = models.PositiveSmallIntegerField("at least", choices=Severity.choices, default=Severity.WARNING)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TargetQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"

    def get_absolute_url(self) -> str:
        return reverse("notification-target-detail", args=[self.pk])

    @property
    def address(self) -> str:
        return self.email if self.kind == TargetKind.EMAIL else self.url

    def clean(self) -> None:
        if self.kind == TargetKind.EMAIL and not self.email:
            raise ValidationError({"email": "an email target needs an address"})
        if self.kind == TargetKind.WEBHOOK and not self.url:
            raise ValidationError({"url": "a webhook target needs a URL"})
        if self.kind == TargetKind.WEBHOOK and urlsplit(self.url).scheme not in WEBHOOK_SCHEMES:
            raise ValidationError({"url": "a webhook's URL starts with http:// or https://"})
        unknown = sorted(set(self.kinds) - set(SUBSCRIBABLE_KINDS))
        if unknown:
            raise ValidationError({"kinds": f"unknown event kinds: {', '.join(unknown)}"})

    def hears_of(self, event: Event) -> bool:
        """Whether the owner may be told of `event` at all, decided when it happens (a user who
        left a tenant stops hearing of its VMs)."""
        if is_operator(self.owner):
            return True
        tenant = tenant_of(self.owner)
        return tenant is not None and event.kind in VM_KINDS and event.tenant_id == tenant.pk

    def wants(self, event: Event) -> bool:
        """The target's own filter: the kinds it chose (all when none) at its severity or above."""
        return self.enabled and event.severity >= self.min_severity and (not self.kinds or event.kind in self.kinds)


class Event(models.Model):
    """Something the panel tells people about, written in the transaction of the change it reports."""

    kind = models.CharField(max_length=32, choices=EventKind.choices)
    severity = models.PositiveSmallIntegerField(choices=Severity.choices)
    subject = models.CharField(max_length=200)
    details = models.TextField(blank=True)
    # The VM it is about, if one, and its tenant (whose users may hear of it). No constraint: the
    # event is written in the transaction of the change it reports, and must not fail it because
    # the VM or the tenant went meanwhile. The ids match targets and pair a mirror's events, the
    # names are what people read.
    vm = models.ForeignKey("vms.VirtualMachine", on_delete=models.DO_NOTHING, db_constraint=False, null=True,
                           blank=True, related_name="+")
    vm_name = models.CharField(max_length=63, blank=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.DO_NOTHING, db_constraint=False, null=True,
                               blank=True, related_name="+")
    tenant_slug = models.CharField(max_length=63, blank=True)
    # Where the panel shows it (an incident, a job, a VM), as a path: the link in a message.
    path = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.subject}"


class Delivery(StateColourMixin, models.Model):
    """One event to one target: written with the event, before anything is sent, then updated by
    each attempt (so a worker that dies mid-send leaves a trace)."""

    STATE_COLOURS = DELIVERY_STATE_COLOURS
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    target = models.ForeignKey(Target, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)  # a webhook's last HTTP status
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When it is due to be tried: a message past it by NOTIFY_RESEND_AFTER_S was lost and is sent again.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target", "created_at", "id"], name="delivery_target_created_id"),
                   models.Index(fields=["state", "next_attempt_at"], name="delivery_state_due")]

    def __str__(self) -> str:
        return f"delivery #{self.pk} of {self.event} to {self.target.name}: {self.state}"


class ClusterCondition(models.Model):
    """A condition of the whole cluster whose changes are told once each (N+1 lost, then restored),
    whoever notices them first: the change is a compare-and-set on `failing`."""

    name = models.CharField(max_length=32, unique=True)
    failing = models.BooleanField(default=False)
    detail = models.TextField(blank=True)
    changed_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}: {'failing' if self.failing else 'holds'}"
