"""Who may reach the guests' disks: the MAC list (vblade ACL) every export on the SAN runs with.

One rule, `storage_acl()`, derived from the CPU servers' rows: every path that starts or restarts an
export (a new VM, an ISO served to CD drives, cluster verify, a fence, a returning host or disk
server) asks it, so none can let in a host that may still run old copies of guests. A host is out
while it is dead or fenced, and after a storage fence (ha/fencing.py) until an operator returns it
to service (ha/readmit.py), whatever state the monitor sees it in: its old guests may still run,
their I/O waiting.
"""
from __future__ import annotations

from django.db.models import Q, QuerySet

from drivers import vblade
from drivers.ssh import SSHTarget
from hosts.choices import HostState
from hosts.models import CpuServer

# Hosts in these states may be running without the panel seeing them (dead: maybe only cut off)
# or were fenced: no export lets them in. A storage-fenced host stays out in any state (below).
LOCKED_OUT_STATES = (HostState.DEAD, HostState.FENCED)


class UnsafeAcl(Exception):
    """No MAC list can be built that keeps the locked-out hosts out without cutting off another."""


def locked_out() -> QuerySet[CpuServer]:
    """The CPU servers no export may let in: dead or fenced, and every one a storage fence left out
    and no operator has returned to service since (its old guests may still run, I/O waiting)."""
    return CpuServer.objects.filter(Q(state__in=LOCKED_OUT_STATES) | Q(storage_fenced_at__isnull=False))


def storage_acl(*, also_out: CpuServer | None = None) -> list[str] | None:
    """The MAC list every export must run with now: None (every initiator) only while no CPU server
    is locked out; else the SAN MACs of all the others. `also_out`: a host being fenced right now.
    UnsafeAcl when a host that keeps access has no SAN MAC recorded (the list would cut it off from
    its own guests' disks), when no host would keep access (vblade reads an empty list as "everyone"),
    or when the list is longer than vblade holds."""
    out = {c.pk: c for c in locked_out()}
    if also_out is not None:
        out[also_out.pk] = also_out
    if not out:
        return None
    keep = list(CpuServer.objects.exclude(pk__in=out).order_by("name"))
    missing = [c.name for c in keep if not c.san_mac]
    names = ", ".join(sorted(c.name for c in out.values()))
    if missing:
        raise UnsafeAcl(f"no SAN MAC recorded for {', '.join(missing)}: a MAC list keeping {names} out "
                        "would cut them off too")
    # Set difference too: two rows sharing a MAC (a mistake) must not let a locked-out host in.
    macs = sorted({normalise_mac(c.san_mac) for c in keep}
                  - {normalise_mac(c.san_mac) for c in out.values() if c.san_mac})
    if not macs:
        raise UnsafeAcl(f"no CPU server but {names} may keep access (an empty vblade ACL lets everyone in)")
    if len(macs) > vblade.MAX_MACS:
        raise UnsafeAcl(f"{len(macs)} CPU servers keep access; a vblade ACL holds {vblade.MAX_MACS}")
    return macs


def start_export(target: SSHTarget, spec: vblade.ExportSpec, *, timeout: float = 30) -> vblade.RunningExport:
    """Start (or restart) one export with the MAC list storage_acl() gives: how a new VM's exports,
    an ISO's and cluster verify's fix start one. UnsafeAcl, before anything starts, when no safe list
    exists."""
    acl = storage_acl()
    running = vblade.start_export(target, spec, allowed_macs=acl, timeout=timeout)
    # A host may have been declared dead, or fenced, while this export started (after a fence had
    # listed the exports it restarts): look again, the list it needs now wins.
    now = storage_acl()
    if now != acl:
        running = vblade.start_export(target, spec, allowed_macs=now, timeout=timeout)
    return running


def normalise_mac(value: str) -> str:
    """A MAC as the lists compare it: the rows and vblade may spell one in capitals or with dashes."""
    return value.strip().lower().replace("-", ":")
