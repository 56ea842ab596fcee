"""Maintenance and evacuation without hosts: the plan (packing, the reasons a guest stays), the
state changes and their refusals, the suspect hook's idempotence, and the host.evacuate job with
its children. The children's migrations run on a worker in real life; here `_wait` (the parent's
pause between polls) plays that worker, finishing the vm.migrate jobs as a worker would. The real
thing, on the lab, is tests/integration/test_evacuation.py."""
from __future__ import annotations

import json
from collections.abc import Callable
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import override_settings

from ha import maintenance
from ha.maintenance import (
    EVACUATE,
    RETURN,
    Stay,
    active_evacuation,
    enter_maintenance,
    evacuate_suspect,
    leave_maintenance,
    plan_evacuation,
)
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from jobs import queues, runner
from jobs.choices import JobState
from jobs.models import Job
from vms.choices import VmState
from vms.migration import migrate_vm
from vms.models import VirtualMachine
from vms.placement import cpu_candidates
from vms.services import VmRequest, create_vm

pytestmark = pytest.mark.django_db


@pytest.fixture
def cpus() -> dict[str, CpuServer]:
    return {
        name: CpuServer.objects.create(name=name, address=f"192.0.2.{20 + i}", libvirt_uri="test:///default",
                                       memory_mib=1024, vcpus=4)
        for i, name in enumerate(["cpu1", "cpu2", "cpu3"], start=1)
    }


def _guest(name: str, server: CpuServer, memory_mib: int, state: str = VmState.RUNNING) -> VirtualMachine:
    return VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=memory_mib, disk_mib=1, cpu_server=server,
                                         state=state)


def _state(host: CpuServer) -> str:
    return CpuServer.objects.get(pk=host.pk).state


# --- the plan ----------------------------------------------------------------------------------

def test_plan_packs_the_biggest_guests_first_into_the_most_free_memory(cpus):
    _guest("resident", cpus["cpu3"], 100)
    for name, mib in [("c", 300), ("a", 600), ("b", 500)]:
        _guest(name, cpus["cpu2"], mib)
    plan = plan_evacuation(cpus["cpu2"])
    # a (600) -> cpu1 (1024 free vs 924); b (500) -> cpu3 (924 vs 424); c (300): 424 on both, the
    # one registered first wins. Planned guests count: c does not go where a already went blindly.
    assert [(m.vm, m.target) for m in plan.moves] == [("a", "cpu1"), ("b", "cpu3"), ("c", "cpu1")]
    assert plan.stays == []


def test_guests_that_cannot_move_are_listed_with_the_reason(cpus):
    _guest("filler", cpus["cpu1"], 724)
    _guest("filler3", cpus["cpu3"], 824)
    _guest("huge", cpus["cpu2"], 512)
    _guest("small", cpus["cpu2"], 200)
    _guest("off", cpus["cpu2"], 64, VmState.STOPPED)
    _guest("odd", cpus["cpu2"], 32, VmState.UNKNOWN)
    rebooting = _guest("rebooting", cpus["cpu2"], 16)
    busy = Job.objects.create(kind="vm.reboot", vm=rebooting, state=JobState.RUNNING)
    plan = plan_evacuation(cpus["cpu2"])
    assert [(m.vm, m.target) for m in plan.moves] == [("small", "cpu1")]
    reasons = {s.vm: s.reason for s in plan.stays}
    assert reasons == {
        "huge": "no other CPU server has 512 MiB free (cpu1: 300 MiB free, cpu3: 200 MiB free)",
        "off": "stopped: stays defined on cpu2",
        "odd": "unknown: only a running guest can be live-migrated",
        "rebooting": f"busy with job #{busy.pk} (vm.reboot, running)",
    }
    assert [s.vm for s in plan.stays if s.stopped] == ["off"]


def test_a_host_that_is_not_up_takes_nothing_and_the_numbers_say_so(cpus):
    CpuServer.objects.filter(name__in=["cpu1", "cpu3"]).update(state=HostState.DEAD)
    _guest("web", cpus["cpu2"], 256)
    plan = plan_evacuation(cpus["cpu2"])
    assert plan.moves == []
    assert plan.stays[0].reason == "no other CPU server has 256 MiB free (none is up)"


def test_n_plus_one_shortfalls_are_warned_about_but_the_guests_move_anyway(cpus):
    _guest("a", cpus["cpu2"], 700)
    _guest("b", cpus["cpu2"], 700)
    plan = plan_evacuation(cpus["cpu2"])
    assert {m.vm for m in plan.moves} == {"a", "b"}
    assert plan.warnings == ["if cpu1 fails, no surviving CPU server has room for a (700 MiB)",
                             "if cpu3 fails, no surviving CPU server has room for b (700 MiB)"]


def test_the_plan_chooses_around_memory_other_jobs_hold(cpus):
    _guest("x", cpus["cpu3"], 500)
    migrate_vm("x", "cpu1")  # queued: cpu1 holds 500 MiB for it, cpu3 keeps x's until it ends
    _guest("a", cpus["cpu2"], 600)
    plan = plan_evacuation(cpus["cpu2"])
    assert plan.moves == []
    assert plan.stays == [Stay("a", "no other CPU server has 600 MiB free (cpu1: 524 MiB free, cpu3: 524 MiB free)")]


def test_the_plan_holds_its_targets_and_each_migration_takes_its_hold_over(cpus):
    for i in (1, 2):
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=10**6)
    _guest("a", cpus["cpu2"], 512)
    job = enter_maintenance(cpus["cpu2"])
    ctx = runner.JobContext(job)
    maintenance.plan_step(ctx)
    assert ctx.data["plan"]["moves"] == [{"vm": "a", "memory_mib": 512, "target": "cpu1"}]
    with pytest.raises(ValidationError, match="cpu1 has 512 MiB free, the new VM needs 600 MiB"):
        create_vm(VmRequest(name="late", vcpus=1, memory_mib=600, disk_mib=32, cpu_server="cpu1",
                            allow_n_plus_one_break=True))
    child = migrate_vm("a", "cpu1", parent=job)
    assert child.parent_id == job.pk
    assert {c.server.name: c.used_mib for c in cpu_candidates()} == {"cpu1": 512, "cpu3": 0}  # held once


# --- the verbs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("start", [HostState.UP, HostState.SUSPECT])
def test_entering_maintenance_stops_placement_at_once_and_starts_the_evacuation(cpus, start):
    host = cpus["cpu2"]
    CpuServer.objects.filter(pk=host.pk).update(state=start)
    job = enter_maintenance(host)
    assert host.state == HostState.MAINTENANCE == _state(host)
    assert "cpu2" not in [c.server.name for c in cpu_candidates()]
    assert (job.kind, job.state, job.target_name) == (EVACUATE, JobState.QUEUED, "cpu2")
    assert job.params == {"host": "cpu2", "reason": "maintenance by an operator", "trigger": "maintenance",
                          "max_mib_per_s": None}
    assert " cpu2 " in job.hosts  # the job history's host filter finds it


@pytest.mark.parametrize(("state", "text"), [
    (HostState.DEAD, "cpu2 is dead: nothing can be live-migrated from a dead host"),
    (HostState.FENCED, "cpu2 is fenced: its guests are off"),
    (HostState.MAINTENANCE, "cpu2 is already in maintenance"),
])
def test_entering_maintenance_is_refused_with_the_reason_and_changes_nothing(cpus, state, text):
    CpuServer.objects.filter(name="cpu2").update(state=state)
    with pytest.raises(ValidationError, match=text):
        enter_maintenance(cpus["cpu2"])
    assert _state(cpus["cpu2"]) == state
    assert not Job.objects.exists()


def test_leaving_maintenance_waits_for_the_evacuation(cpus):
    host = cpus["cpu2"]
    with pytest.raises(ValidationError, match="cpu2 is up, not in maintenance"):
        leave_maintenance(host)
    job = enter_maintenance(host)
    with pytest.raises(ValidationError, match=f"still being evacuated by job #{job.pk} \\(queued\\)"):
        leave_maintenance(host)
    Job.objects.filter(pk=job.pk).update(state=JobState.FAILED)
    returned = leave_maintenance(host)
    assert _run(returned).state == JobState.SUCCEEDED
    assert _state(host) == HostState.UP


def _run(job: Job) -> Job:
    runner.run_job(job.pk)
    job.refresh_from_db()
    return job


def test_leaving_maintenance_queues_a_job_that_returns_the_host_to_up(cpus):
    host = cpus["cpu2"]
    CpuServer.objects.filter(pk=host.pk).update(state=HostState.MAINTENANCE)
    job = leave_maintenance(host)
    # The request only queues it: no host is asked before a worker runs it.
    assert (job.kind, job.state, job.target_name, job.params) == (RETURN, JobState.QUEUED, "cpu2", {"host": "cpu2"})
    assert " cpu2 " in job.hosts and queues.is_ha(job)
    assert _state(host) == HostState.MAINTENANCE
    assert leave_maintenance(host) == job  # asked again while it waits: the same job, not a second
    job = _run(job)
    assert (job.state, job.message) == (JobState.SUCCEEDED, "cpu2 is up: it takes guests again")
    assert _state(host) == HostState.UP
    assert "cpu2" in [c.server.name for c in cpu_candidates()]
    messages = list(job.log.order_by("serial").values_list("message", flat=True))
    assert [m for m in messages if m.startswith("Step ")][:4] == [
        "Step 1/4: Check cpu2 may leave maintenance", "Step 2/4: Remove the stale guest copies on cpu2",
        "Step 3/4: Give cpu2 its disks back: every export's MAC list", "Step 4/4: Return cpu2 to service"]
    assert "cpu2 is in maintenance, no evacuation under way" in messages
    assert "no stale guest copy on cpu2" in messages


def test_a_return_finding_the_host_no_longer_in_maintenance_fails_and_changes_nothing(cpus):
    host = cpus["cpu2"]
    CpuServer.objects.filter(pk=host.pk).update(state=HostState.MAINTENANCE)
    job = leave_maintenance(host)
    CpuServer.objects.filter(pk=host.pk).update(state=HostState.DEAD)  # the monitor, meanwhile
    job = _run(job)
    assert (job.state, job.message) == (JobState.FAILED, "Check cpu2 may leave maintenance failed: cpu2 is dead, "
                                                         "not in maintenance")
    assert _state(host) == HostState.DEAD


def test_evacuate_suspect_starts_one_evacuation_and_leaves_the_host_suspect(cpus):
    host = cpus["cpu2"]
    with pytest.raises(ValidationError, match="cpu2 is up: evacuate_suspect is for suspect hosts"):
        evacuate_suspect(host, "SAN link down")
    CpuServer.objects.filter(pk=host.pk).update(state=HostState.SUSPECT)
    job = evacuate_suspect(host, "SAN link down while the management link answers")
    assert job is not None and job.params["reason"] == "SAN link down while the management link answers"
    assert evacuate_suspect(host, "again") is None
    assert _state(host) == HostState.SUSPECT
    assert active_evacuation(host) == job
    # An operator putting it into maintenance meanwhile gets the same evacuation, not a second.
    assert enter_maintenance(host) == job
    assert Job.objects.filter(kind=EVACUATE).count() == 1
    Job.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED)
    assert evacuate_suspect(host, "still failing") is not None  # a later episode evacuates again


# --- the job, with _wait playing the worker ------------------------------------------------------

def _worker(refuse: set[str] = frozenset(), hold: bool = False, on_poll: Callable[[int], None] | None = None):
    """Each poll: queued children start (the number active at once is recorded), running ones
    report progress and then finish: moved, or failed for the VMs in `refuse`; with `hold` they
    keep running until a Cancel reaches them."""
    seen = {"max_active": 0, "polls": 0}

    def play(_seconds: float) -> None:
        seen["polls"] += 1
        if on_poll:
            on_poll(seen["polls"])
        children = Job.objects.filter(kind="vm.migrate")
        seen["max_active"] = max(seen["max_active"], children.filter(state__in=["queued", "running"]).count())
        for child in children.filter(state__in=["queued", "running"]).select_related("vm"):
            if child.state == JobState.QUEUED:
                child.state = JobState.RUNNING
            elif child.cancel_requested:
                child.state, child.message = JobState.CANCELLED, "migration aborted on request"
            elif not hold:
                runner.append_log(child, "migrating: 50 % of 64 MiB, 32 MiB/s",
                                  data={"migration": {"phase": "copying", "percent": 50.0}})
                if child.vm.name in refuse:
                    child.state, child.message = JobState.FAILED, "Check failed: the target said no"
                else:
                    VirtualMachine.objects.filter(pk=child.vm_id).update(
                        cpu_server=CpuServer.objects.get(name=child.params["target"]))
                    child.state, child.message = JobState.SUCCEEDED, f"{child.vm.name} runs on {child.params['target']}"
            child.save()

    return play, seen


def _evacuate(host: CpuServer) -> Job:
    job = enter_maintenance(host)
    runner.run_job(job.pk)
    job.refresh_from_db()
    return job


def test_the_evacuation_moves_every_running_guest_under_the_parent_two_at_a_time(cpus, monkeypatch):
    for name in ("a", "b", "c"):
        _guest(name, cpus["cpu2"], 128)
    _guest("off", cpus["cpu2"], 64, VmState.STOPPED)
    play, seen = _worker()
    monkeypatch.setattr(maintenance, "_wait", play)
    job = _evacuate(cpus["cpu2"])
    assert job.state == JobState.SUCCEEDED, job.message
    assert job.message == "3 of 3 guests moved; 1 stopped, staying defined on cpu2: off"
    children = list(job.children.order_by("pk"))
    assert [c.kind for c in children] == ["vm.migrate"] * 3 and all(c.state == "succeeded" for c in children)
    assert seen["max_active"] == 2
    assert set(VirtualMachine.objects.filter(cpu_server__name="cpu2").values_list("name", flat=True)) == {"off"}
    # The parent's log names every child and carries its progress.
    relayed = [e.data for e in job.log.all() if "migration" in e.data]
    assert {d["child"] for d in relayed} == {c.pk for c in children}
    messages = list(job.log.values_list("message", flat=True))
    assert any(m.startswith(f"job #{children[0].pk} (a) succeeded") for m in messages)
    assert _state(cpus["cpu2"]) == HostState.MAINTENANCE


@override_settings(EVACUATE_PARALLEL=1)
def test_the_parallelism_is_a_setting(cpus, monkeypatch):
    for name in ("a", "b"):
        _guest(name, cpus["cpu2"], 128)
    play, seen = _worker()
    monkeypatch.setattr(maintenance, "_wait", play)
    assert _evacuate(cpus["cpu2"]).state == JobState.SUCCEEDED
    assert seen["max_active"] == 1


@override_settings(EVACUATE_MAX_MIB_PER_S=32)
def test_the_bandwidth_cap_is_a_setting_unless_the_evacuation_names_one(cpus):
    assert enter_maintenance(cpus["cpu2"]).params["max_mib_per_s"] == 32
    assert enter_maintenance(cpus["cpu3"], max_mib_per_s=8).params["max_mib_per_s"] == 8


def test_the_evacuation_fails_listing_every_guest_that_could_not_move(cpus, monkeypatch):
    _guest("filler", cpus["cpu1"], 900)
    _guest("filler3", cpus["cpu3"], 900)
    _guest("big", cpus["cpu2"], 512)
    _guest("small", cpus["cpu2"], 64)
    _guest("picky", cpus["cpu2"], 32)
    play, _seen = _worker(refuse={"picky"})
    monkeypatch.setattr(maintenance, "_wait", play)
    job = _evacuate(cpus["cpu2"])
    assert job.state == JobState.FAILED
    picky = job.children.get(vm__name="picky")
    assert job.message == (
        "Summary failed: 1 of 3 guests moved; 2 could not: "
        f"picky (migration job #{picky.pk} failed: Check failed: the target said no); "
        "big (no other CPU server has 512 MiB free (cpu1: 124 MiB free, cpu3: 124 MiB free))")
    assert VirtualMachine.objects.get(name="small").cpu_server.name == "cpu1"


def test_cancel_stops_the_children_under_way_and_starts_no_more(cpus, monkeypatch):
    for name in ("a", "b", "c", "d"):
        _guest(name, cpus["cpu2"], 64)
    parent: dict[str, Job] = {}

    def cancel_on_second_poll(poll: int) -> None:
        if poll == 2:
            Job.objects.filter(pk=parent["job"].pk).update(cancel_requested=True)

    play, _seen = _worker(hold=True, on_poll=cancel_on_second_poll)
    monkeypatch.setattr(maintenance, "_wait", play)
    parent["job"] = job = enter_maintenance(cpus["cpu2"])
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    assert [c.state for c in job.children.all()] == ["cancelled", "cancelled"]
    assert "0 of 4 guests moved" in job.message and "not started: the evacuation was cancelled" in job.message
    assert set(VirtualMachine.objects.filter(cpu_server__name="cpu2").values_list("name", flat=True)) == set("abcd")


def test_a_target_filled_after_the_plan_is_replaced_by_another(cpus, monkeypatch):
    _guest("a", cpus["cpu2"], 512)
    job = enter_maintenance(cpus["cpu2"])
    ctx = runner.JobContext(job)
    maintenance.plan_step(ctx)
    assert ctx.data["plan"]["moves"] == [{"vm": "a", "memory_mib": 512, "target": "cpu1"}]
    _guest("newcomer", cpus["cpu1"], 900)  # created on cpu1 between the plan and the migration
    play, _seen = _worker()
    monkeypatch.setattr(maintenance, "_wait", play)
    maintenance.migrate_step(ctx)
    assert ctx.data["moved"] == [["a", "cpu3", job.children.get().pk]]
    assert job.log.filter(message="a: cpu1 has 124 MiB free, a needs 512 MiB").exists()


def test_a_child_no_worker_takes_is_given_up_and_listed(cpus, monkeypatch):
    _guest("a", cpus["cpu2"], 64)
    monkeypatch.setattr(maintenance, "QUEUED_TIMEOUT_S", 0.0)
    monkeypatch.setattr(maintenance, "_wait", lambda _s: None)  # no worker at all
    job = _evacuate(cpus["cpu2"])
    assert job.state == JobState.FAILED
    child = job.children.get()
    assert child.state == JobState.CANCELLED and "no worker took it" in child.message
    assert "0 of 1 guests moved; 1 could not: a (migration job" in job.message


def test_an_evacuation_finding_the_host_up_again_moves_nothing(cpus):
    _guest("a", cpus["cpu2"], 64)
    CpuServer.objects.filter(name="cpu2").update(state=HostState.SUSPECT)
    job = evacuate_suspect(cpus["cpu2"], "fan failing")
    CpuServer.objects.filter(name="cpu2").update(state=HostState.UP)  # the monitor saw it recover
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.FAILED and "cpu2 is up now: nothing moved" in job.message
    assert not job.children.exists()


def test_an_empty_host_is_evacuated_at_once(cpus):
    job = _evacuate(cpus["cpu2"])
    assert (job.state, job.message) == (JobState.SUCCEEDED, "cpu2 has no running guests")


# --- the command -------------------------------------------------------------------------------

def test_the_host_command_shows_a_host_and_switches_maintenance(cpus):
    _guest("web", cpus["cpu2"], 256)
    out = StringIO()
    call_command("host", "maintenance", "cpu2", "on", stdout=out)
    job = Job.objects.get(kind=EVACUATE)
    assert f"cpu2 is in maintenance; job #{job.pk} host.evacuate cpu2" in out.getvalue()
    out = StringIO()
    call_command("host", "show", "cpu2", "--json", stdout=out)
    shown = json.loads(out.getvalue())
    assert shown["state"] == "maintenance" and shown["missed_checks"] == 0
    assert shown["evacuation_job"] == job.pk
    assert shown["guests"] == [{"name": "web", "state": "running", "memory_mib": 256}]
    with pytest.raises(CommandError, match="still being evacuated"):
        call_command("host", "maintenance", "cpu2", "off")
    Job.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED)
    out = StringIO()
    call_command("host", "maintenance", "cpu2", "off", stdout=out)
    back = Job.objects.get(kind=RETURN)
    assert f"job #{back.pk} host.return cpu2 returns cpu2 to service" in out.getvalue()
    assert _run(back).state == JobState.SUCCEEDED
    out = StringIO()
    call_command("host", "show", "cpu2", stdout=out)
    assert "guest             web (running, 256 MiB)" in out.getvalue()
    with pytest.raises(CommandError, match="no CPU server named 'nope'"):
        call_command("host", "maintenance", "nope", "on")
