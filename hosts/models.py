"""The machines of the cluster: disk servers (AoE targets) and CPU servers (hypervisors)."""
from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.urls import reverse

from hosts.choices import HOST_STATE_COLOURS, HostState, Hypervisor
from xenaoe_panel.colours import StateColourMixin

host_name_validator = RegexValidator(
    r"^[a-z][a-z0-9-]{0,62}$", "Lower-case letters, digits and '-', starting with a letter."
)
interface_validator = RegexValidator(r"^[A-Za-z0-9_.-]{1,15}$", "Not a network interface name.")


class Host(StateColourMixin, models.Model):
    STATE_COLOURS = HOST_STATE_COLOURS
    name = models.CharField(max_length=63, unique=True, validators=[host_name_validator])
    address = models.CharField(
        max_length=255, help_text="Management address the panel reaches over SSH."
    )
    ssh_user = models.CharField(max_length=32, default="root")
    ssh_port = models.PositiveIntegerField(
        default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    san_interface = models.CharField(
        max_length=15, default="san0", validators=[interface_validator],
        help_text="Interface on the SAN (layer 2, AoE).",
    )
    state = models.CharField(max_length=16, choices=HostState.choices, default=HostState.UP)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DiskServer(Host):
    aoe_shelf = models.PositiveIntegerField(
        unique=True, validators=[MaxValueValidator(65534)],
        help_text="AoE shelf (major) number of every export on this server; unique on the SAN.",
    )
    volume_dir = models.CharField(
        max_length=255, default="/srv/xenaoe/volumes", help_text="Where backing volumes live."
    )
    capacity_mib = models.PositiveBigIntegerField(help_text="Space for volumes, in MiB.")

    class Meta(Host.Meta):
        constraints = [
            models.CheckConstraint(
                condition=models.Q(aoe_shelf__lte=65534), name="diskserver_shelf_range"
            )
        ]

    def get_absolute_url(self) -> str:
        return reverse("diskserver-detail", args=[self.pk])

    @property
    def used_mib(self) -> int:
        return self.exports.aggregate(total=models.Sum("size_mib"))["total"] or 0


class CpuServer(Host):
    libvirt_uri = models.CharField(max_length=512, help_text="e.g. qemu+ssh://root@host/system")
    hypervisor = models.CharField(max_length=8, choices=Hypervisor.choices, default=Hypervisor.KVM)
    memory_mib = models.PositiveBigIntegerField(help_text="Memory available to guests, in MiB.")
    vcpus = models.PositiveIntegerField(help_text="Physical CPUs available to guests.")
    bmc_address = models.CharField(max_length=255, blank=True, help_text="IPMI BMC (for fencing).")

    def get_absolute_url(self) -> str:
        return reverse("cpuserver-detail", args=[self.pk])

    @property
    def used_memory_mib(self) -> int:
        return self.vms.aggregate(total=models.Sum("memory_mib"))["total"] or 0

    @property
    def free_memory_mib(self) -> int:
        return self.memory_mib - self.used_memory_mib
