"""Cluster verify, gathering: the database's side as plain records (`load_inventory`), and the
hosts' side (`collect_*`, hosts asked in parallel, every call with its own timeout) as a `Reality`.
hosts.verify compares the two. Nothing here changes a host or a row.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from drivers import aoe, hypervisor, vblade
from drivers.aoe import AoEAnswer
from drivers.errors import DriverError
from drivers.hypervisor import DomainInfo
from drivers.vblade import RunningExport
from hosts.choices import HostState
from hosts.foreign import is_foreign
from hosts.models import CpuServer, DiskServer
from hosts.targets import ssh_target
from jobs.choices import ACTIVE_STATES
from jobs.models import Job
from storage.models import AoEExport
from vms.affinity import Crowding, crowded
from vms.models import VirtualMachine
from vms.placement import Shortfall, n_plus_one_shortfalls
from xenaoe_panel.names import DOMAIN_PREFIX

T = TypeVar("T")
Note = Callable[[str, str], None]  # (message, level): the job's log, or nothing for the CLI
# Hosts the database already calls down: not answering is expected, not a finding.
DOWN_STATES = frozenset({HostState.DEAD, HostState.FENCED, HostState.MAINTENANCE})
LIBVIRT_TIMEOUT = 15.0
SSH_TIMEOUT = 15.0
# The probe listens this long for Query Config answers, and as long again for IDENTIFY (which
# ends as soon as every target answered). Shorter windows make a loaded SAN look silent.
SAN_LISTEN = 1.0
SAN_TIMEOUT = 2 * SAN_LISTEN + aoe.SSH_MARGIN + 4
MAX_PARALLEL = 16


# --- the database's side ----------------------------------------------------------------------

@dataclass(frozen=True)
class HostRecord:
    name: str
    state: str = HostState.UP

    @property
    def expected_up(self) -> bool:
        return self.state not in DOWN_STATES


@dataclass(frozen=True)
class LegRecord:
    disk_server: str
    shelf: int
    slot: int
    path: str
    size_mib: int
    interface: str = "san0"

    @property
    def name(self) -> str:
        return f"e{self.shelf}.{self.slot}"


@dataclass(frozen=True)
class VmRecord:
    name: str
    state: str
    cpu_server: str | None
    uuid: str | None = None
    legs: tuple[LegRecord, ...] = ()
    # A job owns it (or it changed while verify ran): not checked, but its domain and exports
    # are still the panel's, never "unknown".
    busy: bool = False

    @property
    def domain(self) -> str:
        return f"{DOMAIN_PREFIX}{self.name}"


@dataclass(frozen=True)
class Inventory:
    cpu_servers: tuple[HostRecord, ...] = ()
    disk_servers: tuple[HostRecord, ...] = ()
    vms: tuple[VmRecord, ...] = ()
    # (disk server, shelf, slot) of every export row, with or without a VM.
    reserved: frozenset[tuple[str, int, int]] = frozenset()
    shortfalls: tuple[Shortfall, ...] = ()
    crowded: tuple[Crowding, ...] = ()  # anti-affinity groups broken where they need not be

    def host(self, name: str) -> HostRecord | None:
        return next((h for h in (*self.cpu_servers, *self.disk_servers) if h.name == name), None)


def load_inventory() -> Inventory:
    busy_ids = set(Job.objects.filter(state__in=ACTIVE_STATES, vm__isnull=False).values_list("vm_id", flat=True))
    legs: dict[int, list[LegRecord]] = defaultdict(list)
    reserved = set()
    for export in AoEExport.objects.select_related("disk_server", "mirror").order_by("leg"):
        reserved.add((export.disk_server.name, export.shelf, export.slot))
        if export.mirror is not None:
            legs[export.mirror.vm_id].append(LegRecord(
                export.disk_server.name, export.shelf, export.slot, export.backing_path, export.size_mib,
                export.disk_server.san_interface))
    vms = tuple(
        VmRecord(vm.name, vm.state, vm.cpu_server.name if vm.cpu_server else None,
                 str(vm.domain_uuid) if vm.domain_uuid else None, tuple(legs[vm.pk]), vm.pk in busy_ids)
        for vm in VirtualMachine.objects.select_related("cpu_server")
    )
    return Inventory(
        cpu_servers=tuple(HostRecord(h.name, h.state) for h in CpuServer.objects.all()),
        disk_servers=tuple(HostRecord(h.name, h.state) for h in DiskServer.objects.all()),
        vms=vms, reserved=frozenset(reserved), shortfalls=tuple(n_plus_one_shortfalls()),
        crowded=tuple(crowded(busy={vm.name for vm in vms if vm.busy})),
    )


def settle(before: Inventory, after: Inventory) -> Inventory:
    """The inventory read after collecting, with every VM that differs from the one read before
    (created, deleted, moved, changed state while verify ran) marked busy: reality was collected
    somewhere in between, so comparing such a VM would report a change, not a difference."""
    old = {vm.name: vm for vm in before.vms}
    new = {vm.name: vm for vm in after.vms}
    vms = [vm if old.get(name) == vm else _busy(vm) for name, vm in new.items()]
    vms += [_busy(vm) for name, vm in old.items() if name not in new]
    return Inventory(after.cpu_servers, after.disk_servers, tuple(vms), before.reserved | after.reserved,
                     after.shortfalls, after.crowded)


def _busy(vm: VmRecord) -> VmRecord:
    return VmRecord(vm.name, vm.state, vm.cpu_server, vm.uuid, vm.legs, busy=True)


# --- the hosts' side --------------------------------------------------------------------------

@dataclass(frozen=True)
class Unreachable:
    host: str
    part: str  # libvirt | exports | volumes | san
    error: str


@dataclass
class Reality:
    """What the hosts said. A host missing from a dict did not answer that part: unknown."""

    domains: dict[str, list[DomainInfo]] = field(default_factory=dict)
    exports: dict[str, list[RunningExport]] = field(default_factory=dict)
    missing_volumes: dict[str, set[str]] = field(default_factory=dict)
    san: dict[str, list[AoEAnswer]] = field(default_factory=dict)
    unreachable: list[Unreachable] = field(default_factory=list)


def _parallel(calls: dict[str, Callable[[], T]]) -> dict[str, T | Exception]:
    """Run one call per host at once; a driver failure is that host's result, not the caller's."""
    if not calls:
        return {}

    def guarded(call: Callable[[], T]) -> T | Exception:
        try:
            return call()
        except (DriverError, OSError) as exc:  # OSError: ssh itself missing or not runnable
            return exc

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(calls)), thread_name_prefix="verify") as pool:
        futures = {name: pool.submit(guarded, call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


def quiet(_message: str, _level: str) -> None:
    pass


def collect_domains(real: Reality, cpus: Iterable[CpuServer], note: Note = quiet) -> None:
    results = _parallel({c.name: (lambda c=c: hypervisor.list_domains(c.libvirt_uri, timeout=LIBVIRT_TIMEOUT))
                         for c in cpus})
    for name, result in results.items():
        if isinstance(result, Exception):
            real.unreachable.append(Unreachable(name, "libvirt", str(result)))
            note(f"{name}: libvirt does not answer: {result}", "warning")
            continue
        real.domains[name] = result
        ours = [d for d in result if d.name.startswith(DOMAIN_PREFIX)]
        running = sum(1 for d in ours if d.state == "running")
        foreign = sum(1 for d in result if is_foreign(d.name))
        note(f"{name}: {len(ours)} panel domains ({running} running), {foreign} the panel did not make", "info")


def collect_disks(real: Reality, disks: Iterable[DiskServer], inventory: Inventory, note: Note = quiet) -> None:
    paths: dict[str, set[str]] = defaultdict(set)
    for vm in inventory.vms:
        for leg in vm.legs:
            paths[leg.disk_server].add(leg.path)

    def one(disk: DiskServer) -> tuple[list[RunningExport], set[str] | Exception]:
        target = ssh_target(disk)
        exports = vblade.list_exports(target, timeout=SSH_TIMEOUT)  # failing here: the host is unreachable
        try:
            return exports, vblade.missing_volumes(target, paths[disk.name], timeout=SSH_TIMEOUT)
        except DriverError as exc:
            return exports, exc

    for name, result in _parallel({d.name: (lambda d=d: one(d)) for d in disks}).items():
        if isinstance(result, Exception):
            real.unreachable.append(Unreachable(name, "exports", str(result)))
            note(f"{name}: cannot list exports: {result}", "warning")
            continue
        exports, missing = result
        real.exports[name] = exports
        if isinstance(missing, Exception):
            real.unreachable.append(Unreachable(name, "volumes", str(missing)))
            note(f"{name}: cannot check volumes: {missing}", "warning")
        else:
            real.missing_volumes[name] = missing
        checked = "not checked" if isinstance(missing, Exception) else f"{len(paths[name]) - len(missing)} of " \
            f"{len(paths[name])} present"
        note(f"{name}: {len(exports)} exports running; volumes {checked}", "info")


def probe_san(real: Reality, cpus: Iterable[CpuServer], note: Note = quiet) -> None:
    """One Query Config per CPU server, every shelf and slot, with IDENTIFY for the sizes. CPU
    servers the database calls down are not asked: fenced out of the exports, they see nothing."""
    cpus = [c for c in cpus if c.state not in DOWN_STATES]
    results = _parallel({c.name: (lambda c=c: aoe.probe(ssh_target(c), c.san_interface, identify=True,
                                                        listen=SAN_LISTEN, timeout=SAN_TIMEOUT))
                         for c in cpus})
    for name, result in results.items():
        if isinstance(result, Exception):
            real.unreachable.append(Unreachable(name, "san", str(result)))
            note(f"{name}: AoE probe failed: {result}", "warning")
            continue
        real.san[name] = result
        note(f"{name}: {len(result)} exports answer on the SAN", "info")


def collect(inventory: Inventory, note: Note = quiet) -> Reality:
    """Everything at once: CPU servers, disk servers and the SAN are asked in parallel."""
    real = Reality()
    cpus, disks = list(CpuServer.objects.all()), list(DiskServer.objects.all())
    # Each collector writes its own keys of `real`; list.append is atomic, so sharing is safe.
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="verify-part") as pool:
        parts = [pool.submit(collect_domains, real, cpus, note),
                 pool.submit(collect_disks, real, disks, inventory, note),
                 pool.submit(probe_san, real, cpus, note)]
        for part in parts:
            part.result()
    return real



# creating/deleting: a job owns them. unknown (the domain watcher lost the domain): where it runs
# and its exports are checked, its state is not.
