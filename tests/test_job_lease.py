"""A running job's liveness comes from its worker (a lease renewed by a heartbeat), not from its log.

Issue 10, finding 2: a step that waits quietly (failover waiting for an earlier job) was declared
dead, the one-job-per-VM guard freed, and the original job kept running and ended "succeeded" over
the state recovery had written. These tests run the job in a thread of their own (as a worker
would), so they need committed rows: transactional database.
"""
from __future__ import annotations

import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from drivers import guard, hypervisor, ipmi, migration, ssh
from jobs import recovery, runner
from jobs.choices import JobState
from jobs.models import Job
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db(transaction=True)

gate = threading.Event()  # what the quiet step waits for
waiting = threading.Event()  # set once the quiet step waits
acted: list[str] = []  # host actions that reached the host
TARGET = ssh.SSHTarget(host="192.0.2.1", identity_file=Path("/nonexistent"), known_hosts_file=Path("/nonexistent"),
                       control_dir=Path(tempfile.gettempdir()) / "xenaoe-test-ssh", name="disk1")


def _wait_quietly(ctx: runner.JobContext) -> None:
    waiting.set()
    assert gate.wait(30)


def _host_action(ctx: runner.JobContext) -> None:
    # Through the real SSH driver: the test double sits where traffic leaves the program.
    ssh.run(TARGET, ["vblade-stop.sh", "1", "0"], timeout=5)


def _wait_then_act(ctx: runner.JobContext) -> None:
    _wait_quietly(ctx)
    _host_action(ctx)


@runner.job_kind("test.quiet_then_act_in_next_step")
def _plan_next_step(ctx):
    return [runner.Step("wait quietly", _wait_quietly), runner.Step("act on a host", _host_action)]


@runner.job_kind("test.quiet_then_act_in_same_step")
def _plan_same_step(ctx):
    return [runner.Step("wait quietly, then act on a host", _wait_then_act)]


@runner.job_kind("test.noop")
def _plan_noop(ctx):
    return [runner.Step("nothing", lambda ctx: None)]


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    gate.clear()
    waiting.clear()
    acted.clear()

    class Done:  # what subprocess.run returns: the command ran and exited 0
        returncode, stdout, stderr = 0, "", ""

    def ssh_reaches_the_host(argv, **_kwargs):
        acted.append(argv[-1])
        return Done()

    monkeypatch.setattr(ssh.subprocess, "run", ssh_reaches_the_host)
    yield
    gate.set()


def _run_in_thread(job_id: int, worker: str) -> threading.Thread:
    def work() -> None:
        try:
            runner.run_job(job_id, worker=worker)
        finally:
            connection.close()

    thread = threading.Thread(target=work, name=f"job {job_id}")
    thread.start()
    return thread


def _let_the_lease_run_out(job: Job) -> None:
    """What recovery sees when a worker stalls past its lease (a frozen VM, a long pause, the
    database out of reach): the lease is in the past. (The test's lease is long enough that the
    heartbeat does not renew it meanwhile.)"""
    past = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=past, lease_until=past)


@pytest.mark.parametrize("kind", ["test.quiet_then_act_in_next_step", "test.quiet_then_act_in_same_step"])
def test_an_expired_job_stops_before_its_next_host_action_and_leaves_recoverys_state(kind, settings):
    settings.JOB_LEASE_S = 3600
    vm = VirtualMachine.objects.create(name="held", vcpus=1, memory_mib=64, disk_mib=32)
    first = Job.objects.create(kind=kind, vm=vm)
    thread = _run_in_thread(first.pk, "celery@stalled")
    assert waiting.wait(10)
    _let_the_lease_run_out(first)
    assert [job.pk for job in recovery.expire_stale_jobs()] == [first.pk]
    # The VM is free again: a second job on it is allowed by the database's one-job-per-VM guard.
    second = Job.objects.create(kind="test.noop", vm=vm)
    gate.set()
    thread.join(20)
    assert not thread.is_alive()
    first.refresh_from_db()
    assert acted == []  # the expired job did not act on the host
    assert first.state == JobState.ERRORED and "showed no sign of life" in first.message  # recovery's word stands
    assert second.state == JobState.QUEUED
    assert "it stopped there without acting" in first.log.last().message


def test_a_job_that_waits_quietly_is_not_expired_while_its_worker_heartbeats(settings):
    settings.JOB_LEASE_S = 2
    job = Job.objects.create(kind="test.quiet_then_act_in_next_step")
    thread = _run_in_thread(job.pk, "celery@alive")
    assert waiting.wait(10)
    ended = []
    deadline = time.monotonic() + 3 * settings.JOB_LEASE_S  # silent in its log for longer than a lease
    while time.monotonic() < deadline:
        ended += recovery.expire_stale_jobs()
        time.sleep(0.2)
    gate.set()
    thread.join(20)
    job.refresh_from_db()
    assert ended == []
    assert job.state == JobState.SUCCEEDED, job.message
    assert acted == ["vblade-stop.sh 1 0"]


class Stopped(BaseException):
    pass


def _stop() -> None:
    raise Stopped


@pytest.mark.parametrize("call", [
    lambda: ssh.run(TARGET, ["true"], timeout=5),
    lambda: hypervisor.domain_info("test:///default", "test"),
    lambda: ipmi.power_status(ipmi.BmcTarget("192.0.2.9", 623, "admin", "/nonexistent")),
    lambda: migration.migrate("test:///default", "test:///default", "test", migration_uri="test:///default",
                              hypervisor="kvm"),
], ids=["ssh", "libvirt", "ipmi", "migration"])
def test_every_driver_asks_the_guard_before_it_reaches_a_host(call):
    with guard.checking(_stop), pytest.raises(Stopped):
        call()
    assert acted == []
