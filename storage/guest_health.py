"""Mirror health as the guest sees it: each running guest's /proc/mdstat, read through its agent.

The RAID1 of a guest disk is md inside the guest (docs/storage.md), so only the guest knows
whether the array is whole and how far a resync has come. `check_mirrors` asks every running
guest (in parallel, each read with a timeout) and records the answer on its `Mirror`:

- the agent answers: its array over the guest's two disks decides `health` (healthy, degraded,
  resyncing), the missing legs and the resync progress;
- it does not (no agent in the guest, not started yet, Xen, a timeout): `health` is unknown and
  `health_detail` says why ("no guest agent"), rather than a guess from the wire.

The wire view (`Mirror.state`: do the legs' exports answer, ha/storage_health.py) is kept apart;
it uses this one to decide when a returned disk server's mirrors are healthy again.

`GuestHealthWatch` runs passes in the background of `manage.py monitor` every
XENAOE_MIRROR_CHECK_INTERVAL_S seconds, so a slow guest never delays the hosts' checks.

A guest is its tenant's, so what it answers is hostile input: the driver bounds the read and the
parser every field (drivers/guest_agent.py, drivers/mdstat.py), `GuestView.bounded` clamps what
reaches the database to the columns' sizes, and each guest is read and recorded on its own: one
guest's failure is that guest's unknown health with the reason, and the pass goes on.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from drivers import guest_agent, hypervisors
from drivers.errors import DriverError
from drivers.mdstat import MAX_ETA_S, MdStat
from notifications.triggers import guest_mirror_changed
from storage.choices import MirrorHealth
from storage.models import LEGS, Mirror
from vms.choices import VmState
from vms.events import VMS_GROUP, vm_event
from xenaoe_panel.broadcast import send_on_commit

logger = logging.getLogger(__name__)
# The guest's names for its disks, leg 0 first (drivers/hypervisor.py: domain_xml).
GUEST_DISKS = ("vda", "vdb", "xvda", "xvdb")
NO_AGENT = "no guest agent"
ARRAY_SEEN = (MirrorHealth.HEALTHY, MirrorHealth.DEGRADED, MirrorHealth.RESYNCING)
NOT_RUNNING = "guest not running"
MAX_PARALLEL = 8
DETAIL_MAX = Mirror._meta.get_field("health_detail").max_length


def bounded_text(text: str, limit: int = DETAIL_MAX) -> str:
    """`text` fit for a column and a page: control characters (NUL, escapes) as "?", cut to `limit`."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


@dataclass(frozen=True)
class GuestView:
    """One reading of a guest's array, as the Mirror records it."""
    health: str
    detail: str = ""
    resync_percent: float | None = None
    resync_eta_s: int | None = None
    missing_legs: tuple[int, ...] = ()

    def bounded(self) -> GuestView:
        """The reading as the database may hold it, whoever made it: a known health, a short
        printable detail, a finite percent 0..100, an ETA within md's cap, legs the mirror has."""
        percent, eta = self.resync_percent, self.resync_eta_s
        ok_percent = isinstance(percent, int | float) and math.isfinite(percent) and 0 <= percent <= 100
        ok_eta = isinstance(eta, int) and 0 <= eta <= MAX_ETA_S
        return GuestView(
            self.health if self.health in MirrorHealth.values else MirrorHealth.UNKNOWN,
            bounded_text(str(self.detail)),
            float(percent) if ok_percent else None,  # type: ignore[arg-type]
            eta if ok_eta else None,
            tuple(sorted({leg for leg in self.missing_legs if isinstance(leg, int) and 0 <= leg < LEGS})),
        )


@dataclass(frozen=True)
class GuestTarget:
    """Where to ask: plain data, so that the reads run in threads without the database."""
    mirror_pk: int
    vm: str
    uri: str
    domain: str
    hypervisor: str


def view_from_mdstat(mdstat: MdStat) -> GuestView:
    """What the guest's md says about the array on its two disks."""
    array = mdstat.array_on(GUEST_DISKS)
    if array is None:
        return GuestView(MirrorHealth.UNKNOWN, "no md array on the guest's disks")
    sync = array.sync
    detail = f"{array.name} [{array.slot_map}]" if array.slot_map else (
        f"{array.name} {'active' if array.active else 'inactive'}")
    if sync is not None:
        detail += f", {sync.action} {sync.waiting}" if sync.waiting else f", {sync.action}"
    percent = sync.percent if sync is not None and array.health == MirrorHealth.RESYNCING else None
    eta = round(sync.eta_s) if sync is not None and sync.eta_s is not None and percent is not None else None
    return GuestView(array.health, detail, percent, eta, tuple(s for s in array.missing_slots if s < LEGS))


ReadFn = Callable[[GuestTarget, float], GuestView]


def read_guest(target: GuestTarget, timeout: float) -> GuestView:
    """Ask one guest. Never raises for the guest's sake: an answer that cannot be had is an
    unknown health with the reason."""
    if not hypervisors.flavour(target.hypervisor).guest_agent:
        return GuestView(MirrorHealth.UNKNOWN, f"{NO_AGENT} ({target.hypervisor} has no QEMU guest agent channel)")
    try:
        return view_from_mdstat(guest_agent.read_mdstat(target.uri, target.domain, timeout=timeout))
    except guest_agent.AgentUnavailable:
        return GuestView(MirrorHealth.UNKNOWN, NO_AGENT)
    except DriverError as exc:
        return GuestView(MirrorHealth.UNKNOWN, f"guest agent: {exc}")


def read_safely(read: ReadFn, target: GuestTarget, timeout: float) -> GuestView:
    """`read` for one guest, whatever it raises: a surprise is this guest's unknown health (and a
    line in the log), never the end of the pass for the others."""
    try:
        return read(target, timeout)
    except Exception as exc:
        logger.warning("reading the mirror health of %s failed", target.vm, exc_info=True)
        return GuestView(MirrorHealth.UNKNOWN, f"reading the guest failed: {type(exc).__name__}: {exc}")


def _targets() -> tuple[list[GuestTarget], list[Mirror]]:
    """Mirrors whose guest runs (to ask), and the others (their health is unknown)."""
    asking, idle = [], []
    for mirror in Mirror.objects.select_related("vm__cpu_server"):
        vm = mirror.vm
        if vm.state == VmState.RUNNING and vm.cpu_server is not None:
            asking.append(GuestTarget(mirror.pk, vm.name, vm.cpu_server.libvirt_uri, vm.domain_name,
                                      vm.cpu_server.hypervisor))
        else:
            idle.append(mirror)
    return asking, idle


def record_view(mirror_pk: int, view: GuestView) -> bool:
    """Store a reading on the mirror; when it says something new, push it to the open pages.
    Returns whether it changed (the time of the reading alone is not a change)."""
    view = view.bounded()
    mirror = Mirror.objects.select_related("vm__cpu_server").filter(pk=mirror_pk).first()
    if mirror is None:  # the VM was deleted meanwhile
        return False
    before = (mirror.health, mirror.health_detail, mirror.resync_percent, mirror.resync_eta_s,
              tuple(mirror.missing_legs))
    after = (view.health, view.detail, view.resync_percent, view.resync_eta_s, view.missing_legs)
    fields = dict(zip(("health", "health_detail", "resync_percent", "resync_eta_s", "missing_legs"), after,
                      strict=True))
    fields["missing_legs"] = list(view.missing_legs)
    fields["checked_at"] = timezone.now()
    if view.health in ARRAY_SEEN:
        # The guest has assembled its array: its next boots must not be told to create one.
        fields["md_created"] = True
    Mirror.objects.filter(pk=mirror_pk).update(**fields)
    if before == after:
        return False
    for name, value in fields.items():
        setattr(mirror, name, value)
    publish_mirror(mirror)
    guest_mirror_changed(mirror, before[0])
    return True


def mirror_payload(mirror: Mirror) -> dict:
    return {
        "health": mirror.health, "health_display": mirror.get_health_display(), "colour": mirror.health_colour,
        "detail": mirror.health_detail, "resync_percent": mirror.resync_percent,
        "resync_eta_s": mirror.resync_eta_s, "missing_legs": list(mirror.missing_legs),
        "checked_at": mirror.checked_at.isoformat() if mirror.checked_at else None,
    }


def publish_mirror(mirror: Mirror) -> None:
    """The VM's usual state event with its mirror added, to operators' pages (group "vms"):
    the VM page's badge and bar follow it (static/js/live-mirror.js)."""
    event = vm_event(mirror.vm)
    event["vm"]["mirror"] = mirror_payload(mirror)
    send_on_commit([VMS_GROUP], event, f"the mirror health of {mirror.vm.name}")


def check_mirrors(*, timeout: float | None = None, read: ReadFn = read_guest) -> list[str]:
    """One pass over every mirror; returns a line per mirror whose health changed."""
    timeout = timeout if timeout is not None else float(settings.MIRROR_CHECK_TIMEOUT_S)
    asking, idle = _targets()
    changes = []
    for mirror in idle:
        if (mirror.health, mirror.health_detail) != (MirrorHealth.UNKNOWN, NOT_RUNNING):
            record_view(mirror.pk, GuestView(MirrorHealth.UNKNOWN, NOT_RUNNING))
            changes.append(f"{mirror.vm.name}: mirror health unknown ({NOT_RUNNING})")
    if not asking:
        return changes
    # The reads are network calls, each with its own timeout; the database stays in this thread.
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(asking)), thread_name_prefix="guest-mdstat") as pool:
        views = list(pool.map(lambda target: read_safely(read, target, timeout), asking))
    for target, view in zip(asking, views, strict=True):
        if _record_safely(target, view):
            view = view.bounded()
            progress = f" {view.resync_percent:.1f}%" if view.resync_percent is not None else ""
            changes.append(f"{target.vm}: mirror {view.health}{progress} ({view.detail})")
    return changes


def _record_safely(target: GuestTarget, view: GuestView) -> bool:
    """record_view in a savepoint: a write refused for one guest leaves the others' to be made."""
    try:
        with transaction.atomic():
            return record_view(target.mirror_pk, view)
    except DatabaseError:
        logger.exception("recording the mirror health of %s failed", target.vm)
        return False


class GuestHealthWatch:
    """Runs `check_mirrors` in a background thread every `interval` seconds (0: never), one pass
    at a time, for a process with its own cycle (the monitor): `tick` starts a pass when one is
    due and hands back the lines of the last finished one."""

    def __init__(self, interval: float | None = None, timeout: float | None = None) -> None:
        self.interval = interval if interval is not None else float(settings.MIRROR_CHECK_INTERVAL_S)
        self.timeout = timeout if timeout is not None else float(settings.MIRROR_CHECK_TIMEOUT_S)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guest-health")
        self._running: Future[list[str]] | None = None
        self._last_start = float("-inf")

    def tick(self, changes: list[str]) -> None:
        if self._running is not None and self._running.done():
            try:
                changes.extend(self._running.result())
            except Exception:
                logger.exception("mirror health pass failed")
            self._running = None
        if self.interval <= 0 or self._running is not None:
            return
        if time.monotonic() - self._last_start >= self.interval:
            self._last_start = time.monotonic()
            self._running = self._pool.submit(self._pass)

    def _pass(self) -> list[str]:
        try:
            return check_mirrors(timeout=self.timeout)
        finally:
            connection.close()  # this thread's own connection: the pool thread lives on

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
