"""What the cluster carries and what it has left, as the dashboard and the host pages draw it.

Every number is the allocator's own (vms/placement.py): a CPU server's memory used is the memory of
every VM placed on it, whatever the VM's state, plus what the allocator holds for jobs under way
(a migration counts on both its ends until it ends) and the memory of domains the panel did not
make; a disk server's space used is the size of every export on it. The N+1 reserve is the
allocator's own verdict, asked for sizes of new VM (`Cluster.largest_new_vms`): the largest VM that
could go on a server, it and any smaller one, without its N+1 check finding a guest that a single
failure would leave homeless; the rest of its free memory is reserve.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Sum

from hosts.models import CpuServer, DiskServer
from vms.placement import Cluster, Shortfall

MIB_PER_GIB = 1024
MIB_PER_TIB = 1024 * 1024


def _unit(total_mib: int) -> tuple[int, str]:
    if total_mib >= MIB_PER_TIB:
        return MIB_PER_TIB, "TiB"
    if total_mib >= MIB_PER_GIB:
        return MIB_PER_GIB, "GiB"
    return 1, "MiB"


def mib_text(mib: int) -> str:
    """512 MiB, 3.0 GiB, 1.5 TiB."""
    size, unit = _unit(abs(mib))
    return f"{mib} MiB" if size == 1 else f"{mib / size:.1f} {unit}"


def part_text(part_mib: int, total_mib: int) -> str:
    """"3.0 of 8.0 GiB": both in the total's unit, so the two numbers compare at a glance."""
    size, unit = _unit(total_mib)
    if size == 1:
        return f"{part_mib} of {total_mib} MiB"
    return f"{part_mib / size:.1f} of {total_mib / size:.1f} {unit}"


def _percent(part: int, total: int) -> float:
    if total <= 0:
        return 0.0
    return max(0.0, min(100.0, 100.0 * part / total))


@dataclass(frozen=True)
class Segment:
    """One coloured part of a bar; what is left of the track after the segments is free."""
    name: str  # "used", "reserve"
    amount: int
    percent: float
    css: str

    @property
    def width(self) -> str:
        # Formatted here: a template would localise the float.
        return f"{self.percent:.2f}"


@dataclass(frozen=True)
class Bar:
    label: str  # the text equivalent, read out instead of the drawing
    segments: tuple[Segment, ...]


def _used_css(percent: float) -> str:
    return "bg-danger" if percent >= 90 else "bg-warning" if percent >= 70 else "bg-primary"


@dataclass(frozen=True)
class CpuCapacity:
    server: CpuServer
    used_mib: int
    guests: int
    vcpus_used: int
    # None: the server is not up, placement puts nothing there and N+1 does not count it.
    largest_new_vm_mib: int | None
    reserved_mib: int = 0  # part of used_mib: held for migrations and restarts under way
    foreign_mib: int = 0  # part of used_mib: domains the panel did not make

    @property
    def takes_guests(self) -> bool:
        return self.largest_new_vm_mib is not None

    @property
    def free_mib(self) -> int:
        return self.server.memory_mib - self.used_mib

    @property
    def reserve_mib(self) -> int:
        """Free memory that must stay free so that one server's failure leaves no guest homeless."""
        if self.largest_new_vm_mib is None:
            return 0
        return max(0, self.free_mib - self.largest_new_vm_mib)

    @property
    def usable_mib(self) -> int:
        return max(0, self.free_mib - self.reserve_mib)

    @property
    def memory_text(self) -> str:
        text = f"{part_text(self.used_mib, self.server.memory_mib)} used"
        parts = [f"{mib_text(self.reserved_mib)} held for moves under way"] if self.reserved_mib else []
        if self.foreign_mib:
            parts.append(f"{mib_text(self.foreign_mib)} by domains the panel did not make")
        if parts:
            text += f" ({', '.join(parts)})"
        if not self.takes_guests:
            return f"{text}; {mib_text(max(self.free_mib, 0))} free, not taking guests ({self.server.state})"
        if self.reserve_mib:
            text += f"; {mib_text(self.reserve_mib)} kept free for N+1"
        return f"{text}; {mib_text(self.usable_mib)} free for new guests"

    @property
    def memory_bar(self) -> Bar:
        total = self.server.memory_mib
        used = _percent(self.used_mib, total)
        segments = [Segment("used", self.used_mib, used, _used_css(used))]
        if self.reserve_mib:
            reserve = min(_percent(self.reserve_mib, total), 100.0 - used)
            segments.append(Segment("reserve", self.reserve_mib, reserve, "bg-secondary progress-bar-striped"))
        return Bar(f"Memory: {self.memory_text}", tuple(segments))

    @property
    def vcpu_text(self) -> str:
        cores = self.server.vcpus
        text = f"{self.vcpus_used} of {cores} vCPUs allocated to guests"
        if self.vcpus_used > cores:
            return f"{text}, overcommitted {round(100 * self.vcpus_used / cores) if cores else 0} %"
        return f"{text}, {cores - self.vcpus_used} unallocated"

    @property
    def vcpu_bar(self) -> Bar:
        percent = _percent(self.vcpus_used, self.server.vcpus)
        css = "bg-warning" if self.vcpus_used > self.server.vcpus else "bg-info"
        return Bar(f"vCPUs: {self.vcpu_text}", (Segment("used", self.vcpus_used, percent, css),))


@dataclass(frozen=True)
class DiskCapacity:
    server: DiskServer
    used_mib: int
    exports: int

    @property
    def free_mib(self) -> int:
        return self.server.capacity_mib - self.used_mib

    @property
    def space_text(self) -> str:
        return (f"{part_text(self.used_mib, self.server.capacity_mib)} allocated to volumes; "
                f"{mib_text(max(self.free_mib, 0))} free")

    @property
    def space_bar(self) -> Bar:
        used = _percent(self.used_mib, self.server.capacity_mib)
        return Bar(f"Space: {self.space_text}", (Segment("used", self.used_mib, used, _used_css(used)),))


@dataclass(frozen=True)
class ClusterCapacity:
    cpu: list[CpuCapacity]
    disk: list[DiskCapacity]
    shortfalls: list[Shortfall]  # N+1 as it stands: empty when every server's guests fit elsewhere


def cpu_capacity(server_pk: int | None = None) -> tuple[list[CpuCapacity], list[Shortfall]]:
    """Every CPU server (by name), or only the one given, and the N+1 shortfalls as they stand."""
    cluster = Cluster.load()
    shortfalls = cluster.shortfalls() if cluster.loads else []
    asked = [pk for pk in cluster.loads if server_pk is None or pk == server_pk]
    # N+1 already broken: nothing new keeps it, the whole free memory is reserve.
    largest = dict.fromkeys(asked, 0) if shortfalls else cluster.largest_new_vms(asked)
    result = []
    for load in cluster.every.values():
        if server_pk is not None and load.server.pk != server_pk:
            continue
        result.append(CpuCapacity(load.server, load.used_mib, load.guests, load.vcpus_used,
                                  largest.get(load.server.pk), load.reserved_mib, load.foreign_mib))
    return result, shortfalls


def disk_capacity(server_pk: int | None = None) -> list[DiskCapacity]:
    rows = DiskServer.objects.annotate(used=Sum("exports__size_mib"), export_count=Count("exports")).order_by("name")
    if server_pk is not None:
        rows = rows.filter(pk=server_pk)
    return [DiskCapacity(server, server.used or 0, server.export_count) for server in rows]


def cluster_capacity() -> ClusterCapacity:
    cpu, shortfalls = cpu_capacity()
    return ClusterCapacity(cpu, disk_capacity(), shortfalls)
