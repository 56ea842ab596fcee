"""What a tenant's users see of an incident: that it happened to a host their VMs used, its state,
and the part of the timeline about their own VMs. Never another tenant's VM, nor (unless the
tenant may see CPU servers) which host it was.
"""
from __future__ import annotations

from typing import Any

from ha.choices import EventKind
from ha.models import Incident
from tenants.models import Tenant

# Host-level facts a tenant is told, in words that name no host.
GENERIC_EVENTS = {
    EventKind.DETECTED: "A host your VMs use failed.",
    EventKind.FENCED: "The failed host was fenced: it cannot run or write anything any more.",
    EventKind.FENCE_FAILED: "The failed host could not be fenced yet: nothing is restarted until it is.",
    EventKind.RETURNED: "The failed host is back.",
    EventKind.CLOSED: "Closed.",
}


def incident_summary(incident: Incident, tenant: Tenant | None) -> dict[str, Any]:
    """The incident's head as the channel and the pages show it; without host or summary for a tenant
    (the summary lists every exposed VM, whoever owns it)."""
    shows_host = tenant is None or tenant.shows_cpu_server
    return {"id": incident.pk, "kind": incident.kind, "kind_display": incident.get_kind_display(),
            "state": incident.state, "state_display": incident.get_state_display(), "colour": incident.state_colour,
            "host": incident.host_name if shows_host else None,
            "summary": incident.summary if tenant is None else incident.get_kind_display()}


def event_for_tenant(event: dict[str, Any], tenant: Tenant, vm_names: set[str]) -> dict[str, Any] | None:
    """An event (IncidentEvent.as_event()) as this tenant may see it, or None."""
    vm = (event.get("data") or {}).get("vm")
    if vm is not None:
        if vm not in vm_names:
            return None
        if tenant.shows_cpu_server:
            return event
        label = dict(EventKind.choices).get(event["kind"], event["kind"]).lower()
        return {**event, "message": f"{vm}: {label}.", "data": {"vm": vm}, "job": None}
    generic = GENERIC_EVENTS.get(event["kind"])
    if generic is None:
        return None
    return {**event, "message": generic, "data": {}, "job": None}


def tenant_vm_names(tenant: Tenant) -> set[str]:
    return set(tenant.vms.values_list("name", flat=True))


def timeline(incident: Incident, tenant: Tenant | None, after: int = 0) -> list[dict[str, Any]]:
    """The incident's events after event id `after`, oldest first, as `tenant` may see them (every
    event, as it is, for operators: tenant None). The pages, the API and the websocket's backlog."""
    events = [event.as_event() for event in incident.events.filter(pk__gt=after)]
    if tenant is None:
        return events
    names = tenant_vm_names(tenant)
    return [seen for event in events if (seen := event_for_tenant(event, tenant, names)) is not None]
