"""Virtual machines: a guest with one mirrored disk, running on one CPU server."""
from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.urls import reverse

from tenants.querysets import TenantScopedQuerySet
from vms.choices import VM_STATE_COLOURS, VmState
from xenaoe_panel.colours import StateColourMixin
from xenaoe_panel.names import DOMAIN_PREFIX, NAME

vm_name_validator = RegexValidator(
    rf"^{NAME}\Z",
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
    # The organisation that owns it (tenants/). None: the operators' own, seen by operators only.
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="vms", null=True, blank=True)
    state = models.CharField(max_length=16, choices=VmState.choices, default=VmState.CREATING)
    # Since when it has been running without a stop (a live migration or failover restart of a
    # running guest keeps it: uptime is the guest's, not the host's).
    running_since = models.DateTimeField(null=True, blank=True)
    domain_uuid = models.UUIDField(null=True, blank=True)
    kernel_path = models.CharField(
        max_length=255, blank=True,
        help_text="Direct kernel boot: a kernel image at this path on every CPU server (empty: boot the disk).",
    )
    # With a kernel: its initramfs (same rule as the kernel) and command line; empty: none.
    initrd_path = models.CharField(max_length=255, blank=True,
                                   help_text="Direct kernel boot: an initramfs at this path on every CPU server.")
    kernel_cmdline = models.CharField(max_length=255, blank=True, help_text="Direct kernel boot: the command line.")
    # The operating system it was created from (its kernel and initramfs boot it; docs/images.md).
    # None: a VM with an empty disk or a kernel of the operator's (kernel_path).
    image = models.ForeignKey("images.Image", on_delete=models.PROTECT, related_name="vms", null=True, blank=True)
    # The ISO in its CD drive (created to install from it): the domain boots the CD first, then
    # the disk; "eject" empties the drive and boots the disk from then on. docs/images.md.
    iso = models.ForeignKey("images.Image", on_delete=models.PROTECT, related_name="vms_with_cd", null=True,
                            blank=True, verbose_name="ISO")
    # First-boot settings, kept here so that any CPU server the VM lands on gets the same seed:
    # the public keys for the image's login user, and the hash of a password shown once.
    ssh_keys = models.TextField(blank=True)
    password_hash = models.CharField(max_length=255, blank=True)
    # When its CPU server fails: restart it elsewhere (after the fence), highest priority first.
    auto_restart = models.BooleanField(default=True)
    restart_priority = models.PositiveSmallIntegerField(default=100, help_text="Higher restarts first.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        indexes = [
            # The VM list filters by tenant, state or host and pages by name, also with 10,000 VMs.
            models.Index(fields=["tenant", "name"], name="vm_tenant_name"),
            models.Index(fields=["state", "name"], name="vm_state_name"),
            models.Index(fields=["cpu_server", "name"], name="vm_cpu_server_name"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("vm-detail", args=[self.name])

    @property
    def ssh_key_list(self) -> list[str]:
        return [line for line in self.ssh_keys.splitlines() if line.strip()]

    @property
    def domain_name(self) -> str:
        """The libvirt domain name: prefixed so that the panel's guests stand out on a host."""
        return f"{DOMAIN_PREFIX}{self.name}"

    def host_names(self) -> list[str]:
        """Where it is now, as the database says: its CPU server and its legs' disk servers. A job
        on it acts on these (jobs.services.start_job records them), whatever its parameters name."""
        rows = VirtualMachine.objects.filter(pk=self.pk).values_list(
            "cpu_server__name", "mirror__legs__disk_server__name")
        return sorted({name for row in rows for name in row if name})


class Reservation(models.Model):
    """Memory and vCPUs the allocator (vms/placement.py) handed a job on a CPU server for a VM that
    is not recorded there: a live migration's target (and its source, once the VM is recorded on the
    target), a failover restart's survivor, an evacuation's planned target. Counted as used while the
    job is queued or running, unless the VM is recorded on that server already (then the VM's own row
    counts it). A new VM needs none: its row, written under the same locks, is its reservation."""

    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="reservations")
    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="reservations")
    cpu_server = models.ForeignKey("hosts.CpuServer", on_delete=models.CASCADE, related_name="reservations")
    memory_mib = models.PositiveIntegerField()
    vcpus = models.PositiveSmallIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "vm", "cpu_server"], name="one_reservation_per_move")]

    def __str__(self) -> str:
        return f"{self.memory_mib} MiB on {self.cpu_server_id} for {self.vm_id} (job #{self.job_id})"


class ConsoleSession(models.Model):
    """Somebody attached to a VM's serial console (vms/console.py): who, when, from where, until when.
    Written before the console is opened and closed when it ends, so that a crash leaves an open row."""

    VIA_CHOICES = [("browser", "browser"), ("token", "API token"), ("cli", "manage.py")]
    KIND_CHOICES = [("serial", "serial"), ("vnc", "graphical (VNC)")]

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="console_sessions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="console_sessions")
    username = models.CharField(max_length=150, blank=True)  # kept when the user is deleted
    via = models.CharField(max_length=8, choices=VIA_CHOICES)
    kind = models.CharField(max_length=8, choices=KIND_CHOICES, default="serial")
    client = models.CharField(max_length=255, blank=True, help_text="The address it came from (or the CLI's host).")
    opened_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-opened_at", "-pk"]
        indexes = [models.Index(fields=["vm", "-opened_at"], name="console_vm_opened")]

    def __str__(self) -> str:
        return f"console of {self.vm_id} by {self.username or '?'} at {self.opened_at:%Y-%m-%d %H:%M:%S}"


class VmSample(models.Model):
    """A running guest's CPU, disk and network use over one sampling interval, from two readings of
    its host's counters (libvirt's bulk stats): the charts on the VM's page and the latest figures in
    /metrics. Written by the leading monitor at most once per XENAOE_VM_STATS_INTERVAL_S, deleted
    after XENAOE_VM_STATS_RETENTION_HOURS (vms/stats.py). A figure the host did not report is NULL."""

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="samples")
    time = models.DateTimeField(db_index=True)  # when the sampling pass started: one time per pass
    cpu_vcpus = models.FloatField(null=True, help_text="vCPUs busy on average: CPU seconds per second.")
    disk_read_bps = models.FloatField(null=True, help_text="Bytes per second read from its disks, both legs.")
    disk_write_bps = models.FloatField(null=True, help_text="Bytes per second written to its disks, both legs.")
    net_rx_bps = models.FloatField(null=True, help_text="Bytes per second the guest received.")
    net_tx_bps = models.FloatField(null=True, help_text="Bytes per second the guest sent.")

    class Meta:
        ordering = ["vm", "time"]
        indexes = [models.Index(fields=["vm", "time"], name="vmsample_vm_time")]

    def __str__(self) -> str:
        return f"{self.vm_id} at {self.time:%Y-%m-%d %H:%M:%S}"


group_name_validator = RegexValidator(
    rf"^{NAME}\Z",
    "A group's name is 1-63 lower-case letters, digits and '-', starting with a letter.",
)


class AntiAffinityGroup(models.Model):
    """VMs to keep on different CPU servers, so that one server's failure never takes them all (two
    web servers, a database and its replica). A soft rule: the allocator (vms/placement.py) never puts
    a member where another member is while another server has room, and says so when it must.

    A group is a tenant's (its users name it as they like: unique per tenant) or the operators' own
    (tenant None, unique among theirs), and its members are VMs of the same owner: a tenant groups
    only its own VMs, and one tenant's group says nothing about another's. A VM may be in several
    groups; they never contradict each other (every one says "apart")."""

    name = models.CharField(max_length=63, validators=[group_name_validator])
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="anti_affinity_groups",
                               null=True, blank=True)
    description = models.CharField(max_length=255, blank=True)
    members = models.ManyToManyField(VirtualMachine, related_name="anti_affinity_groups", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="group_name_per_tenant"),
            # NULLs are distinct in a unique index: the operators' own groups need a rule of their own.
            models.UniqueConstraint(fields=["name"], condition=models.Q(tenant__isnull=True),
                                    name="group_name_of_operators"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def label(self) -> str:
        """Its name with its owner's, for operators, who see every tenant's groups: `acme/web`."""
        return f"{self.tenant.slug}/{self.name}" if self.tenant_id is not None else self.name
