"""Websocket of VM state changes for pages that show VMs. Authenticate, authorise, forward."""
from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from jobs.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from jobs.permissions import is_operator
from vms.events import VMS_GROUP


class VmStateConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not is_operator(user):  # tenants get their own, filtered stream (a later issue)
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.joined = True
        await self.channel_layer.group_add(VMS_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(VMS_GROUP, self.channel_name)

    async def vm_state(self, event: dict) -> None:
        await self.send_json(event["vm"])
