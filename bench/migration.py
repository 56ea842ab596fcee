"""`make bench` (part): live migration of a busy guest through the panel against `virsh migrate --live
--p2p` of the same guest by hand (issue 12, item 8).

The guest: 256 MiB, the lab's busy kernel (lab/guests/busy.py) dirtying 32 MiB/s of its RAM. Each
round moves it cpu1 -> cpu2 through the panel (`migrate_vm`, the API's and the page's verb: checks,
both legs attached on the target, the migration with progress, the inventory, the source's legs
detached) and back cpu2 -> cpu1 by hand, as an operator would: both legs attached on cpu1, `virsh
migrate` with the panel's flags, the legs detached on cpu2. Total wall time and the downtime QEMU
measured (the final pause), both ways.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench import database, lab_run, report

DB_NAME = "xenaoe_bench_migration"
ROUNDS = int(os.environ.get("BENCH_MIGRATION_ROUNDS", "5"))
MEMORY_MIB = 256
DIRTY_MIB_PER_S = 32.0
VM = "benchmig"
SECTION = "Live migration"
# The KVM and QEMU flavours' migration flags (drivers/hypervisors/kvm.py), as virsh spells them.
VIRSH_FLAGS = ["--live", "--p2p", "--persistent", "--undefinesource", "--auto-converge", "--abort-on-error"]


def through_panel() -> tuple[float, float]:
    """cpu1 -> cpu2: seconds from the call to the job's end, and the downtime in seconds."""
    from django.utils import timezone

    from bench.creation import job_finished
    from jobs.models import Job
    from vms.migration import migrate_vm

    started = timezone.now()
    job = migrate_vm(VM, "cpu2")
    ended = job_finished(job.pk)
    final = [e.data["migration"] for e in Job.objects.get(pk=job.pk).log.order_by("serial")
             if "migration" in e.data][-1]
    return (ended - started).total_seconds(), final["downtime_ms"] / 1000


def by_hand(script: Path) -> tuple[float, float]:
    """cpu2 -> cpu1 with the script; the panel's inventory follows (untimed bookkeeping)."""
    from hosts.models import CpuServer
    from vms.models import VirtualMachine

    started = time.perf_counter()
    subprocess.run(["sh", str(script)], check=True, timeout=300)
    took = time.perf_counter() - started
    cpu1 = CpuServer.objects.get(name="cpu1")
    info = subprocess.run(["virsh", "-c", cpu1.libvirt_uri, "domjobinfo", "--completed", f"xa-{VM}"],
                          capture_output=True, text=True, check=True).stdout
    downtime = re.search(r"Total downtime:\s+(\d+)\s+ms", info)
    if downtime is None:
        raise RuntimeError(f"no downtime in virsh domjobinfo: {info}")
    VirtualMachine.objects.filter(name=VM).update(cpu_server=cpu1)
    return took, int(downtime.group(1)) / 1000


def write_script(path: Path) -> None:
    from bench.lab_run import ssh_line
    from drivers import aoe
    from hosts.models import CpuServer
    from hosts.targets import ssh_target
    from storage.models import AoEExport
    from vms.migration import migration_uri

    cpu1, cpu2 = CpuServer.objects.get(name="cpu1"), CpuServer.objects.get(name="cpu2")
    legs = list(AoEExport.objects.filter(mirror__vm__name=VM).order_by("leg"))
    lines = ["#!/bin/sh", "set -eu"]
    for leg in legs:
        argv = ["sh", "-s", "--", str(leg.shelf), str(leg.slot), "200"]
        lines.append(ssh_line(ssh_target(cpu1), argv, aoe.REMOTE_DIR / "aoe-attach.sh") + " >/dev/null")
    lines.append(shlex.join(["virsh", "-q", "-c", cpu2.libvirt_uri, "migrate", *VIRSH_FLAGS, f"xa-{VM}",
                             migration_uri(cpu1)]))
    for leg in legs:
        argv = ["sh", "-s", "--", str(leg.shelf), str(leg.slot), "200"]
        lines.append(ssh_line(ssh_target(cpu2), argv, aoe.REMOTE_DIR / "aoe-detach.sh"))
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    if not lab_run.set_up(DB_NAME):
        return 2
    import tempfile

    from django.conf import settings

    from bench.creation import job_finished
    from bench.lab_run import Workers, lab
    from lab.guests import busy
    from vms.services import VmRequest, create_vm, delete_vm

    panel_total, panel_down, hand_total, hand_down = [], [], [], []
    with lab(), Workers(1), tempfile.TemporaryDirectory(prefix="bench-migration-") as workdir:
        kernel = busy.install_busy_kernel(Path(settings.LAB_DIR) / "guests", DIRTY_MIB_PER_S)
        job_finished(create_vm(VmRequest(name=VM, vcpus=1, memory_mib=MEMORY_MIB, disk_mib=16, cpu_server="cpu1",
                                      kernel_path=str(kernel), allow_n_plus_one_break=True)).pk)
        script = Path(workdir) / "migrate.sh"
        write_script(script)
        try:
            time.sleep(2)  # the guest has dirtied its RAM once
            for _ in range(ROUNDS):
                total, down = through_panel()
                panel_total.append(total)
                panel_down.append(down)
                total, down = by_hand(script)
                hand_total.append(total)
                hand_down.append(down)
        finally:
            job_finished(delete_vm(VM).pk)
    notes = {"guest": f"{MEMORY_MIB} MiB dirtying {DIRTY_MIB_PER_S:g} MiB/s"}
    report.save("migration", [
        report.Figure(SECTION, "live migration through the panel: call -> job done",
                      "virsh migrate --live --p2p by hand (legs attached, detached)", panel_total, hand_total,
                      notes=notes),
        report.Figure(SECTION, "downtime (the final pause, as QEMU measured it)", "the same with virsh by hand",
                      panel_down, hand_down, notes=notes),
    ])
    database.drop(DB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
