"""The audit log: an append-only record of who did what, and when (docs/operations.md, "Audit log").

Rows are only ever added. The ORM refuses to change or delete one (`save` of an existing row,
`delete`, a queryset's `update` and `delete`), and so does PostgreSQL itself: a trigger
(migration 0002) refuses UPDATE and DELETE from any client, with two exceptions that keep the
record whole — deleting a user or a tenant empties the link to it (the name stays in the row), and
the audit archive deletes the events it has just written to its file, older than a day at least
(audit/retention.py).
"""
from __future__ import annotations

from typing import Any, NoReturn, Self

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from audit.choices import Action, ActorKind
from tenants.access import is_operator, tenant_of
from tenants.models import Tenant
from tenants.querysets import TenantScopedQuerySet

OUTSIDER = "an operator"  # who acted, to a tenant's user, when it was nobody of theirs


class AppendOnly(Exception):
    """An audit event was to be changed or deleted."""


def _refuse(what: str) -> NoReturn:
    raise AppendOnly(f"audit events are append-only: {what} refused")


class AuditEventQuerySet(TenantScopedQuerySet):
    """Operators see every event; a tenant's users their tenant's (tenants/querysets.py)."""

    def visible_to(self, user: Any) -> Self:
        """The events this user may see, each with who did it and from where as this user may read
        it (`shown_actor`, `shown_ip`). A tenant's users read the names and addresses of their own
        tenant's users and the addresses of anonymous attempts on their accounts; a person from
        outside the tenant is "an operator", without address, as on a VM's console sessions."""
        events = super().visible_to(user)
        if is_operator(user):
            return events.annotate(shown_actor=F("actor_name"), shown_ip=F("source_ip"))
        own = Q(actor__membership__tenant=tenant_of(user)) | Q(actor_kind=ActorKind.ANONYMOUS)
        person = Q(actor_kind__in=[ActorKind.USER, ActorKind.TOKEN, ActorKind.COMMAND])
        return events.annotate(
            shown_actor=Case(When(own, then=F("actor_name")), When(person, then=Value(OUTSIDER)),
                             default=F("actor_name"), output_field=models.CharField()),
            shown_ip=Case(When(own, then=F("source_ip")), default=Value(None),
                          output_field=models.GenericIPAddressField()),
        )

    def update(self, **kwargs: Any) -> NoReturn:
        _refuse("update")

    def delete(self) -> NoReturn:
        _refuse("delete")


class AuditEvent(models.Model):
    """One thing somebody (or the system) did: written by the service that did it, in the same
    transaction (audit/services.py: record)."""

    time = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="+")
    # Kept when the user is deleted; the operating system user of a command; "monitor", "system".
    actor_name = models.CharField(max_length=150, blank=True)
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    # The tenant whose users see the event; None: operators only.
    tenant = models.ForeignKey(Tenant, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
                               db_index=False)  # audit_tenant_time_id starts with it
    action = models.CharField(max_length=32, choices=Action.choices)
    target_kind = models.CharField(max_length=16, blank=True)  # "vm", "host", "user", "tenant", "job", ...
    target_name = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    source_ip = models.GenericIPAddressField(null=True, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-time", "-id"]
        # The log shows the newest first after filtering on at most one of these columns; each index
        # ends in the whole ordering, so a page of ids comes straight off it (as Job's do).
        indexes = [
            models.Index(fields=["time", "id"], name="audit_time_id"),
            models.Index(fields=["action", "time", "id"], name="audit_action_time_id"),
            models.Index(fields=["actor_name", "time", "id"], name="audit_actor_time_id"),
            models.Index(fields=["target_name", "time", "id"], name="audit_target_time_id"),
            models.Index(fields=["tenant", "time", "id"], name="audit_tenant_time_id"),
        ]

    def __str__(self) -> str:
        target = f" {self.target_kind} {self.target_name}" if self.target_name else ""
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.actor_name or self.actor_kind} {self.action}{target}"

    @property
    def job_number(self) -> int | None:
        """The job it is about (a request, a cancel), for a link to it."""
        return self.details.get("job") if self.action in (Action.JOB_REQUESTED, Action.JOB_CANCEL) else None

    def details_shown(self) -> list[tuple[str, str]]:
        """The details as the page lists them: a change as "old → new"; the job is a link of its own."""
        shown = []
        for key, value in self.details.items():
            if key == "job" and self.job_number is not None:
                continue
            if isinstance(value, dict) and set(value) == {"from", "to"}:  # audit.services.change
                shown.append((key, f"{_text(value['from'])} → {_text(value['to'])}"))
            else:
                shown.append((key, _text(value)))
        return shown

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            _refuse("changing an event")
        kwargs["force_insert"] = True  # never the UPDATE Django tries first for a row given its id
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("delete")


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) or "none"
    return "yes" if value is True else "no" if value is False else str(value)
