"""Incidents: a host failure and everything done about it, as a timeline an operator can read."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse

from ha.choices import INCIDENT_STATE_COLOURS, EventKind, IncidentKind, IncidentState
from tenants.querysets import TenantScopedQuerySet
from xenaoe_panel.colours import StateColourMixin


class IncidentQuerySet(TenantScopedQuerySet):
    tenant_field = "tenants"  # every tenant whose VMs it touched


class Incident(StateColourMixin, models.Model):
    STATE_COLOURS = INCIDENT_STATE_COLOURS
    kind = models.CharField(max_length=32, choices=IncidentKind.choices)
    state = models.CharField(max_length=16, choices=IncidentState.choices, default=IncidentState.OPEN)
    # The host by name and role: a host row may be renamed or removed, the incident stays readable.
    host_name = models.CharField(max_length=63, db_index=True)
    cpu_server = models.ForeignKey("hosts.CpuServer", on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="incidents")
    disk_server = models.ForeignKey("hosts.DiskServer", on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="incidents")
    summary = models.TextField(blank=True)
    # The tenants whose VMs it touched (their users see it, with only their VMs' part of the timeline).
    tenants = models.ManyToManyField("tenants.Tenant", blank=True, related_name="incidents")
    fenced_by = models.CharField(max_length=16, blank=True, help_text="The fence method that confirmed.")
    opened_at = models.DateTimeField(auto_now_add=True, db_index=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    objects = IncidentQuerySet.as_manager()

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            # One open incident per host at a time: a monitor noticing again adds to it.
            models.UniqueConstraint(fields=["host_name", "kind"], condition=~models.Q(state=IncidentState.CLOSED),
                                    name="one_open_incident_per_host"),
        ]

    def __str__(self) -> str:
        return f"incident #{self.pk}: {self.get_kind_display()} {self.host_name}"

    def get_absolute_url(self) -> str:
        return reverse("incident-detail", args=[self.pk])

    @property
    def is_open(self) -> bool:
        return self.state != IncidentState.CLOSED


class IncidentEvent(models.Model):
    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="events")
    time = models.DateTimeField(auto_now_add=True)
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    job = models.ForeignKey("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)

    class Meta:
        ordering = ["incident", "time", "id"]

    def as_event(self) -> dict:
        return {"id": self.pk, "time": self.time.isoformat(), "kind": self.kind, "message": self.message,
                "data": self.data, "job": self.job_id}
