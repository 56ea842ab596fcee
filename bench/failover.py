"""`make bench` (part): failover of a CPU server running 6 guests (issue 12, item 4), with the default
settings, split into detection, fencing and restart; against the floor: the same 6 guests started
by hand on the survivor (both legs attached, `virsh define`, `virsh start`, in sequence) as an
operator would once they know the host is dead.

Each round: 6 guests (64 MiB, no OS) created on cpu2, the monitor (`manage.py monitor`, its own
process, default interval and misses) watching, beside the guests' figures sampler (`manage.py
vm_stats`, every 2 s here rather than 60: as deployed, and made to read the hosts while one dies);
cpu2's plug pulled (every process in it killed, its
BMC up: IPMI fencing confirms); the times read from the incident's own timeline (detected, fenced,
the last guest restarted). Then cpu2 is brought back and the guests deleted, untimed.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import database, lab_run, report
from bench.report import REPO

DB_NAME = "xenaoe_bench_failover"
ROUNDS = int(os.environ.get("BENCH_FAILOVER_ROUNDS", "3"))
GUESTS = 6
SECTION = "Failover"
FLOOR_SLOTS = range(240, 240 + GUESTS)  # the floor's own legs, no VM of the bench takes them
# Another check interval than the default, to show what detection costs (e.g. 1): `make bench` runs both.
INTERVAL_S = os.environ.get("BENCH_FAILOVER_INTERVAL_S", "")


MONITOR_LOG = report.RESULTS / "failover-monitor.log"
SAMPLER_LOG = report.RESULTS / "failover-vm-stats.log"


def _panel_process(command: str, log_path: Path, **env_extra: str) -> subprocess.Popen:
    """`manage.py <command>` as its own process, what it says kept in .bench/."""
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="xenaoe_panel.settings_lab", **env_extra)
    log_path.parent.mkdir(exist_ok=True)
    with log_path.open("w") as log:
        return subprocess.Popen([sys.executable, "manage.py", command], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def _alive(process: subprocess.Popen, log_path: Path) -> None:
    if process.poll() is not None:
        tail = "\n".join(log_path.read_text().splitlines()[-20:])
        raise RuntimeError(f"{process.args[2]} exited ({process.returncode}); the end of {log_path}:\n{tail}")


def _create_guests(prefix: str) -> list[str]:
    from bench.creation import job_finished
    from vms.services import VmRequest, create_vm

    names = [f"{prefix}{n}" for n in range(GUESTS)]
    for name in names:
        job_finished(create_vm(VmRequest(name=name, vcpus=1, memory_mib=64, disk_mib=32, cpu_server="cpu2",
                                      image="none", allow_n_plus_one_break=True)).pk)
    return names


def _wait(predicate, timeout: float, what: str) -> None:  # noqa: ANN001 - a callable returning truth
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:g} s")
        time.sleep(0.1)


def one_failover(prefix: str, monitor: subprocess.Popen) -> dict[str, float]:
    """Pull cpu2's plug under 6 guests; seconds from the pull to detection, fence and last restart."""
    from django.utils import timezone

    from ha.choices import EventKind
    from ha.models import Incident
    from lab import cluster
    from vms.models import VirtualMachine

    names = _create_guests(prefix)
    pulled = timezone.now()
    cluster.kill_host("cpu2")

    def restarted() -> bool:
        _alive(monitor, MONITOR_LOG)
        return VirtualMachine.objects.filter(name__in=names, state="running", cpu_server__name="cpu1").count() == GUESTS

    _wait(restarted, 120, f"the {GUESTS} guests were not running on cpu1")
    incident = Incident.objects.filter(host_name="cpu2").latest("opened_at")
    events = incident.events.all()

    def first(kind: str) -> float:
        return (min(e.time for e in events if e.kind == kind) - pulled).total_seconds()

    last_restart = (max(e.time for e in events if e.kind == EventKind.RESTARTED) - pulled).total_seconds()
    return {"detected": first(EventKind.DETECTED), "fenced": first(EventKind.FENCED), "restarted": last_restart}


def sampled_after_failover(prefix: str, sampler: subprocess.Popen) -> None:
    """The figures sampler read the survivor while cpu2 died: the restarted guests get figures there
    (two passes of it after their restart), untimed. A sampler that died or hung fails the bench."""
    from django.utils import timezone

    from vms.models import VmSample

    since = timezone.now()

    def sampled() -> bool:
        _alive(sampler, SAMPLER_LOG)
        return VmSample.objects.filter(vm__name__startswith=prefix, vm__cpu_server__name="cpu1",
                                       time__gte=since).exists()

    _wait(sampled, 30, "the figures sampler recorded no restarted guest")


def bring_back(prefix: str) -> None:
    """cpu2 booted again, its stale guests gone, every guest deleted, cpu2 back in service."""
    from bench.creation import delete_many
    from drivers import hypervisor
    from ha.fencing import restore_storage_access
    from ha.models import Incident
    from hosts.choices import HostState
    from hosts.models import CpuServer
    from lab import cluster
    from vms.models import VirtualMachine

    cluster.up(out=lambda _line: None)
    cpu2 = CpuServer.objects.get(name="cpu2")
    for vm in VirtualMachine.objects.filter(name__startswith=prefix):
        hypervisor.destroy(cpu2.libvirt_uri, vm.domain_name)
        hypervisor.undefine(cpu2.libvirt_uri, vm.domain_name)
    _wait(lambda: not Incident.objects.filter(host_name="cpu2").exclude(state="closed").exists(), 60,
          "the incident was not closed")
    CpuServer.objects.filter(pk=cpu2.pk).update(state=HostState.UP)
    restore_storage_access()
    delete_many(prefix)


class Floor:
    """The same 6 restarts by hand on cpu1: its own volumes and exports (made untimed), then one
    shell script attaching both legs and defining and starting each domain, in sequence."""

    def __init__(self, workdir: Path, template_vm: str) -> None:
        from bench.creation import script_xml
        from bench.lab_run import ssh_line
        from drivers import aoe
        from hosts.models import CpuServer, DiskServer
        from hosts.targets import ssh_target

        self.cpu = CpuServer.objects.get(name="cpu1")
        self.disks = list(DiskServer.objects.order_by("name")[:2])
        self.names = [f"xa-benchfloor{n}" for n in range(GUESTS)]
        virsh = f"virsh -q -c {shlex.quote(self.cpu.libvirt_uri)}"
        lines = ["#!/bin/sh", "set -eu"]
        for name, slot in zip(self.names, FLOOR_SLOTS, strict=True):
            legs = [f"/dev/etherd/e{d.aoe_shelf}.{slot}" for d in self.disks]
            xml = workdir / f"{name}.xml"
            xml.write_text(script_xml(template_vm, name, {d.aoe_shelf: leg for d, leg in zip(self.disks, legs,
                                                                                         strict=True)}))
            for disk in self.disks:
                argv = ["sh", "-s", "--", str(disk.aoe_shelf), str(slot), "200"]
                lines.append(ssh_line(ssh_target(self.cpu), argv, aoe.REMOTE_DIR / "aoe-attach.sh") + " >/dev/null")
            lines += [f"{virsh} define {xml} >/dev/null", f"{virsh} start {name} >/dev/null"]
        self.file = workdir / "restart.sh"
        self.file.write_text("\n".join(lines) + "\n")

    def exports(self, start: bool) -> None:
        from drivers import aoe, hypervisor, vblade
        from hosts.targets import ssh_target

        for slot in FLOOR_SLOTS:
            for disk in self.disks:
                target, path = ssh_target(disk), f"{disk.volume_dir}/benchfloor{slot}.img"
                if start:
                    vblade.create_volume(target, path, 32)
                    vblade.start_export(target, vblade.ExportSpec(disk.aoe_shelf, slot, disk.san_interface, path))
                else:
                    aoe.detach(ssh_target(self.cpu), disk.aoe_shelf, slot)
                    vblade.stop_export(target, disk.aoe_shelf, slot)
                    vblade.remove_volume(target, path)
        if not start:
            for name in self.names:
                if hypervisor.domain_info(self.cpu.libvirt_uri, name) is not None:
                    hypervisor.destroy(self.cpu.libvirt_uri, name)
                    hypervisor.undefine(self.cpu.libvirt_uri, name)

    def run(self) -> float:
        started = time.perf_counter()
        subprocess.run(["sh", str(self.file)], check=True, timeout=120)
        return time.perf_counter() - started


def main() -> int:
    if INTERVAL_S:
        os.environ["XENAOE_MONITOR_INTERVAL_S"] = INTERVAL_S  # the monitor's (a child) and this process's
    if not lab_run.set_up(DB_NAME):
        return 2
    from django.conf import settings

    from bench.creation import delete_many
    from bench.lab_run import Workers, lab
    from hosts.models import CpuServer

    splits: list[dict[str, float]] = []
    floors: list[float] = []
    with lab(), Workers(1, concurrency=6), tempfile.TemporaryDirectory(prefix="bench-failover-") as workdir:
        CpuServer.objects.update(fence_methods="ipmi,storage")
        _create_guests("benchtpl")
        floor = Floor(Path(workdir), "benchtpl0")
        delete_many("benchtpl")
        monitor = _panel_process("monitor", MONITOR_LOG)
        sampler = _panel_process("vm_stats", SAMPLER_LOG, XENAOE_VM_STATS_INTERVAL_S="2")
        try:
            for n in range(ROUNDS):
                floor.exports(start=True)
                floors.append(floor.run())
                floor.exports(start=False)
                splits.append(one_failover(f"fo{n}x", monitor))
                print(f"round {n}: {splits[-1]}, floor {floors[-1]:.2f} s")
                sampled_after_failover(f"fo{n}x", sampler)
                bring_back(f"fo{n}x")
        finally:
            for process in (monitor, sampler):
                process.terminate()
                process.wait(timeout=20)
            floor.exports(start=False)
    monitor_settings = {"interval": f"{settings.MONITOR_INTERVAL_S} s",
                        "dead after": f"{settings.MONITOR_DEAD_AFTER} misses"}
    which = f", checks every {INTERVAL_S} s" if INTERVAL_S else ", default settings"
    floor_name = f"the {GUESTS} restarts by hand (virsh)"
    figures = [
        report.Figure(SECTION, f"plug pulled -> {GUESTS} guests running on the survivor{which}", floor_name,
                      [s["restarted"] for s in splits], floors, target_p95_s=None if INTERVAL_S else 10.0,
                      notes=monitor_settings),
        report.Figure(SECTION, "  of which: plug pulled -> detected", floor_name, [s["detected"] for s in splits],
                      floors),
    ]
    if not INTERVAL_S:
        figures += [
            report.Figure(SECTION, "  of which: detected -> fenced (IPMI power off, confirmed)", floor_name,
                          [s["fenced"] - s["detected"] for s in splits], floors),
            report.Figure(SECTION, f"  of which: fenced -> {GUESTS} guests restarted", floor_name,
                          [s["restarted"] - s["fenced"] for s in splits], floors),
        ]
    report.save(f"failover-interval{INTERVAL_S}" if INTERVAL_S else "failover", figures)
    database.drop(DB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
