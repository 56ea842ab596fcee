"""VM state on the channel layer: group "vms" for pages showing many VMs (operators)."""
from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from vms.models import VirtualMachine

logger = logging.getLogger(__name__)
VMS_GROUP = "vms"


def vm_event(vm: VirtualMachine) -> dict:
    return {
        "type": "vm.state",
        "vm": {
            "name": vm.name,
            "state": vm.state,
            "state_display": vm.get_state_display(),
            "colour": vm.state_colour,
            "cpu_server": vm.cpu_server.name if vm.cpu_server else None,
        },
    }


def publish_vm(vm: VirtualMachine) -> None:
    """Tell open pages about the VM's state, after the transaction that changed it commits."""
    event = vm_event(vm)

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(VMS_GROUP, event)
        except Exception:  # a page missing an event shows the right state on reload
            logger.warning("could not publish the state of %s", vm.name, exc_info=True)

    transaction.on_commit(send)


def set_vm_state(vm_id: int, state: str) -> None:
    """Record a VM's state and push it to the pages."""
    VirtualMachine.objects.filter(pk=vm_id).update(state=state)
    vm = VirtualMachine.objects.select_related("cpu_server").filter(pk=vm_id).first()
    if vm is not None:
        publish_vm(vm)
