"""The image library: operating systems a VM can be created from, and where each one's copies are.

An image is an ext4 filesystem (`disk.raw`, written at offset 0 of each of a VM's two legs), the
kernel that boots it and the panel's initramfs for that kernel. The panel keeps the three files in
its image store (settings.IMAGE_STORE); each disk server keeps a checksum-verified copy of the disk
so that a new VM's legs are written locally, never over the SAN; CPU servers get the kernel and
initramfs (a few MiB) when a VM from the image is placed there. docs/images.md.
"""
from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.urls import reverse

from images.choices import COPY_STATE_COLOURS, IMAGE_STATE_COLOURS, CopyState, ImageKind, ImageState
from tenants.querysets import SharedQuerySet
from xenaoe_panel.colours import StateColourMixin

image_name_validator = RegexValidator(
    r"\A[a-z0-9][a-z0-9.-]{0,62}\Z",
    "An image name is 1-63 lower-case letters, digits, '.' and '-', starting with a letter or digit.",
)
login_user_validator = RegexValidator(r"\A[a-z_][a-z0-9_-]{0,31}\Z", "Not a Linux user name.")
# What md metadata 1.0 and its internal bitmap take at the end of a leg, with room to spare: the
# filesystem must end before the array does.
MD_RESERVE_MIB = 16


class ImageQuerySet(SharedQuerySet):
    def usable(self) -> ImageQuerySet:
        return self.filter(state=ImageState.READY)

    def disks(self) -> ImageQuerySet:
        return self.filter(kind=ImageKind.DISK)

    def isos(self) -> ImageQuerySet:
        return self.filter(kind=ImageKind.ISO)


class Image(StateColourMixin, models.Model):
    STATE_COLOURS = IMAGE_STATE_COLOURS
    name = models.CharField(max_length=63, unique=True, validators=[image_name_validator])
    os_name = models.CharField("OS", max_length=63)
    os_version = models.CharField("version", max_length=63, blank=True)
    # A disk image boots the VM made from it; an ISO is put in a new VM's CD drive to install from
    # (no kernel, initramfs or login user of its own: those fields stay empty).
    kind = models.CharField(max_length=8, choices=ImageKind.choices, default=ImageKind.DISK)
    # How it reached the panel: its disk is always stored raw (qemu-img converts imports).
    source_format = models.CharField(max_length=16, default="raw")
    source = models.CharField(max_length=255, blank=True, help_text="Built from a recipe, imported or uploaded.")
    size_mib = models.PositiveBigIntegerField(help_text="The filesystem's size: a VM's disk is at least this.")
    sha256 = models.CharField(max_length=64)
    kernel_version = models.CharField(max_length=128, blank=True)
    kernel_sha256 = models.CharField(max_length=64, blank=True)
    initrd_sha256 = models.CharField(max_length=64, blank=True)
    login_user = models.CharField(max_length=32, blank=True, validators=[login_user_validator])
    state = models.CharField(max_length=16, choices=ImageState.choices, default=ImageState.PENDING)
    is_default = models.BooleanField("default", default=False)
    # Tenants see the public images and those published to them; operators see every image.
    public = models.BooleanField(default=True)
    tenants = models.ManyToManyField("tenants.Tenant", blank=True, related_name="images")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ImageQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=models.Q(is_default=True),
                                    name="one_default_image"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("image-detail", args=[self.name])

    @property
    def is_iso(self) -> bool:
        return self.kind == ImageKind.ISO

    @property
    def store_file(self) -> str:
        """The name of the image's disk (or ISO) in its store directory."""
        return "cdrom.iso" if self.is_iso else "disk.raw"

    @property
    def min_disk_mib(self) -> int:
        return self.size_mib + MD_RESERVE_MIB

    @property
    def store_dir(self) -> Path:
        """Where the panel keeps this image's files: named by content, so a rebuilt image with
        the same name never overwrites files a CPU server or a running copy still uses."""
        return Path(settings.IMAGE_STORE) / f"{self.name}-{self.sha256[:12]}"

    @property
    def boot_dir(self) -> str:
        """Where a CPU server keeps this image's kernel and initramfs (the same path on every
        one, as the domain XML names it)."""
        return f"{settings.CPU_BOOT_DIR.rstrip('/')}/{self.name}-{self.initrd_sha256[:12]}"

    @property
    def disk_servers(self) -> list[str]:
        """The disk servers holding a verified copy, by name (read from prefetched copies if any)."""
        return sorted(c.disk_server.name for c in self.copies.all() if c.state == CopyState.READY)


class ImageCopy(StateColourMixin, models.Model):
    """An image's disk on one disk server, copied there and checked against its checksum."""

    STATE_COLOURS = COPY_STATE_COLOURS
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="copies")
    disk_server = models.ForeignKey("hosts.DiskServer", on_delete=models.PROTECT, related_name="image_copies")
    path = models.CharField(max_length=512)
    state = models.CharField(max_length=16, choices=CopyState.choices, default=CopyState.COPYING)
    detail = models.CharField(max_length=255, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["image", "disk_server__name"]
        constraints = [models.UniqueConstraint(fields=["image", "disk_server"], name="one_copy_per_disk_server")]

    def __str__(self) -> str:
        return f"{self.image} on {self.disk_server}"
