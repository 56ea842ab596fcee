"""Failover without hosts: fence methods in order, nothing restarted without a fence, restart order
and room, the incident's timeline. The drivers are replaced at the one point traffic leaves the
program (SSH to disk and CPU servers, libvirt, the BMC) by a small fake cluster that remembers
what was asked of it; the job runs in-process (jobs.runner.run_job)."""
from __future__ import annotations

import threading
import time
import types
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from drivers import aoe, hypervisor, vblade
from drivers.errors import DriverError
from ha import failover, fencing, tenant_view
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.incidents import open_incident
from ha.models import Incident
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from jobs.models import Job
from jobs.runner import run_job
from storage import access as storage_access
from storage.models import AoEExport, Mirror
from tenants.services import create_tenant
from vms.choices import VmState
from vms.migration import migrate_vm
from vms.models import AntiAffinityGroup, VirtualMachine
from vms.services import VmRequest, create_vm

# Transactional: the failover brings guests up from a thread pool, whose connections must see the rows.
pytestmark = pytest.mark.django_db(transaction=True)
MAC = {"cpu1": "02:0a:d5:01:00:15", "cpu2": "02:0a:d5:01:00:16", "cpu3": "02:0a:d5:01:00:17"}


class FakeCluster:
    """Disk servers' vblade exports, CPU servers' domains and the BMCs, by address / URI."""

    def __init__(self) -> None:
        self.exports: dict[str, dict[tuple[int, int], vblade.RunningExport]] = {"10.0.1.1": {}, "10.0.1.2": {}}
        self.domains: dict[str, dict[str, str]] = {f"fake:///{n}": {} for n in MAC}
        self.unreachable: set[str] = set()  # addresses or URIs that do not answer
        self.bmc: dict[str, str] = {}  # BMC address -> "on" | "off" | "dead"
        self.calls: list[tuple] = []

    def _reach(self, where: str) -> None:
        if where in self.unreachable:
            raise DriverError(f"{where}: connection timed out")

    # vblade
    def list_exports(self, target, *, timeout=30):
        self._reach(target.host)
        return sorted(self.exports[target.host].values(), key=lambda e: (e.shelf, e.slot))

    def start_export(self, target, spec, *, allowed_macs=None, timeout=30):
        self._reach(target.host)
        self.calls.append(("acl", target.host, spec.shelf, spec.slot, tuple(allowed_macs or ())))
        running = vblade.RunningExport(spec.shelf, spec.slot, spec.interface, spec.path, 99,
                                       tuple(sorted(allowed_macs or ())))
        self.exports[target.host][(spec.shelf, spec.slot)] = running
        return running

    # AoE and libvirt
    def discover(self, target, *, timeout=10.0):
        self._reach(target.host)
        self.calls.append(("discover", target.host))

    def attach(self, target, shelf, slot, *, timeout=20.0):
        self._reach(target.host)
        return f"/dev/etherd/e{shelf}.{slot}"

    def define(self, uri, xml, *, timeout=30):
        self._reach(uri)
        name = xml.split("<name>")[1].split("</name>")[0]
        self.domains[uri].setdefault(name, "shutoff")
        self.calls.append(("define", uri, name))
        return hypervisor.DomainInfo(name, "", "shutoff", True)

    def start(self, uri, name, *, timeout=60):
        self._reach(uri)
        self.domains[uri][name] = "running"
        self.calls.append(("start", uri, name))
        return hypervisor.DomainInfo(name, "", "running", True)

    def domain_info(self, uri, name, *, timeout=30):
        self._reach(uri)
        state = self.domains[uri].get(name)
        return None if state is None else hypervisor.DomainInfo(name, "", state, True)

    def list_domains(self, uri, *, timeout=30):
        self._reach(uri)
        return [hypervisor.DomainInfo(n, "", s, True) for n, s in sorted(self.domains[uri].items())]

    def destroy(self, uri, name, *, timeout=30):
        self._reach(uri)
        if name in self.domains[uri]:
            self.domains[uri][name] = "shutoff"
        self.calls.append(("destroy", uri, name))

    def undefine(self, uri, name, *, timeout=30):
        self._reach(uri)
        self.domains[uri].pop(name, None)
        self.calls.append(("undefine", uri, name))

    # the BMC (drivers.ipmi's API)
    def ipmi_module(self) -> types.ModuleType:
        cluster = self

        def status(t):
            cluster._reach(t.address)
            if cluster.bmc.get(t.address, "dead") == "dead":
                raise DriverError(f"{t.address}: no answer from the BMC")
            return cluster.bmc[t.address]

        def power_off(t, *, confirm_timeout=30):
            cluster.calls.append(("power_off", t.address))
            status(t)
            cluster.bmc[t.address] = "off"

        return types.SimpleNamespace(BmcTarget=lambda address, port, user, password_file, timeout:
                                     types.SimpleNamespace(address=address),
                                     power_status=status, power_off=power_off, power_on=lambda t: None)

    def started(self) -> list[str]:
        return [c[2] for c in self.calls if c[0] == "start"]


@pytest.fixture
def fake(monkeypatch) -> FakeCluster:
    cluster = FakeCluster()
    for name in ("list_exports", "start_export"):
        monkeypatch.setattr(vblade, name, getattr(cluster, name))
    for name in ("discover", "attach"):
        monkeypatch.setattr(aoe, name, getattr(cluster, name))
    for name in ("define", "start", "domain_info", "list_domains", "destroy", "undefine"):
        monkeypatch.setattr(hypervisor, name, getattr(cluster, name))
    monkeypatch.setattr(fencing, "ipmi_driver", cluster.ipmi_module)
    return cluster


@pytest.fixture
def cluster(fake) -> dict:
    cpus = {
        name: CpuServer.objects.create(name=name, address=f"10.0.0.{i}", libvirt_uri=f"fake:///{name}",
                                       memory_mib=1024, vcpus=4, san_mac=MAC[name], bmc_address=f"10.0.9.{i}",
                                       fence_methods="ipmi,storage")
        for i, name in enumerate(MAC, start=1)
    }
    disks = [DiskServer.objects.create(name=f"disk{i}", address=f"10.0.1.{i}", aoe_shelf=i, capacity_mib=10**6)
             for i in (1, 2)]
    return {"cpu": cpus, "disk": disks}


def _guest(cluster: dict, name: str, memory_mib: int = 128, *, on: str = "cpu2", priority: int = 100,
           auto_restart: bool = True, slot: int | None = None) -> VirtualMachine:
    vm = VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=memory_mib, disk_mib=32,
                                       cpu_server=cluster["cpu"][on], state=VmState.RUNNING,
                                       domain_uuid=uuid.uuid4(), restart_priority=priority, auto_restart=auto_restart)
    mirror = Mirror.objects.create(vm=vm)
    slot = slot if slot is not None else VirtualMachine.objects.count()
    fake = cluster["fake"] if "fake" in cluster else None
    for leg, disk in enumerate(cluster["disk"]):
        export = AoEExport.objects.create(disk_server=disk, mirror=mirror, leg=leg, shelf=disk.aoe_shelf, slot=slot,
                                          size_mib=32, backing_path=f"/srv/{name}-e{disk.aoe_shelf}.{slot}.img")
        if fake is not None:  # running, open to every initiator, as vm.create leaves it
            fake.exports[disk.address][(export.shelf, slot)] = vblade.RunningExport(
                export.shelf, slot, "san0", export.backing_path, 10, ())
    if fake is not None:
        fake.domains[cluster["cpu"][on].libvirt_uri][vm.domain_name] = "running"
    return vm


@pytest.fixture
def dead(cluster, fake):
    """cpu2 declared dead with an open incident; its BMC answers unless a test says otherwise."""
    cluster["fake"] = fake
    CpuServer.objects.filter(name="cpu2").update(state=HostState.DEAD)
    fake.unreachable |= {"10.0.0.2", "fake:///cpu2"}
    fake.bmc["10.0.9.2"] = "on"
    return cluster


def _incident():
    incident, _ = open_incident(CpuServer.objects.get(name="cpu2"), IncidentKind.CPU_SERVER_FAILED, "cpu2 is silent")
    return incident


def _run_failover(incident=None, user=None) -> Job:
    job = failover.start_failover(incident or _incident(), user)
    run_job(job.pk)
    return Job.objects.get(pk=job.pk)


def _events(incident, *kinds: str) -> list[tuple[str, str]]:
    events = incident.events.order_by("time", "id")
    if kinds:
        events = events.filter(kind__in=kinds)
    return list(events.values_list("kind", "message"))


def test_ipmi_confirms_and_guests_restart_highest_priority_first_then_largest_then_by_name(dead, fake, settings):
    settings.FAILOVER_PARALLEL = 1  # one at a time: the order shows (several at once start in this order)
    for name, memory, priority in [("a", 128, 100), ("b", 64, 200), ("d", 256, 100), ("c", 256, 100)]:
        _guest(dead, name, memory, priority=priority)
    incident = _incident()
    job = _run_failover(incident)

    assert job.state == "succeeded", job.message
    assert fake.started() == ["xa-b", "xa-c", "xa-d", "xa-a"]
    incident.refresh_from_db()
    assert incident.state == IncidentState.CLOSED and incident.fenced_by == "ipmi"
    assert CpuServer.objects.get(name="cpu2").state == HostState.FENCED
    assert fake.bmc["10.0.9.2"] == "off"
    kinds = [k for k, _ in _events(incident)]
    assert kinds[:4] == [EventKind.DETECTED, EventKind.NOTE, EventKind.FENCE_ATTEMPT, EventKind.FENCED]
    assert kinds[-1] == EventKind.CLOSED
    assert all(vm.state == VmState.RUNNING and vm.cpu_server.name in ("cpu1", "cpu3")
               for vm in VirtualMachine.objects.select_related("cpu_server"))
    restarted = [m for k, m in _events(incident, EventKind.RESTARTED)]
    assert restarted[0].startswith("b restarted on cpu") and " in " in restarted[0]
    # The job's log mirrors the timeline, step by step.
    log = list(job.log.values_list("message", flat=True))
    assert "Step 1/3: Fence cpu2" in log and "Step 2/3: Restart 4 guests" in log
    assert any(m.startswith("b restarted on") for m in log)
    assert job.params == {"incident": incident.pk, "host": "cpu2"}


def test_the_survivors_discover_the_san_once_while_the_host_is_fenced(dead, fake, monkeypatch):
    for name in ("a", "b", "c"):
        _guest(dead, name, 64)

    def discover(target, *, timeout=10.0):
        fake.discover(target, timeout=timeout)
        if target.host == "10.0.0.3":  # cpu3's fails: costs nothing, its attaches discover again
            raise DriverError("10.0.0.3: aoe-discover: no such interface")

    monkeypatch.setattr(aoe, "discover", discover)
    job = _run_failover(_incident())

    assert job.state == "succeeded", job.message
    discovered = [host for kind, host, *_ in fake.calls if kind == "discover"]
    assert sorted(discovered) == ["10.0.0.1", "10.0.0.3"]  # every survivor up, once; never the dead host
    first_define = next(i for i, call in enumerate(fake.calls) if call[0] == "define")
    assert all(i < first_define for i, call in enumerate(fake.calls) if call[0] == "discover")
    assert sorted(fake.started()) == ["xa-a", "xa-b", "xa-c"]


def test_methods_are_tried_in_order_until_one_confirms(dead, fake):
    _guest(dead, "web")
    fake.bmc["10.0.9.2"] = "dead"  # the plug was pulled with the BMC
    incident = _incident()
    job = _run_failover(incident)

    assert job.state == "succeeded", job.message
    attempts = _events(incident, EventKind.FENCE_ATTEMPT, EventKind.FENCED)
    assert [k for k, _ in attempts] == [EventKind.FENCE_ATTEMPT, EventKind.FENCE_ATTEMPT, EventKind.FENCED]
    assert attempts[0][1] == "ipmi: failed: 10.0.9.2: no answer from the BMC"
    assert attempts[1][1].startswith("storage: confirmed")
    assert attempts[2][1].startswith("cpu2 fenced by storage")
    # Every export of every disk server now lets in exactly the survivors.
    acl = (MAC["cpu1"], MAC["cpu3"])
    assert {e.macs for d in fake.exports.values() for e in d.values()} == {acl}
    incident.refresh_from_db()
    assert incident.fenced_by == "storage" and incident.state == IncidentState.CLOSED


def test_a_method_after_the_one_that_confirms_is_never_tried(dead, fake):
    _guest(dead, "web")
    CpuServer.objects.filter(name="cpu2").update(fence_methods="storage,ipmi")
    incident = _incident()
    job = _run_failover(incident)

    assert job.state == "succeeded", job.message
    assert [c for c in fake.calls if c[0] == "power_off"] == []
    assert fake.bmc["10.0.9.2"] == "on"
    assert [e.data["method"] for e in incident.events.filter(kind=EventKind.FENCE_ATTEMPT)] == ["storage"]


def test_a_storage_fence_leaves_out_every_dead_or_fenced_host(dead, fake):
    CpuServer.objects.filter(name="cpu3").update(state=HostState.FENCED)
    macs, problem = fencing.allowed_macs(CpuServer.objects.get(name="cpu2"))
    assert (macs, problem) == ([MAC["cpu1"]], None)
    CpuServer.objects.filter(name="cpu1").update(san_mac="")
    macs, problem = fencing.allowed_macs(CpuServer.objects.get(name="cpu2"))
    assert macs == [] and "no SAN MAC recorded for cpu1" in problem


def test_no_fence_confirms_nothing_is_restarted_until_an_operator_confirms(dead, fake):
    web = _guest(dead, "web")
    fake.bmc["10.0.9.2"] = "dead"
    fake.unreachable.add("10.0.1.2")  # disk2 holds a leg of web and does not answer
    incident = _incident()
    job = _run_failover(incident)

    assert job.state == "failed" and "NO FENCE CONFIRMED for cpu2" in job.message
    assert fake.started() == [] and not [c for c in fake.calls if c[0] == "define"]
    incident.refresh_from_db()
    assert incident.state == IncidentState.UNFENCED and incident.fenced_by == ""
    assert CpuServer.objects.get(name="cpu2").state == HostState.DEAD
    failed = incident.events.get(kind=EventKind.FENCE_FAILED)
    assert [m["method"] for m in failed.data["methods"]] == ["ipmi", "storage"]
    assert failed.data["methods"][0]["detail"] == "10.0.9.2: no answer from the BMC"
    assert "disk2: 10.0.1.2: connection timed out" in failed.data["methods"][1]["detail"]
    storage_attempt = incident.events.get(kind=EventKind.FENCE_ATTEMPT, data__method="storage")
    assert storage_attempt.data["uncovered"] == {"web": "disk2 (holding e2.1) did not answer"}
    assert VirtualMachine.objects.get(pk=web.pk).cpu_server.name == "cpu2"

    operator = get_user_model().objects.create_user("op", password="x-password-1")
    job = failover.confirm_fenced_manually(incident, operator)
    run_job(job.pk)
    job.refresh_from_db()
    assert job.state == "succeeded", job.message
    incident.refresh_from_db()
    assert incident.fenced_by == "manual" and incident.state == IncidentState.CLOSED
    fenced = incident.events.get(kind=EventKind.FENCED)
    assert fenced.user == operator and fenced.data["method"] == "manual"
    assert CpuServer.objects.get(name="cpu2").state == HostState.FENCED
    assert fake.started() == ["xa-web"]
    # The second job's fence step saw the operator's word and tried no method again.
    assert len([c for c in fake.calls if c[0] == "power_off"]) == 1


def test_guests_whose_disks_are_all_fenced_restart_and_the_others_wait(dead, fake):
    other = DiskServer.objects.create(name="disk3", address="10.0.1.3", aoe_shelf=3, capacity_mib=10**6)
    fake.exports["10.0.1.3"] = {}
    safe = _guest(dead, "safe", slot=1)
    exposed = _guest({**dead, "disk": [dead["disk"][0], other]}, "exposed", slot=2)
    CpuServer.objects.filter(name="cpu2").update(fence_methods="storage")
    fake.unreachable.add("10.0.1.3")
    incident = _incident()
    job = _run_failover(incident)

    assert fake.started() == ["xa-safe"]
    assert VirtualMachine.objects.get(pk=safe.pk).cpu_server.name != "cpu2"
    assert VirtualMachine.objects.get(pk=exposed.pk).cpu_server.name == "cpu2"
    assert job.state == "failed" and "exposed: cpu2 is not fenced for it: disk3 (holding e3.2) did not answer" \
        in job.message
    incident.refresh_from_db()
    assert incident.state == IncidentState.UNFENCED
    assert CpuServer.objects.get(name="cpu2").state == HostState.DEAD


def test_a_guest_that_does_not_fit_is_listed_with_the_numbers(dead, fake):
    CpuServer.objects.filter(name="cpu3").update(state=HostState.MAINTENANCE)
    _guest(dead, "filler", 924, on="cpu1")
    _guest(dead, "big", 512, priority=200)
    _guest(dead, "small", 64)
    incident = _incident()
    job = _run_failover(incident)

    assert fake.started() == ["xa-small"]
    not_restarted = [m for _, m in _events(incident, EventKind.NOT_RESTARTED)]
    assert not_restarted == ["big not restarted: no surviving CPU server has 512 MiB free (cpu1: 100 MiB free)"]
    assert job.state == "failed" and "big: no surviving CPU server has 512 MiB free" in job.message
    incident.refresh_from_db()
    assert incident.state == IncidentState.OPEN and incident.fenced_by == "ipmi"
    assert "1 guest(s) of cpu2 not restarted" in incident.summary


def test_a_guest_already_running_elsewhere_gets_no_second_copy(dead, fake):
    vm = _guest(dead, "web")
    fake.domains["fake:///cpu3"][vm.domain_name] = "running"  # someone started it by hand
    manual = _guest(dead, "pet", auto_restart=False)
    incident = _incident()
    job = _run_failover(incident)

    assert fake.started() == []
    messages = [m for _, m in _events(incident, EventKind.NOT_RESTARTED)]
    assert "web not restarted: it already runs on cpu3: not starting a second copy" in messages
    assert "pet not restarted: automatic restart is off" in messages
    assert job.state == "failed"
    assert VirtualMachine.objects.get(pk=manual.pk).cpu_server.name == "cpu2"


def test_a_second_failover_for_the_same_incident_is_refused_while_one_is_active(dead):
    incident = _incident()
    first = failover.start_failover(incident)
    with pytest.raises(ValidationError, match=f"failover job #{first.pk} for cpu2 is already queued"):
        failover.start_failover(incident)
    assert failover.failover_jobs(incident).count() == 1


def test_a_fence_changed_under_the_job_restarts_nothing(dead, fake, monkeypatch):
    _guest(dead, "web")
    real = fencing.fence_by_ipmi

    def fence_while_host_returns(host, guests):
        CpuServer.objects.filter(pk=host.pk).update(state=HostState.MAINTENANCE)  # e.g. an operator
        return real(host, guests)

    monkeypatch.setitem(fencing.METHODS, "ipmi", fence_while_host_returns)
    job = _run_failover()
    assert job.state == "failed" and "became maintenance while it was being fenced" in job.message
    assert fake.started() == []


def test_a_confirmation_during_a_running_failover_waits_for_it_outside_a_worker_then_restarts_what_is_left(
        dead, fake, monkeypatch):
    _guest(dead, "web")
    incident = _incident()
    earlier = failover.start_failover(incident)
    # No method confirmed for the whole host (the incident says so); the job is still at work,
    # e.g. restarting the guests a partial storage fence covers.
    Job.objects.filter(pk=earlier.pk).update(state="running")
    Incident.objects.filter(pk=incident.pk).update(state=IncidentState.UNFENCED)
    job = failover.confirm_fenced_manually(Incident.objects.get(pk=incident.pk), None)
    monkeypatch.setattr(failover, "WAIT_FOR_EARLIER_JOB_S", 5)
    started = time.monotonic()
    run_job(job.pk)
    job.refresh_from_db()
    # It waits without holding a worker slot (the HA queue's slots are for failovers that can act).
    assert time.monotonic() - started < 2 and job.state == "running" and job.owner == "", job.message
    assert f"waiting for failover job #{earlier.pk} to finish first" in job.log.values_list("message", flat=True)
    run_job(job.pk, wake=job.wake)  # woken while the earlier one still runs: waits again
    job.refresh_from_db()
    assert job.state == "running" and job.owner == "" and fake.started() == []
    Job.objects.filter(pk=earlier.pk).update(state="failed")
    run_job(job.pk, wake=job.wake)
    job.refresh_from_db()
    assert job.state == "succeeded", job.message
    assert fake.started() == ["xa-web"] and [c for c in fake.calls if c[0] == "power_off"] == []


def test_a_failover_gives_up_waiting_for_an_earlier_one_that_never_ends(dead, fake, monkeypatch):
    _guest(dead, "web")
    incident = _incident()
    earlier = failover.start_failover(incident)
    Job.objects.filter(pk=earlier.pk).update(state="running")
    Incident.objects.filter(pk=incident.pk).update(state=IncidentState.UNFENCED)  # what may be confirmed
    job = failover.confirm_fenced_manually(Incident.objects.get(pk=incident.pk), None)
    run_job(job.pk)
    job.refresh_from_db()
    now = time.time
    monkeypatch.setattr(time, "time", lambda: now() + failover.WAIT_FOR_EARLIER_JOB_S + 1)
    run_job(job.pk, wake=job.wake)
    job.refresh_from_db()
    assert job.state == "failed" and f"failover job #{earlier.pk} still runs after" in job.message
    assert fake.started() == []


def test_a_guest_is_not_restarted_into_memory_a_migration_holds(dead, fake):
    _guest(dead, "mover", 300, on="cpu1")
    _guest(dead, "web", 800)
    migrate_vm("mover", "cpu3")  # queued: cpu3 holds 300 MiB for it, cpu1 keeps its 300 until it ends
    incident = _incident()
    job = _run_failover(incident)
    assert fake.started() == [] and job.state == "failed"
    assert [m for _, m in _events(incident, EventKind.NOT_RESTARTED)] == [
        "web not restarted: no surviving CPU server has 800 MiB free (cpu1: 724 MiB free, cpu3: 724 MiB free)"]


def test_a_create_while_a_guest_restarts_cannot_take_its_room(dead, fake, monkeypatch):
    _guest(dead, "filler", 700, on="cpu1")
    _guest(dead, "web", 600)
    refused: list[str] = []

    def start_while_someone_creates(uri, name, *, timeout=60):
        # The operator creates a VM on cpu3 while the guest boots there, before its record moves.
        try:
            create_vm(VmRequest(name="late", vcpus=1, memory_mib=600, disk_mib=32, cpu_server="cpu3",
                                allow_n_plus_one_break=True))
        except ValidationError as exc:
            refused.append(" ".join(exc.messages))
        return fake.start(uri, name, timeout=timeout)

    monkeypatch.setattr(hypervisor, "start", start_while_someone_creates)
    job = _run_failover()
    assert job.state == "succeeded", job.message
    assert VirtualMachine.objects.get(name="web").cpu_server.name == "cpu3"
    assert refused == ["cpu3 has 424 MiB free, the new VM needs 600 MiB"]
    assert not VirtualMachine.objects.filter(name="late").exists()


def test_the_incident_says_when_the_survivors_have_lost_n_plus_one(dead, fake):
    CpuServer.objects.filter(name="cpu3").update(state=HostState.MAINTENANCE)  # cpu1 is the only survivor
    _guest(dead, "solo", 128)
    incident = _incident()
    job = _run_failover(incident)
    assert job.state == "succeeded", job.message
    notes = [m for _, m in _events(incident, EventKind.NOTE) if m.startswith("N+1 lost")]
    assert notes == ["N+1 lost: if cpu1 fails, no surviving CPU server has room for solo (128 MiB)"]
    assert any(m.startswith("N+1 lost") for m in job.log.values_list("message", flat=True))


def test_no_n_plus_one_note_while_the_survivors_keep_it(dead, fake):
    _guest(dead, "small", 64)
    incident = _incident()
    assert _run_failover(incident).state == "succeeded"
    assert not [m for _, m in _events(incident, EventKind.NOTE) if m.startswith("N+1 lost")]


def test_returning_a_fenced_host_gives_it_its_storage_back(monkeypatch):
    """After a storage fence every export runs with a MAC list without the dead host; once no host
    is locked out any more, restore_storage_access reopens them (and only those that differ)."""
    from ha import fencing

    CpuServer.objects.create(name="cpu1", address="192.0.2.21", libvirt_uri="test:///default",
                             memory_mib=1024, vcpus=2, san_mac="02:00:00:00:00:01")
    cpu2 = CpuServer.objects.create(name="cpu2", address="192.0.2.22", libvirt_uri="test:///default",
                                    memory_mib=1024, vcpus=2, san_mac="02:00:00:00:00:02", state=HostState.FENCED)
    DiskServer.objects.create(name="disk1", address="192.0.2.11", aoe_shelf=1, capacity_mib=100)
    running = {(1, 0): ("02:00:00:00:00:01",), (1, 1): ()}
    restarted = []

    def list_exports(target, timeout):
        return [vblade.RunningExport(shelf, slot, "san0", f"/v/{slot}", 100 + slot, macs)
                for (shelf, slot), macs in running.items()]

    def start_export(target, spec, allowed_macs, timeout):
        restarted.append(((spec.shelf, spec.slot), allowed_macs))
        running[(spec.shelf, spec.slot)] = tuple(allowed_macs or ())

    monkeypatch.setattr(vblade, "list_exports", list_exports)
    monkeypatch.setattr(vblade, "start_export", start_export)
    assert storage_access.storage_acl() == ["02:00:00:00:00:01"]
    fencing.restore_storage_access()
    assert restarted == [((1, 1), ["02:00:00:00:00:01"])]  # the open export gets the fence's list
    restarted.clear()
    CpuServer.objects.filter(pk=cpu2.pk).update(state=HostState.UP)
    assert storage_access.storage_acl() is None
    fencing.restore_storage_access()
    assert restarted == [((1, 0), None), ((1, 1), None)]  # both open again: cpu2 is back


def test_a_start_refused_for_a_passing_reason_is_tried_again_on_the_same_server(dead, fake, monkeypatch):
    """Found by the fault suite: the survivor was still tearing down the incoming copy of a live
    migration the dead host had been driving, and refused the definition for a moment; the guest
    stayed down."""
    monkeypatch.setattr(failover, "RESTART_RETRY_DELAYS_S", (0.0, 0.0))
    _guest(dead, "web")
    real_define = fake.define
    refusals = []

    def busy_once(uri, xml, *, timeout=30):
        if not refusals:
            refusals.append(uri)
            raise DriverError(f"{uri}: define 'xa-web': operation failed: domain 'xa-web' is already being removed")
        return real_define(uri, xml, timeout=timeout)

    monkeypatch.setattr(hypervisor, "define", busy_once)
    job = _run_failover()
    assert job.state == "succeeded", job.message
    assert fake.started() == ["xa-web"] and len(refusals) == 1
    assert job.log.filter(message__contains="trying again in 0 s").exists()


def test_guests_come_up_several_at_once_and_a_failed_one_does_not_hold_the_others(dead, fake, monkeypatch, settings):
    settings.FAILOVER_PARALLEL = 3
    for name in ("a", "b", "c", "d"):
        _guest(dead, name, 64)
    monkeypatch.setattr(failover, "RESTART_RETRY_DELAYS_S", ())
    lock, at_once, most = threading.Lock(), [0], [0]

    def slow_start(uri, name, *, timeout=60):
        with lock:
            at_once[0] += 1
            most[0] = max(most[0], at_once[0])
        try:
            time.sleep(0.3)  # a start is mostly waiting on the host
            if name == "xa-b":
                raise DriverError(f"{uri}: b's start failed", permanent=True)
            return fake.start(uri, name, timeout=timeout)
        finally:
            with lock:
                at_once[0] -= 1

    monkeypatch.setattr(hypervisor, "start", slow_start)
    incident = _incident()
    job = _run_failover(incident)
    assert most[0] == 3, "the guests were started one after another"
    assert sorted(fake.started()) == ["xa-a", "xa-c", "xa-d"]
    restarted = sorted(m.split()[0] for _, m in _events(incident, EventKind.RESTARTED))
    assert restarted == ["a", "c", "d"]
    not_restarted = [m for _, m in _events(incident, EventKind.NOT_RESTARTED)]
    assert any(m.startswith("b not restarted: could not start on") for m in not_restarted)
    assert VirtualMachine.objects.get(name="b").cpu_server.name == "cpu2"  # left where it was, for the operator
    serials = list(job.log.order_by("serial").values_list("serial", flat=True))
    assert serials == list(range(1, len(serials) + 1))  # every thread's entries numbered in turn


def _in_group(group_name: str, *vms: VirtualMachine) -> None:
    group, _ = AntiAffinityGroup.objects.get_or_create(name=group_name, tenant=vms[0].tenant)
    group.members.add(*vms)


def test_the_members_of_a_group_restart_on_different_survivors(dead, fake):
    _guest(dead, "ballast", 300, on="cpu3")
    _in_group("web", _guest(dead, "web1"), _guest(dead, "web2"))
    incident = _incident()
    assert _run_failover(incident).state == "succeeded"
    # Without the group web2 would follow web1 to cpu1, the survivor with most free memory.
    assert {vm.name: vm.cpu_server.name for vm in VirtualMachine.objects.filter(name__startswith="web")} == {
        "web1": "cpu1", "web2": "cpu3"}
    assert _events(incident, EventKind.ANTI_AFFINITY) == []


def test_a_failover_that_must_put_members_together_says_which_group_it_broke(dead, fake):
    CpuServer.objects.filter(name="cpu3").update(state=HostState.MAINTENANCE)  # cpu1 is the only survivor
    acme = create_tenant("acme")
    web1, web2 = _guest(dead, "web1"), _guest(dead, "web2")
    VirtualMachine.objects.filter(pk__in=[web1.pk, web2.pk]).update(tenant=acme)
    _in_group("web", *VirtualMachine.objects.filter(pk__in=[web1.pk, web2.pk]))
    incident = _incident()
    job = _run_failover(incident)
    assert job.state == "succeeded", job.message
    broken = ("broke anti-affinity group web: web1 and web2 both on cpu1 (no surviving CPU server without a member "
              "of the group had room)")
    assert _events(incident, EventKind.ANTI_AFFINITY) == [(EventKind.ANTI_AFFINITY, broken)]
    assert job.log.filter(level="warning", message=broken).exists()
    # The tenant reads it on its incident, without the host's name.
    seen = [e["message"] for e in tenant_view.timeline(incident, acme) if e["kind"] == EventKind.ANTI_AFFINITY]
    assert seen == ["web2: anti-affinity broken."]
