"""Pulling the plug on a CPU server, with nothing but the real processes: the monitor (its own
process) declares it dead, the failover job (in the worker) fences it through its BMC and restarts
its guests on the survivor; when the host boots again it waits in maintenance, running none of them.
"""
from __future__ import annotations

import time

import libvirt
import pytest

from ha.choices import EventKind
from ha.maintenance import leave_maintenance
from ha.models import Incident
from hosts.choices import HostState
from hosts.models import CpuServer
from lab import cluster
from tests.integration import on_the_hosts
from vms.models import VirtualMachine

pytestmark = pytest.mark.lab
NAMES = ("e2e-a", "e2e-b")


def _running_on(uri: str) -> set[str]:
    conn = libvirt.open(uri)
    try:
        return {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    finally:
        conn.close()


@pytest.fixture
def guests_on_cpu2(lab_hosts, celery_worker_process):
    with on_the_hosts.guests_on_cpu2(NAMES) as guests:
        yield guests


def test_a_pulled_plug_brings_the_guests_back_on_the_survivor_after_a_fence(guests_on_cpu2, monitor_process):
    cpu1, cpu2 = CpuServer.objects.get(name="cpu1"), CpuServer.objects.get(name="cpu2")
    time.sleep(3)  # the monitor has seen every host up
    pulled = time.monotonic()
    cluster.kill_host("cpu2")
    deadline = pulled + 90
    while not all(vm.cpu_server_id == cpu1.pk and vm.state == "running"
                  for vm in VirtualMachine.objects.filter(name__in=NAMES)):
        assert time.monotonic() < deadline, monitor_process.read_text()[-3000:]
        time.sleep(0.5)
    recovered = time.monotonic() - pulled
    print(f"guests running on cpu1 {recovered:.1f} s after the plug was pulled")

    assert {f"xa-{n}" for n in NAMES} <= _running_on(cpu1.libvirt_uri)
    incident = Incident.objects.get(host_name="cpu2")
    assert incident.fenced_by == "ipmi"
    kinds = list(incident.events.order_by("time", "id").values_list("kind", flat=True))
    assert kinds[0] == EventKind.DETECTED
    assert kinds.index(EventKind.FENCED) < kinds.index(EventKind.RESTARTED)  # never before the fence
    assert kinds.count(EventKind.RESTARTED) == len(NAMES)
    assert kinds[-1] == EventKind.CLOSED

    # The host boots again: it is not used, and runs none of its old guests.
    cluster.up()
    deadline = time.monotonic() + 30
    while CpuServer.objects.get(pk=cpu2.pk).state != HostState.MAINTENANCE:
        assert time.monotonic() < deadline, monitor_process.read_text()[-3000:]
        time.sleep(0.5)
    assert not ({f"xa-{n}" for n in NAMES} & _running_on(cpu2.libvirt_uri))
    on_the_hosts.succeeded(leave_maintenance(CpuServer.objects.get(pk=cpu2.pk)))
    assert CpuServer.objects.get(pk=cpu2.pk).state == HostState.UP
