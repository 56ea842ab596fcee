"""`make bench` (part): creating VMs through the panel against a bare shell script (issue 12, items 1
and 3, and the second worker).

- Creation overhead: `create_vm` (what the API and the wizard call) to the job's end, a running
  guest, against a shell script doing the same host operations over SSH in sequence with the same
  ssh options and remote scripts (a volume and a vblade export on each disk server, both legs
  attached on the CPU server, `virsh define`, `virsh start`, `virsh domstate`). Interleaved: script,
  panel, script, panel. Both boot the same domain (64 MiB, no OS: the guest's boot is not the
  panel's to speed up).
- Parallel creation: 20 VMs queued at once against the same 20 one after another: each must succeed
  on its own shelf.slot; then the same 20 at once with a second worker process beside the first.
Its own database, workers and lab (brought up, and down again if it was not up).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from bench import database, lab_run, report

if TYPE_CHECKING:  # the bench sets Django up before it reads any model
    from hosts.models import CpuServer, DiskServer

DB_NAME = "xenaoe_bench_create"
ROUNDS = int(os.environ.get("BENCH_CREATE_ROUNDS", "5"))
PARALLEL = int(os.environ.get("BENCH_PARALLEL_VMS", "20"))
SECTION = "Creating VMs"
SCRIPT_SLOT = 250  # the script's legs: a slot no VM of the bench takes
SCRIPT_DOMAIN = "xa-benchscript"


def job_finished(job_pk: int, timeout: float = 180) -> datetime.datetime:
    """When the job ended (its own timestamp: the bench's polling adds nothing); fails unless it succeeded."""
    from jobs.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_pk)
        if job.finished_at is not None:
            if job.state != "succeeded":
                raise RuntimeError(f"job {job.pk} ({job.kind} {job.target_name}) {job.state}: {job.message}")
            return job.finished_at
        time.sleep(0.05)
    raise RuntimeError(f"job {job_pk} did not finish within {timeout:g} s")


def create_through_panel(name: str) -> float:
    from django.utils import timezone

    from vms.services import VmRequest, create_vm

    started = timezone.now()
    job = create_vm(VmRequest(name=name, vcpus=1, memory_mib=64, disk_mib=32, cpu_server="cpu1", image="none"))
    return (job_finished(job.pk) - started).total_seconds()


def delete_through_panel(name: str) -> None:
    from vms.services import delete_vm

    job_finished(delete_vm(name).pk)


class Script:
    """The shell script's side: its files, its run, and its cleanup (not timed)."""

    def __init__(self, workdir: Path) -> None:
        from drivers import aoe, vblade
        from hosts.models import CpuServer, DiskServer
        from hosts.targets import ssh_target

        self.workdir = workdir
        self.cpu = CpuServer.objects.get(name="cpu1")
        self.disks = list(DiskServer.objects.order_by("name")[:2])
        self.cpu_target = ssh_target(self.cpu)
        self.disk_targets = [ssh_target(d) for d in self.disks]
        self.paths = [f"{d.volume_dir}/benchscript.img" for d in self.disks]
        self.scripts = {name: workdir / name for name in ("volume.sh", "vblade-export.sh")}
        for name, path in self.scripts.items():
            path.write_text(vblade.remote_script(name))
        self.attach = aoe.REMOTE_DIR / "aoe-attach.sh"
        self.file = workdir / "create.sh"

    def write(self, template_xml: str) -> None:
        """The script, for the domain whose XML the panel wrote (renamed, on the script's legs)."""
        from bench.lab_run import ssh_line

        xml = self.workdir / "domain.xml"
        xml.write_text(template_xml)
        lines = ["#!/bin/sh", "set -eu"]
        for disk, target, path in zip(self.disks, self.disk_targets, self.paths, strict=True):
            lines.append(ssh_line(target, ["sh", "-s", "--", "create", path, "32"], self.scripts["volume.sh"]))
            argv = ["sh", "-s", "--", str(disk.aoe_shelf), str(SCRIPT_SLOT), disk.san_interface, path]
            lines.append(ssh_line(target, argv, self.scripts["vblade-export.sh"]) + " >/dev/null")
        for disk in self.disks:
            argv = ["sh", "-s", "--", str(disk.aoe_shelf), str(SCRIPT_SLOT), "200"]
            lines.append(ssh_line(self.cpu_target, argv, self.attach) + " >/dev/null")
        virsh = f"virsh -q -c {shlex.quote(self.cpu.libvirt_uri)}"
        lines += [f"{virsh} define {xml} >/dev/null", f"{virsh} start {SCRIPT_DOMAIN} >/dev/null",
                  f'[ "$({virsh} domstate {SCRIPT_DOMAIN})" = running ]']
        self.file.write_text("\n".join(lines) + "\n")

    def run(self) -> None:
        subprocess.run(["sh", str(self.file)], check=True, timeout=120)

    def clean(self) -> None:
        remove_script_guest(self.cpu, self.disks, self.paths, SCRIPT_DOMAIN, SCRIPT_SLOT)


def remove_script_guest(cpu: CpuServer, disks: list[DiskServer], paths: list[str], domain: str, slot: int) -> None:
    """What a baseline script made, gone (untimed): its domain on `cpu`, its legs attached there, and
    each disk server's export at `slot` and volume at its path."""
    from drivers import aoe, hypervisor, vblade
    from hosts.targets import ssh_target

    uri = cpu.libvirt_uri
    if hypervisor.domain_info(uri, domain) is not None:
        hypervisor.destroy(uri, domain)
        hypervisor.undefine(uri, domain)
    for disk, path in zip(disks, paths, strict=True):
        aoe.detach(ssh_target(cpu), disk.aoe_shelf, slot)
        vblade.stop_export(ssh_target(disk), disk.aoe_shelf, slot)
        vblade.remove_volume(ssh_target(disk), path)


def script_xml(vm_name: str, domain: str, legs_by_shelf: dict[int, str]) -> str:
    """The domain the panel defines for `vm_name`, as a script's own `domain`: another UUID, the
    script's legs, no NIC (its MAC is the panel VM's)."""
    from drivers import hypervisor
    from vms.guest_setup import domain_spec, legs_of
    from vms.models import VirtualMachine

    vm = VirtualMachine.objects.select_related("cpu_server").get(name=vm_name)
    legs = legs_of(vm)
    spec = domain_spec(vm, legs)
    return hypervisor.domain_xml(dataclasses.replace(
        spec, name=domain, uuid=str(uuid.uuid4()), nics=(),
        disks=tuple(legs_by_shelf[leg.shelf] for leg in legs)))


def bench_overhead(script: Script) -> report.Figure:
    create_through_panel("benchw")
    script.write(script_xml("benchw", SCRIPT_DOMAIN, {d.aoe_shelf: f"/dev/etherd/e{d.aoe_shelf}.{SCRIPT_SLOT}"
                                       for d in script.disks}))
    delete_through_panel("benchw")
    script.clean()
    panel, bare = [], []
    for n in range(ROUNDS):
        started = time.perf_counter()
        script.run()
        bare.append(time.perf_counter() - started)
        script.clean()
        panel.append(create_through_panel(f"bench{n}"))
        delete_through_panel(f"bench{n}")
    return report.Figure(SECTION, "VM create: API call -> running guest (no OS)",
                         "shell script, same host operations over SSH", panel, bare, target=1.2)


def create_many(prefix: str, at_once: bool) -> float:
    """Wall time for PARALLEL creates, queued together or each after the last one ended."""
    from django.utils import timezone

    from storage.models import AoEExport
    from vms.services import VmRequest, create_vm

    started = timezone.now()
    jobs = []
    for n in range(PARALLEL):
        job = create_vm(VmRequest(name=f"{prefix}{n}", vcpus=1, memory_mib=64, disk_mib=32, image="none"))
        if at_once:
            jobs.append(job)
        else:
            job_finished(job.pk, timeout=300)
    ended = max(job_finished(job.pk, timeout=600) for job in jobs) if at_once else timezone.now()
    addresses = list(AoEExport.objects.filter(mirror__vm__name__startswith=prefix).values_list(
        "disk_server_id", "shelf", "slot"))
    if len(addresses) != 2 * PARALLEL or len(set(addresses)) != len(addresses):
        raise RuntimeError(f"{prefix}: {len(addresses)} legs, {len(set(addresses))} distinct shelf.slots")
    return (ended - started).total_seconds()


def delete_many(prefix: str) -> None:
    from vms.models import VirtualMachine
    from vms.services import delete_vm

    for job in [delete_vm(name) for name in VirtualMachine.objects.filter(
            name__startswith=prefix).values_list("name", flat=True)]:
        job_finished(job.pk, timeout=300)


def main() -> int:
    if not lab_run.set_up(DB_NAME):
        return 2
    from bench.lab_run import Workers, lab

    figures = []
    with lab(), tempfile.TemporaryDirectory(prefix="bench-create-") as workdir:
        script = Script(Path(workdir))
        script.clean()
        try:
            with Workers(1):
                figures.append(bench_overhead(script))
                one_by_one = create_many("seq", at_once=False)
                delete_many("seq")
                at_once = create_many("par", at_once=True)
                delete_many("par")
            with Workers(2):
                two_workers = create_many("two", at_once=True)
                delete_many("two")
        finally:
            script.clean()
    notes = {"VMs": PARALLEL, "worker": "1 process, 4 threads"}
    figures += [
        report.Figure(SECTION, f"{PARALLEL} VMs queued at once, one worker", f"the same {PARALLEL} one after another",
                      [at_once], [one_by_one], notes=notes),
        report.Figure(SECTION, f"{PARALLEL} VMs queued at once, two workers", f"{PARALLEL} at once, one worker",
                      [two_workers], [at_once], notes={"VMs": PARALLEL, "workers": "2 processes, 4 threads each"}),
    ]
    report.save("creation", figures)
    database.drop(DB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
