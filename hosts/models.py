"""The machines of the cluster: disk servers (AoE targets) and CPU servers (hypervisors)."""
from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.urls import reverse

from drivers.vblade import MAX_SHELF
from hosts.choices import HOST_STATE_COLOURS, HostState, Hypervisor
from hosts.validators import host_address_validator, libvirt_uri_validator, ssh_user_validator
from xenaoe_panel.colours import StateColourMixin
from xenaoe_panel.names import NAME

host_name_validator = RegexValidator(
    rf"^{NAME}\Z", "Lower-case letters, digits and '-', starting with a letter."
)
interface_validator = RegexValidator(r"^[A-Za-z0-9_.-]{1,15}\Z", "Not a network interface name.")
fence_methods_validator = RegexValidator(
    r"^(ipmi|storage|manual)(,(ipmi|storage|manual))*\Z", "A comma-separated list of ipmi, storage, manual."
)


class Host(StateColourMixin, models.Model):
    STATE_COLOURS = HOST_STATE_COLOURS
    name = models.CharField(max_length=63, unique=True, validators=[host_name_validator])
    address = models.CharField(
        max_length=255, validators=[host_address_validator],
        help_text="Management address the panel reaches over SSH: an IP address or a DNS name.",
    )
    ssh_user = models.CharField(max_length=32, default="root", validators=[ssh_user_validator])
    ssh_port = models.PositiveIntegerField(
        default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    san_interface = models.CharField(
        max_length=15, default="san0", validators=[interface_validator],
        help_text="Interface on the SAN (layer 2, AoE).",
    )
    state = models.CharField(max_length=16, choices=HostState.choices, default=HostState.UP)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    # What the monitor saw: consecutive missed checks (a host is declared dead only after several,
    # so one slow answer never triggers anything), when it last answered, and why it did not.
    missed_checks = models.PositiveIntegerField(default=0)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_check_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DiskServer(Host):
    aoe_shelf = models.PositiveIntegerField(
        unique=True, validators=[MaxValueValidator(MAX_SHELF)],
        help_text="AoE shelf (major) number of every export on this server; unique on the SAN.",
    )
    volume_dir = models.CharField(
        max_length=255, default="/srv/xenaoe/volumes", help_text="Where backing volumes live."
    )
    capacity_mib = models.PositiveBigIntegerField(help_text="Space for volumes, in MiB.")

    class Meta(Host.Meta):
        constraints = [
            models.CheckConstraint(
                condition=models.Q(aoe_shelf__lte=MAX_SHELF), name="diskserver_shelf_range"
            )
        ]

    def get_absolute_url(self) -> str:
        return reverse("diskserver-detail", args=[self.pk])

    @property
    def used_mib(self) -> int:
        return self.exports.aggregate(total=models.Sum("size_mib"))["total"] or 0


class CpuServer(Host):
    libvirt_uri = models.CharField(max_length=512, validators=[libvirt_uri_validator],
                                   help_text="e.g. qemu+ssh://root@host/system")
    hypervisor = models.CharField(max_length=8, choices=Hypervisor.choices, default=Hypervisor.KVM)
    memory_mib = models.PositiveBigIntegerField(help_text="Memory available to guests, in MiB.")
    vcpus = models.PositiveIntegerField(help_text="Physical CPUs available to guests.")
    bmc_address = models.CharField(max_length=255, blank=True, validators=[host_address_validator],
                                   help_text="IPMI BMC (for fencing): an IP address or a DNS name.")
    bmc_port = models.PositiveIntegerField(default=623, validators=[MinValueValidator(1), MaxValueValidator(65535)])
    bmc_user = models.CharField(max_length=64, blank=True)
    bmc_password_file = models.CharField(
        max_length=255, blank=True, help_text="Path of a file holding the BMC password (never the password)."
    )
    san_mac = models.CharField(
        max_length=17, blank=True, help_text="MAC of its SAN interface: storage fencing drops it from the exports."
    )
    fence_methods = models.CharField(
        max_length=64, default="ipmi,storage", validators=[fence_methods_validator],
        help_text="Tried in order until one confirms: ipmi, storage, manual (an operator's word).",
    )
    # A storage fence blocks the host's disks but does not stop its guests: until an operator
    # returns it to service (ha.readmit), every export leaves its SAN MAC out, whatever its state.
    storage_fenced_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When a storage fence left this host out of every export's MAC list; cleared only when an "
                  "operator returns it to service.",
    )
    # Domains on it the panel did not make (hosts/foreign.py), as the domain watcher's reconcile pass
    # or cluster verify last saw them: never touched, but their memory is counted as used
    # (vms/placement.py), so that placement and N+1 do not hand it out a second time.
    foreign_domains = models.JSONField(default=list, blank=True, editable=False)
    foreign_memory_mib = models.PositiveBigIntegerField(default=0, editable=False)
    foreign_seen_at = models.DateTimeField(null=True, blank=True, editable=False)

    def get_absolute_url(self) -> str:
        return reverse("cpuserver-detail", args=[self.pk])

    @property
    def fence_method_list(self) -> list[str]:
        return [m for m in self.fence_methods.split(",") if m]


class HostSample(models.Model):
    """What a CPU server carried at one moment, from the panel's own records (the VMs placed on it,
    counted as placement counts them): the history plot on its page. Written by the monitor at most
    once per XENAOE_HISTORY_INTERVAL_S, deleted after XENAOE_HISTORY_RETENTION_DAYS (hosts/history.py)."""

    cpu_server = models.ForeignKey(CpuServer, on_delete=models.CASCADE, related_name="samples")
    time = models.DateTimeField(db_index=True)
    memory_used_mib = models.PositiveBigIntegerField()
    memory_mib = models.PositiveBigIntegerField(help_text="The server's memory for guests when sampled.")
    guests = models.PositiveIntegerField()

    class Meta:
        ordering = ["cpu_server", "time"]
        indexes = [models.Index(fields=["cpu_server", "time"], name="hostsample_server_time")]

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M}: {self.memory_used_mib} MiB, {self.guests} guests"
