"""Websocket of VM state changes for pages that show VMs. Authenticate, authorise, forward:
operators get every VM's changes, a tenant's users their tenant's."""
from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from jobs.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from tenants.access import is_operator, tenant_of
from vms.events import VMS_GROUP, tenant_vms_group


class VmStateConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if is_operator(user):
            self.group = VMS_GROUP
        else:
            tenant = await database_sync_to_async(tenant_of)(user)
            if tenant is None:
                await self.close(code=CLOSE_NOT_FOUND)
                return
            self.group = tenant_vms_group(tenant.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def vm_state(self, event: dict) -> None:
        await self.send_json(event["vm"])
