"""Faults in what the panel runs on and beside: a disk server killed during a creation, the leading
monitor killed in the middle of an incident, Redis and PostgreSQL restarted while a job works, and
the web process restarted while a browser follows a job."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from django.db import close_old_connections

from hosts.choices import HostState
from hosts.models import DiskServer
from jobs.models import Job
from lab import cluster
from tests.chaos.conftest import Outcome, check, records_request
from tests.chaos.test_cpu_faults import back_in_service, wait_fenced, wait_for_progress, wait_running_on
from tests.chaos.test_job_faults import wait_ended, wait_for_log
from tests.integration.on_the_hosts import clear_domain, clear_exports, succeeded
from tests.integration.test_monitor_takeover import MonitorProcess, _wait_for
from vms.migration import migrate_vm
from vms.models import VirtualMachine
from vms.services import create_vm, delete_vm

pytestmark = [pytest.mark.lab, pytest.mark.chaos, pytest.mark.slow]


def test_a_disk_server_killed_during_a_creation(lab_whole, monitor):
    name = "ch-disk-killed"
    clear_domain(f"xa-{name}")
    clear_exports(name)
    job = create_vm(records_request(name, "cpu1"))
    wait_for_log(job, "Step 3/")
    cluster.kill_host("disk2")
    job = wait_ended(job, 300)
    deadline = time.monotonic() + 60
    while DiskServer.objects.get(name="disk2").state != HostState.DEAD and time.monotonic() < deadline:
        time.sleep(0.5)
    cluster.up(out=lambda line: None)  # it boots again; the monitor restores what it exported
    deadline = time.monotonic() + 90
    while DiskServer.objects.get(name="disk2").state not in (HostState.MAINTENANCE, HostState.UP):
        assert time.monotonic() < deadline, "disk2 not back"
        time.sleep(0.5)
    vm = VirtualMachine.objects.filter(name=name).first()
    what = f"create {job.state}; VM {vm.state if vm else 'removed'}"
    if vm is not None and vm.state == "failed":  # what an operator does with a failed VM: delete it
        succeeded(delete_vm(name))
        what += ", deleted by the operator once disk2 was back"
    elif vm is not None:
        succeeded(delete_vm(name))
    check(Outcome("disk-killed-creating", f"disk2 killed while creating {name} (step 3, exports)", what))


@pytest.fixture
def two_monitors(records_vm, tmp_path):
    """panel1's monitor leads, panel2's stands by (as in tests/integration/test_monitor_takeover.py)."""
    from django.conf import settings

    from tests.conftest import REPO, _child_env

    started: dict[str, MonitorProcess] = {}
    for node in ("panel1", "panel2"):
        env = _child_env(settings.DATABASES["default"]["NAME"])
        env.update(XENAOE_MONITOR_INTERVAL_S="1", XENAOE_PANEL_NODE=node)
        log = tmp_path / f"monitor-{node}.log"
        with log.open("w") as out:
            started[node] = MonitorProcess(subprocess.Popen([sys.executable, "manage.py", "monitor"], cwd=REPO,
                                                            env=env, stdout=out, stderr=subprocess.STDOUT), log)
        want = "leading the monitors" if node == "panel1" else "standing by; panel1 pid"
        _wait_for(f"{node} up", lambda m=started[node], w=want: w in m.text(), 30, *started.values())
    yield started
    for monitor in started.values():
        if monitor.proc.poll() is None:
            monitor.proc.terminate()
            monitor.proc.wait(timeout=20)


def test_the_leading_monitor_killed_mid_incident(records_vm, two_monitors):
    name = "ch-leader-killed"
    vm, acks = records_vm(name, "cpu2")
    acked_before = acks.acked
    time.sleep(3)
    cluster.kill_host("cpu2")
    failovers = Job.objects.filter(kind="host.failover", target_name="cpu2")
    _wait_for("the failover job", failovers.exists, 60, *two_monitors.values())
    os.kill(two_monitors["panel1"].proc.pid, signal.SIGKILL)
    took = wait_running_on(name, "cpu1")
    acks.wait_for(acked_before + 3, 60)
    wait_fenced("cpu2")
    back_in_service("cpu2")
    check(Outcome("monitor-leader-killed", "cpu2 killed, then the leading monitor killed once it queued the failover",
                  f"{failovers.count()} failover job(s), by panel2; runs on cpu1 {took:.0f} s after the failover "
                  "was queued"), name, acks)
    assert failovers.count() == 1


def _restart_redis() -> None:
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"], check=False, capture_output=True)
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "",
                    "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/xenaoe.log"],
                   check=True)
    _wait_port(6379)


def _restart_postgresql() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
                   check=True, capture_output=True)
    _wait_port(5432)
    close_old_connections()


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.2)


@pytest.mark.parametrize(("case", "restart"), [("redis-restarted", _restart_redis),
                                               ("postgresql-restarted", _restart_postgresql)])
def test_redis_or_postgresql_restarted_during_a_migration(records_vm, case, restart):
    name = f"ch-{case.split('-')[0]}"
    vm, acks = records_vm(name, "cpu1")
    acked_before = acks.acked
    job = migrate_vm(name, "cpu2", max_mib_per_s=4)
    wait_for_progress(job)
    restart()
    close_old_connections()
    job = wait_ended(job, 300)
    vm.refresh_from_db()
    acks.wait_for(acked_before + 3, 60)
    check(Outcome(case, f"{case.split('-')[0]} restarted while migrating {name} cpu1->cpu2",
                  f"migrate {job.state}: {job.message[:60]}; runs on {vm.cpu_server.name}"), name, acks)
    assert job.state == "succeeded", job.message
