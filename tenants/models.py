"""Tenants: the organisations that own VMs, their users, what they may do and how much they may use."""
from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.urls import reverse

# What a tenant's users may do to their own VMs, when the operators allow it. Creating VMs is a
# separate switch (`may_create_vms`); migrating is for operators only.
TENANT_ACTIONS = {
    "start": "Start",
    "shutdown": "Shut down",
    "reboot": "Reboot",
    "force_off": "Force off",
    "delete": "Delete",
    # The VM's serial console in the browser or through the API (vms/console.py).
    "console": "Console",
}
DEFAULT_ACTIONS = ["start", "shutdown", "reboot", "console"]

tenant_slug_validator = RegexValidator(
    r"^[a-z][a-z0-9-]{0,62}\Z",
    "A tenant's short name is 1-63 lower-case letters, digits and '-', starting with a letter.",
)


def _default_actions() -> list[str]:
    return list(DEFAULT_ACTIONS)


class Tenant(models.Model):
    slug = models.CharField("short name", max_length=63, unique=True, validators=[tenant_slug_validator])
    name = models.CharField(max_length=120)
    may_create_vms = models.BooleanField(default=True)
    allowed_actions = models.JSONField(default=_default_actions, blank=True,
                                       help_text=f"Any of: {', '.join(TENANT_ACTIONS)}.")
    shows_cpu_server = models.BooleanField(default=False, help_text="Its users see which CPU server runs each VM.")
    quota_vms = models.PositiveIntegerField("VMs", default=10)
    quota_vcpus = models.PositiveIntegerField("vCPUs", default=16)
    quota_memory_mib = models.PositiveIntegerField("memory (MiB)", default=16 * 1024)
    quota_disk_mib = models.PositiveBigIntegerField("disk (MiB)", default=200 * 1024)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    def get_absolute_url(self) -> str:
        return reverse("vm-list") + f"?tenant={self.slug}"

    def allows(self, action: str) -> bool:
        return action in (self.allowed_actions or [])


class Membership(models.Model):
    """A user of a tenant. A user belongs to at most one tenant; operators (staff) need none."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant}"
