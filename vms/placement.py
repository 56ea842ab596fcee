"""The allocator: where a guest goes, for every placement the panel makes, and what that holds.

One model of the cluster (`Cluster`: the CPU servers that are up, what each carries and which
guests), one rule for "fits" (free memory >= the guest's memory), one order among the servers that
fit (apart from the guest's anti-affinity groups first — fewest groups broken, then fewest members
met —, then those that keep N+1, then the most free memory, then the server registered first) and
one N+1 check (each up server's guests packed first-fit by decreasing memory into the others' free
memory, as a restart would place them). A new VM (vms.services), a live migration with or without
a target (vms.migration), a failover restart (ha.failover) and an evacuation plan (ha.maintenance)
are all placed here. What breaking N+1 means is the caller's: a create refuses unless the operator
overrides, a move warns.

Anti-affinity is a soft rule that wins over N+1 in the order: a guest never goes where another
member of one of its groups is (recorded there, or held there for a job under way) while a server
without one has room. Room is what the caller may use: for a create that may not break N+1, only
servers that keep it (so such a create goes next to a member rather than break N+1; with the
override, apart first). A placement that had to break the rule, or a server the operator chose,
says which groups it breaks (`Placement.breaks`); the caller warns.

Used memory on a CPU server, as placement, N+1, the dashboard and the API count it: every VM
recorded there, whatever its state; what the allocator handed to jobs still queued or running
(`Reservation`, for a VM not recorded there: a migrating VM counts on its source and on its target
until its job ends); and the memory of domains the panel did not make (hosts/foreign.py).

Locks: a placement is chosen and reserved in one transaction holding, in this order, the tenant's
row (a create, for its quota; a migration, whose job row refers to it), the rows of the VMs being
moved (by pk), the CPU server rows (by pk: `lock_servers`), then the disk server rows (by pk).
Every caller takes them in this order, so placements never deadlock and never hand out the same
memory twice.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, Sum

from drivers.vblade import MAX_SLOT
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from jobs.choices import ACTIVE_STATES
from jobs.models import Job
from storage.models import LEGS, AoEExport
from vms import packing
from vms.models import AntiAffinityGroup, Reservation, VirtualMachine

NEW_VM = "(new VM)"


class PlacementError(Exception):
    """No place satisfies the request; the message gives the numbers."""


@dataclass(frozen=True)
class Load:
    """What one CPU server carries, as the allocator counts it."""

    server: CpuServer
    guests_mib: int = 0  # the VMs recorded on it, whatever their state
    reserved_mib: int = 0  # handed to active jobs for VMs not recorded here (yet, or any more)
    foreign_mib: int = 0  # domains the panel did not make, as last seen
    guests: int = 0
    vcpus_used: int = 0  # the VMs' and the reservations'

    @property
    def used_mib(self) -> int:
        return self.guests_mib + self.reserved_mib + self.foreign_mib

    @property
    def free_mib(self) -> int:
        return self.server.memory_mib - self.used_mib


def _read(ignore_job: Job | None = None, *, with_guests: bool = True
          ) -> tuple[dict[int, Load], dict[int, list[tuple[str, int]]]]:
    """Every CPU server's load (by pk, in name order) and the guests recorded on each, which the N+1
    check packs (`with_guests=False`: none, and the database adds up the guests' numbers instead of
    sending every VM's row). `ignore_job`: leave that job's own reservations out (a job checking the
    room it was given)."""
    servers = list(CpuServer.objects.order_by("name"))
    guests: dict[int, list[tuple[str, int]]] = {s.pk: [] for s in servers}
    memory: dict[int, int] = defaultdict(int)
    count: dict[int, int] = defaultdict(int)
    vcpus: dict[int, int] = defaultdict(int)
    recorded = VirtualMachine.objects.filter(cpu_server__isnull=False).order_by()  # the check sorts them itself
    if with_guests:
        for server_pk, name, mib, cpus in recorded.values_list("cpu_server", "name", "memory_mib", "vcpus"):
            guests[server_pk].append((name, mib))
            memory[server_pk] += mib
            count[server_pk] += 1
            vcpus[server_pk] += cpus
    else:
        totals = recorded.values("cpu_server").annotate(mib=Sum("memory_mib"), n=Count("pk"), cpus=Sum("vcpus"))
        for server_pk, mib, n, cpus in totals.values_list("cpu_server", "mib", "n", "cpus"):
            memory[server_pk], count[server_pk], vcpus[server_pk] = mib, n, cpus
    reserved: dict[int, int] = defaultdict(int)
    held = Reservation.objects.filter(job__state__in=ACTIVE_STATES)
    if ignore_job is not None:
        held = held.exclude(job=ignore_job)
    for server_pk, vm_server_pk, mib, cpus in held.values_list("cpu_server", "vm__cpu_server", "memory_mib", "vcpus"):
        if vm_server_pk != server_pk:  # else the VM's own row counts it already
            reserved[server_pk] += mib
            vcpus[server_pk] += cpus
    loads = {s.pk: Load(s, memory[s.pk], reserved[s.pk], s.foreign_memory_mib, count[s.pk], vcpus[s.pk])
             for s in servers}
    return loads, guests


def _held_names(ignore_job: Job | None = None) -> dict[int, set[str]]:
    """The VMs each CPU server holds room for (active jobs' reservations: a migration's target, a
    restart's survivor, an evacuation's planned target), by server pk: they count there for
    anti-affinity as they count there for memory."""
    held = Reservation.objects.filter(job__state__in=ACTIVE_STATES)
    if ignore_job is not None:
        held = held.exclude(job=ignore_job)
    names: dict[int, set[str]] = defaultdict(set)
    for server_pk, name in held.values_list("cpu_server", "vm__name"):
        names[server_pk].add(name)
    return names


def server_loads(ignore_job: Job | None = None) -> dict[int, Load]:
    """Every CPU server, whatever its state, by pk (in name order)."""
    return _read(ignore_job, with_guests=False)[0]


def server_load(server: CpuServer, ignore_job: Job | None = None) -> Load:
    return server_loads(ignore_job)[server.pk]


@dataclass(frozen=True)
class Shortfall:
    """If `failed` died, these guests would find no room on the surviving CPU servers."""

    failed: str
    homeless: tuple[tuple[str, int], ...]  # (VM name, memory MiB)

    def __str__(self) -> str:
        guests = ", ".join(f"{name} ({mib} MiB)" for name, mib in self.homeless)
        return f"if {self.failed} fails, no surviving CPU server has room for {guests}"


@dataclass(frozen=True)
class Move:
    """A guest of `memory_mib` going to `target` (pk), from `source` (pk) or new."""

    name: str
    memory_mib: int
    target: int
    source: int | None = None


@dataclass(frozen=True)
class Apart:
    """Whom a guest should not share a CPU server with: for each of its anti-affinity groups (by name),
    the other members' names."""

    vm: str
    groups: tuple[tuple[str, frozenset[str]], ...] = ()

    @classmethod
    def new(cls, name: str, groups: Iterable[AntiAffinityGroup]) -> Apart:
        """A guest joining these groups (a new VM: none of them has it yet)."""
        return cls(name, tuple((group.name, frozenset(group.members.exclude(name=name).values_list("name", flat=True)))
                               for group in groups))

    @classmethod
    def of(cls, vm: VirtualMachine) -> Apart:
        """A VM's own groups, as they stand."""
        members = AntiAffinityGroup.members.through.objects
        rows = members.filter(antiaffinitygroup__in=members.filter(virtualmachine=vm).values("antiaffinitygroup"))
        peers: dict[str, set[str]] = defaultdict(set)
        for group, name in rows.values_list("antiaffinitygroup__name", "virtualmachine__name"):
            if name != vm.name:
                peers[group].add(name)
        return cls(vm.name, tuple((group, frozenset(names)) for group, names in sorted(peers.items())))


@dataclass(frozen=True)
class AntiAffinityBreak:
    """`vm` placed on `server`, where `peers`, members of its group `group`, are too."""

    group: str
    vm: str
    peers: tuple[str, ...]
    server: str

    def __str__(self) -> str:
        return f"broke anti-affinity group {self.group}: {self.together()}"

    def together(self, *, server_shown: bool = True) -> str:
        """"web1 and web2 both on cpu1" (on "one CPU server" for those not told which)."""
        names = [*self.peers, self.vm]
        where = self.server if server_shown else "one CPU server"
        return f"{', '.join(names[:-1])} and {names[-1]} {'both' if len(names) == 2 else 'all'} on {where}"


@dataclass(frozen=True)
class Headroom:
    """What placing a guest on one CPU server would leave."""

    load: Load
    free_mib: int  # before the guest, counting the moves already planned in the same Cluster
    memory_mib: int
    shortfalls: tuple[Shortfall, ...]
    breaks: tuple[AntiAffinityBreak, ...] = ()  # the guest's groups with a member there already

    @property
    def server(self) -> CpuServer:
        return self.load.server

    @property
    def rank(self) -> tuple[int, int, bool, int, int]:
        """The allocator's preference among the servers that fit, lowest first."""
        return (len(self.breaks), sum(len(b.peers) for b in self.breaks), not self.keeps_n_plus_one,
                -self.free_mib, self.server.pk)

    @property
    def fits(self) -> bool:
        return self.free_mib >= self.memory_mib

    @property
    def free_after_mib(self) -> int:
        return self.free_mib - self.memory_mib

    @property
    def keeps_n_plus_one(self) -> bool:
        return not self.shortfalls


@dataclass(frozen=True)
class Placement:
    server: CpuServer
    shortfalls: tuple[Shortfall, ...]  # N+1 as it would stand with the guest there
    breaks: tuple[AntiAffinityBreak, ...] = ()  # the anti-affinity groups it breaks there


class Cluster:
    """The CPU servers that are up, as the allocator sees them (`every`: all of them, whatever their
    state). `take` records a placement in the model, so that a plan of several moves counts the
    ones before."""

    def __init__(self, every: dict[int, Load], guests: dict[int, list[tuple[str, int]]],
                 leaving: CpuServer | None = None, held: Callable[[], dict[int, set[str]]] | None = None) -> None:
        self.every = every
        self.loads = {pk: load for pk, load in every.items() if load.server.state == HostState.UP
                      and (leaving is None or pk != leaving.pk)}
        self.free = {pk: load.free_mib for pk, load in self.loads.items()}
        self.guests = {pk: list(guests.get(pk, [])) for pk in self.loads}
        self.carried = {pk: sum(memory for _name, memory in carried) for pk, carried in self.guests.items()}
        self._read_held, self._held = held, None  # names_on's

    @classmethod
    def load(cls, *, leaving: CpuServer | None = None, ignore_job: Job | None = None) -> Cluster:
        """`leaving`: a server being evacuated, left out even if it is still up."""
        return cls(*_read(ignore_job), leaving=leaving, held=lambda: _held_names(ignore_job))

    @property
    def candidates(self) -> list[Load]:
        return list(self.loads.values())

    def shortfalls(self, move: Move | None = None) -> list[Shortfall]:
        """N+1 as it stands, or as it would once `move` is done (its source no longer carries it).
        For each up server: could the others take every guest it carries if it died?"""
        # Copies of what the move changes only: this runs once per server for the dashboard.
        free, carried, moved = dict(self.free), dict(self.carried), {}
        if move is not None and move.target in free:
            free[move.target] -= move.memory_mib
            moved[move.target] = [*self.guests[move.target], (move.name, move.memory_mib)]
            carried[move.target] += move.memory_mib
            if move.source in free:
                free[move.source] += move.memory_mib
                moved[move.source] = [g for g in self.guests[move.source] if g[0] != move.name]
                carried[move.source] = sum(memory for _name, memory in moved[move.source])
        found = []
        # The two roomiest servers: a failed server whose guests together fit on the roomiest other
        # one needs no packing (first fit, largest room first, would put them all there): what keeps
        # the check linear in the number of servers on a large site, with the same answers.
        roomiest = heapq.nlargest(2, free.items(), key=lambda item: item[1])
        for failed, load in self.loads.items():
            elsewhere = next((mib for pk, mib in roomiest if pk != failed), None)
            if elsewhere is not None and carried[failed] <= elsewhere:
                continue
            room = sorted((mib for pk, mib in free.items() if pk != failed), reverse=True)
            homeless = []
            for name, memory in sorted(moved.get(failed, self.guests[failed]), key=lambda g: (-g[1], g[0])):
                fit = next((i for i, mib in enumerate(room) if mib >= memory), None)
                if fit is None:
                    homeless.append((name, memory))
                else:
                    room[fit] -= memory
            if homeless:
                found.append(Shortfall(load.server.name, tuple(homeless)))
        return found

    def largest_new_vms(self, server_pks: Iterable[int] | None = None) -> dict[int, int]:
        """For each up server (or those given), the largest new VM (MiB) such that a new VM of that size
        or any smaller one placed there keeps N+1 as `shortfalls` checks it (0: nothing free there, or
        even 1 MiB breaks it): vms/packing.py, one pass per server, not a check per size."""
        guests = {pk: [memory for _name, memory in self.guests[pk]] for pk in self.loads}
        return packing.largest_new_vms(self.free, self.carried, guests,
                                       self.loads if server_pks is None else server_pks)

    def names_on(self, server_pk: int) -> set[str]:
        """Who is on an up server, for anti-affinity: the VMs recorded there, those placed there on this
        model (`take`) and those it holds room for (`held`, read on first use: a placement without
        groups, the dashboard and the metrics never ask)."""
        if self._held is None:
            self._held = self._read_held() if self._read_held is not None else {}
        return {name for name, _memory in self.guests[server_pk]} | self._held.get(server_pk, set())

    def breaks(self, server_pk: int, apart: Apart | None) -> tuple[AntiAffinityBreak, ...]:
        """The guest's anti-affinity groups that placing it on this up server would break."""
        if apart is None or not apart.groups:
            return ()
        here, server = self.names_on(server_pk), self.loads[server_pk].server.name
        return tuple(AntiAffinityBreak(group, apart.vm, tuple(sorted(peers & here)), server)
                     for group, peers in apart.groups if peers & here)

    def headroom(self, memory_mib: int, *, name: str = NEW_VM, source: CpuServer | None = None,
                 apart: Apart | None = None) -> list[Headroom]:
        """Every up server but the source, in name order."""
        source_pk = source.pk if source is not None else None
        return [Headroom(load, self.free[pk], memory_mib,
                         tuple(self.shortfalls(Move(name, memory_mib, pk, source_pk))), self.breaks(pk, apart))
                for pk, load in self.loads.items() if pk != source_pk]

    def place(self, memory_mib: int, *, name: str = NEW_VM, source: CpuServer | None = None,
              requested: CpuServer | None = None, scope: str = "", apart: Apart | None = None,
              must_keep_n_plus_one: bool = False) -> Placement:
        """The CPU server for a guest of `memory_mib` leaving `source` (None: a new one): `requested`
        if it is up and fits, else the best that fits, apart from the members of its anti-affinity
        groups (`apart`) wherever one has room. `must_keep_n_plus_one`: the caller refuses to break N+1,
        so a server that would break it is no room (unless none keeps it: then the best of those that
        fit, for the caller to refuse). `scope` words the refusal ("other ", "surviving "). Raises
        PlacementError with the numbers."""
        who = "the new VM" if name == NEW_VM else name
        if requested is not None and source is not None and requested.pk == source.pk:
            raise PlacementError(f"{who} already runs on {source.name}: choose another CPU server")
        options = self.headroom(memory_mib, name=name, source=source, apart=apart)
        if requested is not None:
            chosen = next((h for h in options if h.server.pk == requested.pk), None)
            if chosen is None:
                raise PlacementError(f"CPU server {requested.name} is {requested.get_state_display().lower()}, "
                                     "not up")
            if not chosen.fits:
                raise PlacementError(f"{requested.name} has {chosen.free_mib} MiB free, {who} needs {memory_mib} MiB")
            return Placement(chosen.server, chosen.shortfalls, chosen.breaks)
        fitting = [h for h in options if h.fits]
        if not fitting:
            detail = ", ".join(f"{h.server.name}: {h.free_mib} MiB free" for h in options) or "none is up"
            raise PlacementError(f"no {scope}CPU server has {memory_mib} MiB free ({detail})")
        if must_keep_n_plus_one:
            fitting = [h for h in fitting if h.keeps_n_plus_one] or fitting
        chosen = min(fitting, key=lambda h: h.rank)
        return Placement(chosen.server, chosen.shortfalls, chosen.breaks)

    def take(self, server: CpuServer, name: str, memory_mib: int) -> None:
        """Count a placement made on this model (its source keeps the memory until the job ends)."""
        self.free[server.pk] -= memory_mib
        self.guests[server.pk].append((name, memory_mib))
        self.carried[server.pk] += memory_mib


def cpu_candidates() -> list[Load]:
    """The CPU servers that are up (placement's candidates), in name order."""
    return Cluster.load().candidates


def n_plus_one_shortfalls(extra: tuple[int, int] | None = None) -> list[Shortfall]:
    """N+1 as it stands; `extra` = (CPU server pk, MiB) asks "would it hold with a new VM there?"."""
    return Cluster.load().shortfalls(Move(NEW_VM, extra[1], extra[0]) if extra else None)


def choose_cpu_server(memory_mib: int, requested: CpuServer | None, *, allow_n_plus_one_break: bool = False,
                      apart: Apart | None = None) -> Placement:
    """The CPU server for a new VM, with the N+1 shortfalls placing it there leaves (non-empty only
    when the operator allowed it) and the anti-affinity groups it breaks. The caller holds
    `lock_servers`."""
    placement = Cluster.load().place(memory_mib, requested=requested, apart=apart,
                                     must_keep_n_plus_one=not allow_n_plus_one_break)
    if placement.shortfalls and not allow_n_plus_one_break:
        raise PlacementError(
            f"placing {memory_mib} MiB on {placement.server.name} breaks N+1: "
            + "; ".join(str(s).replace(NEW_VM, "the new VM") for s in placement.shortfalls)
            + ". Override only if you accept that a host failure would leave guests down."
        )
    return placement


# --- locks and reservations ----------------------------------------------------------------------

def lock_servers(*, disk_servers: bool = False) -> None:
    """Lock the CPU server rows (and the disk servers'), by pk, until the transaction ends: placements
    are serialised. Callers lock the tenant's row and the moving VMs' rows before, never after."""
    list(CpuServer.objects.select_for_update().order_by("pk"))
    if disk_servers:
        list(DiskServer.objects.select_for_update().order_by("pk"))


def reserve(job: Job, vm: VirtualMachine, servers: Iterable[CpuServer]) -> None:
    """Hold `vm`'s memory and vCPUs on these servers until `job` ends. Under `lock_servers`."""
    for server in servers:
        Reservation.objects.get_or_create(job=job, vm=vm, cpu_server=server,
                                          defaults={"memory_mib": vm.memory_mib, "vcpus": vm.vcpus})


def release(job: Job, vm: VirtualMachine | None = None) -> None:
    """Give back what `job` holds (for one VM only, if given) before the job ends."""
    held = Reservation.objects.filter(job=job)
    if vm is not None:
        held = held.filter(vm=vm)
    held.delete()


def reserve_move(job: Job, vm: VirtualMachine, *, scope: str = "other ") -> Placement:
    """Choose where `vm` goes from the server it is recorded on, apart from its anti-affinity groups'
    members where there is room, and hold the room there for `job`, in a transaction of its own (VM
    row, then server rows). Raises PlacementError."""
    with transaction.atomic():
        vm = VirtualMachine.objects.select_for_update(of=("self",)).select_related("cpu_server").get(pk=vm.pk)
        lock_servers()
        placement = Cluster.load().place(vm.memory_mib, name=vm.name, source=vm.cpu_server, scope=scope,
                                         apart=Apart.of(vm))
        reserve(job, vm, [placement.server])
    return placement


# --- disks -----------------------------------------------------------------------------------------

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


def free_slot(disk_servers: list[DiskServer], *, from_top: bool = False) -> int:
    """The lowest slot free on every one of these shelves, so a VM's legs share a slot number; with
    `from_top` the highest (an ISO's export: it leaves the low slots, shared by two shelves, to VMs)."""
    shelves = [s.aoe_shelf for s in disk_servers]
    taken = set(AoEExport.objects.filter(shelf__in=shelves).values_list("slot", flat=True))
    for slot in range(MAX_SLOT, -1, -1) if from_top else range(MAX_SLOT + 1):
        if slot not in taken:
            return slot
    raise PlacementError(f"no AoE slot is free on shelves {shelves}")
