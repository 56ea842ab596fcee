"""A VM's graphical console (VNC) for the browser (noVNC over ws/vms/<name>/console/vnc/,
vms/console_consumer.py): the display's TCP stream on the VM's CPU server, through SSH
(drivers/vnc.py). One stream per websocket: when the guest stops or moves the stream ends, the page
reconnects and this finds the VM where the inventory says it runs now."""
from __future__ import annotations

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from drivers import hypervisor, vnc
from drivers.errors import DriverError
from hosts.targets import ssh_target
from vms.choices import VmState
from vms.models import VirtualMachine


def _where(vm_pk: int):
    vm = VirtualMachine.objects.filter(pk=vm_pk).select_related("cpu_server").first()
    if vm is None or vm.cpu_server is None or vm.state != VmState.RUNNING:
        return None
    return ssh_target(vm.cpu_server), vm.cpu_server.libvirt_uri, vm.domain_name


async def open_display(vm_pk: int) -> vnc.Tunnel:
    """The running VM's display, greeted; DriverError if it is not running or cannot be reached."""
    where = await database_sync_to_async(_where)(vm_pk)  # closes its database connection after
    if where is None:
        raise DriverError("the guest is not running", permanent=True)
    target, uri, domain = where
    display = await sync_to_async(hypervisor.vnc_display, thread_sensitive=False)(uri, domain)
    return await vnc.open_tunnel(target, display)
