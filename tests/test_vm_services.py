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
    create_vm(_request(name="a", memory_mib=400))
    second = create_vm(_request(name="b", memory_mib=200))
    third = create_vm(_request(name="c", memory_mib=200))
    first_host = VirtualMachine.objects.get(name="a").cpu_server
    assert second.vm.cpu_server != first_host
    assert third.vm.cpu_server != first_host  # 824 MiB free beats 624


def test_a_request_that_would_break_n_plus_one_is_refused_with_the_numbers(cluster):
    create_vm(_request(name="a", memory_mib=600))
    create_vm(_request(name="b", memory_mib=300))
    before = _counts()
    with pytest.raises(ValidationError) as err:
        create_vm(_request(name="c", memory_mib=300))
    message = " ".join(err.value.messages)
    assert "breaks N+1" in message
    assert "if cpu1 fails, no surviving CPU server has room for" in message or "if cpu2 fails" in message
    assert "(300 MiB)" in message
    assert _counts() == before


def test_the_operator_may_override_n_plus_one_and_the_job_records_it(cluster):
    create_vm(_request(name="a", memory_mib=600))
    create_vm(_request(name="b", memory_mib=300))
    job = create_vm(_request(name="c", memory_mib=300, allow_n_plus_one_break=True))
    assert job.params["n_plus_one_override"]
    assert "no surviving CPU server has room" in job.params["n_plus_one_override"][0]


def test_n_plus_one_packs_guests_whole_not_just_total_memory(cluster):
    # If cpu3 fails, the others have 424 + 424 MiB free: enough in total for its 500 MiB guest,
    # but not in one piece. The check must place guests, not add up megabytes.
    from vms.placement import n_plus_one_shortfalls

    cpu1, cpu2 = cluster[0]
    cpu3 = CpuServer.objects.create(name="cpu3", address="192.0.2.23", libvirt_uri="test:///default",
                                    memory_mib=1024, vcpus=4)
    VirtualMachine.objects.create(name="g1", vcpus=1, memory_mib=600, disk_mib=1, cpu_server=cpu1)
    VirtualMachine.objects.create(name="g2", vcpus=1, memory_mib=600, disk_mib=1, cpu_server=cpu2)
    guest = VirtualMachine.objects.create(name="g3", vcpus=1, memory_mib=500, disk_mib=1, cpu_server=cpu3)
    by_host = {s.failed: [name for name, _ in s.homeless] for s in n_plus_one_shortfalls()}
    assert by_host["cpu3"] == ["g3"]
    guest.memory_mib = 400
    guest.save()
    assert "cpu3" not in {s.failed for s in n_plus_one_shortfalls()}


def test_servers_that_are_not_up_are_not_used(cluster):
    cpus, disks = cluster
    CpuServer.objects.filter(name="cpu1").update(state=HostState.DEAD)
    with pytest.raises(ValidationError, match="breaks N"):  # one CPU server left: no N+1 at all
        create_vm(_request())
    job = create_vm(_request(allow_n_plus_one_break=True))
    assert job.vm.cpu_server.name == "cpu2"
    DiskServer.objects.filter(name="disk2").update(state=HostState.DEAD)
    with pytest.raises(ValidationError, match="a mirror needs 2 disk servers"):
        create_vm(_request(name="web2", allow_n_plus_one_break=True))


def test_delete_refuses_a_vm_with_a_job_in_progress(cluster):
    create_vm(_request())
    with pytest.raises(ValidationError, match=r"web1 is busy with job #\d+ \(vm.create, queued\)"):
        delete_vm("web1")
    with pytest.raises(ValidationError, match="no VM named"):
        delete_vm("nope")
