"""Opening incidents and writing their timeline; every change is pushed to open pages on commit."""
from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from ha.choices import EventKind, IncidentKind, IncidentState
from ha.models import Incident, IncidentEvent
from ha.tenant_view import event_for_tenant, incident_summary, tenant_vm_names
from hosts.models import CpuServer, DiskServer
from notifications.triggers import incident_opened
from tenants.models import Tenant
from xenaoe_panel.broadcast import send_on_commit

INCIDENTS_GROUP = "incidents"


def incident_group(incident_id: int) -> str:
    return f"incident.{incident_id}"


def tenant_incidents_group(tenant_id: int) -> str:
    return f"incidents.tenant.{tenant_id}"


def tenant_incident_group(incident_id: int, tenant_id: int) -> str:
    return f"incident.{incident_id}.tenant.{tenant_id}"


def _publish(incident: Incident, event: IncidentEvent | None) -> None:
    """To operators as it is; to each tenant it touched, only what that tenant may see."""
    payload = {"type": "incident.event", "incident": incident_summary(incident, None),
               "event": event.as_event() if event else None}
    send_on_commit([INCIDENTS_GROUP, incident_group(incident.pk)], payload, f"incident {incident.pk}")
    for tenant in incident.tenants.all():
        seen = event_for_tenant(event.as_event(), tenant, tenant_vm_names(tenant)) if event else None
        if event is not None and seen is None:
            continue  # nothing of theirs happened
        tenant_payload = {"type": "incident.event", "incident": incident_summary(incident, tenant), "event": seen}
        send_on_commit([tenant_incidents_group(tenant.pk), tenant_incident_group(incident.pk, tenant.pk)],
                       tenant_payload, f"incident {incident.pk} (tenant {tenant.slug})")


def open_incident(host: CpuServer | DiskServer, kind: str, message: str) -> tuple[Incident, bool]:
    """The open incident of this host and kind, opened now if there is none (created=True)."""
    fields: dict[str, Any] = {"cpu_server": host} if isinstance(host, CpuServer) else {"disk_server": host}
    existing = Incident.objects.filter(host_name=host.name, kind=kind).exclude(state=IncidentState.CLOSED).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            incident = Incident.objects.create(host_name=host.name, kind=kind, summary=message, **fields)
            incident.tenants.set(tenants_on(host))
    except IntegrityError:  # opened by someone else in between
        return Incident.objects.get(host_name=host.name, kind=kind, state__in=_open_states()), False
    record(incident, EventKind.DETECTED, message)
    incident_opened(incident)
    return incident, True


def tenants_on(host: CpuServer | DiskServer) -> QuerySet[Tenant]:
    """The tenants with a VM on this host (a guest on a CPU server, a mirror leg on a disk server):
    the users who will want to know about its failure."""
    if isinstance(host, CpuServer):
        return Tenant.objects.filter(vms__cpu_server=host).distinct()
    return Tenant.objects.filter(vms__mirror__legs__disk_server=host).distinct()


def _open_states() -> list[str]:
    return [s for s in IncidentState.values if s != IncidentState.CLOSED]


def record(incident: Incident, kind: str, message: str, *, job: Any = None, user: Any = None,
           **data: Any) -> IncidentEvent:
    event = IncidentEvent.objects.create(incident=incident, kind=kind, message=message, data=data, job=job,
                                         user=user if user is not None and user.is_authenticated else None)
    _publish(incident, event)
    return event


def set_state(incident: Incident, state: str, summary: str | None = None) -> None:
    incident.state = state
    fields = ["state"]
    if summary is not None:
        incident.summary = summary
        fields.append("summary")
    if state == IncidentState.CLOSED:
        incident.closed_at = timezone.now()
        fields.append("closed_at")
    incident.save(update_fields=fields)
    _publish(incident, None)


def close(incident: Incident, message: str, user: Any = None) -> None:
    record(incident, EventKind.CLOSED, message, user=user)
    set_state(incident, IncidentState.CLOSED)


__all__ = ["IncidentKind", "close", "incident_group", "open_incident", "record", "set_state"]
