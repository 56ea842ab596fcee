"""Creating a VM: validation, placement and reservation. Bad input changes nothing."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from jobs.models import Job
from storage.models import AoEExport
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm

pytestmark = pytest.mark.django_db


@pytest.fixture
def cluster():
    cpus = [
        CpuServer.objects.create(name=f"cpu{i}", address=f"192.0.2.{20 + i}", libvirt_uri="test:///default",
                                 memory_mib=1024, vcpus=4)
        for i in (1, 2)
    ]
    disks = [
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=1000)
        for i in (1, 2)
    ]
    return cpus, disks


def _counts() -> tuple[int, int, int]:
    return VirtualMachine.objects.count(), AoEExport.objects.count(), Job.objects.count()


def _request(**overrides) -> VmRequest:
    values = {"name": "web1", "vcpus": 1, "memory_mib": 256, "disk_mib": 100} | overrides
    return VmRequest(**values)


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"name": "Bad_Name"}, "name", "lower-case"),
        ({"name": ""}, "name", "lower-case"),
        ({"vcpus": 0}, "vcpus", "between 1 and"),
        ({"memory_mib": 1}, "memory_mib", "between"),
        ({"disk_mib": 10**12}, "disk_mib", "between"),
        ({"cpu_server": "cpu9"}, "cpu_server", "no CPU server named"),
        ({"memory_mib": 2048}, "__all__", "no CPU server has 2048 MiB free"),
        ({"memory_mib": 2048, "cpu_server": "cpu1"}, "cpu_server", "cpu1 has 1024 MiB free"),
        ({"disk_mib": 5000}, "__all__", "a mirror needs 2 disk servers with 5000 MiB free"),
    ],
)
def test_bad_requests_get_a_clear_error_and_change_nothing(cluster, overrides, field, text):
    before = _counts()
    with pytest.raises(ValidationError) as err:
        create_vm(_request(**overrides))
    assert text in " ".join(err.value.message_dict[field])
    assert _counts() == before


def test_duplicate_name_is_refused(cluster):
    create_vm(_request())
    before = _counts()
    with pytest.raises(ValidationError, match="already exists"):
        create_vm(_request())
    assert _counts() == before


def test_create_reserves_memory_two_legs_on_two_disk_servers_and_a_shared_slot(cluster):
    job = create_vm(_request())
    vm = VirtualMachine.objects.get(name="web1")
    legs = list(AoEExport.objects.filter(mirror__vm=vm).order_by("leg"))
    assert job.kind == "vm.create" and job.vm == vm and job.state == "queued"
    assert {leg.disk_server.name for leg in legs} == {"disk1", "disk2"}
    assert [leg.slot for leg in legs] == [0, 0]
    assert all(leg.shelf == leg.disk_server.aoe_shelf for leg in legs)
    second = create_vm(_request(name="web2"))
    assert {leg.slot for leg in AoEExport.objects.filter(mirror__vm=second.vm)} == {1}


def test_automatic_placement_takes_the_server_with_most_free_memory(cluster):
    create_vm(_request(name="a", memory_mib=600))
    second = create_vm(_request(name="b", memory_mib=300))
    third = create_vm(_request(name="c", memory_mib=300))
    first_host = VirtualMachine.objects.get(name="a").cpu_server
    assert second.vm.cpu_server != first_host
    assert third.vm.cpu_server != first_host  # 724 MiB free beats 424


def test_servers_that_are_not_up_are_not_used(cluster):
    cpus, disks = cluster
    CpuServer.objects.filter(name="cpu1").update(state=HostState.DEAD)
    job = create_vm(_request())
    assert job.vm.cpu_server.name == "cpu2"
    DiskServer.objects.filter(name="disk2").update(state=HostState.DEAD)
    with pytest.raises(ValidationError, match="a mirror needs 2 disk servers"):
        create_vm(_request(name="web2"))


def test_delete_refuses_a_vm_with_a_job_in_progress(cluster):
    create_vm(_request())
    with pytest.raises(ValidationError, match=r"web1 is busy with job #\d+ \(vm.create, queued\)"):
        delete_vm("web1")
    with pytest.raises(ValidationError, match="no VM named"):
        delete_vm("nope")
