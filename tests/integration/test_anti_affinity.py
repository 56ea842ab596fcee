"""Anti-affinity on the lab cluster, with a real worker: two members of a group created without a
server named run on the two CPU servers; a migration that can only put them together is made and
warned; cluster verify then reports the group (cpu2 has room), and a migration without a target
puts the member apart again. Every placement is checked on the hosts (libvirt on both CPU servers),
not only in the database. Failover's side is in tests/integration/test_failover.py."""
from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest

from hosts.models import CpuServer
from hosts.verify import verify
from tests.integration.on_the_hosts import clear_domain, clear_exports, domain_state, succeeded
from vms.affinity import create_group
from vms.migration import migrate_vm
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm

pytestmark = pytest.mark.lab
GROUP = "aa-web"
NAMES = ("aa-web1", "aa-web2")


@pytest.fixture
def group(lab_hosts, celery_worker_process) -> Iterator[str]:
    for name in NAMES:  # left by an interrupted earlier run
        clear_domain(f"xa-{name}")
        clear_exports(name)
    create_group(GROUP)
    yield GROUP
    for vm in VirtualMachine.objects.filter(name__in=NAMES):
        succeeded(delete_vm(vm.name))


def _runs_on(name: str) -> list[str]:
    """The CPU servers whose libvirt runs the VM's domain."""
    return sorted(cpu.name for cpu in CpuServer.objects.all()
                  if domain_state(cpu.libvirt_uri, f"xa-{name}") == libvirt.VIR_DOMAIN_RUNNING)


def _anti_affinity_findings() -> list[str]:
    return [f.message for f in verify().findings if f.code == "anti-affinity"]


def test_members_run_apart_a_move_beside_one_is_warned_and_verify_says_what_to_move(group):
    for name in NAMES:
        succeeded(create_vm(VmRequest(name=name, vcpus=1, memory_mib=64, disk_mib=32, anti_affinity_groups=(group,),
                                      allow_n_plus_one_break=True)))
    first, second = (_runs_on(name) for name in NAMES)
    assert len(first) == len(second) == 1 and first != second, (first, second)
    assert VirtualMachine.objects.get(name=NAMES[0]).cpu_server.name == first[0]
    assert _anti_affinity_findings() == []

    # Two CPU servers: the only other one runs the first member. The move is made, and says so.
    job = succeeded(migrate_vm(NAMES[1]))
    broken = f"broke anti-affinity group {group}: {NAMES[0]} and {NAMES[1]} both on {first[0]}"
    assert job.log.filter(level="warning", message=broken).exists()
    assert _runs_on(NAMES[1]) == first

    assert _anti_affinity_findings() == [
        f"{NAMES[0]} and {NAMES[1]} of anti-affinity group {group} both on {first[0]}; {second[0]} runs none of them "
        f"and has room for {NAMES[0]} (64 MiB)"]
    job = succeeded(migrate_vm(NAMES[1]))  # no target: the allocator puts it apart
    assert not job.log.filter(message__startswith="broke anti-affinity").exists()
    assert _runs_on(NAMES[1]) == second
    assert _anti_affinity_findings() == []
