"""Fencing a CPU server the panel has lost, before any of its guests starts anywhere else.

Two copies of a guest writing the same AoE disks destroy its data, so a guest of a dead host is
restarted only once the panel *knows* the old copy can no longer write. Three ways to know, tried
in the order the host's `fence_methods` lists them (docs/fencing.md says what each guarantees):

- ipmi: power the host off through its BMC; confirmed only when the BMC reads "off".
- storage: restart every export on every disk server with a vblade MAC ACL that leaves the host's
  SAN MAC out; confirmed per guest, only when each of its legs runs with such an ACL.
- manual: an operator's explicit "I confirm this host is off" (confirm_fenced_manually); the job
  does not block on it, it ends UNFENCED and the confirmation starts the restart.

This module talks to the BMC and the disk servers; the incident timeline and the job are
ha/failover.py's.
"""
from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType

from django.conf import settings
from django.utils import timezone

from drivers import vblade
from drivers.errors import DriverError
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from hosts.targets import ssh_target
from storage.models import AoEExport

IPMI, STORAGE, MANUAL = "ipmi", "storage", "manual"
# How long the BMC may take to report "off" after the power-off command (real BMCs: seconds).
IPMI_CONFIRM_TIMEOUT_S = getattr(settings, "FENCE_IPMI_CONFIRM_TIMEOUT_S", 30)
IPMI_TIMEOUT_S = getattr(settings, "FENCE_IPMI_TIMEOUT_S", 10)
# Per SSH call to a disk server: a dead one costs the SSH connect timeout, not this.
STORAGE_TIMEOUT_S = getattr(settings, "FENCE_STORAGE_TIMEOUT_S", 20)
# Hosts in these states are not given access again by a storage fence.
LOCKED_OUT_STATES = (HostState.DEAD, HostState.FENCED)


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
    target = ipmi.BmcTarget(host.bmc_address, host.bmc_port, host.bmc_user, host.bmc_password_file,
                            IPMI_TIMEOUT_S)
    try:
        ipmi.power_off(target, confirm_timeout=IPMI_CONFIRM_TIMEOUT_S)
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
    """The SAN MACs that keep access: every CPU server but this one and those dead or fenced.
    Second value: why no safe ACL can be built (None when it can)."""
    if not host.san_mac:
        return [], f"{host.name} has no SAN MAC recorded: an ACL cannot be shown to leave it out"
    others = CpuServer.objects.exclude(pk=host.pk).exclude(state__in=LOCKED_OUT_STATES).order_by("name")
    missing = [c.name for c in others if not c.san_mac]
    if missing:
        # An ACL without them would cut their running guests off their disks.
        return [], f"no SAN MAC recorded for {', '.join(missing)}: an ACL would cut them off too"
    dead = _mac(host.san_mac)
    macs = sorted({_mac(c.san_mac) for c in others} - {dead})
    if not macs:
        return [], "no other CPU server may keep access (an empty vblade ACL lets everyone in)"
    return macs, None


def _mac(value: str) -> str:
    return value.strip().lower().replace("-", ":")


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
        for export in vblade.list_exports(target, timeout=STORAGE_TIMEOUT_S):
            if sorted(export.macs) == macs:
                continue
            spec = vblade.ExportSpec(export.shelf, export.slot, export.interface, export.path)
            vblade.start_export(target, spec, allowed_macs=macs, timeout=STORAGE_TIMEOUT_S)
            changed += 1
        # Confirmation is what the disk server says now, not what we asked for.
        return _DiskResult(disk_name, tuple(vblade.list_exports(target, timeout=STORAGE_TIMEOUT_S)), changed=changed)
    except DriverError as exc:
        return _DiskResult(disk_name, error=str(exc))


def fence_by_storage(host: CpuServer, guests: list[Guest]) -> FenceOutcome:
    macs, problem = allowed_macs(host)
    if problem:
        return FenceOutcome(STORAGE, False, problem, uncovered={g.name: problem for g in guests})
    dead_mac = _mac(host.san_mac)
    disks = list(DiskServer.objects.order_by("name"))
    # Every disk server at once: a dead one costs its SSH timeout once, not once per server.
    with ThreadPoolExecutor(max_workers=max(len(disks), 1)) as pool:
        results = list(pool.map(lambda d: _fence_disk(d.name, ssh_target(d), macs), disks))
    by_disk = {r.name: r for r in results}
    fenced_exports = {
        (r.name, e.shelf, e.slot) for r in results if not r.error
        for e in r.exports if e.macs and dead_mac not in {_mac(m) for m in e.macs}
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


def storage_acl() -> list[str] | None:
    """The ACL every export should have now: None (everyone) while no CPU server is locked out,
    else the SAN MACs of the CPU servers that are not."""
    if not CpuServer.objects.filter(state__in=LOCKED_OUT_STATES).exists():
        return None
    return sorted({_mac(c.san_mac) for c in CpuServer.objects.exclude(state__in=LOCKED_OUT_STATES) if c.san_mac})


def restore_storage_access() -> list[str]:
    """Give storage access back to hosts no longer locked out (a fenced host returned to service):
    every export whose ACL differs from storage_acl() is restarted with it. Returns what changed;
    raises DriverError when a disk server cannot be brought in line (the operator must know)."""
    acl = storage_acl()
    if acl == []:
        raise DriverError("no CPU server may use the disks: refusing to restart every export with an empty ACL")
    changed = []
    for disk in DiskServer.objects.exclude(state__in=LOCKED_OUT_STATES).order_by("name"):
        target = ssh_target(disk)
        for export in vblade.list_exports(target, timeout=STORAGE_TIMEOUT_S):
            current = sorted(_mac(m) for m in export.macs) or None
            if current == acl:
                continue
            spec = vblade.ExportSpec(export.shelf, export.slot, export.interface, export.path)
            vblade.start_export(target, spec, allowed_macs=acl, timeout=STORAGE_TIMEOUT_S)
            changed.append(f"e{export.shelf}.{export.slot} on {disk.name}: ACL {','.join(acl) if acl else 'open'}")
    return changed


# --- the host's state ---------------------------------------------------------------------------

def mark_fenced(host: CpuServer) -> bool:
    """Compare-and-set the host's state (as read into `host`) to FENCED; False if someone changed
    it meanwhile (the caller re-reads and decides)."""
    if host.state == HostState.FENCED:
        return True
    now = timezone.now()
    changed = CpuServer.objects.filter(pk=host.pk, state=host.state).update(
        state=HostState.FENCED, state_changed_at=now)
    if changed:
        host.state, host.state_changed_at = HostState.FENCED, now
        from ha.monitor import publish_host

        publish_host(host)
    return bool(changed)


METHODS = {IPMI: fence_by_ipmi, STORAGE: fence_by_storage}
