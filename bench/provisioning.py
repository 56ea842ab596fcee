"""`make bench` (part): provisioning from an image (issue 12, item 2): the panel writing the debian-12
image onto both legs of a new VM against `dd` of the same file on one disk server; and creating a VM
from that image until it answers on its network (item 1 with an OS), against a shell script.

The panel's figure is the step "Write <image> onto both legs" of real `vm.create` jobs (each disk
server writes its own copy onto its own new volume, both at once), read from the job's log; the
baseline is the same `dd` (bs=4M, sparse, fsync) of the same copy onto a new volume of the same size
on disk1 over SSH, interleaved with the creates. The image is built once (or taken from the build
cache), registered and copied to the disk servers before the rounds.

To a guest that answers: `create_vm` from the image until the guest's address answers a ping from
the lab's client on the guests' network, against a shell script doing the same host operations over
SSH in sequence (a volume on each disk server, `dd` of its copy onto it, a vblade export, both legs
attached on the CPU server, `virsh define` of the domain the panel wrote for a first VM, its seed,
`virsh start`) and pinging the same way. Both boot the same Debian under TCG: the boot is most of
either time; the ratio shows what the panel adds to it.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import database, lab_run, report

DB_NAME = "xenaoe_bench_provisioning"
ROUNDS = int(os.environ.get("BENCH_PROVISIONING_ROUNDS", "3"))
SECTION = "Provisioning from an image"
STEP = "onto both legs"
ANSWER_ROUNDS = int(os.environ.get("BENCH_ANSWER_ROUNDS", "3"))
SCRIPT_SLOT = 251  # the script's legs: a slot no VM of the bench takes
SCRIPT_DOMAIN = "xa-benchimgscript"


def write_step_seconds(job_pk: int) -> float:
    from jobs.models import Job

    job = Job.objects.get(pk=job_pk)
    steps = list(job.log.filter(message__startswith="Step ").order_by("serial"))
    for entry, following in zip(steps, steps[1:] + [None], strict=True):
        if STEP in entry.message:
            end = following.time if following is not None else job.finished_at
            return (end - entry.time).total_seconds()
    raise RuntimeError(f"job {job_pk} has no step '{STEP}'")


def dd_once(copy_path: str, size_mib: int) -> float:
    from drivers import images, vblade
    from hosts.models import DiskServer
    from hosts.targets import ssh_target

    disk = DiskServer.objects.get(name="disk1")
    target, scratch = ssh_target(disk), f"{disk.volume_dir}/bench-dd.img"
    vblade.remove_volume(target, scratch)
    vblade.create_volume(target, scratch, size_mib)
    try:
        started = time.perf_counter()
        images.write_image(target, copy_path, scratch)  # `dd if=... of=... bs=4M conv=notrunc,sparse,fsync`
        return time.perf_counter() - started
    finally:
        vblade.remove_volume(target, scratch)


def first_ping(address: str, timeout: float = 300) -> subprocess.Popen:
    """Pinging `address` from the lab's client until the first reply (then it exits 0). One ping
    after another, each waiting 0.3 s: a single `ping -c 1 -w` ends at the first "host
    unreachable" (an ARP that got no answer while the guest boots) as at a reply."""
    from lab.topology import CLIENT

    subprocess.run(["ip", "netns", "exec", CLIENT.netns, "ip", "neigh", "flush", "all"], check=True)
    until = f"until ping -n -q -c 1 -W 0.3 {shlex.quote(address)} >/dev/null 2>&1; do :; done"
    return subprocess.Popen(["ip", "netns", "exec", CLIENT.netns, "timeout", str(int(timeout)), "sh", "-c", until])


def answered(ping: subprocess.Popen, started: float, what: str) -> float:
    if ping.wait(timeout=600) != 0:
        raise RuntimeError(f"{what}: no ping answered")
    return time.perf_counter() - started


class ImageScript:
    """The script's side: the domain the panel wrote for a first VM from the image (its NIC and
    address, its seed copied aside), on the script's own legs, each written with `dd` from the disk
    server's copy of the image; made, run, and cleaned (untimed)."""

    def __init__(self, workdir: Path, vm_name: str, disk_mib: int) -> None:
        from bench.lab_run import ssh_line
        from drivers import aoe, hypervisor, ssh, vblade
        from drivers.images import WRITE
        from hosts.models import DiskServer
        from hosts.targets import ssh_target
        from vms.guest_setup import domain_spec, legs_of, seed_path
        from vms.models import VirtualMachine

        vm = VirtualMachine.objects.select_related("cpu_server", "mirror", "image").get(name=vm_name)
        self.cpu, self.disks = vm.cpu_server, list(DiskServer.objects.order_by("name")[:2])
        self.address = vm.nics.get().ip
        self.cpu_target, self.disk_targets = ssh_target(self.cpu), [ssh_target(d) for d in self.disks]
        self.paths = [f"{d.volume_dir}/benchimgscript.img" for d in self.disks]
        seed = f"{seed_path(vm).rsplit('/', 1)[0]}/{SCRIPT_DOMAIN}.iso"
        ssh.run(self.cpu_target, ["cp", "--", seed_path(vm), seed], timeout=30)
        vm.mirror.md_created = False  # fresh legs: the first boot makes the array, as for a new VM
        legs = legs_of(vm)
        spec = dataclasses.replace(domain_spec(vm, legs), name=SCRIPT_DOMAIN, uuid=str(uuid.uuid4()), seed=seed,
                                   disks=tuple(f"/dev/etherd/e{leg.shelf}.{SCRIPT_SLOT}" for leg in legs))
        xml = workdir / "domain.xml"
        xml.write_text(hypervisor.domain_xml(spec))
        scripts = {name: workdir / name for name in ("volume.sh", "vblade-export.sh")}
        for name, path in scripts.items():
            path.write_text(vblade.remote_script(name))
        write = workdir / "write.sh"
        write.write_text(WRITE)
        copies = {c.disk_server_id: c.path for c in vm.image.copies.all()}
        lines = ["#!/bin/sh", "set -eu"]
        for disk, target, path in zip(self.disks, self.disk_targets, self.paths, strict=True):
            lines.append(ssh_line(target, ["sh", "-s", "--", "create", path, str(disk_mib)], scripts["volume.sh"]))
            lines.append(ssh_line(target, ["sh", "-s", "--", copies[disk.pk], path], write))
            argv = ["sh", "-s", "--", str(disk.aoe_shelf), str(SCRIPT_SLOT), disk.san_interface, path]
            lines.append(ssh_line(target, argv, scripts["vblade-export.sh"]) + " >/dev/null")
        for disk in self.disks:
            argv = ["sh", "-s", "--", str(disk.aoe_shelf), str(SCRIPT_SLOT), "200"]
            lines.append(ssh_line(self.cpu_target, argv, aoe.REMOTE_DIR / "aoe-attach.sh") + " >/dev/null")
        virsh = f"virsh -q -c {shlex.quote(self.cpu.libvirt_uri)}"
        lines += [f"{virsh} define {xml} >/dev/null", f"{virsh} start {SCRIPT_DOMAIN} >/dev/null"]
        self.file = workdir / "create.sh"
        self.file.write_text("\n".join(lines) + "\n")

    def run(self) -> float:
        started = time.perf_counter()
        ping = first_ping(self.address)
        subprocess.run(["sh", str(self.file)], check=True, timeout=300)
        return answered(ping, started, "the script's guest")

    def clean(self) -> None:
        from bench.creation import remove_script_guest

        remove_script_guest(self.cpu, self.disks, self.paths, SCRIPT_DOMAIN, SCRIPT_SLOT)


def create_until_answering(name: str, disk_mib: int) -> float:
    from bench.creation import job_finished
    from vms.models import VirtualMachine
    from vms.services import VmRequest, create_vm

    started = time.perf_counter()
    job = create_vm(VmRequest(name=name, vcpus=2, memory_mib=512, disk_mib=disk_mib, cpu_server="cpu1",
                              allow_n_plus_one_break=True))
    # The address is the VM's from the start (allocated with the request).
    ping = first_ping(VirtualMachine.objects.get(name=name).nics.get().ip)
    seconds = answered(ping, started, name)
    job_finished(job.pk, 300)
    return seconds


def bench_answering(disk_mib: int, image_name: str) -> report.Figure:
    from bench.creation import delete_many, job_finished
    from vms.services import VmRequest, create_vm

    panel, bare = [], []
    with tempfile.TemporaryDirectory(prefix="bench-image-create-") as workdir:
        job_finished(create_vm(VmRequest(name="imgtpl", vcpus=2, memory_mib=512, disk_mib=disk_mib,
                                         cpu_server="cpu1", allow_n_plus_one_break=True)).pk, 300)
        script = ImageScript(Path(workdir), "imgtpl", disk_mib)
        delete_many("imgtpl")
        script.clean()
        try:
            for n in range(ANSWER_ROUNDS):
                bare.append(script.run())
                script.clean()
                panel.append(create_until_answering(f"img{n}", disk_mib))
                delete_many(f"img{n}")
        finally:
            script.clean()
            delete_many("img")
    return report.Figure("Creating VMs", f"VM create from {image_name}: API call -> guest answers a ping",
                         "shell script, same host operations over SSH, same ping", panel, bare, target=1.2,
                         notes={"note": "both boot the same Debian under TCG (most of either time)"})


def main() -> int:
    if not lab_run.set_up(DB_NAME):
        return 2
    from django.conf import settings

    from bench.creation import delete_many, job_finished
    from bench.lab_run import Workers, lab
    from images import build
    from images.models import Image
    from images.services import register_built
    from lab import register
    from vms.services import VmRequest, create_vm

    panel, bare = [], []
    with lab(), Workers(1):
        recipe = build.RECIPES["debian-12"]
        built = build.build(recipe, Path(settings.IMAGE_BUILD_CACHE), lambda _p, message: print(message))
        register.register_guest_network()
        job_finished(register_built(recipe, built, name="debian-12", source="bench", make_default=True).pk, 900)
        image = Image.objects.get(name="debian-12")
        copy = image.copies.get(disk_server__name="disk1")
        disk_mib = max(1024, image.size_mib)
        try:
            for n in range(ROUNDS):
                bare.append(dd_once(copy.path, disk_mib))
                job = create_vm(VmRequest(name=f"prov{n}", vcpus=1, memory_mib=256, disk_mib=disk_mib,
                                          cpu_server="cpu1", allow_n_plus_one_break=True))
                job_finished(job.pk, 300)
                panel.append(write_step_seconds(job.pk))
                delete_many(f"prov{n}")
        finally:
            delete_many("prov")
        answering = bench_answering(disk_mib, image.name)
    report.save("provisioning", [
        answering,
        report.Figure(SECTION, f"{image.name} ({image.size_mib} MiB) onto both legs of a new VM",
                      "dd of the same file on one disk server", panel, bare,
                      notes={"note": "both legs at once, each disk server from its own copy"}),
    ])
    database.drop(DB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
