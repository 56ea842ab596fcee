"""Guests' figures (vms/stats.py): rates from two readings of a host's counters, the samples recorded for
the guests the panel places there, retention, and the sampler's passes. libvirt.open is the one point
where traffic would leave the program: a fake connection there answers the bulk stats call."""
from __future__ import annotations

import datetime
import threading
import time

import libvirt
import pytest
from django.utils import timezone

from drivers import libvirt_calls
from drivers.domain_stats import CountersReading, DomainCounters
from hosts.choices import HostState
from hosts.models import CpuServer
from vms import stats
from vms.choices import VmState
from vms.models import VirtualMachine, VmSample
from vms.stats import Rates, VmStatsSampler, guest_rates, rates, record_rates

GIB = 1024 ** 3
T0 = datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC)


def counters(cpu: int | None = 0, read: dict | None = None, written: dict | None = None,
             received: dict | None = None, sent: dict | None = None) -> DomainCounters:
    return DomainCounters(cpu, read or {}, written or {}, received or {}, sent or {})


# --- rates ---------------------------------------------------------------------------------------

def test_rates_are_the_counters_growth_per_second():
    before = counters(10 * 10**9, {"vda": 1000, "vdb": 1000}, {"vda": 0, "vdb": 0}, {"vnet0": 0}, {"vnet0": 500})
    after = counters(40 * 10**9, {"vda": 61_000, "vdb": 1000}, {"vda": 6000, "vdb": 6000}, {"vnet0": 120_000},
                     {"vnet0": 500})
    assert rates(before, after, 60) == Rates(cpu_vcpus=0.5, disk_read_bps=1000, disk_write_bps=200,
                                             net_rx_bps=2000, net_tx_bps=0)


def test_a_counter_going_backwards_gives_no_rate_for_that_device():
    # The guest restarted on the same host (every counter from zero), or one leg was replaced.
    before = counters(90 * 10**9, {"vda": 5000, "vdb": 5000}, {"vda": 10, "vdb": 10})
    after = counters(3 * 10**9, {"vda": 100, "vdb": 5600}, {"vda": 1, "vdb": 2})
    measured = rates(before, after, 10)
    assert measured.cpu_vcpus is None
    assert measured.disk_read_bps == 60  # vdb only
    assert measured.disk_write_bps is None  # both went back
    assert measured.net_rx_bps is None and measured.net_tx_bps is None  # no interface in either reading


def test_a_device_in_one_reading_only_is_left_out():
    # A leg plugged back live between the readings: its counter starts anew, not a jump.
    before = counters(0, {"vda": 100})
    after = counters(0, {"vda": 700, "vdb": 10**12})
    assert rates(before, after, 6).disk_read_bps == 100


def test_nothing_is_measured_without_time_between_readings():
    assert rates(counters(0), counters(10**9), 0) == Rates()
    assert not Rates().measured and Rates(net_tx_bps=0.0).measured


def test_guest_rates_need_an_earlier_reading_close_enough():
    web = counters(0, {"vda": 0})
    later = counters(2 * 10**9, {"vda": 4096})
    before = CountersReading(100.0, {"xa-web": web, "xa-gone": web})
    after = CountersReading(102.0, {"xa-web": later, "xa-new": later})
    assert guest_rates(None, after, 180) == {}
    assert guest_rates(before, after, 1.5) == {}  # a gap: the rate would be an average over it
    assert guest_rates(after, before, 180) == {}  # out of order
    assert guest_rates(before, after, 180) == {"xa-web": Rates(1.0, 2048, None, None, None)}


# --- recording -----------------------------------------------------------------------------------

def cpu(name: str, state: str = HostState.UP) -> CpuServer:
    return CpuServer.objects.create(name=name, address=f"{name}.example", memory_mib=8192, vcpus=8, state=state,
                                    libvirt_uri=f"qemu+ssh://root@{name}.example/system")


def vm(name: str, server: CpuServer | None, state: str = VmState.RUNNING) -> VirtualMachine:
    return VirtualMachine.objects.create(name=name, cpu_server=server, vcpus=2, memory_mib=512, disk_mib=64,
                                         state=state)


@pytest.mark.django_db
def test_samples_go_to_the_guests_the_panel_places_on_that_server():
    cpu1, cpu2 = cpu("cpu1"), cpu("cpu2")
    web, db, moving = vm("web", cpu1), vm("db", cpu2), vm("moving", cpu2)
    measured = Rates(0.25, 100.0, 50.0, 10.0, 5.0)
    later = T0 + datetime.timedelta(seconds=3)
    written = record_rates({
        cpu1.pk: (T0, {"xa-web": measured, "xa-moving": measured,  # moving: recorded on cpu2 (a migration's source)
                       "windows-desktop": measured}),  # not the panel's
        cpu2.pk: (later, {"xa-db": Rates(), "xa-moving": Rates(cpu_vcpus=1.0)}),  # db: nothing measured
    })
    assert written == 2
    rows = {s.vm.name: s for s in VmSample.objects.select_related("vm")}
    assert set(rows) == {"web", "moving"}
    assert (rows["web"].time, rows["web"].cpu_vcpus, rows["web"].disk_read_bps, rows["web"].disk_write_bps,
            rows["web"].net_rx_bps, rows["web"].net_tx_bps) == (T0, 0.25, 100.0, 50.0, 10.0, 5.0)
    assert (rows["moving"].time, rows["moving"].cpu_vcpus, rows["moving"].disk_read_bps) == (later, 1.0, None)
    assert web.samples.count() == 1 and moving.samples.count() == 1 and not db.samples.exists()


@pytest.mark.django_db
def test_retention_keeps_the_last_hours_only():
    web = vm("web", cpu("cpu1"))
    cutoff = T0 - datetime.timedelta(hours=24)
    for time_ in (cutoff - datetime.timedelta(seconds=1), cutoff, T0):
        VmSample.objects.create(vm=web, time=time_, cpu_vcpus=1)
    assert stats.prune_samples(T0, hours=24) == 1
    assert sorted(VmSample.objects.values_list("time", flat=True)) == [cutoff, T0]


# --- the sampler's passes ------------------------------------------------------------------------

class FakeDomain:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class FakeHost:
    """A CPU server's libvirtd: every bulk stats call is a new reading, each counter grown by a fixed
    step since the last (so every pair of consecutive readings has the same ratios between figures)."""

    def __init__(self, domains: list[str], fail: bool = False) -> None:
        self.domains, self.fail, self.calls = domains, fail, 0
        self.lock = threading.Lock()

    def record(self, n: int) -> dict:
        return {"cpu.time": n * 2 * 10**9, "block.count": 2,
                "block.0.name": "vda", "block.0.rd.bytes": n * 4096, "block.0.wr.bytes": n * 1024,
                "block.1.name": "vdb", "block.1.rd.bytes": n * 4096, "block.1.wr.bytes": n * 1024,
                "net.count": 1, "net.0.name": "vnet0", "net.0.rx.bytes": n * 512, "net.0.tx.bytes": 7}

    def listAllDomains(self, flags: int):  # noqa: N802 - libvirt's name
        with self.lock:
            self.calls += 1
        if self.fail:
            raise libvirt.libvirtError("cannot recv data: Connection reset by peer")
        return [FakeDomain(name) for name in self.domains]

    def domainListGetStats(self, domains, stats_: int, flags: int):  # noqa: N802
        return [(domain, self.record(self.calls)) for domain in domains]

    def isAlive(self) -> int:  # noqa: N802
        return 0 if self.fail else 1


@pytest.fixture
def hosts(monkeypatch) -> dict[str, FakeHost]:
    found: dict[str, FakeHost] = {}

    def fake_open(uri: str) -> FakeHost:
        return found[uri.split("@")[1].split(".")[0]]

    monkeypatch.setattr(libvirt_calls.libvirt, "open", fake_open)
    monkeypatch.setattr(libvirt_calls, "_pools", {})
    return found


def tick_until(sampler: VmStatsSampler, done, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the sampler did not get there in time"
        sampler.tick()
        time.sleep(0.02)


@pytest.mark.django_db
def test_passes_record_each_guests_rates_from_consecutive_readings(hosts):
    cpu1, cpu3 = cpu("cpu1"), cpu("cpu3", HostState.MAINTENANCE)
    cpu("cpu2", HostState.DEAD)
    vm("web", cpu1)
    vm("db", cpu3)
    vm("idle", cpu1, VmState.STOPPED)
    hosts.update(cpu1=FakeHost(["xa-web", "other-domain"]), cpu2=FakeHost(["xa-ghost"]), cpu3=FakeHost(["xa-db"]))
    sampler = VmStatsSampler(interval=0.05)
    try:
        tick_until(sampler, lambda: {s.vm.name for s in VmSample.objects.select_related("vm")} >= {"web", "db"})
    finally:
        sampler.close()
    assert hosts["cpu2"].calls == 0  # a dead server is not asked
    samples = list(VmSample.objects.select_related("vm"))
    assert {s.vm.name for s in samples} == {"web", "db"}
    for sample in samples:
        # Per reading: 2 s of CPU, 4 KiB read and 1 KiB written on each leg, 512 bytes received, none sent.
        assert sample.cpu_vcpus > 0 and sample.net_tx_bps == 0
        assert sample.disk_read_bps == pytest.approx(8192 / 2 * sample.cpu_vcpus, rel=1e-9)
        assert sample.disk_write_bps == pytest.approx(sample.disk_read_bps / 4, rel=1e-9)
        assert sample.net_rx_bps == pytest.approx(sample.disk_read_bps / 16, rel=1e-9)
        assert sample.time <= timezone.now()


@pytest.mark.django_db
def test_one_pass_per_interval_and_a_silent_host_said_once(hosts, caplog):
    cpu("cpu1")
    cpu("cpu2")
    vm("web", CpuServer.objects.get(name="cpu1"))
    hosts.update(cpu1=FakeHost(["xa-web"]), cpu2=FakeHost([], fail=True))
    sampler = VmStatsSampler(interval=0.3)
    started = time.monotonic()
    try:
        tick_until(sampler, lambda: hosts["cpu1"].calls == 1)  # the first pass at once
        tick_until(sampler, lambda: hosts["cpu1"].calls >= 3 and hosts["cpu2"].calls >= 3)  # ticks every 20 ms
    finally:
        sampler.close()
    assert hosts["cpu1"].calls <= 1 + (time.monotonic() - started) / 0.3  # one at once, then one an interval
    assert VmSample.objects.filter(vm__name="web").exists()  # the other server's failure stops nothing
    said = [r.getMessage() for r in caplog.records if "guest figures of cpu2" in r.getMessage()]
    assert len(said) == 1 and "Connection reset by peer" in said[0]


@pytest.mark.django_db
def test_a_pass_prunes_old_samples(hosts, settings):
    settings.VM_STATS_RETENTION_HOURS = 1
    web = vm("web", cpu("cpu1", HostState.DEAD))
    VmSample.objects.create(vm=web, time=timezone.now() - datetime.timedelta(hours=2), cpu_vcpus=1)
    VmSample.objects.create(vm=web, time=timezone.now() - datetime.timedelta(minutes=5), cpu_vcpus=1)
    sampler = VmStatsSampler(interval=0.05)
    try:
        sampler.tick()  # the first pass at once: it prunes as it starts
        assert VmSample.objects.count() == 1
    finally:
        sampler.close()
