"""`make bench` (part): provisioning from an image (issue 12, item 2): the panel writing the debian-12
image onto both legs of a new VM against `dd` of the same file on one disk server.

The panel's figure is the step "Write <image> onto both legs" of real `vm.create` jobs (each disk
server writes its own copy onto its own new volume, both at once), read from the job's log; the
baseline is the same `dd` (bs=4M, sparse, fsync) of the same copy onto a new volume of the same size
on disk1 over SSH, interleaved with the creates. The image is built once (or taken from the build
cache), registered and copied to the disk servers before the rounds.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bench import database, lab_run, report

DB_NAME = "xenaoe_bench_provisioning"
ROUNDS = int(os.environ.get("BENCH_PROVISIONING_ROUNDS", "3"))
SECTION = "Provisioning from an image"
STEP = "onto both legs"


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
    report.save("provisioning", [
        report.Figure(SECTION, f"{image.name} ({image.size_mib} MiB) onto both legs of a new VM",
                      "dd of the same file on one disk server", panel, bare,
                      notes={"note": "both legs at once, each disk server from its own copy"}),
    ])
    database.drop(DB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
