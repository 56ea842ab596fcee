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
from vms.models import VirtualMachine

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


@dataclass(frozen=True)
class Shortfall:
    """If `failed` died, these guests would find no room on the surviving CPU servers."""

    failed: str
    homeless: tuple[tuple[str, int], ...]  # (VM name, memory MiB)

    def __str__(self) -> str:
        guests = ", ".join(f"{name} ({mib} MiB)" for name, mib in self.homeless)
        return f"if {self.failed} fails, no surviving CPU server has room for {guests}"


NEW_VM = "(new VM)"


def n_plus_one_shortfalls(extra: tuple[int, int] | None = None) -> list[Shortfall]:
    """Check N+1 on the CPU servers that are up: for each one, could the others take every guest
    it runs if it died? Guests are packed first-fit by decreasing memory into the others' free
    memory, as a restart would place them. `extra` = (CPU server pk, MiB) adds a VM not yet
    placed, to ask "would N+1 still hold if it went there?"."""
    candidates = cpu_candidates()
    guests: dict[int, list[tuple[str, int]]] = {c.server.pk: [] for c in candidates}
    for name, server_pk, memory in VirtualMachine.objects.filter(
        cpu_server__in=list(guests)
    ).values_list("name", "cpu_server", "memory_mib"):
        guests[server_pk].append((name, memory))
    free = {c.server.pk: c.free_mib for c in candidates}
    if extra is not None and extra[0] in guests:
        guests[extra[0]].append((NEW_VM, extra[1]))
        free[extra[0]] -= extra[1]
    shortfalls = []
    for failed in candidates:
        room = sorted((free[c.server.pk] for c in candidates if c.server.pk != failed.server.pk), reverse=True)
        homeless = []
        for name, memory in sorted(guests[failed.server.pk], key=lambda g: (-g[1], g[0])):
            fit = next((i for i, mib in enumerate(room) if mib >= memory), None)
            if fit is None:
                homeless.append((name, memory))
            else:
                room[fit] -= memory
        if homeless:
            shortfalls.append(Shortfall(failed.server.name, tuple(homeless)))
    return shortfalls


@dataclass(frozen=True)
class Headroom:
    """What placing a VM of some size on one CPU server would leave."""

    candidate: CpuCandidate
    memory_mib: int
    shortfalls: tuple[Shortfall, ...]

    @property
    def fits(self) -> bool:
        return self.candidate.free_mib >= self.memory_mib

    @property
    def free_after_mib(self) -> int:
        return self.candidate.free_mib - self.memory_mib

    @property
    def keeps_n_plus_one(self) -> bool:
        return not self.shortfalls


def headroom(memory_mib: int) -> list[Headroom]:
    return [
        Headroom(c, memory_mib, tuple(n_plus_one_shortfalls((c.server.pk, memory_mib))))
        for c in cpu_candidates()
    ]


def choose_cpu_server(memory_mib: int, requested: CpuServer | None, *, allow_n_plus_one_break: bool = False
                      ) -> tuple[CpuServer, list[Shortfall]]:
    """The CPU server for a new VM, and the N+1 shortfalls placing it there leaves (non-empty only
    when the operator allowed it). Automatic placement takes the server with most free memory
    among those that keep N+1."""
    options = headroom(memory_mib)
    if requested is not None:
        match = [h for h in options if h.candidate.server.pk == requested.pk]
        if not match:
            raise PlacementError(f"CPU server {requested.name} is {requested.get_state_display().lower()}, not up")
        chosen = match[0]
        if not chosen.fits:
            raise PlacementError(
                f"{requested.name} has {chosen.candidate.free_mib} MiB free, {memory_mib} MiB asked"
            )
    else:
        if not options:
            raise PlacementError("no CPU server is up")
        fitting = [h for h in options if h.fits]
        if not fitting:
            best = max(options, key=lambda h: h.candidate.free_mib)
            raise PlacementError(
                f"no CPU server has {memory_mib} MiB free "
                f"(most free: {best.candidate.server.name}, {best.candidate.free_mib} MiB)"
            )
        safe = [h for h in fitting if h.keeps_n_plus_one]
        chosen = max(safe or fitting, key=lambda h: (h.candidate.free_mib, -h.candidate.server.pk))
    if chosen.shortfalls and not allow_n_plus_one_break:
        raise PlacementError(
            f"placing {memory_mib} MiB on {chosen.candidate.server.name} breaks N+1: "
            + "; ".join(str(s).replace(NEW_VM, "the new VM") for s in chosen.shortfalls)
            + ". Override only if you accept that a host failure would leave guests down."
        )
    return chosen.candidate.server, list(chosen.shortfalls)


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
