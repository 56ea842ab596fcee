"""The guests' figures sampler as a process of its own (`manage.py vm_stats`): one leads per site on
an advisory lock of its own, apart from the monitors'; a standby never asks a host, and takes over
when the leader ends. Real PostgreSQL for the election; libvirt's bulk stats are the fake hosts of
tests/test_vm_stats.py (the one point where traffic leaves)."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from drivers.domain_stats import read_counters
from ha.leadership import MONITOR, VM_STATS, AdvisoryLockLeadership
from hosts.models import CpuServer
from metrics.management.commands.vm_stats import sample_while
from tests.test_vm_stats import FakeHost, cpu, hosts, vm  # noqa: F401 - `hosts` is a fixture
from vms.models import VmSample
from vms.stats import VmStatsSampler

pytestmark = pytest.mark.django_db(transaction=True)


class Sampler:
    """One `vm_stats` process: its loop in a thread, its reads counted."""

    def __init__(self, node: str) -> None:
        self.reads = 0
        self.said: list[str] = []
        self.stop = threading.Event()
        self.leadership = AdvisoryLockLeadership(interval=1, node=node, role=VM_STATS)

        def read(uri: str, *, timeout: float):
            self.reads += 1
            return read_counters(uri, timeout=timeout)

        self.sampler = VmStatsSampler(interval=0.2, read=read)
        self.thread = threading.Thread(target=sample_while,
                                       args=(self.stop, self.leadership, self.sampler, self.said.append, 0.05))
        self.thread.start()

    def end(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.sampler.close()
        self.leadership.close()


def wait_for(done, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


def test_one_sampler_leads_the_other_stands_by_and_takes_over(hosts):  # noqa: F811
    vm("web", cpu("cpu1"))
    hosts.update(cpu1=FakeHost(["xa-web"]))
    first = Sampler("panel1")
    wait_for(lambda: first.leadership.is_leader and VmSample.objects.exists())
    second = Sampler("panel2")
    try:
        wait_for(lambda: first.reads >= 4)
        assert not second.leadership.is_leader and second.reads == 0  # a standby asks no host
        assert second.leadership.leader == "panel1"
        # One reading a pass, one sample per reading after the first: never two samplers' rows.
        assert VmSample.objects.count() <= first.reads
        first.end()
        wait_for(lambda: second.leadership.is_leader and second.reads >= 2)
        taken_over = VmSample.objects.count()
        wait_for(lambda: VmSample.objects.count() > taken_over)  # the new leader records
    finally:
        first.end()
        second.end()
    assert any("sampling the guests' figures every 0.2 s" in line for line in second.said)
    per_time = Counter(VmSample.objects.values_list("time", flat=True))
    assert max(per_time.values()) == 1  # one guest, one sample per pass


def test_its_lock_is_not_the_monitors(hosts):  # noqa: F811
    CpuServer.objects.all().delete()
    monitor = AdvisoryLockLeadership(interval=1, node="panel1", role=MONITOR)
    sampler = AdvisoryLockLeadership(interval=1, node="panel2", role=VM_STATS)
    try:
        monitor.refresh()
        sampler.refresh()
        assert monitor.is_leader and sampler.is_leader  # each role elects its own
    finally:
        monitor.close()
        sampler.close()
