"""A storage fence stands until an operator lifts it, and an operator's "it is off" counts only for a
host the panel declared dead and could not fence (docs/fencing.md).

A storage fence blocks a host's disks but leaves its guests running: when the host answers again
(maintenance) its old copies are still there, their I/O waiting. So no path may give it its disks
back behind the operator's back: not fencing another host, not the ACL reopening when no host is
dead any more, not a new VM's exports, not cluster verify restarting an export; and returning it to
service first destroys every copy of a guest that now runs elsewhere. The drivers are the fake
cluster of tests/test_failover_unit.py; the monitor's checks are faked at its injection point.
"""
from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.utils import timezone

from drivers import aoe, vblade
from ha import failover, fencing, storage_health
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.incidents import open_incident
from ha.maintenance import leave_maintenance
from ha.models import Incident
from ha.monitor import Monitor
from ha.verdicts import CheckResult, SanResult
from hosts.choices import HostState
from hosts.fixes import apply_fix
from hosts.models import CpuServer, DiskServer
from jobs.models import Job
from jobs.runner import JobContext, run_job
from storage import access as storage_access
from storage.models import AoEExport
from tests import test_failover_unit as failover_fakes
from tests.test_failover_unit import MAC, _guest
from vms import steps as vm_steps
from vms.services import VmRequest, create_vm

# The fake cluster (vblade, libvirt, the BMC at the driver boundary) and its fixtures: cpu1-3, disk1-2, cpu2 dead.
cluster, fake, dead = failover_fakes.cluster, failover_fakes.fake, failover_fakes.dead

# Transactional: the failover brings guests up from a thread pool, whose connections must see the rows.
pytestmark = pytest.mark.django_db(transaction=True)
SURVIVORS = (MAC["cpu1"], MAC["cpu3"])


def _silent(fake, name: str, silent: bool = True) -> None:
    where = {f"10.0.0.{name[-1]}", f"fake:///{name}"}
    if silent:
        fake.unreachable |= where
    else:
        fake.unreachable -= where


def _return(name: str, user=None) -> Job:
    """An operator's "Return to service", and the host.return job it queues, run here."""
    job = leave_maintenance(CpuServer.objects.get(name=name), user)
    run_job(job.pk)
    job.refresh_from_db()
    return job


def _messages(job: Job) -> list[str]:
    return list(job.log.order_by("serial").values_list("message", flat=True))


def _destroyed(job: Job) -> list[str]:
    """The stale copies the job destroyed, one line each, as its page shows them."""
    return list(job.log.filter(data__destroyed=True).order_by("serial").values_list("message", flat=True))


def _storage_failover(name: str) -> Incident:
    """What the monitor starts for a CPU server it declares dead, fenced through storage only."""
    CpuServer.objects.filter(name=name).update(state=HostState.DEAD, fence_methods="storage")
    incident, _ = open_incident(CpuServer.objects.get(name=name), IncidentKind.CPU_SERVER_FAILED, f"{name} is silent")
    job = failover.start_failover(incident)
    run_job(job.pk)
    job.refresh_from_db()
    assert job.state == "succeeded", job.message
    incident.refresh_from_db()
    assert incident.fenced_by == fencing.STORAGE
    return incident


def _monitor_sees_every_host_answer() -> None:
    legs = frozenset(AoEExport.objects.values_list("shelf", "slot"))
    monitor = Monitor(check=lambda host, timeout: CheckResult(True), san_probe=lambda host, listen: SanResult(legs),
                      interval=1, dead_after=3, timeout=0.5, san_listen=0.1, evacuate=False, bmc_interval=0)
    try:
        monitor.cycle()
    finally:
        monitor.close()


def _fenced_then_back(fake) -> Incident:
    """cpu2 dies with "web" on it, is fenced through storage (web restarts elsewhere), then answers
    again: the monitor puts it in maintenance. Its old copy of web still runs there, disks blocked."""
    incident = _storage_failover("cpu2")
    assert _acls(fake) == {SURVIVORS}
    _silent(fake, "cpu2", False)
    _monitor_sees_every_host_answer()
    assert CpuServer.objects.get(name="cpu2").state == HostState.MAINTENANCE
    assert fake.domains["fake:///cpu2"]["xa-web"] == "running"
    returned = incident.events.get(kind=EventKind.RETURNED).message
    assert returned.endswith("its storage fence stands (left out of every export) until then, and returning it "
                             "first destroys its copies of guests restarted elsewhere")
    return incident


def _acls(fake) -> set[tuple[str, ...]]:
    return {e.macs for exports in fake.exports.values() for e in exports.values()}


# --- the MAC lists: one rule, from persistent state --------------------------------------------

def test_fencing_another_host_keeps_a_storage_fenced_host_out_after_it_answers_again(dead, fake):
    _guest(dead, "web")
    _fenced_then_back(fake)
    _guest(dead, "db", on="cpu3")
    _silent(fake, "cpu3")
    _storage_failover("cpu3")
    # cpu3's fence rebuilt every list: cpu2 (in maintenance, its old copy of web waiting) stays out.
    assert _acls(fake) == {(MAC["cpu1"],)}


def test_the_exports_do_not_open_to_all_when_no_host_is_dead_any_more(dead, fake):
    _guest(dead, "web")
    _fenced_then_back(fake)
    CpuServer.objects.filter(name="cpu3").update(state=HostState.MAINTENANCE)
    assert _return("cpu3").state == "succeeded"  # rebuilds the lists: no host is dead or fenced now
    assert storage_access.storage_acl() == list(SURVIVORS)
    assert _acls(fake) == {SURVIVORS}


@pytest.mark.parametrize("how", ["dead", "storage fenced, back in maintenance"])
def test_a_new_vms_exports_leave_out_a_dead_or_storage_fenced_host(dead, fake, how):
    if how == "dead":
        _guest(dead, "web")  # cpu2 is dead (the fixture): its failover has not fenced it yet
    else:
        _guest(dead, "web")
        _fenced_then_back(fake)
    job = create_vm(VmRequest(name="new", vcpus=1, memory_mib=64, disk_mib=32, cpu_server="cpu1",
                              allow_n_plus_one_break=True))
    vm_steps.start_exports(JobContext(job))
    legs = AoEExport.objects.filter(mirror__vm__name="new")
    assert legs.count() == 2
    for leg in legs.select_related("disk_server"):
        assert fake.exports[leg.disk_server.address][(leg.shelf, leg.slot)].macs == SURVIVORS


def test_verify_restarts_a_dead_export_with_the_fence_list(dead, fake, monkeypatch):
    _guest(dead, "web")
    _fenced_then_back(fake)
    leg = AoEExport.objects.select_related("disk_server").get(mirror__vm__name="web", leg=0)
    del fake.exports[leg.disk_server.address][(leg.shelf, leg.slot)]  # its vblade died
    monkeypatch.setattr(aoe, "probe", lambda *args, **kwargs: [])
    job = apply_fix("start-export", {"disk_server": leg.disk_server.name, "shelf": leg.shelf, "slot": leg.slot})
    run_job(job.pk)
    job.refresh_from_db()
    assert job.state == "succeeded", job.message
    assert fake.exports[leg.disk_server.address][(leg.shelf, leg.slot)].macs == SURVIVORS


def test_a_disk_server_back_from_the_dead_gets_the_fence_list_not_its_saved_one(dead, fake, monkeypatch):
    _guest(dead, "web")
    _fenced_then_back(fake)
    disk2 = DiskServer.objects.get(name="disk2")
    # It was away: its boot restored the exports with the (open) lists they were saved with.
    for address, export in list(fake.exports[disk2.address].items()):
        fake.exports[disk2.address][address] = replace(export, macs=())
    DiskServer.objects.filter(pk=disk2.pk).update(state=HostState.MAINTENANCE)
    incident, _ = open_incident(disk2, IncidentKind.DISK_SERVER_FAILED, "disk2 missed 3 checks")
    monkeypatch.setattr(vblade, "restore_exports", lambda target, timeout: [])
    storage_health.DiskRecovery().recover(DiskServer.objects.get(pk=disk2.pk), None, [])
    assert {e.macs for e in fake.exports[disk2.address].values()} == {SURVIVORS}
    assert "MAC lists brought in line: e2.1 on disk2" in incident.events.latest("id").message


def test_a_safe_list_is_refused_rather_than_cutting_off_a_host_with_no_mac(dead, fake):
    CpuServer.objects.filter(name="cpu3").update(san_mac="")
    with pytest.raises(storage_access.UnsafeAcl, match="no SAN MAC recorded for cpu3"):
        storage_access.storage_acl()
    CpuServer.objects.filter(name="cpu2").update(state=HostState.UP)
    assert storage_access.storage_acl() is None  # no fence stands: every initiator, MACs recorded or not


def test_the_rule_is_storages_and_the_vm_jobs_import_nothing_from_high_availability():
    """storage/access.py holds who may reach the exports; a VM's jobs start theirs with it and need
    nothing of ha/ (which sits above them: docs/architecture.md)."""
    repo = Path(__file__).resolve().parent.parent
    imported = set()
    for path in (repo / "vms").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert "storage" in imported and "ha" not in imported
    assert fencing.storage_acl is storage_access.storage_acl  # the fence builds its lists with the same rule


# --- returning a storage-fenced host -----------------------------------------------------------

def test_returning_a_storage_fenced_host_first_destroys_the_copies_now_running_elsewhere(dead, fake):
    _guest(dead, "web")
    _guest(dead, "pet", auto_restart=False)  # not restarted: the copy on cpu2 is its only one
    fake.domains["fake:///cpu2"]["xa-gone"] = "running"  # restarted elsewhere, since deleted: its slot may be reused
    fake.domains["fake:///cpu2"]["not-ours"] = "running"
    incident = _fenced_then_back(fake)
    web_host = CpuServer.objects.get(vms__name="web").name
    operator = get_user_model().objects.create_user("op")
    before = len(fake.calls)

    job = _return("cpu2", operator)

    assert fake.domains["fake:///cpu2"] == {"not-ours": "running", "xa-pet": "running"}
    calls = fake.calls[before:]
    removed = [c for c in calls if c[0] in ("destroy", "undefine")]
    assert {(c[0], c[2]) for c in removed} == {(verb, name) for verb in ("destroy", "undefine")
                                              for name in ("xa-web", "xa-gone")}
    first_acl = next(i for i, c in enumerate(calls) if c[0] == "acl")
    assert all(calls.index(c) < first_acl for c in removed)  # gone before any list lets cpu2 in
    assert _acls(fake) == {()}  # no fence stands any more: open to every initiator again
    cpu2 = CpuServer.objects.get(name="cpu2")
    assert cpu2.state == HostState.UP and cpu2.storage_fenced_at is None
    stale = incident.events.filter(kind=EventKind.STALE_COPY).order_by("id")
    assert [e.data["vm"] for e in stale] == ["gone", "web"]
    assert stale[1].message == f"web: the stale copy on cpu2 was destroyed and undefined (web runs on {web_host})"
    assert stale[1].user == operator
    assert job.state == "succeeded" and job.message == ("cpu2 is up: it takes guests again (2 stale guest copies "
                                                        "destroyed first)")
    assert _destroyed(job) == [e.message for e in stale]  # what the job's page tells the operator
    assert "disk1: 2 exports, 2 restarted with the MAC list open to every initiator" in _messages(job)


def test_a_storage_fenced_host_that_cannot_be_asked_stays_fenced(dead, fake):
    _guest(dead, "web")
    _fenced_then_back(fake)
    fake.unreachable.add("fake:///cpu2")  # SSH answers (the monitor), libvirt does not
    before = len(fake.calls)
    job = _return("cpu2")
    assert job.state == "failed" and "cpu2 stays fenced: the panel cannot ask it which guests run there" in job.message
    cpu2 = CpuServer.objects.get(name="cpu2")
    assert cpu2.state == HostState.MAINTENANCE and cpu2.storage_fenced_at is not None
    assert fake.calls[before:] == [] and _acls(fake) == {SURVIVORS}


def test_a_host_in_maintenance_never_fenced_returns_without_being_asked(dead, fake):
    CpuServer.objects.filter(name="cpu3").update(state=HostState.MAINTENANCE)
    fake.unreachable.add("fake:///cpu3")
    assert _return("cpu3").state == "succeeded"
    assert CpuServer.objects.get(name="cpu3").state == HostState.UP


def test_a_host_back_from_an_ipmi_fence_loses_the_definitions_of_guests_restarted_elsewhere(dead, fake):
    """Powered off, its guests do not run, but its libvirt kept their definitions: a start by hand
    or an autostart would boot a second copy. Found by the fault suite (tests/chaos/)."""
    _guest(dead, "web")
    fake.domains["fake:///cpu2"]["not-ours"] = "shutoff"
    job = failover.start_failover(open_incident(CpuServer.objects.get(name="cpu2"),
                                                IncidentKind.CPU_SERVER_FAILED, "cpu2 is silent")[0])
    run_job(job.pk)
    assert Job.objects.get(pk=job.pk).state == "succeeded"
    fake.domains["fake:///cpu2"]["xa-web"] = "shutoff"  # the power came back; the definition stayed
    CpuServer.objects.filter(name="cpu2").update(state=HostState.MAINTENANCE)
    fake.unreachable.add("fake:///cpu2")
    refused = _return("cpu2")
    assert refused.state == "failed" and "cpu2 stays in maintenance: the panel cannot ask it" in refused.message
    assert CpuServer.objects.get(name="cpu2").state == HostState.MAINTENANCE

    fake.unreachable.discard("fake:///cpu2")
    done = _destroyed(_return("cpu2"))
    assert fake.domains["fake:///cpu2"] == {"not-ours": "shutoff"}
    assert len(done) == 1 and done[0].startswith("web: the stale copy on cpu2 was destroyed and undefined")
    assert CpuServer.objects.get(name="cpu2").state == HostState.UP
    # Returned once: a later plain maintenance does not need the host to answer.
    CpuServer.objects.filter(name="cpu2").update(state=HostState.MAINTENANCE)
    fake.unreachable.add("fake:///cpu2")
    assert _return("cpu2").state == "succeeded"
    assert CpuServer.objects.get(name="cpu2").state == HostState.UP


# --- an operator's confirmation ----------------------------------------------------------------

def _unfenced_incident(host_state: str) -> Incident:
    """The failover tried every method and none confirmed; meanwhile the host is `host_state`."""
    incident, _ = open_incident(CpuServer.objects.get(name="cpu2"), IncidentKind.CPU_SERVER_FAILED, "cpu2 is silent")
    Incident.objects.filter(pk=incident.pk).update(state=IncidentState.UNFENCED)
    CpuServer.objects.filter(name="cpu2").update(state=host_state, last_seen_at=timezone.now(), missed_checks=0)
    incident.refresh_from_db()
    return incident


@pytest.mark.parametrize("state", [HostState.UP, HostState.SUSPECT, HostState.MAINTENANCE])
def test_confirming_by_hand_is_refused_for_a_host_that_is_not_dead(dead, state):
    incident = _unfenced_incident(state)
    with pytest.raises(ValidationError, match=f"cpu2 is {state}, not dead: the panel last saw it answer at"):
        failover.confirm_fenced_manually(incident, None)
    incident.refresh_from_db()
    assert CpuServer.objects.get(name="cpu2").state == state
    assert incident.fenced_by == "" and not incident.events.filter(kind=EventKind.FENCED).exists()
    assert not failover.failover_jobs(incident).exists()


def test_confirming_by_hand_is_refused_while_the_failover_still_tries_its_fence_methods(dead):
    incident = _unfenced_incident(HostState.DEAD)
    Incident.objects.filter(pk=incident.pk).update(state=IncidentState.FENCING)
    incident.refresh_from_db()
    with pytest.raises(ValidationError, match="the failover is still at it"):
        failover.confirm_fenced_manually(incident, None)
    assert CpuServer.objects.get(name="cpu2").state == HostState.DEAD


def test_confirming_by_hand_a_dead_host_no_method_fenced_starts_the_failover(dead):
    incident = _unfenced_incident(HostState.DEAD)
    job = failover.confirm_fenced_manually(incident, None)
    assert job.kind == failover.JOB_KIND and CpuServer.objects.get(name="cpu2").state == HostState.FENCED
    with pytest.raises(ValidationError, match="cpu2 is already fenced \\(manual\\)"):
        failover.confirm_fenced_manually(Incident.objects.get(pk=incident.pk), None)
    assert Job.objects.filter(kind=failover.JOB_KIND).count() == 1
