"""VM state on the channel layer: group "vms" for pages showing many VMs (operators)."""
from __future__ import annotations

from vms.models import VirtualMachine
from xenaoe_panel.broadcast import send_on_commit

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
    send_on_commit([VMS_GROUP], vm_event(vm), f"the state of {vm.name}")


def set_vm_state(vm_id: int, state: str) -> None:
    """Record a VM's state and push it to the pages."""
    VirtualMachine.objects.filter(pk=vm_id).update(state=state)
    vm = VirtualMachine.objects.select_related("cpu_server").filter(pk=vm_id).first()
    if vm is not None:
        publish_vm(vm)
