"""A VM's state: recorded, then pushed to the pages (vms/events.py), as hosts/states.py does for hosts."""
from __future__ import annotations

from django.utils import timezone

from vms.choices import VmState
from vms.events import publish_vm
from vms.models import VirtualMachine


def set_vm_state(vm_id: int, state: str, *, booted: bool = False) -> None:
    """Record a VM's state and push it to the pages.

    Uptime (`running_since`) starts when the guest boots (`booted`: a start or a failover restart)
    or is first seen running, survives a live migration and a spell of "unknown", and ends when
    the VM stops."""
    vms = VirtualMachine.objects.filter(pk=vm_id)
    if state == VmState.RUNNING:
        if booted:
            vms.update(state=state, running_since=timezone.now())
        else:
            vms.update(state=state)
            vms.filter(running_since__isnull=True).update(running_since=timezone.now())
    elif state == VmState.UNKNOWN:
        vms.update(state=state)
    else:
        vms.update(state=state, running_since=None)
    vm = VirtualMachine.objects.select_related("cpu_server", "tenant").filter(pk=vm_id).first()
    if vm is not None:
        publish_vm(vm)
