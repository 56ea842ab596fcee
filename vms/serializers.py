"""Plain-data views of VMs, shared by the CLI and the pages' JSON."""
from __future__ import annotations

from storage.models import AoEExport
from vms.models import VirtualMachine


def vm_summary(vm: VirtualMachine) -> dict:
    legs = AoEExport.objects.filter(mirror__vm=vm).select_related("disk_server").order_by("leg")
    return {
        "name": vm.name,
        "state": vm.state,
        "cpu_server": vm.cpu_server.name if vm.cpu_server else None,
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
        "disk_mib": vm.disk_mib,
        "domain": vm.domain_name,
        "image": vm.image.name if vm.image_id else None,
        "login_user": vm.image.login_user if vm.image_id else None,
        "nics": [{"network": nic.network.name, "mac": nic.mac, "ip": nic.ip}
                 for nic in vm.nics.select_related("network").order_by("index")],
        "legs": [
            {"disk_server": leg.disk_server.name, "shelf": leg.shelf, "slot": leg.slot,
             "state": leg.state, "backing_path": leg.backing_path}
            for leg in legs
        ],
    }
