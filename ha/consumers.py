"""Websockets of host states and incidents. Authenticate, authorise, join, forward: no driver
calls and no writes here. Operators join the whole cluster's groups; a tenant's users join their
tenant's groups, which carry only what they may see (ha.incidents._publish)."""
from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from ha.incidents import INCIDENTS_GROUP, incident_group, tenant_incident_group, tenant_incidents_group
from ha.models import Incident
from ha.tenant_view import incident_summary, timeline
from hosts.states import HOSTS_GROUP
from jobs.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED, after_serial
from tenants.access import is_operator, tenant_of


class _GroupConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.operator = is_operator(user)
        self.tenant = await database_sync_to_async(tenant_of)(user)
        group = await self.group_for(user)
        if group is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # Join before reading any backlog: an event written in between arrives twice at worst,
        # and the page drops what it has already shown by event id.
        self.group = group
        await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_backlog()

    async def group_for(self, user: Any) -> str | None:
        raise NotImplementedError

    async def send_backlog(self) -> None:
        pass

    async def disconnect(self, code: int) -> None:
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def incident_event(self, event: dict) -> None:
        await self.send_json({"incident": event["incident"], "event": event["event"]})


class HostStateConsumer(_GroupConsumer):
    """ws/hosts/: every host's state, missed checks and last error as the monitor sees them (operators)."""

    async def group_for(self, user: Any) -> str | None:
        return HOSTS_GROUP if self.operator else None

    async def host_state(self, event: dict) -> None:
        await self.send_json(event["host"])


class IncidentListConsumer(_GroupConsumer):
    """ws/incidents/: incidents' states and new events (the list page and the dashboard)."""

    async def group_for(self, user: Any) -> str | None:
        if self.operator:
            return INCIDENTS_GROUP
        return tenant_incidents_group(self.tenant.pk) if self.tenant else None


class IncidentConsumer(_GroupConsumer):
    """ws/incidents/<id>/?after=N: the timeline's events after id N, then live events."""

    async def group_for(self, user: Any) -> str | None:
        self.incident_id = int(self.scope["url_route"]["kwargs"]["incident_id"])
        visible = await database_sync_to_async(Incident.objects.visible_to(user).filter(pk=self.incident_id).exists)()
        if not visible:
            return None
        if self.operator:
            return incident_group(self.incident_id)
        return tenant_incident_group(self.incident_id, self.tenant.pk)

    async def send_backlog(self) -> None:
        after = after_serial(self.scope.get("query_string", b""))
        for message in await database_sync_to_async(self._backlog)(after):
            await self.send_json(message)

    def _backlog(self, after: int) -> list[dict]:
        from ha.models import Incident

        incident = Incident.objects.get(pk=self.incident_id)
        tenant = None if self.operator else self.tenant
        summary = incident_summary(incident, tenant)
        events = timeline(incident, tenant, after)
        return [{"incident": summary, "event": e} for e in events] or [{"incident": summary, "event": None}]
