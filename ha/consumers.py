"""Websockets of host states and incidents. Authenticate, authorise, join, forward: no driver
calls and no writes here."""
from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from ha.incidents import INCIDENTS_GROUP, incident_group
from ha.models import Incident
from ha.monitor import HOSTS_GROUP
from jobs.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED, _after_serial
from jobs.permissions import is_operator


class _OperatorGroupConsumer(AsyncJsonWebsocketConsumer):
    group = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not is_operator(user) or not await self.allowed():
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # Join before reading any backlog: an event written in between arrives twice at worst,
        # and the page drops what it has already shown by event id.
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.joined = True
        await self.accept()
        await self.send_backlog()

    async def allowed(self) -> bool:
        return True

    async def send_backlog(self) -> None:
        pass

    async def disconnect(self, code: int) -> None:
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(self.group, self.channel_name)


class HostStateConsumer(_OperatorGroupConsumer):
    """ws/hosts/: every host's state, missed checks and last error as the monitor sees them."""
    group = HOSTS_GROUP

    async def host_state(self, event: dict) -> None:
        await self.send_json(event["host"])


class IncidentListConsumer(_OperatorGroupConsumer):
    """ws/incidents/: every incident's state and new events (the list page and the dashboard)."""
    group = INCIDENTS_GROUP

    async def incident_event(self, event: dict) -> None:
        await self.send_json({"incident": event["incident"], "event": event["event"]})


class IncidentConsumer(_OperatorGroupConsumer):
    """ws/incidents/<id>/?after=N: the timeline's events after id N, then live events."""

    async def allowed(self) -> bool:
        self.incident_id = int(self.scope["url_route"]["kwargs"]["incident_id"])
        self.group = incident_group(self.incident_id)
        return await database_sync_to_async(Incident.objects.filter(pk=self.incident_id).exists)()

    async def send_backlog(self) -> None:
        after = _after_serial(self.scope.get("query_string", b""))
        for message in await database_sync_to_async(self._backlog)(after):
            await self.send_json(message)

    def _backlog(self, after: int) -> list[dict]:
        incident = Incident.objects.get(pk=self.incident_id)
        summary = _summary(incident)
        events = [{"incident": summary, "event": e.as_event()} for e in incident.events.filter(pk__gt=after)]
        return events or [{"incident": summary, "event": None}]

    async def incident_event(self, event: dict) -> None:
        await self.send_json({"incident": event["incident"], "event": event["event"]})


def _summary(incident: Incident) -> dict:
    return {"id": incident.pk, "kind": incident.kind, "state": incident.state,
            "state_display": incident.get_state_display(), "colour": incident.state_colour,
            "host": incident.host_name, "summary": incident.summary}
