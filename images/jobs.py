"""The steps of image jobs: copy an image's disk to the disk servers, remove the copies."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from drivers import images as image_files
from drivers import vblade
from drivers.errors import DriverError
from hosts.models import DiskServer
from hosts.targets import ssh_target
from images import importer
from images.choices import CopyState, ImageState
from images.job_params import ImageCopyParams, ImageImportParams, ImageRemoveParams
from images.models import Image, ImageCopy
from images.services import register_imported
from jobs.choices import LogLevel
from jobs.runner import JobContext, JobFailed, Step, job_kind
from storage import access as storage_access
from storage.choices import ExportState
from storage.models import AoEExport

PROGRESS_EVERY_S = 1.0
MIB = 1 << 20


def _image(ctx: JobContext) -> Image:
    name = ImageCopyParams.of(ctx.job).image
    image = Image.objects.filter(name=name).first()
    if image is None:
        raise JobFailed(f"image {name} no longer exists")
    return image


def copy_to(disk_name: str):  # noqa: ANN201 - a step function
    def step(ctx: JobContext) -> None:
        image = _image(ctx)
        disk = DiskServer.objects.get(name=disk_name)
        copy = ImageCopy.objects.get(image=image, disk_server=disk)
        target = ssh_target(disk)
        problem = image_files.verify_image(target, copy.path, image.sha256)
        if problem is None:
            ctx.log(f"{disk.name} already has {copy.path} with the right checksum")
        else:
            source = image.store_dir / image.store_file
            total = source.stat().st_size
            ctx.log(f"copying {total // MIB} MiB to {disk.name}:{copy.path} ({problem})", percent=0)
            last = 0.0
            started = time.monotonic()

            def progress(done: int, size: int) -> None:
                nonlocal last
                now = time.monotonic()
                if now - last < PROGRESS_EVERY_S and done < size:
                    return
                last = now
                rate = done / max(now - started, 0.001)
                eta = (size - done) / rate if rate else None
                ctx.log(f"{disk.name}: {100 * done / size:.0f} % of {size // MIB} MiB, {rate / MIB:.0f} MiB/s",
                        percent=round(100 * done / size, 1), bytes_done=done, bytes_total=size,
                        eta_s=round(eta) if eta is not None else None)
                ctx.check_cancel()

            try:
                image_files.receive_image(target, source, copy.path, image.sha256,
                                          timeout=settings.IMAGE_COPY_TIMEOUT_S, on_progress=progress)
            except DriverError as exc:
                ImageCopy.objects.filter(pk=copy.pk).update(state=CopyState.FAILED, detail=str(exc)[:255])
                raise
            ctx.log(f"{disk.name}: received in {time.monotonic() - started:.1f} s, checksum verified there")
        if image.is_iso:
            serve_iso(ctx, copy, restart=problem is not None)
        ImageCopy.objects.filter(pk=copy.pk).update(state=CopyState.READY, detail="", verified_at=timezone.now())

    return step


def serve_iso(ctx: JobContext, copy: ImageCopy, *, restart: bool) -> None:
    """Serve an ISO's copy read-only at its shelf.slot, with the MAC list every export gets; a copy
    just (re)written is served afresh (a running vblade would still hold the file it replaced)."""
    export = AoEExport.objects.select_related("disk_server").get(image_copy=copy)
    disk = export.disk_server
    target = ssh_target(disk)
    if restart:
        vblade.stop_export(target, export.shelf, export.slot)
    spec = vblade.ExportSpec(export.shelf, export.slot, disk.san_interface, copy.path, read_only=True)
    try:
        running = storage_access.start_export(target, spec)
    except storage_access.UnsafeAcl as exc:
        raise JobFailed(f"{export.name} not exported: {exc}") from exc
    AoEExport.objects.filter(pk=export.pk).update(state=ExportState.EXPORTED)
    ctx.log(f"{disk.name}: served read-only as {export.name} (vblade pid {running.pid}) for VMs' CD drives")


def describe_image(ctx: JobContext) -> None:
    image = _image(ctx)
    ctx.log(f"{image.name}: {image.os_name} {image.os_version}, {image.size_mib} MiB, sha256 {image.sha256}")


def mark_ready(ctx: JobContext) -> None:
    image = _image(ctx)
    missing = [c.disk_server.name for c in image.copies.select_related("disk_server") if c.state != CopyState.READY]
    if missing:
        Image.objects.filter(pk=image.pk).update(state=ImageState.FAILED)
        raise JobFailed(f"{image.name} is not on {', '.join(missing)}")
    Image.objects.filter(pk=image.pk).update(state=ImageState.READY)
    ctx.data["result"] = f"{image.name} is on {', '.join(image.disk_servers)}, checksum verified"
    ctx.log(ctx.data["result"])


def mark_failed(ctx: JobContext) -> None:
    Image.objects.filter(name=ImageCopyParams.of(ctx.job).image).exclude(state=ImageState.READY).update(
        state=ImageState.FAILED)


@job_kind("image.copy", params=ImageCopyParams)
def plan_copy(ctx: JobContext) -> list[Step]:
    disks = ImageCopyParams.of(ctx.job).disk_servers
    # The first step's undo marks the image failed if any copy fails: steps undo in reverse.
    return [
        Step("Check the image", describe_image, mark_failed),
        *[Step(f"Copy to {name} and verify its checksum there", copy_to(name)) for name in disks],
        Step("Ready for new VMs", mark_ready),
    ]


def remove_copies(ctx: JobContext) -> None:
    for disk_name, path, *address in ImageRemoveParams.of(ctx.job).copies:
        disk = DiskServer.objects.filter(name=disk_name).first()
        if disk is None:
            continue
        try:
            if address:  # an ISO's copy: served until now
                vblade.stop_export(ssh_target(disk), *address)
                ctx.log(f"e{address[0]}.{address[1]} no longer served on {disk_name}")
            image_files.remove_file(ssh_target(disk), path)
            ctx.log(f"removed {path} on {disk_name}")
        except DriverError as exc:
            ctx.log(f"could not remove {path} on {disk_name}: {exc}", LogLevel.WARNING)


@job_kind("image.remove", params=ImageRemoveParams)
def plan_remove(ctx: JobContext) -> list[Step]:
    return [Step("Remove the copies on the disk servers", remove_copies)]


# --- image.import: an uploaded file becomes an image ---------------------------------------------

def import_upload(ctx: JobContext) -> None:
    """Convert the uploaded file, register the image, and hand over to its copy job."""
    params = ImageImportParams.of(ctx.job)
    upload = Path(params.upload)
    work = upload.with_suffix(".import")
    try:
        found = importer.import_file(upload, work, lambda percent, message: ctx.log(message, percent=percent))
        for warning in found.warnings:
            ctx.log(warning, LogLevel.WARNING)
        try:
            copy = register_imported(found, name=params.image, os_name=params.os, login_user=params.login_user,
                                     source=f"uploaded as {params.filename}", user=ctx.job.user)
        except ValidationError as exc:
            raise JobFailed("; ".join(exc.messages)) from exc
        what = "ISO" if found.kind == "iso" else "image"
        ctx.data["result"] = f"{params.image} imported ({what}, {found.size_mib} MiB); copying it: job #{copy.pk}"
        ctx.log(ctx.data["result"], copy_job=copy.pk)
    except importer.ImportError_ as exc:
        raise JobFailed(str(exc)) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        upload.unlink(missing_ok=True)


@job_kind("image.import", params=ImageImportParams)
def plan_import(ctx: JobContext) -> list[Step]:
    return [Step("Convert the upload and take its kernel out", import_upload)]
