"""Live migration on the lab cluster: a guest busy writing its RAM, moved between cpu1 and cpu2 by
the vm.migrate job on a real worker. Every check after a job looks at the hosts themselves
(libvirt on both CPU servers, the guest's own counters, /dev/etherd), not only at the database.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from django.conf import settings
from django.core.exceptions import ValidationError

from drivers import ssh
from hosts.models import CpuServer
from hosts.targets import ssh_target
from jobs.follow import follow
from jobs.models import Job
from jobs.services import request_cancel
from lab.guests import busy
from storage.models import AoEExport
from tests.integration.on_the_hosts import busy_guest_ticks, clear_domain
from vms.migration import migrate_vm
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm

pytestmark = pytest.mark.lab

VM_NAME = "migtest"
MEMORY_MIB = 64
DIRTY_MIB_PER_S = 8  # the guest's write rate: a quarter of the cap below, so it converges in a few passes
CAP_MIB_PER_S = 32


def _lookup(uri: str, name: str) -> tuple[int, bool] | None:
    """(state, persistent) of the domain as that host's libvirt sees it, None if not defined."""
    conn = libvirt.open(uri)
    try:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            return None
        return dom.state()[0], bool(dom.isPersistent())
    finally:
        conn.close()


def _guest_runs_on(uri: str, name: str) -> bool:
    before = busy_guest_ticks(uri, name)
    time.sleep(0.3)
    return busy_guest_ticks(uri, name) > before


def _has_device(cpu: CpuServer, path: str) -> bool:
    return ssh.run(ssh_target(cpu), ["test", "-b", path], timeout=10, check=False).returncode == 0


def _devices(vm: VirtualMachine) -> list[str]:
    return [leg.device_path for leg in AoEExport.objects.filter(mirror__vm=vm)]


def _samples(job: Job) -> list[dict]:
    return [e.data["migration"] for e in job.log.order_by("serial") if "migration" in e.data]


@pytest.fixture
def busy_vm(lab_hosts, celery_worker_process) -> Iterator[VirtualMachine]:
    """A 64 MiB guest on cpu1 that writes 8 MiB/s of its RAM, removed again afterwards."""
    cpus = {c.name: c for c in lab_hosts["cpu"]}
    clear_domain(f"xa-{VM_NAME}")  # left by an interrupted earlier run
    kernel = busy.install_busy_kernel(Path(settings.LAB_DIR) / "guests", DIRTY_MIB_PER_S)
    job = create_vm(VmRequest(name=VM_NAME, vcpus=1, memory_mib=MEMORY_MIB, disk_mib=16, cpu_server="cpu1",
                              kernel_path=str(kernel), allow_n_plus_one_break=True))
    assert follow(job.pk, print).state == "succeeded"
    vm = VirtualMachine.objects.get(name=VM_NAME)
    assert _guest_runs_on(cpus["cpu1"].libvirt_uri, vm.domain_name)
    yield vm
    try:
        assert follow(delete_vm(VM_NAME).pk, print).state == "succeeded"
    finally:
        clear_domain(vm.domain_name)


def test_live_migration_reports_progress_and_leaves_the_guest_only_on_the_target(busy_vm):
    vm = busy_vm
    cpu1, cpu2 = CpuServer.objects.get(name="cpu1"), CpuServer.objects.get(name="cpu2")

    # Refused up front, nothing written: the same host, a host without room.
    jobs_before = Job.objects.count()
    with pytest.raises(ValidationError, match="already runs on cpu1"):
        migrate_vm(VM_NAME, "cpu1")
    CpuServer.objects.filter(pk=cpu2.pk).update(memory_mib=MEMORY_MIB - 1)
    with pytest.raises(ValidationError, match=f"cpu2 has {MEMORY_MIB - 1} MiB free"):
        migrate_vm(VM_NAME, "cpu2")
    with pytest.raises(ValidationError, match="no other CPU server has"):
        migrate_vm(VM_NAME)
    CpuServer.objects.filter(pk=cpu2.pk).update(memory_mib=cpu2.memory_mib)
    assert Job.objects.count() == jobs_before

    started = time.monotonic()
    job = migrate_vm(VM_NAME, None, max_mib_per_s=CAP_MIB_PER_S)  # automatic: cpu2, the only other
    assert job.params["target"] == "cpu2"
    job = follow(job.pk, print)
    took = time.monotonic() - started
    assert job.state == "succeeded", job.message
    assert job.message.startswith(f"{VM_NAME} runs on cpu2")

    samples = _samples(job)
    final = samples[-1]
    running = [s for s in samples if s["phase"] in ("copying", "iterating")]
    assert running, "no progress sample while the memory was being copied"
    processed = [s["memory_processed"] for s in samples]
    assert processed == sorted(processed), "memory processed went backwards"
    assert final["phase"] == "completed" and final["memory_remaining"] == 0 and final["percent"] == 100
    # The guest wrote every page before and kept dirtying pages during the copy: more than its
    # whole memory was sent, and QEMU measured the dirtying while it went. (The total also counts
    # the video RAM of its VNC display, mostly zero pages that are not sent.)
    assert final["memory_processed"] > MEMORY_MIB << 20 and final["memory_total"] >= MEMORY_MIB << 20
    # QEMU's dirty-rate reading comes once per pass; on a loaded machine (the guest starved between
    # two readings) it may read 0 in every sample taken, but more passes than one still prove pages
    # were dirtied during the copy.
    assert any(s["dirty_bytes_per_second"] > 0 for s in running) or max(s["iteration"] for s in samples) > 1
    assert all(s["bytes_per_second"] <= CAP_MIB_PER_S * 1.2 * (1 << 20) for s in running)
    assert final["downtime_ms"] is not None and 0 < final["downtime_ms"] < 2000
    print(f"\nmigration: job {took:.1f} s, libvirt {final['migration_ms']} ms, downtime {final['downtime_ms']} ms, "
          f"{final['bytes_per_second'] / (1 << 20):.1f} MiB/s, {final['memory_processed'] / (1 << 20):.0f} of "
          f"{final['memory_total'] / (1 << 20):.0f} MiB sent in {final['iteration']} passes, "
          f"{len(samples)} progress entries")

    # The hosts: running and persistent on cpu2 only, the guest's own clock still ticking there.
    assert _lookup(cpu2.libvirt_uri, vm.domain_name) == (libvirt.VIR_DOMAIN_RUNNING, True)
    assert _lookup(cpu1.libvirt_uri, vm.domain_name) is None
    assert _guest_runs_on(cpu2.libvirt_uri, vm.domain_name)
    assert VirtualMachine.objects.get(pk=vm.pk).cpu_server == cpu2
    legs = _devices(vm)
    assert all(_has_device(cpu2, leg) for leg in legs)
    assert not any(_has_device(cpu1, leg) for leg in legs)


def test_cancelled_migration_leaves_the_guest_running_on_the_source(busy_vm):
    vm = busy_vm
    cpu1, cpu2 = CpuServer.objects.get(name="cpu1"), CpuServer.objects.get(name="cpu2")

    # A target whose SAN interface does not exist: the prechecks fail fast, nothing changes.
    CpuServer.objects.filter(pk=cpu2.pk).update(san_interface="nosuch0")
    job = follow(migrate_vm(VM_NAME, "cpu2").pk, print)
    CpuServer.objects.filter(pk=cpu2.pk).update(san_interface=cpu2.san_interface)
    assert job.state == "failed" and job.step == 1 and "nosuch0" in job.message
    assert _lookup(cpu1.libvirt_uri, vm.domain_name) == (libvirt.VIR_DOMAIN_RUNNING, True)
    assert _lookup(cpu2.libvirt_uri, vm.domain_name) is None

    # 64 MiB at 2 MiB/s would take half a minute: time enough to try a second operation and cancel.
    job = migrate_vm(VM_NAME, "cpu2", max_mib_per_s=2)
    deadline = time.monotonic() + 30
    while not any(s["phase"] == "copying" for s in _samples(job)):
        assert time.monotonic() < deadline, "no progress entry within 30 s"
        assert not Job.objects.get(pk=job.pk).finished, Job.objects.get(pk=job.pk).message
        time.sleep(0.1)
    with pytest.raises(ValidationError, match=f"busy with job #{job.pk} \\(vm.migrate, running\\)"):
        migrate_vm(VM_NAME, "cpu2")
    with pytest.raises(ValidationError, match=f"busy with job #{job.pk}"):
        delete_vm(VM_NAME)
    cancelled_at = time.monotonic()
    assert request_cancel(job)
    job = follow(job.pk, print)
    print(f"\ncancel: job ended {time.monotonic() - cancelled_at:.1f} s after the request")

    assert job.state == "cancelled", job.message
    assert "keeps running on cpu1" in job.message
    assert _lookup(cpu1.libvirt_uri, vm.domain_name) == (libvirt.VIR_DOMAIN_RUNNING, True)
    assert _lookup(cpu2.libvirt_uri, vm.domain_name) is None
    assert _guest_runs_on(cpu1.libvirt_uri, vm.domain_name)
    assert VirtualMachine.objects.get(pk=vm.pk).cpu_server == cpu1
    # The undo detached what the job had attached on cpu2; cpu1's devices are untouched.
    legs = _devices(vm)
    assert not any(_has_device(cpu2, leg) for leg in legs)
    assert all(_has_device(cpu1, leg) for leg in legs)
