"""Virtual machines: a guest with one mirrored disk, running on one CPU server."""
from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.urls import reverse

from vms.choices import VM_STATE_COLOURS, VmState
from xenaoe_panel.colours import StateColourMixin

vm_name_validator = RegexValidator(
    r"^[a-z][a-z0-9-]{0,62}$",
    "A VM name is 1-63 lower-case letters, digits and '-', starting with a letter.",
)


class VirtualMachine(StateColourMixin, models.Model):
    STATE_COLOURS = VM_STATE_COLOURS
    name = models.CharField(max_length=63, unique=True, validators=[vm_name_validator])
    vcpus = models.PositiveSmallIntegerField()
    memory_mib = models.PositiveIntegerField()
    disk_mib = models.PositiveBigIntegerField()
    cpu_server = models.ForeignKey(
        "hosts.CpuServer", on_delete=models.PROTECT, related_name="vms", null=True, blank=True
    )
    state = models.CharField(max_length=16, choices=VmState.choices, default=VmState.CREATING)
    domain_uuid = models.UUIDField(null=True, blank=True)
    kernel_path = models.CharField(
        max_length=255, blank=True,
        help_text="Direct kernel boot: a kernel image at this path on every CPU server (empty: boot the disk).",
    )
    # When its CPU server fails: restart it elsewhere (after the fence), highest priority first.
    auto_restart = models.BooleanField(default=True)
    restart_priority = models.PositiveSmallIntegerField(default=100, help_text="Higher restarts first.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("vm-detail", args=[self.name])

    @property
    def domain_name(self) -> str:
        """The libvirt domain name: prefixed so that the panel's guests stand out on a host."""
        return f"xa-{self.name}"

