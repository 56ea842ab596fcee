"""Websocket stream of one job: backlog after the client's last serial, then live events.

No driver calls and no writes here: authenticate, authorise, join, forward.
"""
from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from jobs.events import entry_event, job_group
from jobs.models import Job
from jobs.redaction import redactor_for

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class JobConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        if not await database_sync_to_async(self._visible)(user):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.redact = await database_sync_to_async(redactor_for)(user)
        # Join before reading the backlog: an entry written in between arrives twice at worst,
        # and the browser drops what it has already seen by serial.
        await self.channel_layer.group_add(job_group(self.job_id), self.channel_name)
        await self.accept()
        after = after_serial(self.scope.get("query_string", b""))
        for event in await database_sync_to_async(self._backlog)(after):
            await self.send_json(self.redact(event))

    def _visible(self, user) -> bool:
        return Job.objects.visible_to(user).filter(pk=self.job_id).exists()

    def _backlog(self, after: int) -> list[dict]:
        job = Job.objects.get(pk=self.job_id)
        entries = list(job.log.filter(serial__gt=after).order_by("serial"))
        events = [{k: v for k, v in entry_event(job, e).items() if k != "type"} for e in entries]
        if not events:  # the client still needs the job's current state
            events = [{k: v for k, v in entry_event(job, None).items() if k != "type"}]
        return events

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "job_id"):
            await self.channel_layer.group_discard(job_group(self.job_id), self.channel_name)

    async def job_event(self, event: dict) -> None:
        await self.send_json(self.redact({"job": event["job"], "entry": event["entry"]}))


def after_serial(query_string: bytes) -> int:
    from urllib.parse import parse_qs

    values = parse_qs(query_string.decode()).get("after", ["0"])
    try:
        return max(int(values[0]), 0)
    except ValueError:
        return 0
