"""CPU servers failing under a running guest: killed in the middle of a live migration, from it and to
it; cut off from the management network only, and from the SAN only. The monitor runs as its own
process, as in production; every case ends with the records read back and `cluster verify`."""
from __future__ import annotations

import time

import pytest

from ha.maintenance import leave_maintenance
from hosts.choices import HostState
from hosts.models import CpuServer
from jobs.follow import follow
from jobs.models import Job
from lab import cluster
from tests.chaos.conftest import Outcome, check
from vms.migration import migrate_vm
from vms.models import VirtualMachine

pytestmark = [pytest.mark.lab, pytest.mark.chaos]
RECOVERY_TIMEOUT_S = 150


def wait_for_progress(job: Job, timeout: float = 120) -> None:
    """Until the job logs the migration's progress: memory is on its way."""
    deadline = time.monotonic() + timeout
    while not job.log.filter(data__has_key="migration").exists():
        job.refresh_from_db()
        assert job.state in ("queued", "running"), f"job ended {job.state} before migrating: {job.message}"
        assert time.monotonic() < deadline, f"no migration progress within {timeout:g} s"
        time.sleep(0.2)


def panel_story(vm: VirtualMachine) -> str:
    """What the panel did meanwhile: the hosts' states and the latest jobs' logs."""
    lines = [f"{h.name}: {h.state} {h.last_check_error}" for h in CpuServer.objects.order_by("name")]
    for job in Job.objects.order_by("-pk")[:4]:
        lines.append(f"job {job.kind} {job.target_name} {job.state}: {job.message}")
        lines += [f"  {e.message}" for e in job.log.order_by("-serial")[:8][::-1]]
    return "\n".join(lines)


def wait_running_on(name: str, host: str, timeout: float = RECOVERY_TIMEOUT_S) -> float:
    started = time.monotonic()
    while True:
        vm = VirtualMachine.objects.select_related("cpu_server").get(name=name)
        if vm.state == "running" and vm.cpu_server.name == host and not Job.objects.filter(
                vm=vm, state__in=("queued", "running")).exists():
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, (
            f"{name} not running on {host} within {timeout:g} s: {vm.state}\n{panel_story(vm)}")
        time.sleep(0.5)


def wait_fenced(name: str, timeout: float = RECOVERY_TIMEOUT_S) -> None:
    """Until the monitor has declared the host dead and the failover fenced it."""
    deadline = time.monotonic() + timeout
    host = CpuServer.objects.get(name=name)
    while host.state != HostState.FENCED:
        assert time.monotonic() < deadline, f"{name} is {host.state}, not fenced within {timeout:g} s"
        time.sleep(0.5)
        host.refresh_from_db()


def back_in_service(name: str) -> None:
    """The host boots again: the monitor puts it in maintenance; the operator returns it."""
    cluster.up(out=lambda line: None)
    deadline = time.monotonic() + 60
    host = CpuServer.objects.get(name=name)
    while host.state != HostState.MAINTENANCE:
        assert time.monotonic() < deadline, f"{name} is {host.state}, not in maintenance"
        time.sleep(0.5)
        host.refresh_from_db()
    returned = follow(leave_maintenance(host).pk, lambda _line: None)
    assert returned.state == "succeeded", f"returning {name} to service: {returned.state}: {returned.message}"


@pytest.mark.parametrize(("case", "source", "target", "killed"), [
    ("cpu-killed-migrating-from", "cpu2", "cpu1", "cpu2"),
    pytest.param("cpu-killed-migrating-to", "cpu1", "cpu2", "cpu2", marks=pytest.mark.slow),
])
def test_a_cpu_server_killed_during_a_live_migration(records_vm, monitor, case, source, target, killed):
    name = f"ch-{killed}-{'from' if killed == source else 'to'}"
    vm, acks = records_vm(name, source)
    acked_before = acks.acked
    job = migrate_vm(name, target, max_mib_per_s=2)  # slow enough to be caught in the middle
    wait_for_progress(job)
    cluster.kill_host(killed)
    survivor = target if killed == source else source
    took = wait_running_on(name, survivor)
    job.refresh_from_db()
    acks.wait_for(acked_before + 3, 60)  # it writes on where it runs
    wait_fenced(killed)
    back_in_service(killed)
    check(Outcome(case, f"{killed} killed while migrating {name} {source}->{target}",
                  f"migration {job.state}; runs on {survivor} {took:.0f} s later"), name, acks)


@pytest.mark.slow
def test_a_cpu_server_cut_from_the_management_network(records_vm, monitor):
    """It runs on, on the SAN, but the panel cannot reach it: declared dead, fenced through its BMC
    (powered off), its guest restarted on the survivor."""
    name = "ch-mgmt-cut"
    vm, acks = records_vm(name, "cpu2")
    acked_before = acks.acked
    cluster.partition_host("cpu2")
    took = wait_running_on(name, "cpu1")
    acks.wait_for(acked_before + 3, 60)
    wait_fenced("cpu2")
    back_in_service("cpu2")
    check(Outcome("cpu-mgmt-partition", "cpu2's management link cut", f"fenced, restarted on cpu1 {took:.0f} s later"),
          name, acks)


@pytest.mark.slow
def test_a_cpu_server_cut_from_the_san(records_vm, monitor):
    """It answers the panel but reaches no disk: its guest's I/O waits. The panel must move the
    guest where its disks are, and never run it twice."""
    name = "ch-san-cut"
    vm, acks = records_vm(name, "cpu2")
    acked_before = acks.acked
    cluster.partition_host("cpu2", "san")
    took = wait_running_on(name, "cpu1", timeout=300)
    acks.wait_for(acked_before + 3, 90)
    host = CpuServer.objects.get(name="cpu2")
    cluster.heal_host("cpu2")
    if host.state in (HostState.DEAD, HostState.FENCED):
        wait_fenced("cpu2")
        back_in_service("cpu2")
    check(Outcome("cpu-san-partition", "cpu2's SAN link cut", f"{host.state}; runs on cpu1 {took:.0f} s later"),
          name, acks)
