"""Faults inside the panel while a job works on the hosts: its Celery worker killed (SIGKILL) in the
middle of a creation and of a live migration, and its SSH connections dropped mid-command."""
from __future__ import annotations

import subprocess
import time

import pytest

from jobs.models import Job
from tests.chaos.conftest import Outcome, check, records_request
from tests.chaos.test_cpu_faults import panel_story, wait_for_progress
from tests.integration.on_the_hosts import clear_domain, clear_exports, succeeded
from vms.migration import migrate_vm
from vms.models import VirtualMachine
from vms.services import create_vm, delete_vm

pytestmark = [pytest.mark.lab, pytest.mark.chaos]


def wait_for_log(job: Job, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not job.log.filter(message__contains=text).exists():
        job.refresh_from_db()
        assert job.state in ("queued", "running"), f"job ended {job.state} before '{text}': {job.message}"
        assert time.monotonic() < deadline, f"'{text}' not in the job's log within {timeout:g} s"
        time.sleep(0.1)


def wait_ended(job: Job, timeout: float = 180) -> Job:
    deadline = time.monotonic() + timeout
    job.refresh_from_db()
    while job.state in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job.kind} still {job.state} after {timeout:g} s"
        time.sleep(0.5)
        job.refresh_from_db()
    return job


def test_the_worker_killed_during_a_creation(lab_whole, worker):
    name = "ch-create-worker"
    clear_domain(f"xa-{name}")
    clear_exports(name)
    job = create_vm(records_request(name, "cpu1"))
    wait_for_log(job, "exported by vblade")
    worker.kill()
    worker.start()  # the same node name: it ends, and undoes, what its last life held
    job = wait_ended(job)
    gone = not VirtualMachine.objects.filter(name=name).exists()
    check(Outcome("worker-killed-creating", f"worker SIGKILLed while creating {name} (exports started)",
                  f"create {job.state}: {job.message[:80]}; VM {'removed' if gone else 'kept'}"))
    assert job.state == "errored" and gone


@pytest.mark.slow
def test_the_worker_killed_during_a_live_migration(records_vm, worker):
    name = "ch-migrate-worker"
    vm, acks = records_vm(name, "cpu1")
    acked_before = acks.acked
    job = migrate_vm(name, "cpu2", max_mib_per_s=2)
    wait_for_progress(job)
    worker.kill()
    worker.start()
    job = wait_ended(job)
    vm.refresh_from_db()
    acks.wait_for(acked_before + 3, 60)
    check(Outcome("worker-killed-migrating", f"worker SIGKILLed while migrating {name} cpu1->cpu2",
                  f"migrate {job.state}; runs on {vm.cpu_server.name}"), name, acks)


def test_ssh_connections_dropped_mid_command(lab_whole):
    """Every OpenSSH connection of the panel killed while the create attaches the exports on the
    CPU server (aoe-discover and the wait for the devices run over SSH)."""
    name = "ch-ssh-drop"
    clear_domain(f"xa-{name}")
    clear_exports(name)
    job = create_vm(records_request(name, "cpu1"))
    wait_for_log(job, "Step 5/")
    dropped = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        dropped += subprocess.run(["pkill", "-KILL", "-f", "^ssh .*ControlPath="], check=False).returncode == 0
        time.sleep(0.05)
    job = wait_ended(job)
    vm = VirtualMachine.objects.filter(name=name).first()
    outcome = Outcome("ssh-dropped", f"every SSH connection killed for 3 s during step 5 of creating {name}",
                      f"create {job.state}; VM {vm.state if vm else 'removed'}")
    try:
        check(outcome)
    finally:
        print(panel_story(vm) if vm else "")
        if vm is not None:
            succeeded(delete_vm(name))
    assert dropped
