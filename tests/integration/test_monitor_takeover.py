"""Two monitors, as on two panel machines, and the leader killed in the middle of a failover: the
other takes the lead within an interval and the failover completes exactly once (one incident, one
host.failover job, each guest running on exactly one host). Real processes throughout: two
`manage.py monitor` (one PostgreSQL advisory lock between them, ha/leadership.py), a Celery worker,
the lab's CPU host whose plug is pulled, its BMC for the fence.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from ha.choices import EventKind
from ha.maintenance import leave_maintenance
from ha.models import Incident
from hosts.choices import HostState
from hosts.models import CpuServer
from jobs.follow import follow
from jobs.models import Job
from lab import cluster
from tests.integration import on_the_hosts
from vms.models import VirtualMachine

pytestmark = pytest.mark.lab
NAMES = ("takeover-a", "takeover-b")
INTERVAL_S = 1


@dataclass
class MonitorProcess:
    proc: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def _running_on(uri: str) -> set[str]:
    conn = libvirt.open(uri)
    try:
        return {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    finally:
        conn.close()


def _wait_for(what: str, predicate, timeout: float, *logs: MonitorProcess) -> float:
    """Poll until `predicate()`; the seconds it took. On a timeout, the monitors' logs say why."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            tails = "\n".join(f"--- {m.log.name}\n{m.text()[-3000:]}" for m in logs)
            jobs = "\n".join(f"--- job #{j.pk} {j.kind} {j.state}: {j.message}\n" + "\n".join(
                f"  {e.level} {e.message}" for e in j.log.order_by("serial")) for j in Job.objects.order_by("pk")
                if j.kind.startswith("host."))
            raise AssertionError(f"{what}: not within {timeout:g} s\n{tails}\n{jobs}")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def guests_on_cpu2(lab_hosts, celery_worker_process) -> Iterator[list[VirtualMachine]]:
    with on_the_hosts.guests_on_cpu2(NAMES) as guests:
        yield guests


@pytest.fixture
def two_monitors(lab_hosts, tmp_path) -> Iterator[dict[str, MonitorProcess]]:
    """panel1's monitor, then panel2's once panel1 leads: panel1 is the leader, panel2 stands by."""
    from django.conf import settings

    from tests.conftest import REPO, _child_env

    started: dict[str, MonitorProcess] = {}

    def start(node: str) -> MonitorProcess:
        env = _child_env(settings.DATABASES["default"]["NAME"])
        env.update(XENAOE_MONITOR_INTERVAL_S=str(INTERVAL_S), XENAOE_PANEL_NODE=node)
        log = tmp_path / f"monitor-{node}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "manage.py", "monitor"], cwd=REPO, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        started[node] = MonitorProcess(proc, log)
        return started[node]

    try:
        panel1 = start("panel1")
        _wait_for("panel1 leads", lambda: "leading the monitors" in panel1.text(), 30, panel1)
        panel2 = start("panel2")
        _wait_for("panel2 stands by", lambda: "standing by; panel1 pid" in panel2.text(), 30, panel1, panel2)
        yield started
    finally:
        for monitor in started.values():
            if monitor.proc.poll() is None:
                monitor.proc.terminate()
                monitor.proc.wait(timeout=20)


def test_the_leader_killed_mid_failover_the_other_finishes_it_exactly_once(guests_on_cpu2, two_monitors):
    panel1, panel2 = two_monitors["panel1"], two_monitors["panel2"]
    cpu1, cpu2 = CpuServer.objects.get(name="cpu1"), CpuServer.objects.get(name="cpu2")
    time.sleep(3)  # the leader has seen every host up
    pulled = time.monotonic()
    cluster.kill_host("cpu2")

    # The leader declares cpu2 dead and queues the failover: it is killed the moment the job exists.
    failover_jobs = Job.objects.filter(kind="host.failover", target_name="cpu2")
    _wait_for("the failover job", failover_jobs.exists, 60, panel1, panel2)
    os.kill(panel1.proc.pid, signal.SIGKILL)
    panel1.proc.wait(timeout=10)
    killed = time.monotonic()
    print(f"failover job queued {killed - pulled:.1f} s after the plug was pulled; leader killed")

    took_over = _wait_for("panel2 takes the lead", lambda: "leading the monitors" in panel2.text(), 10,
                          panel1, panel2)
    print(f"panel2 leads {took_over:.1f} s after the leader was killed")
    assert took_over <= INTERVAL_S + 1.5  # one interval, plus this test's polling and the log's flush

    _wait_for("the guests running on cpu1", lambda: all(
        vm.cpu_server_id == cpu1.pk and vm.state == "running" for vm in VirtualMachine.objects.filter(name__in=NAMES)),
        120, panel1, panel2)
    _wait_for("the incident closed", lambda: not Incident.objects.get(host_name="cpu2").is_open, 60, panel1, panel2)
    print(f"guests running on cpu1 {time.monotonic() - pulled:.1f} s after the plug was pulled")

    # Exactly once: one incident, one failover job, one restart per guest, one detection.
    incident = Incident.objects.get(host_name="cpu2")
    assert failover_jobs.count() == 1
    assert follow(failover_jobs.get().pk, lambda _line: None).state == "succeeded"  # it closes the incident, then ends
    kinds = list(incident.events.order_by("time", "id").values_list("kind", flat=True))
    assert kinds.count(EventKind.DETECTED) == 1 and kinds.count(EventKind.CLOSED) == 1
    assert kinds.count(EventKind.RESTARTED) == len(NAMES)
    assert kinds.index(EventKind.FENCED) < kinds.index(EventKind.RESTARTED)
    assert panel2.text().count("leading the monitors") == 1 and "standing by" not in panel1.text()
    assert {f"xa-{n}" for n in NAMES} <= _running_on(cpu1.libvirt_uri)

    # cpu2 boots again: in maintenance, running none of them; each guest runs on exactly one host.
    cluster.up()
    _wait_for("cpu2 in maintenance", lambda: CpuServer.objects.get(pk=cpu2.pk).state == HostState.MAINTENANCE,
              30, panel2)
    assert not ({f"xa-{n}" for n in NAMES} & _running_on(cpu2.libvirt_uri))
    assert Incident.objects.filter(host_name="cpu2").count() == 1 and failover_jobs.count() == 1
    on_the_hosts.succeeded(leave_maintenance(CpuServer.objects.get(pk=cpu2.pk)))
