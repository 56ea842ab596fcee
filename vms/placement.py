"""Where a new VM goes: a CPU server with room, two disk servers, a slot free on both shelves.

Callers hold row locks on the servers (see vms.services) so that two creations in parallel
cannot both take the last free memory or the same slot.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Sum

from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from storage.models import LEGS, AoEExport

MAX_SLOT = 254


class PlacementError(Exception):
    """No place satisfies the request; the message gives the numbers."""


@dataclass(frozen=True)
class CpuCandidate:
    server: CpuServer
    used_mib: int

    @property
    def free_mib(self) -> int:
        return self.server.memory_mib - self.used_mib


def cpu_candidates() -> list[CpuCandidate]:
    used = dict(
        CpuServer.objects.annotate(used=Sum("vms__memory_mib")).values_list("pk", "used")
    )
    return [
        CpuCandidate(server, used.get(server.pk) or 0)
        for server in CpuServer.objects.filter(state=HostState.UP).order_by("name")
    ]


def choose_cpu_server(memory_mib: int, requested: CpuServer | None) -> CpuServer:
    candidates = cpu_candidates()
    if requested is not None:
        match = [c for c in candidates if c.server.pk == requested.pk]
        if not match:
            raise PlacementError(f"CPU server {requested.name} is {requested.get_state_display().lower()}, not up")
        chosen = match[0]
        if chosen.free_mib < memory_mib:
            raise PlacementError(
                f"{chosen.server.name} has {chosen.free_mib} MiB free, {memory_mib} MiB asked"
            )
        return chosen.server
    if not candidates:
        raise PlacementError("no CPU server is up")
    best = max(candidates, key=lambda c: (c.free_mib, -c.server.pk))
    if best.free_mib < memory_mib:
        raise PlacementError(
            f"no CPU server has {memory_mib} MiB free (most free: {best.server.name}, {best.free_mib} MiB)"
        )
    return best.server


def choose_disk_servers(size_mib: int) -> list[DiskServer]:
    used = dict(
        DiskServer.objects.annotate(used=Sum("exports__size_mib")).values_list("pk", "used")
    )
    servers = list(DiskServer.objects.filter(state=HostState.UP))
    room = {s.pk: s.capacity_mib - (used.get(s.pk) or 0) for s in servers}
    fitting = sorted(
        (s for s in servers if room[s.pk] >= size_mib), key=lambda s: (-room[s.pk], s.name)
    )
    if len(fitting) < LEGS:
        detail = ", ".join(f"{s.name}: {room[s.pk]} MiB free" for s in servers) or "none is up"
        raise PlacementError(
            f"a mirror needs {LEGS} disk servers with {size_mib} MiB free each ({detail})"
        )
    return fitting[:LEGS]


def free_slot(disk_servers: list[DiskServer]) -> int:
    """The lowest slot free on every one of these shelves, so a VM's legs share a slot number."""
    shelves = [s.aoe_shelf for s in disk_servers]
    taken = set(AoEExport.objects.filter(shelf__in=shelves).values_list("slot", flat=True))
    for slot in range(MAX_SLOT + 1):
        if slot not in taken:
            return slot
    raise PlacementError(f"no AoE slot is free on shelves {shelves}")
