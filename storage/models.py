"""AoE exports and the mirrors (RAID1 of two exports on two disk servers) that guests use."""
from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models

from storage.choices import (
    EXPORT_STATE_COLOURS,
    MIRROR_HEALTH_COLOURS,
    MIRROR_STATE_COLOURS,
    ExportState,
    MirrorHealth,
    MirrorState,
)
from xenaoe_panel.colours import StateColourMixin

LEGS = 2
SECTORS_PER_MIB = 2048  # AoE (ATA) sectors are 512 bytes


class Mirror(StateColourMixin, models.Model):
    """One guest disk: a RAID1 of two legs (exports) on two different disk servers.

    Two views of it: `state` is the legs on the wire (do the exports answer the CPU servers;
    ha/storage_health.py), `health` and the fields after it the array as the guest's own md sees
    it (/proc/mdstat through the guest agent; storage/guest_health.py). The guest's view is the
    mirror's health shown; without a guest agent it is unknown, and `health_detail` says why.
    """

    STATE_COLOURS = MIRROR_STATE_COLOURS
    vm = models.OneToOneField("vms.VirtualMachine", on_delete=models.CASCADE, related_name="mirror")
    state = models.CharField(max_length=16, choices=MirrorState.choices, default=MirrorState.UNKNOWN)
    health = models.CharField(max_length=16, choices=MirrorHealth.choices, default=MirrorHealth.UNKNOWN)
    # Why it is unknown ("no guest agent", "guest not running"), or what md says ("[U_]").
    health_detail = models.CharField(max_length=200, blank=True)
    resync_percent = models.FloatField(null=True, blank=True)
    resync_eta_s = models.PositiveIntegerField(null=True, blank=True)
    # Legs (0, 1) that hold no in-sync copy in the guest's array: lost, or being rebuilt.
    missing_legs = models.JSONField(default=list, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)  # when the guest was last asked
    # The md array of a VM made from an image: its UUID (the initramfs assembles it by this), and
    # whether it exists yet (until then the VM's first boot is told to create it).
    md_uuid = models.UUIDField(default=uuid.uuid4)
    md_created = models.BooleanField(default=False)

    @property
    def health_colour(self) -> str:
        return MIRROR_HEALTH_COLOURS.get(self.health, "secondary")

    @property
    def missing_leg_names(self) -> str:
        """"leg 1" / "legs 0, 1": for pages."""
        legs = ", ".join(str(leg) for leg in self.missing_legs)
        return f"leg{'s' if len(self.missing_legs) > 1 else ''} {legs}" if legs else ""

    def __str__(self) -> str:
        return f"mirror of {self.vm.name}"

    @property
    def md_uuid_mdadm(self) -> str:
        """The UUID as mdadm writes it: four groups of eight hex digits."""
        digits = self.md_uuid.hex
        return ":".join(digits[i:i + 8] for i in range(0, 32, 8))


class AoEExport(StateColourMixin, models.Model):
    STATE_COLOURS = EXPORT_STATE_COLOURS
    disk_server = models.ForeignKey("hosts.DiskServer", on_delete=models.PROTECT, related_name="exports")
    mirror = models.ForeignKey(Mirror, on_delete=models.CASCADE, related_name="legs", null=True, blank=True)
    # Or: an ISO's copy on this disk server, served read-only to the CD drives of VMs installing
    # from it (leg 0; never both this and a mirror).
    image_copy = models.OneToOneField("images.ImageCopy", on_delete=models.CASCADE, related_name="export",
                                      null=True, blank=True)
    leg = models.PositiveSmallIntegerField(validators=[MaxValueValidator(LEGS - 1)])
    # The shelf is the disk server's, copied here so that the database itself keeps shelf.slot
    # unique on the SAN.
    shelf = models.PositiveIntegerField(validators=[MaxValueValidator(65534)])
    slot = models.PositiveSmallIntegerField(validators=[MaxValueValidator(254)])
    backing_path = models.CharField(max_length=512)
    size_mib = models.PositiveBigIntegerField()
    state = models.CharField(max_length=16, choices=ExportState.choices, default=ExportState.PLANNED)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["shelf", "slot"]
        constraints = [
            models.UniqueConstraint(fields=["shelf", "slot"], name="aoe_shelf_slot_unique"),
            models.UniqueConstraint(fields=["mirror", "leg"], name="mirror_leg_unique"),
            models.CheckConstraint(condition=models.Q(slot__lte=254), name="aoe_slot_range"),
            models.CheckConstraint(condition=models.Q(shelf__lte=65534), name="aoe_shelf_range"),
            models.CheckConstraint(condition=models.Q(mirror__isnull=True) | models.Q(image_copy__isnull=True),
                                   name="aoe_leg_or_iso"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return f"e{self.shelf}.{self.slot}"

    @property
    def device_path(self) -> str:
        """Where the AoE initiator shows this export on a CPU server."""
        return f"/dev/etherd/e{self.shelf}.{self.slot}"


    def clean(self) -> None:
        if self.disk_server_id and self.shelf != self.disk_server.aoe_shelf:
            raise ValidationError({"shelf": f"Exports of {self.disk_server} use shelf {self.disk_server.aoe_shelf}."})
