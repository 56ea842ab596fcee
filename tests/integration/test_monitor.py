"""The monitor against the lab: real SSH, libvirt and AoE probes, the monitor's cycle run in-process
at its configured interval. A disk server's plug pulled degrades the mirrors of a running guest
(which keeps running) and opens an incident naming it; its return restores the exports, heals the
mirrors and closes the incident. A CPU server's plug pulled is declared dead within dead_after + 1
cycles and its failover started exactly once."""
from __future__ import annotations

import time
from collections.abc import Callable

import libvirt
import pytest

from drivers import vblade
from ha.choices import IncidentKind, IncidentState
from ha.models import Incident
from ha.monitor import Monitor
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from hosts.targets import ssh_target
from lab import cluster
from storage.choices import MirrorState
from storage.models import Mirror
from tests.integration.on_the_hosts import domain_state, succeeded
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm

pytestmark = pytest.mark.lab


def _cycles_until(monitor: Monitor, done: Callable[[], bool], max_cycles: int, timings: list[float]) -> int:
    """Run cycles at the monitor's interval until `done()`; how many it took."""
    for n in range(1, max_cycles + 1):
        started = time.monotonic()
        report = monitor.cycle()
        timings.append(report.duration_s)
        for line in report.changes:
            print(f"cycle {n}: {line}")
        if done():
            return n
        time.sleep(max(0.0, monitor.interval - (time.monotonic() - started)))
    raise AssertionError(f"not done after {max_cycles} cycles")


@pytest.fixture
def watched_vm(lab_hosts, celery_worker_process):
    succeeded(create_vm(VmRequest(name="watched", vcpus=1, memory_mib=64, disk_mib=32, cpu_server="cpu1")))
    yield VirtualMachine.objects.select_related("cpu_server").get(name="watched")
    cluster.up()
    # The test leaves hosts dead or in maintenance: the panel's rows back to up so the delete may run.
    for model in (CpuServer, DiskServer):
        model.objects.update(state=HostState.UP, missed_checks=0)
    if VirtualMachine.objects.filter(name="watched").exists():
        succeeded(delete_vm("watched"))


@pytest.fixture
def monitor():
    monitor = Monitor()
    yield monitor
    monitor.close()


def test_a_dead_disk_server_degrades_mirrors_and_its_return_heals_them(watched_vm, monitor, capsys):
    timings: list[float] = []
    mirror = Mirror.objects.get(vm=watched_vm)
    uri, domain = watched_vm.cpu_server.libvirt_uri, watched_vm.domain_name
    _cycles_until(monitor, lambda: True, 2, timings)
    assert set(DiskServer.objects.values_list("state", flat=True)) == {HostState.UP}
    try:
        killed = time.monotonic()
        cluster.kill_host("disk2")
        cycles = _cycles_until(
            monitor, lambda: DiskServer.objects.get(name="disk2").state == HostState.DEAD,
            monitor.dead_after + 1, timings)
        detected = time.monotonic() - killed
        mirror.refresh_from_db()
        assert mirror.state == MirrorState.DEGRADED
        assert domain_state(uri, domain) == libvirt.VIR_DOMAIN_RUNNING  # the guest keeps running
        incident = Incident.objects.get(kind=IncidentKind.DISK_SERVER_FAILED, host_name="disk2")
        assert incident.state == IncidentState.DEGRADED and "Exposed: watched" in incident.summary
        assert incident.events.filter(data__exposed=["watched"]).exists()
        assert DiskServer.objects.get(name="disk1").state == HostState.UP
        assert CpuServer.objects.filter(state=HostState.UP).count() == 2

        back = time.monotonic()
        cluster.up()
        _cycles_until(monitor, lambda: not Incident.objects.get(pk=incident.pk).is_open, 10, timings)
        healed = time.monotonic() - back
        mirror.refresh_from_db()
        assert mirror.state == MirrorState.HEALTHY
        assert DiskServer.objects.get(name="disk2").state == HostState.MAINTENANCE
        legs = {(leg.shelf, leg.slot) for leg in mirror.legs.all()}
        running = {(e.shelf, e.slot) for e in vblade.list_exports(ssh_target(DiskServer.objects.get(name="disk2")))}
        assert legs & running  # disk2's leg is served again
        kinds = list(incident.events.values_list("kind", flat=True))
        assert kinds[0] == "detected" and "returned" in kinds and kinds[-1] == "closed"
        assert domain_state(uri, domain) == libvirt.VIR_DOMAIN_RUNNING
    finally:
        cluster.up()
    with capsys.disabled():
        print(f"\ndisk2: dead after {cycles} cycles, {detected:.1f} s; healed {healed:.1f} s after lab up; "
              f"cycle max {max(timings) * 1000:.0f} ms, mean {sum(timings) / len(timings) * 1000:.0f} ms")


def test_a_dead_cpu_server_is_declared_within_n_plus_one_cycles_and_failed_over_once(
        lab_hosts, monitor, monkeypatch, capsys):
    import ha.failover

    started: list[int] = []
    # The failover itself is tested with the fencing; here only the monitor's contract: called once.
    monkeypatch.setattr(ha.failover, "start_failover", lambda incident: started.append(incident.pk))
    timings: list[float] = []
    _cycles_until(monitor, lambda: True, 2, timings)
    assert CpuServer.objects.get(name="cpu2").state == HostState.UP
    try:
        killed = time.monotonic()
        cluster.kill_host("cpu2")
        cycles = _cycles_until(monitor, lambda: CpuServer.objects.get(name="cpu2").state == HostState.DEAD,
                               monitor.dead_after + 1, timings)
        detected = time.monotonic() - killed
        incident = Incident.objects.get(kind=IncidentKind.CPU_SERVER_FAILED, host_name="cpu2")
        assert incident.summary.startswith(f"cpu2 missed {monitor.dead_after} checks: ")
        assert started == [incident.pk]
        for _ in range(2):  # still dead: counted, never declared again
            timings.append(monitor.cycle().duration_s)
            time.sleep(monitor.interval)
        assert started == [incident.pk]
        assert CpuServer.objects.get(name="cpu1").state == HostState.UP
        cluster.up()
        _cycles_until(monitor, lambda: CpuServer.objects.get(name="cpu2").state == HostState.MAINTENANCE, 8, timings)
        assert incident.events.filter(kind="returned").exists()
    finally:
        cluster.up()
    with capsys.disabled():
        print(f"\ncpu2: dead after {cycles} cycles, {detected:.1f} s; "
              f"cycle max {max(timings) * 1000:.0f} ms, mean {sum(timings) / len(timings) * 1000:.0f} ms")
