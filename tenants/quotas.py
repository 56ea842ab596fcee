"""Quotas: how much of each resource a tenant's VMs hold, and the check made while creating one.

The check runs inside the create's transaction with the tenant's row locked, so two creates for
the same tenant are serialised and cannot exceed a quota together. Every VM row counts, whatever
its state: a stopped or deleting VM still holds its disk and its reservation.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Sum
from django.db.models.functions import Coalesce

from tenants.models import Tenant


@dataclass(frozen=True)
class Resource:
    field: str  # on Tenant, "quota_<field>"
    label: str  # in a sentence
    title: str  # as a heading
    unit: str


RESOURCES = (
    Resource("vms", "VMs", "VMs", ""),
    Resource("vcpus", "vCPUs", "vCPUs", ""),
    Resource("memory_mib", "memory", "Memory", "MiB"),
    Resource("disk_mib", "disk", "Disk", "MiB"),
)


@dataclass(frozen=True)
class Usage:
    resource: Resource
    used: int
    limit: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.used / self.limit)) if self.limit else 100

    def as_dict(self) -> dict:
        return {"resource": self.resource.field, "label": self.resource.label, "title": self.resource.title,
                "unit": self.resource.unit,
                "used": self.used, "limit": self.limit, "remaining": self.remaining}


def usage(tenant: Tenant) -> list[Usage]:
    totals = tenant.vms.aggregate(
        vms=Count("pk"), vcpus=Coalesce(Sum("vcpus"), 0), memory_mib=Coalesce(Sum("memory_mib"), 0),
        disk_mib=Coalesce(Sum("disk_mib"), 0),
    )
    return [Usage(r, int(totals[r.field]), getattr(tenant, f"quota_{r.field}")) for r in RESOURCES]


def shortfalls(tenant: Tenant, *, vcpus: int, memory_mib: int, disk_mib: int) -> list[str]:
    """What one more VM of this size would exceed, as sentences; empty if it fits."""
    wanted = {"vms": 1, "vcpus": vcpus, "memory_mib": memory_mib, "disk_mib": disk_mib}
    problems = []
    for use in usage(tenant):
        need = wanted[use.resource.field]
        if use.used + need > use.limit:
            unit = f" {use.resource.unit}" if use.resource.unit else ""
            problems.append(
                f"{tenant.slug}'s {use.resource.label} quota is {use.limit}{unit}: {use.used}{unit} in use, "
                f"{use.remaining}{unit} left, this VM needs {need}{unit}"
            )
    return problems


def lock(tenant_id: int) -> Tenant:
    """The tenant's row, locked until the end of the transaction (quota checks are serialised)."""
    return Tenant.objects.select_for_update().get(pk=tenant_id)
