"""The fault suite's fixtures: a records guest, the panel's monitor, and the judge every case ends with.

Each case injects one fault in the lab mid-operation, lets the panel act, then `Outcome.check`
measures: records lost and written twice (tests/chaos/records.py), and orphans — what `cluster
verify` finds on the hosts that the panel's rows do not explain (or rows the hosts do not back),
jobs still active, capacity still reserved. It prints one line per case and appends it to
LAB_DIR/chaos-results.jsonl; `make chaos` ends with the count of passed and failed cases.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from django.conf import settings

from drivers import guest_agent
from drivers.errors import DriverError
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from hosts.verify import verify
from jobs.choices import ACTIVE_STATES
from jobs.models import Job
from lab import cluster
from lab.guests import mirror_guest
from tests.chaos.records import Acks, judge, read_legs
from tests.integration.on_the_hosts import clear_domain, clear_exports, succeeded
from vms.models import Reservation, VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm

HEALTHY_TIMEOUT_S = 180
LINES: list[str] = []


def records_request(name: str, cpu: str) -> VmRequest:
    guest = mirror_guest.install_mirror_guest(Path(settings.LAB_DIR) / "guests")
    return VmRequest(name=name, vcpus=1, memory_mib=128, disk_mib=32, cpu_server=cpu,
                     kernel_path=str(guest.kernel), initrd_path=str(guest.initrd), kernel_cmdline=guest.cmdline,
                     allow_n_plus_one_break=True)


class Worker:
    """This case's own Celery worker, on queues of its own (so that the session's worker never takes
    the case's jobs), under one node name across restarts: killed with SIGKILL, started again."""

    def __init__(self, log: Path) -> None:
        self.log, self.proc = log, None
        self.node = f"chaos-{os.getpid()}@%h"

    def start(self) -> None:
        from tests.conftest import REPO, _child_env

        env = _child_env(settings.DATABASES["default"]["NAME"])
        queues = f"{settings.CELERY_TASK_DEFAULT_QUEUE},{settings.CELERY_HA_QUEUE}"
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "xenaoe_panel", "worker", "-P", "threads", "-c", "6",
                 "--loglevel=INFO", "-n", self.node, "-Q", queues], cwd=REPO, env=env, stdout=out,
                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while " ready." not in self.log.read_text()[offset:]:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker did not come up in 60 s"
            time.sleep(0.2)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker(settings, monkeypatch, tmp_path) -> Iterator[Worker]:
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-chaos"
    settings.CELERY_TASK_DEFAULT_QUEUE, settings.CELERY_HA_QUEUE = queue, f"{queue}-ha"
    monkeypatch.setenv("CELERY_QUEUE", queue)  # for the processes a case starts: the worker, the monitor
    monkeypatch.setenv("CELERY_HA_QUEUE", settings.CELERY_HA_QUEUE)
    started = Worker(tmp_path / "worker.log")
    started.start()
    yield started
    started.stop()


@pytest.fixture
def lab_whole(lab_hosts, worker) -> Iterator[dict]:
    """Every lab host up before and after the case; the hosts' states back to up in the panel."""
    cluster.up(out=lambda line: None)
    yield lab_hosts
    cluster.up(out=lambda line: None)
    for model in (CpuServer, DiskServer):
        model.objects.exclude(state=HostState.UP).update(state=HostState.UP)


@pytest.fixture
def records_vm(lab_whole) -> Iterator[callable]:
    """records_vm(name, cpu): a records guest running, acknowledging; deleted afterwards."""
    made: list[tuple[str, Acks]] = []

    def make(name: str, cpu: str = "cpu1") -> tuple[VirtualMachine, Acks]:
        clear_domain(f"xa-{name}")
        clear_exports(name)
        succeeded(create_vm(records_request(name, cpu)))
        acks = Acks(name).start()
        made.append((name, acks))
        acks.wait_for(3, 150)
        return VirtualMachine.objects.select_related("cpu_server").get(name=name), acks

    yield make
    for name, acks in made:
        acks.stop()
        cluster.up(out=lambda line: None)
        if VirtualMachine.objects.filter(name=name).exists():
            Job.objects.filter(vm__name=name, state__in=ACTIVE_STATES).update(state="errored")
            try:
                succeeded(delete_vm(name))
            except AssertionError:
                pass
        clear_domain(f"xa-{name}")
        clear_exports(name)


@pytest.fixture
def monitor(lab_whole, monitor_process) -> Path:
    """The monitor (tests/conftest.py), started after this case's worker set the queues, once it has
    seen every host up; its log."""
    time.sleep(3)
    return monitor_process


@dataclass
class Outcome:
    case: str
    fault: str
    panel: str
    written: int = 0
    acked: int = 0
    read_back: int = 0
    lost: int = 0
    double: int = 0
    orphans: int = 0
    detail: str = ""

    def line(self) -> str:
        return (f"{self.case}: {self.fault}; {self.panel}; records written={self.written} acked={self.acked} "
                f"read={self.read_back}; lost={self.lost} double={self.double} orphans={self.orphans}")


def wait_healthy(vm_name: str, timeout: float = HEALTHY_TIMEOUT_S) -> list[str]:
    """Wait until the guest's array is whole; the legs it holds in sync (both, or those it has)."""
    deadline = time.monotonic() + timeout
    legs = ["vda", "vdb"]
    while True:
        vm = VirtualMachine.objects.select_related("cpu_server").get(name=vm_name)
        try:
            array = guest_agent.read_mdstat(vm.cpu_server.libvirt_uri, vm.domain_name, timeout=5).arrays[0]
            if array.health == "healthy" and len(array.members) == 2:
                return legs
            holding = [m.device for m in array.members if not m.faulty]
        except (DriverError, IndexError, AttributeError):
            holding = []
        if time.monotonic() > deadline:
            return holding
        time.sleep(2)


def orphans() -> tuple[int, str]:
    """What verify finds, plus jobs still active and reservations still held."""
    found = verify().findings
    active = list(Job.objects.filter(state__in=ACTIVE_STATES).values_list("kind", "state"))
    held = Reservation.objects.count()
    detail = "; ".join([*(f.message for f in found), *(f"job {k} {s}" for k, s in active)]
                       + ([f"{held} reservations held"] if held else []))
    return len(found) + len(active) + held, detail


def settle_jobs(timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while Job.objects.filter(state__in=ACTIVE_STATES).exists() and time.monotonic() < deadline:
        time.sleep(1)


def check(outcome: Outcome, vm_name: str | None = None, acks: Acks | None = None) -> Outcome:
    """Measure, print the case's line, record it, and fail the case unless all three are zero."""
    settle_jobs()
    if vm_name is not None and acks is not None:
        in_sync_devices = wait_healthy(vm_name)
        acks.stop()
        legs = read_legs(vm_name)
        names = list(legs)  # in leg order: vda, vdb
        in_sync = [names[i] for i, dev in enumerate(("vda", "vdb")) if dev in in_sync_devices and i < len(names)]
        verdict = judge(acks, legs, in_sync or names)
        outcome.written, outcome.acked, outcome.read_back = verdict.written, verdict.acked, verdict.read_back
        outcome.lost, outcome.double = verdict.lost, verdict.double
    outcome.orphans, outcome.detail = orphans()
    line = outcome.line()
    print(f"\nCHAOS {line}")
    LINES.append(line)
    results = Path(settings.LAB_DIR) / "chaos-results.jsonl"
    with results.open("a") as out:
        out.write(json.dumps({**asdict(outcome), "at": time.time()}) + "\n")
    assert (outcome.lost, outcome.double, outcome.orphans) == (0, 0, 0), f"{line}\n{outcome.detail}"
    return outcome


def pytest_terminal_summary(terminalreporter) -> None:
    def cases(outcome: str) -> int:
        return sum(1 for report in terminalreporter.stats.get(outcome, [])
                   if "tests/chaos/" in getattr(report, "nodeid", "") and report.when in ("call", "setup"))

    passed, failed = cases("passed"), cases("failed") + cases("error")
    if LINES or passed or failed:
        terminalreporter.write_sep("=", "fault suite")
        for line in LINES:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"{passed} passed, {failed} failed")
