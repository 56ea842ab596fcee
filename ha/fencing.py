"""Fencing a CPU server the panel has lost, before any of its guests starts anywhere else.

Two copies of a guest writing the same AoE disks destroy its data, so a guest of a dead host is
restarted only once the panel *knows* the old copy can no longer write. Three ways to know, tried
in the order the host's `fence_methods` lists them (docs/fencing.md says what each guarantees):

- ipmi: power the host off through its BMC; confirmed only when the BMC reads "off".
- storage: restart every export on every disk server with a vblade MAC ACL that leaves the host's
  SAN MAC out; confirmed per guest, only when each of its legs runs with such an ACL. It does not
  stop the host's guests, so the host stays out of every list (`CpuServer.storage_fenced_at`)
  until an operator returns it to service (ha/readmit.py), whatever state the monitor sees it in.
- manual: an operator's explicit "I confirm this host is off" (confirm_fenced_manually); the job
  does not block on it, it ends UNFENCED and the confirmation starts the restart.

Who may use the storage is one rule, `storage_acl()` in storage/access.py: a fence rebuilds the
lists with it, the host being fenced also out. This module talks to the BMC and the disk servers;
the incident timeline and the job are ha/failover.py's.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType

from django.conf import settings
from django.utils import timezone

from drivers import vblade
from drivers.errors import DriverError
from ha.choices import IncidentKind, IncidentState
from ha.models import Incident
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from hosts.states import change_state
from hosts.targets import bmc_target, ssh_target
from storage.access import LOCKED_OUT_STATES, UnsafeAcl, normalise_mac, storage_acl
from storage.models import AoEExport

IPMI, STORAGE, MANUAL = "ipmi", "storage", "manual"


@dataclass
class FenceOutcome:
    """What one method achieved. `covered` holds the guests (VM pks) whose every disk is provably
    out of the host's reach: all of them for a power fence or an operator's word, those whose legs
    all run with a fencing ACL for a storage fence."""

    method: str
    confirmed: bool
    detail: str
    covered: frozenset[int] = frozenset()
    uncovered: dict[str, str] = field(default_factory=dict)  # guest name -> why it is not fenced
    data: dict = field(default_factory=dict)

    @property
    def result(self) -> str:
        if self.confirmed:
            return "confirmed"
        return "partial" if self.covered else "failed"


@dataclass(frozen=True)
class Guest:
    """A guest to restart, as fencing needs it: its name and where its legs are."""

    pk: int
    name: str
    legs: tuple[tuple[str, int, int], ...]  # (disk server name, shelf, slot)


def guests_of(vms: Iterable) -> list[Guest]:
    vms = list(vms)
    legs: dict[int, list[tuple[str, int, int]]] = {vm.pk: [] for vm in vms}
    for vm_pk, disk, shelf, slot in AoEExport.objects.filter(mirror__vm__in=[vm.pk for vm in vms]).values_list(
            "mirror__vm", "disk_server__name", "shelf", "slot").order_by("leg"):
        legs[vm_pk].append((disk, shelf, slot))
    return [Guest(vm.pk, vm.name, tuple(legs[vm.pk])) for vm in vms]


# --- ipmi ---------------------------------------------------------------------------------------

def ipmi_driver() -> ModuleType:
    """drivers.ipmi, imported when first needed: a host without a BMC never needs it."""
    from drivers import ipmi

    return ipmi


def fence_by_ipmi(host: CpuServer, guests: list[Guest]) -> FenceOutcome:
    if not host.bmc_address:
        return FenceOutcome(IPMI, False, f"{host.name} has no BMC configured")
    try:
        ipmi = ipmi_driver()
    except ImportError as exc:
        return FenceOutcome(IPMI, False, f"the IPMI driver is not installed ({exc})")
    target = bmc_target(host, settings.FENCE_IPMI_TIMEOUT_S)
    try:
        ipmi.power_off(target, confirm_timeout=settings.FENCE_IPMI_CONFIRM_TIMEOUT_S)
        # power_off confirms by itself; reading the status once more costs one round trip and is
        # the fact the restart rests on, so it is what we record.
        status = ipmi.power_status(target)
    except DriverError as exc:
        # A power-pulled host often takes its BMC with it: this is the expected failure, and why
        # storage fencing should follow ipmi in fence_methods.
        return FenceOutcome(IPMI, False, str(exc))  # the driver's message names the BMC
    if status != "off":
        return FenceOutcome(IPMI, False, f"BMC {host.bmc_address} reads power {status!r} after power off")
    return FenceOutcome(IPMI, True, f"BMC {host.bmc_address} reads power off",
                        covered=frozenset(g.pk for g in guests))


# --- storage ------------------------------------------------------------------------------------

def allowed_macs(host: CpuServer) -> tuple[list[str], str | None]:
    """The SAN MACs that keep access while `host` is fenced through storage. Second value: why no
    safe ACL can be built (None when it can)."""
    if not host.san_mac:
        return [], f"{host.name} has no SAN MAC recorded: an ACL cannot be shown to leave it out"
    try:
        return storage_acl(also_out=host) or [], None
    except UnsafeAcl as exc:
        return [], str(exc)


@dataclass(frozen=True)
class _DiskResult:
    name: str
    exports: tuple[vblade.RunningExport, ...] = ()
    error: str = ""
    changed: int = 0


def _fence_disk(disk_name: str, target: object, macs: list[str]) -> _DiskResult:
    """Every export of one disk server restarted with `macs` as its ACL; the list read back after."""
    try:
        changed = 0
        for export in vblade.list_exports(target, timeout=settings.FENCE_STORAGE_TIMEOUT_S):
            if sorted(export.macs) == macs:
                continue
            vblade.start_export(target, export.spec, allowed_macs=macs, timeout=settings.FENCE_STORAGE_TIMEOUT_S)
            changed += 1
        # Confirmation is what the disk server says now, not what we asked for.
        return _DiskResult(disk_name, tuple(vblade.list_exports(target, timeout=settings.FENCE_STORAGE_TIMEOUT_S)),
                           changed=changed)
    except DriverError as exc:
        return _DiskResult(disk_name, error=str(exc))


def fence_by_storage(host: CpuServer, guests: list[Guest]) -> FenceOutcome:
    macs, problem = allowed_macs(host)
    if problem:
        return FenceOutcome(STORAGE, False, problem, uncovered={g.name: problem for g in guests})
    # Written before any export changes: from now on every list leaves the host out, even the
    # exports of a disk server that misses this fence and those started while it runs, until an
    # operator returns the host to service (ha/readmit.py). Its guests keep running, I/O blocked.
    CpuServer.objects.filter(pk=host.pk, storage_fenced_at__isnull=True).update(storage_fenced_at=timezone.now())
    dead_mac = normalise_mac(host.san_mac)
    disks = list(DiskServer.objects.order_by("name"))
    # Every disk server at once: a dead one costs its SSH timeout once, not once per server.
    with ThreadPoolExecutor(max_workers=max(len(disks), 1)) as pool:
        results = list(pool.map(lambda d: _fence_disk(d.name, ssh_target(d), macs), disks))
    by_disk = {r.name: r for r in results}
    fenced_exports = {
        (r.name, e.shelf, e.slot) for r in results if not r.error
        for e in r.exports if e.macs and dead_mac not in {normalise_mac(m) for m in e.macs}
    }
    covered: set[int] = set()
    uncovered: dict[str, str] = {}
    for guest in guests:
        reasons = []
        for disk, shelf, slot in guest.legs:
            result = by_disk.get(disk)
            if result is None or result.error:
                reasons.append(f"{disk} (holding e{shelf}.{slot}) did not answer")
            elif (disk, shelf, slot) not in fenced_exports:
                reasons.append(f"e{shelf}.{slot} on {disk} does not run with an ACL leaving {dead_mac} out")
        if not guest.legs:
            reasons.append("it has no exports recorded")
        if reasons:
            uncovered[guest.name] = "; ".join(reasons)
        else:
            covered.add(guest.pk)
    parts = [f"{r.name}: {r.error}" if r.error else f"{r.name}: {len(r.exports)} exports, {r.changed} restarted"
             for r in results]
    detail = f"ACL {','.join(macs)} ({'; '.join(parts) or 'no disk servers'})"
    return FenceOutcome(STORAGE, not uncovered, detail, frozenset(covered), uncovered,
                        data={"allowed_macs": macs, "unreachable": [r.name for r in results if r.error]})


def restore_storage_access(disks: Iterable[DiskServer] | None = None, *,
                           log: Callable[[str], object] = lambda _message: None) -> list[str]:
    """Bring every running export (of `disks`, default every disk server that is not down) in line
    with storage_acl(): the lists after a host returned to service (its MAC back in, or every export
    open again once no fence stands), or after a disk server that missed a fence came back. Returns
    what changed, and `log`s it disk server by disk server; raises DriverError when a disk server
    cannot be brought in line or no safe list exists (the operator must know)."""
    try:
        acl = storage_acl()
    except UnsafeAcl as exc:
        raise DriverError(f"no safe MAC list: {exc}", permanent=True) from exc
    if disks is None:
        disks = DiskServer.objects.exclude(state__in=LOCKED_OUT_STATES).order_by("name")
    changed = []
    for disk in disks:
        target = ssh_target(disk)
        exports = vblade.list_exports(target, timeout=settings.FENCE_STORAGE_TIMEOUT_S)
        mine = []
        for export in exports:
            current = sorted(normalise_mac(m) for m in export.macs) or None
            if current == acl:
                continue
            vblade.start_export(target, export.spec, allowed_macs=acl, timeout=settings.FENCE_STORAGE_TIMEOUT_S)
            mine.append(f"e{export.shelf}.{export.slot} on {disk.name}: ACL {','.join(acl) if acl else 'open'}")
        log(f"{disk.name}: {len(exports)} export{'' if len(exports) == 1 else 's'}, "
            + (f"{len(mine)} restarted with the MAC list {','.join(acl) if acl else 'open to every initiator'}"
               if mine else "every MAC list already right"))
        changed += mine
    return changed


# --- the host's state ---------------------------------------------------------------------------

def mark_fenced(host: CpuServer) -> bool:
    """Compare-and-set the host's state (as read into `host`) to FENCED; False if someone changed
    it meanwhile (the caller re-reads and decides)."""
    return host.state == HostState.FENCED or change_state(host, HostState.FENCED)


def manual_confirmation_refused(incident: Incident, host: CpuServer | None) -> str | None:
    """Why an operator's "I confirm it is off" cannot stand as the fence now; None when it can.
    Only for a host its incident declared dead and no fence method could fence: a host that answers
    (up, suspect, in maintenance) is not off, and one already fenced needs nobody's word."""
    if not incident.is_open:
        return f"incident #{incident.pk} is closed: it is not waiting for a fence"
    if incident.kind != IncidentKind.CPU_SERVER_FAILED or host is None:
        return f"{incident} is not about a CPU server the panel knows: nothing to fence"
    if incident.fenced_by:
        return f"{host.name} is already fenced ({incident.fenced_by})"
    if host.state != HostState.DEAD:
        seen = (f"the panel last saw it answer at {host.last_seen_at:%Y-%m-%d %H:%M:%S} UTC" if host.last_seen_at
                else "the panel never saw it answer")
        return (f"{host.name} is {host.state}, not dead: {seen}. Only a host its incident declared dead and "
                "no fence method could fence may be confirmed off")
    if incident.state != IncidentState.UNFENCED:
        return (f"incident #{incident.pk} is {incident.get_state_display().lower()}: the failover is still at it; "
                "confirm once it says no fence confirmed")
    return None


METHODS = {IPMI: fence_by_ipmi, STORAGE: fence_by_storage}
