from django.db import models


class ImageKind(models.TextChoices):
    # An operating system a VM boots from its own disk (written onto both legs).
    DISK = "disk", "Disk image"
    # An installer a VM boots from its CD drive, exported read-only over AoE (docs/images.md).
    ISO = "iso", "ISO (installer)"


class ImageState(models.TextChoices):
    PENDING = "pending", "Being copied to the disk servers"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class CopyState(models.TextChoices):
    COPYING = "copying", "Copying"
    READY = "ready", "Ready (checksum verified)"
    FAILED = "failed", "Failed"


IMAGE_STATE_COLOURS = {ImageState.PENDING: "info", ImageState.READY: "success", ImageState.FAILED: "danger"}
COPY_STATE_COLOURS = {CopyState.COPYING: "info", CopyState.READY: "success", CopyState.FAILED: "danger"}
