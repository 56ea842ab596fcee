"""Maintenance on the lab: a CPU server's guests live-migrated away by the host.evacuate job and
its vm.migrate children, on a real worker; and the same started by the monitor's policy when the
host's BMC reports a failed power supply. What counts is what the hosts say (libvirt on both CPU
servers, the busy guest's own tick counter read from its RAM), sampled while the job runs: at no
moment may a guest run nowhere."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path

import libvirt
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from ha.maintenance import EVACUATE, active_evacuation, enter_maintenance, leave_maintenance
from ha.monitor import Monitor
from hosts.choices import HostState
from hosts.models import CpuServer
from jobs.follow import follow
from jobs.models import Job
from jobs.services import request_cancel
from lab import bmc
from lab.guests import busy
from lab.topology import host as lab_host
from tests.integration.on_the_hosts import busy_guest_ticks, clear_domain, domain_state
from vms.models import VirtualMachine
from vms.placement import PlacementError, choose_cpu_server, cpu_candidates
from vms.services import VmRequest, create_vm, delete_vm

pytestmark = pytest.mark.lab

MEMORY_MIB = 64
DIRTY_MIB_PER_S = 8
CAP_MIB_PER_S = 32  # as in test_migration.py: a few seconds of copying, with passes to show


class Watch(threading.Thread):
    """Samples, every 0.1 s, each guest's state on every CPU server (one connection per host, kept
    open) until stopped; `gaps` lists the samples in which a guest was running (or paused for the
    switch-over) on no host at all."""

    def __init__(self, uris: dict[str, str], domains: list[str]) -> None:
        super().__init__(daemon=True)
        self.uris, self.domains = uris, domains
        self.samples = 0
        self.gaps: list[tuple[str, dict[str, int | None]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        conns = {name: libvirt.open(uri) for name, uri in self.uris.items()}
        try:
            while not self.done.is_set():
                for domain in self.domains:
                    seen = {host: self._look(conn, domain) for host, conn in conns.items()}
                    alive = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED)
                    if not any(state in alive for state in seen.values()):
                        self.gaps.append((domain, seen))
                self.samples += 1
                time.sleep(0.1)
        finally:
            for conn in conns.values():
                conn.close()

    @staticmethod
    def _look(conn: libvirt.virConnect, domain: str) -> int | None:
        try:
            return conn.lookupByName(domain).state()[0]
        except libvirt.libvirtError:  # not defined there (or undefined between the two calls)
            return None


def _create(name: str, memory_mib: int, kernel: str = "") -> VirtualMachine:
    clear_domain(f"xa-{name}")  # left by an interrupted earlier run
    job = follow(create_vm(VmRequest(name=name, vcpus=1, memory_mib=memory_mib, disk_mib=16, cpu_server="cpu2",
                                     kernel_path=kernel, allow_n_plus_one_break=True)).pk, print)
    assert job.state == "succeeded", job.message
    return VirtualMachine.objects.get(name=name)


def _cleanup(names: list[str]) -> None:
    """Whatever happened: the evacuation ended, cpu2 up again, the guests deleted."""
    cpu2 = CpuServer.objects.get(name="cpu2")
    running = active_evacuation(cpu2)
    if running is not None:
        request_cancel(running)
        follow(running.pk, print)
    if CpuServer.objects.get(pk=cpu2.pk).state == HostState.MAINTENANCE:
        follow(leave_maintenance(cpu2).pk, print)
    try:
        for name in names:
            if VirtualMachine.objects.filter(name=name).exists():
                assert follow(delete_vm(name).pk, print).state == "succeeded"
    finally:
        for name in names:
            clear_domain(f"xa-{name}")


@pytest.fixture
def guests_on_cpu2(lab_hosts, celery_worker_process) -> Iterator[list[VirtualMachine]]:
    """The busy guest (dirtying its RAM: real migration progress) and a plain one, both on cpu2."""
    kernel = busy.install_busy_kernel(Path(settings.LAB_DIR) / "guests", DIRTY_MIB_PER_S)
    names = ["evbusy", "evplain"]
    try:
        yield [_create("evbusy", MEMORY_MIB, str(kernel)), _create("evplain", MEMORY_MIB)]
    finally:
        _cleanup(names)


def _assert_moved_live(watch: Watch, domains: list[str], cpu1: CpuServer, cpu2: CpuServer,
                       busy_vm: VirtualMachine, ticks_before: int) -> int:
    """Every guest runs on cpu1 only and was never down while it moved; the busy guest's clock
    carried on. Returns the busy guest's ticks now."""
    assert watch.samples > 20 and watch.gaps == [], watch.gaps[:5]
    for domain in domains:
        assert domain_state(cpu1.libvirt_uri, domain) == libvirt.VIR_DOMAIN_RUNNING
        assert domain_state(cpu2.libvirt_uri, domain) is None
    ticks_after = busy_guest_ticks(cpu1.libvirt_uri, busy_vm.domain_name)
    assert ticks_after > ticks_before
    return ticks_after


def test_maintenance_live_migrates_every_guest_away_and_stops_none(guests_on_cpu2):
    busy_vm, plain_vm = guests_on_cpu2
    cpu1, cpu2 = CpuServer.objects.get(name="cpu1"), CpuServer.objects.get(name="cpu2")
    domains = [busy_vm.domain_name, plain_vm.domain_name]
    assert all(domain_state(cpu2.libvirt_uri, d) == libvirt.VIR_DOMAIN_RUNNING for d in domains)
    ticks_before = busy_guest_ticks(cpu2.libvirt_uri, busy_vm.domain_name)

    watch = Watch({"cpu1": cpu1.libvirt_uri, "cpu2": cpu2.libvirt_uri}, domains)
    watch.start()
    started = time.monotonic()
    try:
        job = enter_maintenance(cpu2, max_mib_per_s=CAP_MIB_PER_S)
        # At once, before any guest has moved: placement no longer offers cpu2.
        assert CpuServer.objects.get(pk=cpu2.pk).state == HostState.MAINTENANCE
        assert [c.server.name for c in cpu_candidates()] == ["cpu1"]
        with pytest.raises(PlacementError, match="cpu2 is maintenance, not up"):
            choose_cpu_server(MEMORY_MIB, cpu2)
        assert choose_cpu_server(MEMORY_MIB, None, allow_n_plus_one_break=True).server == cpu1
        job = follow(job.pk, print)
    finally:
        watch.done.set()
        watch.join(10)
    took = time.monotonic() - started
    assert job.kind == EVACUATE and job.state == "succeeded", job.message
    assert job.message == "2 of 2 guests moved"

    children = list(job.children.order_by("pk"))
    assert sorted(c.target_name for c in children) == ["evbusy", "evplain"]
    for child in children:
        assert (child.kind, child.state, child.params["target"]) == ("vm.migrate", "succeeded", "cpu1")
        assert any("migration" in e.data for e in child.log.all()), f"no progress in job #{child.pk}"
    relayed = [e.data for e in job.log.all() if "migration" in e.data]
    assert {d["child"] for d in relayed} == {c.pk for c in children}, "the parent's log lacks a child's progress"
    busy_child = next(c for c in children if c.target_name == "evbusy")
    final = [e.data["migration"] for e in busy_child.log.all() if "migration" in e.data][-1]
    # More than the guest's RAM was sent (the total also counts its display's video RAM, zero pages).
    assert final["phase"] == "completed" and final["memory_processed"] > busy_vm.memory_mib << 20
    busy_relayed = [d["migration"] for d in relayed if d["child"] == busy_child.pk]
    assert len(busy_relayed) >= 3 and busy_relayed[-1] == final

    # The hosts: both guests running on cpu1 only, never down in between, the busy one's clock
    # carried on (a restarted guest would start again from nought and lag behind).
    ticks_after = _assert_moved_live(watch, domains, cpu1, cpu2, busy_vm, ticks_before)
    assert set(VirtualMachine.objects.values_list("name", "cpu_server__name", "state")) == {
        ("evbusy", "cpu1", "running"), ("evplain", "cpu1", "running")}
    print(f"\nevacuation: 2 guests in {took:.1f} s (jobs {', '.join(f'#{c.pk}' for c in children)}), "
          f"downtime {final['downtime_ms']} ms for the busy one, {watch.samples} samples, ticks "
          f"{ticks_before} -> {ticks_after}")

    # Back in service.
    assert CpuServer.objects.get(pk=cpu2.pk).state == HostState.MAINTENANCE
    returned = follow(leave_maintenance(cpu2).pk, print)
    assert returned.state == "succeeded", returned.message
    assert CpuServer.objects.get(pk=cpu2.pk).state == HostState.UP
    assert [c.server.name for c in cpu_candidates()] == ["cpu1", "cpu2"]


def test_a_guest_too_big_for_the_others_is_listed_and_the_evacuation_fails(lab_hosts, celery_worker_process):
    names = ["evsmall", "evbig"]
    try:
        small, big = _create("evsmall", 48), _create("evbig", 96)
        cpu1, cpu2 = CpuServer.objects.get(name="cpu1"), CpuServer.objects.get(name="cpu2")
        CpuServer.objects.filter(pk=cpu1.pk).update(memory_mib=80)  # room for the small one only
        out = StringIO()
        with pytest.raises(CommandError, match=r"job #\d+ failed: Summary failed: 1 of 2 guests moved"):
            call_command("host", "maintenance", "cpu2", "on", "--wait", stdout=out)
        print(out.getvalue())
        job = Job.objects.get(kind=EVACUATE)
        assert f"cpu2 is in maintenance; job #{job.pk}" in out.getvalue() and "Step 3/3: Summary" in out.getvalue()
        assert job.state == "failed"
        assert job.message == ("Summary failed: 1 of 2 guests moved; 1 could not: "
                               "evbig (no other CPU server has 96 MiB free (cpu1: 80 MiB free))")
        assert [(c.target_name, c.state) for c in job.children.all()] == [("evsmall", "succeeded")]
        assert domain_state(cpu1.libvirt_uri, small.domain_name) == libvirt.VIR_DOMAIN_RUNNING
        assert domain_state(cpu2.libvirt_uri, small.domain_name) is None
        # The guest that could not move is left running, not stopped.
        assert domain_state(cpu2.libvirt_uri, big.domain_name) == libvirt.VIR_DOMAIN_RUNNING
        assert VirtualMachine.objects.get(pk=big.pk).cpu_server == cpu2
        assert not Job.objects.filter(kind="vm.migrate", vm=big).exists()
    finally:
        CpuServer.objects.filter(name="cpu1").update(memory_mib=4096)
        _cleanup(names)


def _cycles_until(monitor: Monitor, done: Callable[[], object], max_cycles: int) -> object:
    """The monitor's cycles at its interval until `done()` says something; that."""
    for n in range(1, max_cycles + 1):
        started = time.monotonic()
        for line in monitor.cycle().changes:
            print(f"monitor cycle {n}: {line}")
        result = done()
        if result:
            return result
        time.sleep(max(0.0, monitor.interval - (time.monotonic() - started)))
    raise AssertionError(f"not done after {max_cycles} cycles")


def test_a_failed_power_supply_evacuates_the_host_live_and_stops_no_guest(guests_on_cpu2):
    """`lab bmc cpu2 psu-fail`: the monitor reads it through ipmitool lanplus, marks cpu2 suspect and
    starts its evacuation; every guest moves to cpu1 while running. psu-ok: cpu2 goes to
    maintenance (its guests were moved away on purpose), not back to up."""
    busy_vm, plain_vm = guests_on_cpu2
    cpu1, cpu2 = CpuServer.objects.get(name="cpu1"), CpuServer.objects.get(name="cpu2")
    domains = [busy_vm.domain_name, plain_vm.domain_name]
    ticks_before = busy_guest_ticks(cpu2.libvirt_uri, busy_vm.domain_name)
    board = lab_host("cpu2").bmc
    assert board is not None and cpu2.bmc_address == board.address
    monitor = Monitor(interval=1, timeout=0.75, bmc_interval=0.001, evacuate_on_bmc=True)
    watch = Watch({"cpu1": cpu1.libvirt_uri, "cpu2": cpu2.libvirt_uri}, domains)
    try:
        _cycles_until(monitor, lambda: CpuServer.objects.get(pk=cpu2.pk).last_seen_at, 3)
        assert CpuServer.objects.get(pk=cpu2.pk).state == HostState.UP
        watch.start()
        failed_at = time.monotonic()
        try:
            bmc.drill(board, "psu-fail")
            job = _cycles_until(monitor, lambda: active_evacuation(cpu2), 5)
            detected = time.monotonic() - failed_at
            cpu2.refresh_from_db()
            failure = "BMC: power supply PS1 Status failed (Presence detected, Failure detected)"
            assert (cpu2.state, cpu2.last_check_error) == (HostState.SUSPECT, failure)
            assert job.params["trigger"] == "suspect" and job.params["reason"] == f"cpu2: {failure}"
            assert [c.server.name for c in cpu_candidates()] == ["cpu1"]  # placement no longer offers cpu2
            job = follow(job.pk, print)
        finally:
            watch.done.set()
            watch.join(10)
        took = time.monotonic() - failed_at
        assert job.state == "succeeded" and job.message == "2 of 2 guests moved", job.message
        assert sorted((c.target_name, c.kind, c.state) for c in job.children.all()) == [
            ("evbusy", "vm.migrate", "succeeded"), ("evplain", "vm.migrate", "succeeded")]
        ticks_after = _assert_moved_live(watch, domains, cpu1, cpu2, busy_vm, ticks_before)
        # Still failing: the host stays suspect, and no second evacuation starts.
        _cycles_until(monitor, lambda: True, 2)
        assert CpuServer.objects.get(pk=cpu2.pk).state == HostState.SUSPECT
        assert Job.objects.filter(kind=EVACUATE).count() == 1
        # The power supply replaced: well again, and empty on purpose: maintenance, not up.
        bmc.drill(board, "psu-ok")
        _cycles_until(monitor, lambda: CpuServer.objects.get(pk=cpu2.pk).state != HostState.SUSPECT, 3)
        cpu2.refresh_from_db()
        assert (cpu2.state, cpu2.last_check_error) == (HostState.MAINTENANCE, "")
        print(f"\nPSU failure read and evacuation started {detected:.1f} s after the drill; both guests moved "
              f"{took:.1f} s after it; ticks {ticks_before} -> {ticks_after}")
    finally:
        monitor.close()
        bmc.drill(board, "psu-ok")
        # The fixture's clean-up returns a host in maintenance to service.
        CpuServer.objects.filter(pk=cpu2.pk, state=HostState.SUSPECT).update(state=HostState.MAINTENANCE)
