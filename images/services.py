"""Verbs on images: register a built or imported one, copy it to the disk servers, publish it,
make it the default, delete it. Each validates first: bad input changes nothing."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from hosts.models import DiskServer
from images.build import BuiltImage, Recipe, file_sha256
from images.choices import CopyState, ImageKind, ImageState
from images.importer import Imported
from images.job_params import ImageCopyParams, ImageRemoveParams
from images.models import Image, ImageCopy, image_name_validator, login_user_validator
from jobs.models import Job
from jobs.services import start_job
from storage.models import AoEExport
from tenants.publishing import publish as publish_to
from vms.placement import PlacementError, free_slot, lock_servers


@dataclass(frozen=True)
class ImageFiles:
    """An image's three files (an ISO: one), somewhere on the panel's machine, and what is known of them."""

    disk: Path  # or the ISO
    kernel: Path | None
    initrd: Path | None
    size_mib: int
    kernel_version: str
    sha256: str = ""  # of the disk; computed when empty
    kind: str = ImageKind.DISK


@dataclass(frozen=True)
class ImageRequest:
    name: str
    os_name: str
    os_version: str
    login_user: str
    source: str
    source_format: str = "raw"
    make_default: bool = False


def visible_images(user: AbstractBaseUser | None) -> QuerySet[Image]:
    """The images `user` sees (Image.objects.visible_to), or every image for the CLI (no user)."""
    return Image.objects.all() if user is None else Image.objects.visible_to(user)


def validate_request(req: ImageRequest, kind: str = ImageKind.DISK) -> None:
    errors: dict[str, str] = {}
    try:
        image_name_validator(req.name)
    except ValidationError as exc:
        errors["name"] = exc.messages[0]
    else:
        if Image.objects.filter(name=req.name).exists():
            errors["name"] = f"an image named {req.name!r} already exists"
    try:
        if kind == ImageKind.DISK or req.login_user:  # an ISO's installer makes its own users
            login_user_validator(req.login_user)
    except ValidationError as exc:
        errors["login_user"] = exc.messages[0]
    if kind == ImageKind.ISO and req.make_default:
        errors["make_default"] = "an ISO cannot be the default image: VMs boot from a disk image by default"
    if not req.os_name.strip() or not req.os_name.isprintable():
        errors["os_name"] = "say which operating system it is"
    if errors:
        raise ValidationError(errors)


def register_image(req: ImageRequest, files: ImageFiles, user: AbstractBaseUser | None = None) -> Job:
    """Put the image's files into the panel's store, record it, and queue the job that copies its
    disk to every disk server. Raises ValidationError (nothing kept) for bad input."""
    validate_request(req, files.kind)
    draft = Image(name=req.name, kind=files.kind)
    wanted = [(files.disk, draft.store_file, "disk")]
    if not draft.is_iso:
        wanted += [(files.kernel, "vmlinuz", "kernel"), (files.initrd, "initrd.img", "initramfs")]
    for path, _name, what in wanted:
        if path is None or not path.is_file():
            raise ValidationError({"__all__": f"the image's {what} {path} is missing"})
    draft.sha256 = files.sha256 or file_sha256(files.disk)
    draft.initrd_sha256 = file_sha256(files.initrd) if files.initrd and not draft.is_iso else ""
    store = draft.store_dir
    made_store = not store.exists()  # only what this call made is removed if it fails
    store.mkdir(parents=True, exist_ok=True)
    try:
        for source, name, _what in wanted:
            if source.resolve() != (store / name).resolve():
                # --sparse: the disk is mostly empty space, and a reflink where the filesystem can.
                _copy(source, store / name)
        with transaction.atomic():
            image = Image.objects.create(
                name=req.name, kind=draft.kind, os_name=req.os_name.strip(), os_version=req.os_version.strip(),
                source=req.source[:255], source_format=req.source_format, size_mib=files.size_mib,
                sha256=draft.sha256, kernel_version=files.kernel_version,
                kernel_sha256="" if draft.is_iso else file_sha256(store / "vmlinuz"),
                initrd_sha256=draft.initrd_sha256, login_user=req.login_user,
            )
            if not image.is_iso and (req.make_default or not Image.objects.filter(is_default=True).exists()):
                set_default(image.name)
            return copy_to_disk_servers(image, user=user)
    except IntegrityError as exc:
        if made_store:
            shutil.rmtree(store, ignore_errors=True)
        raise ValidationError({"name": f"an image named {req.name!r} already exists"}) from exc
    except BaseException:
        if made_store:
            shutil.rmtree(store, ignore_errors=True)
        raise


def register_imported(found: Imported, *, name: str, os_name: str = "", os_version: str = "", login_user: str = "",
                      source: str, make_default: bool = False, user: AbstractBaseUser | None = None) -> Job:
    """Register what importer.import_file made (the CLI's import and the upload's job alike)."""
    if not found.kind == ImageKind.ISO and not (login_user or found.login_user):
        raise ValidationError({"login_user": "the image has no user with uid 1000: say which user logs in"})
    files = ImageFiles(found.disk, found.kernel, found.initrd, found.size_mib, found.kernel_version, found.sha256,
                       found.kind)
    req = ImageRequest(name=name, os_name=os_name or found.os_name, os_version=os_version or found.os_version,
                       login_user=login_user or found.login_user, source=source, source_format=found.source_format,
                       make_default=make_default)
    return register_image(req, files, user=user)


def register_built(recipe: Recipe, built: BuiltImage, *, name: str, source: str, make_default: bool = False,
                   user: AbstractBaseUser | None = None) -> Job:
    """Register what build.build made from `recipe` (the CLI's build, the tests' and the benches' image)."""
    files = ImageFiles(built.disk, built.kernel, built.initrd, built.size_mib, built.kernel_version, built.sha256)
    req = ImageRequest(name=name, os_name=recipe.os_name, os_version=recipe.os_version, login_user=recipe.login_user,
                       source=source, make_default=make_default)
    return register_image(req, files, user=user)


def _copy(source: Path, target: Path) -> None:
    """Copy into the store. The store's directories are named by content, and a file appears only
    whole (renamed from .partial): one already there is the same file, and is kept."""
    if target.is_file():
        return
    partial = target.with_name(target.name + ".partial")
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(source), str(partial)], check=True)
    partial.replace(target)


def copy_to_disk_servers(image: Image, disk_servers: list[DiskServer] | None = None,
                         user: AbstractBaseUser | None = None) -> Job:
    """Queue the job that copies the image's disk to each disk server (all by default) and checks
    its checksum there; copies already verified are checked again, not sent again."""
    servers = disk_servers if disk_servers is not None else list(DiskServer.objects.order_by("name"))
    if not servers:
        raise ValidationError({"__all__": "no disk server to copy the image to"})
    with transaction.atomic():
        if image.is_iso:
            lock_servers(disk_servers=True)  # the slots of the ISO's exports: see reserve_iso_export
        for disk in servers:
            copy, _ = ImageCopy.objects.update_or_create(
                image=image, disk_server=disk,
                defaults={"path": disk_image_path(image), "state": CopyState.COPYING, "detail": ""},
            )
            if image.is_iso:
                reserve_iso_export(copy)
        Image.objects.filter(pk=image.pk).exclude(state=ImageState.READY).update(state=ImageState.PENDING)
        return start_job("image.copy", target_name=f"image {image.name}", user=user,
                         params=ImageCopyParams(image=image.name, disk_servers=[d.name for d in servers]))


def disk_image_path(image: Image) -> str:
    return f"{settings.DISK_IMAGE_DIR.rstrip('/')}/{image.name}-{image.sha256[:12]}.{'iso' if image.is_iso else 'raw'}"


def reserve_iso_export(copy: ImageCopy) -> AoEExport:
    """The shelf.slot an ISO's copy is served at, read-only, on its disk server: taken from the top
    of the shelf down (VMs take theirs from the bottom, the same slot on two shelves), under the
    server locks every placement takes. Kept while the image exists."""
    existing = AoEExport.objects.filter(image_copy=copy).first()
    if existing is not None:
        return existing
    disk = copy.disk_server
    try:
        slot = free_slot([disk], from_top=True)
    except PlacementError as exc:
        raise ValidationError({"__all__": str(exc)}) from exc
    return AoEExport.objects.create(disk_server=disk, image_copy=copy, leg=0, shelf=disk.aoe_shelf, slot=slot,
                                    backing_path=copy.path, size_mib=copy.image.size_mib)


def set_default(name: str) -> Image:
    with transaction.atomic():
        image = Image.objects.select_for_update().filter(name=name).first()
        if image is None:
            raise ValidationError({"name": f"no image named {name!r}"})
        if image.is_iso:
            raise ValidationError({"name": f"{name} is an ISO: VMs boot from a disk image by default"})
        Image.objects.filter(is_default=True).exclude(pk=image.pk).update(is_default=False)
        Image.objects.filter(pk=image.pk).update(is_default=True)
        image.is_default = True
        return image


def publish(name: str, *, public: bool, tenants: list[str]) -> Image:
    """Who may create VMs from the image: everyone (public) or the listed tenants."""
    return publish_to(Image.objects.all(), name, public=public, tenants=tenants, what="image")


def delete_image(name: str) -> None:
    """Forget an image no VM uses and remove its files from the store (the copies on the disk
    servers go with the `image.remove` job)."""
    with transaction.atomic():
        image = Image.objects.select_for_update().filter(name=name).first()
        if image is None:
            raise ValidationError({"name": f"no image named {name!r}"})
        used = list(image.vms.values_list("name", flat=True)[:5])
        if used:
            raise ValidationError({"name": f"{name} is used by {', '.join(used)}: delete those VMs first"})
        in_drives = list(image.vms_with_cd.values_list("name", flat=True)[:5])
        if in_drives:
            raise ValidationError({"name": f"{name} is in the CD drive of {', '.join(in_drives)}: eject it first"})
        store = image.store_dir
        copies = [[c.disk_server.name, c.path, *((c.export.shelf, c.export.slot) if hasattr(c, "export") else ())]
                  for c in image.copies.select_related("disk_server", "export")]
        start_job("image.remove", target_name=f"image {name}", params=ImageRemoveParams(image=name, copies=copies))
        image.delete()
    shutil.rmtree(store, ignore_errors=True)
