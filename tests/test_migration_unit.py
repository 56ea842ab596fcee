"""Live migration without hosts: the verb's validation and choice of target, the job's plan, the
wording of progress, and the busy guest's kernel image. Bad input changes nothing."""
from __future__ import annotations

import struct

import pytest
from django.core.exceptions import ValidationError

from drivers.migration import MigrationProgress
from hosts.choices import HostState, Hypervisor
from hosts.models import CpuServer
from jobs.models import Job
from jobs.runner import JobContext, JobFailed
from lab.guests import busy
from vms.choices import VmState
from vms.migration import describe, migrate_vm, migration_uri, plan_migrate
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db


@pytest.fixture
def cpus() -> dict[str, CpuServer]:
    return {
        name: CpuServer.objects.create(name=name, address=f"192.0.2.{20 + i}", libvirt_uri="test:///default",
                                       memory_mib=memory, vcpus=4)
        for i, (name, memory) in enumerate([("cpu1", 1024), ("cpu2", 1024), ("cpu3", 1024)], start=1)
    }


@pytest.fixture
def web(cpus) -> VirtualMachine:
    return VirtualMachine.objects.create(name="web", vcpus=1, memory_mib=256, disk_mib=100,
                                         cpu_server=cpus["cpu1"], state=VmState.RUNNING)


def _guest(name: str, server: CpuServer, memory_mib: int) -> VirtualMachine:
    return VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=memory_mib, disk_mib=1, cpu_server=server,
                                         state=VmState.RUNNING)


def _unchanged(vm: VirtualMachine, jobs: int) -> bool:
    return Job.objects.count() == jobs and VirtualMachine.objects.get(pk=vm.pk).cpu_server_id == vm.cpu_server_id


@pytest.mark.parametrize(
    ("kwargs", "field", "text"),
    [
        ({"name": "nope"}, "name", "no VM named 'nope'"),
        ({"target": "cpu1"}, "target", "web already runs on cpu1: choose another CPU server"),
        ({"target": "cpu9"}, "target", "no CPU server named 'cpu9'"),
        ({"max_mib_per_s": 0}, "max_mib_per_s", "between 1 and"),
        ({"max_mib_per_s": -5}, "max_mib_per_s", "between 1 and"),
        ({"max_mib_per_s": 10**9}, "max_mib_per_s", "between 1 and"),
        ({"max_mib_per_s": "fast"}, "max_mib_per_s", "between 1 and"),
    ],
)
def test_bad_requests_get_a_clear_error_and_change_nothing(web, kwargs, field, text):
    jobs = Job.objects.count()
    with pytest.raises(ValidationError) as err:
        migrate_vm(**({"name": "web"} | kwargs))
    assert text in " ".join(err.value.message_dict[field])
    assert _unchanged(web, jobs)


def test_a_target_that_is_not_up_or_has_no_room_is_refused_with_the_numbers(web, cpus):
    jobs = Job.objects.count()
    CpuServer.objects.filter(name="cpu2").update(state=HostState.DEAD)
    with pytest.raises(ValidationError, match="cpu2 is dead, not up"):
        migrate_vm("web", "cpu2")
    _guest("big", cpus["cpu3"], 900)
    with pytest.raises(ValidationError, match="cpu3 has 124 MiB free, web needs 256 MiB"):
        migrate_vm("web", "cpu3")
    with pytest.raises(ValidationError, match=r"no other CPU server has 256 MiB free \(cpu3: 124 MiB free\)"):
        migrate_vm("web")
    assert _unchanged(web, jobs)


def test_only_a_running_vm_on_a_cpu_server_is_migrated(web):
    VirtualMachine.objects.filter(pk=web.pk).update(state=VmState.STOPPED)
    with pytest.raises(ValidationError, match="web is stopped: only a running VM can be live-migrated"):
        migrate_vm("web", "cpu2")
    VirtualMachine.objects.filter(pk=web.pk).update(state=VmState.RUNNING, cpu_server=None)
    with pytest.raises(ValidationError, match="web has no CPU server"):
        migrate_vm("web", "cpu2")
    assert not Job.objects.exists()


def test_automatic_takes_the_other_up_server_with_most_free_memory(web, cpus):
    _guest("a", cpus["cpu2"], 300)
    _guest("b", cpus["cpu3"], 100)
    job = migrate_vm("web", user=None, max_mib_per_s=40)
    assert job.kind == "vm.migrate" and job.vm_id == web.pk and job.state == "queued"
    assert job.params == {"source": "cpu1", "target": "cpu3", "requested_target": "automatic", "max_mib_per_s": 40,
                          "anti_affinity_broken": []}
    # The inventory moves only when the guest has: the job does that, not the request.
    assert VirtualMachine.objects.get(pk=web.pk).cpu_server == cpus["cpu1"]


def test_automatic_never_picks_the_source_even_with_most_room(web, cpus):
    _guest("a", cpus["cpu2"], 700)
    _guest("b", cpus["cpu3"], 600)  # cpu1 has 768 MiB free, cpu2 324, cpu3 424
    assert migrate_vm("web").params["target"] == "cpu3"


def test_a_second_operation_on_a_busy_vm_is_refused_naming_the_job(web):
    job = migrate_vm("web", "cpu2")
    with pytest.raises(ValidationError, match=rf"web is busy with job #{job.pk} \(vm.migrate, queued\)"):
        migrate_vm("web", "cpu3")
    from vms.services import delete_vm

    with pytest.raises(ValidationError, match=rf"busy with job #{job.pk}"):
        delete_vm("web")
    assert Job.objects.count() == 1


@pytest.mark.parametrize(
    ("hypervisor", "port", "uri"),
    [
        (Hypervisor.KVM, 22, "qemu+ssh://root@192.0.2.22/system"),
        (Hypervisor.QEMU, 2222, "qemu+ssh://root@192.0.2.22:2222/system"),
        (Hypervisor.XEN, 22, "xen+ssh://root@192.0.2.22/system"),
    ],
)
def test_migration_uri_is_how_the_source_reaches_the_target(cpus, hypervisor, port, uri):
    target = cpus["cpu2"]
    target.hypervisor, target.ssh_port = hypervisor, port
    assert migration_uri(target) == uri


def test_migration_uri_template_can_be_configured(cpus, settings):
    settings.MIGRATION_URI_TEMPLATE = "qemu+tls://{name}.san.example/system"
    assert migration_uri(cpus["cpu2"]) == "qemu+tls://cpu2.san.example/system"


def test_the_plan_moves_the_guest_in_six_steps_and_refuses_a_vm_moved_since(web):
    job = migrate_vm("web", "cpu2")
    titles = [step.title for step in plan_migrate(JobContext(job))]
    assert titles == [
        "Check that cpu2 can take web", "Prepare cpu2: boot files, both exports", "Live-migrate from cpu1 to cpu2",
        "Record web on cpu2", "Detach the exports on cpu1", "Confirm it runs only on cpu2",
    ]
    VirtualMachine.objects.filter(pk=web.pk).update(cpu_server=CpuServer.objects.get(name="cpu3"))
    with pytest.raises(JobFailed, match="web is recorded on cpu3 now, not cpu1"):
        plan_migrate(JobContext(job))


def _progress(**overrides) -> MigrationProgress:
    values = {"phase": "iterating", "elapsed_seconds": 2.6, "memory_total": 65 << 20, "memory_processed": 57 << 20,
              "memory_remaining": 15 << 20, "bytes_per_second": 32 << 20, "dirty_bytes_per_second": 7 << 20,
              "iteration": 2, "eta_seconds": 0.6} | overrides
    return MigrationProgress(**values)


def test_progress_reads_as_one_line():
    assert describe(_progress()) == (
        "migrating (pass 2): 77 % of 65 MiB, 32 MiB/s, guest dirtying 7.0 MiB/s, ~1 s left")
    assert describe(_progress(phase="copying", iteration=1, bytes_per_second=0, eta_seconds=None,
                              dirty_bytes_per_second=0)) == "migrating: 77 % of 65 MiB, 0.0 MiB/s, measuring the rate"
    assert describe(_progress(eta_seconds=None, throttle_percent=20)).endswith(
        "vCPUs throttled 20 %, faster than it is copied: not converging yet")
    assert describe(_progress(phase="starting")) == "migrating: setting up"


# ---- the busy guest's kernel ------------------------------------------------------------------


def test_busy_kernel_has_a_valid_multiboot_header_with_load_addresses():
    image = busy.build_busy_kernel(8)
    magic, flags, checksum, header, load, load_end, bss_end, entry = struct.unpack_from("<8I", image)
    assert magic == 0x1BADB002 and flags & 0x10000 and (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert header == load == busy.LOAD_ADDRESS and load_end == load + len(image) <= bss_end
    assert load < entry < load_end and not flags & 0x4  # no video mode request: QEMU refuses those


@pytest.mark.parametrize(("rate", "hz", "per_tick"), [(8, 1024, 2), (0.5, 128, 1), (100, 1969, 13)])
def test_busy_kernel_paces_its_writes_by_the_timer(rate, hz, per_tick):
    assert busy.pacing(rate) == (hz, per_tick)
    assert hz * per_tick * busy.PAGE / (1 << 20) == pytest.approx(rate, rel=0.05)
    with pytest.raises(ValueError):
        busy.pacing(0)
