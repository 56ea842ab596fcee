"""VM state on the channel layer: group "vms" for operators' pages, "vms.tenant.<id>" for a tenant's."""
from __future__ import annotations

from vms.models import VirtualMachine
from vms.serializers import OPERATORS, Audience, VmSerializer
from xenaoe_panel.broadcast import send_on_commit

VMS_GROUP = "vms"


def tenant_vms_group(tenant_id: int) -> str:
    return f"vms.tenant.{tenant_id}"


EVENT_FIELDS = ("name", "state", "state_display", "colour", "cpu_server", "running_since")


def vm_event(vm: VirtualMachine, audience: Audience = OPERATORS) -> dict:
    """A VM's state as a page's badge and uptime follow it (static/js/live-vms.js)."""
    return {"type": "vm.state", "vm": dict(VmSerializer(vm, audience=audience, fields=EVENT_FIELDS).data)}


def publish_vm(vm: VirtualMachine) -> None:
    """Tell open pages about the VM's state, after the transaction that changed it commits:
    operators' pages, and its tenant's (which learn the CPU server only if the tenant may)."""
    send_on_commit([VMS_GROUP], vm_event(vm), f"the state of {vm.name}")
    if vm.tenant_id is not None:
        send_on_commit([tenant_vms_group(vm.tenant_id)], vm_event(vm, Audience.of_tenant(vm.tenant)),
                       f"the state of {vm.name} (tenant)")
