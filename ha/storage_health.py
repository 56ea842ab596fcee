"""A disk server's failure and return, end to end: degraded mirrors, exposed guests, restored exports.

The RAID1 of every guest disk lives inside the guest (docs/storage.md), so nothing is stopped or
re-assembled here: guests keep running on their other leg. What this module tracks is per leg, on
the wire (`Mirror.state`): which exports answer an AoE probe from the CPU servers. The guest's own
view (`Mirror.health`, /proc/mdstat through the QEMU guest agent, storage/guest_health.py) says
whether the array is whole: a returned disk server's mirror is healthy once both legs answer on
the wire *and* the guest, when its agent answers, no longer reports it degraded or resyncing.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db.models import Prefetch, Q

from drivers import vblade
from drivers.errors import DriverError
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.fencing import restore_storage_access
from ha.incidents import close, open_incident, record, set_state
from ha.models import Incident
from hosts.choices import HostState
from hosts.models import DiskServer
from hosts.states import change_state
from hosts.targets import ssh_target
from notifications.triggers import mirror_degraded, mirror_resynced
from storage.choices import ExportState, MirrorHealth, MirrorState
from storage.models import AoEExport, Mirror
from vms import guest_setup
from vms.choices import VmState

logger = logging.getLogger(__name__)
Address = tuple[int, int]
DOWN = (HostState.DEAD, HostState.FENCED)
NOT_HEALTHY = (MirrorState.DEGRADED, MirrorState.RESYNCING)
GUEST_NOT_WHOLE = (MirrorHealth.DEGRADED, MirrorHealth.RESYNCING)
RESTORE_TIMEOUT = 30.0


def expected_exports() -> dict[int, frozenset[Address]]:
    """Per disk server (pk): the shelf.slot of every export it should be serving."""
    found: dict[int, set[Address]] = defaultdict(set)
    for server, shelf, slot in AoEExport.objects.filter(state=ExportState.EXPORTED).values_list(
            "disk_server_id", "shelf", "slot"):
        found[server].add((shelf, slot))
    return {pk: frozenset(addresses) for pk, addresses in found.items()}


def _mirrors_on(server: DiskServer):
    legs = Prefetch("legs", queryset=AoEExport.objects.select_related("disk_server"))
    return Mirror.objects.filter(legs__disk_server=server).distinct().select_related("vm").prefetch_related(legs)


@dataclass(frozen=True)
class ExposedGuest:
    vm: str
    mirror_state: str  # on the wire
    missing: tuple[str, ...]  # "e2.3 on disk2 (dead)", or "e2.3 (leg 1, not in the guest's array)"
    left: tuple[str, ...]  # the legs still answering
    # The guest's own view (Mirror.health): what the page shows as the mirror's health.
    health: str = MirrorHealth.UNKNOWN
    health_detail: str = ""
    resync_percent: float | None = None
    resync_eta_s: int | None = None


def exposed_guests() -> list[ExposedGuest]:
    """Guests whose mirror is degraded or resyncing, on the wire or in the guest: one leg left
    (or none), for the dashboard and the incident page."""
    legs = Prefetch("legs", queryset=AoEExport.objects.select_related("disk_server"))
    mirrors = Mirror.objects.filter(Q(state__in=NOT_HEALTHY) | Q(health__in=GUEST_NOT_WHOLE))
    guests = []
    for mirror in mirrors.select_related("vm").prefetch_related(legs):
        missing, left = [], []
        for leg in mirror.legs.all():
            server = leg.disk_server
            if server.state in DOWN:
                missing.append(f"{leg.name} on {server.name} ({server.get_state_display().lower()})")
            elif mirror.health in GUEST_NOT_WHOLE and leg.leg in mirror.missing_legs:
                missing.append(f"{leg.name} on {server.name} (leg {leg.leg}, not in sync in the guest)")
            else:
                left.append(f"{leg.name} on {server.name}")
        guests.append(ExposedGuest(mirror.vm.name, mirror.state, tuple(missing), tuple(left), mirror.health,
                                   mirror.health_detail, mirror.resync_percent, mirror.resync_eta_s))
    return sorted(guests, key=lambda g: g.vm)


def disk_server_failed(server: DiskServer, message: str) -> Incident:
    """Open the incident, mark every mirror with a leg on `server` degraded and say which guests
    are exposed (one leg left) and which have none left. Nothing is stopped."""
    incident, _created = open_incident(server, IncidentKind.DISK_SERVER_FAILED, message)
    mirrors = list(_mirrors_on(server))
    Mirror.objects.filter(pk__in=[m.pk for m in mirrors]).update(state=MirrorState.DEGRADED)
    exposed, lost = [], []
    for mirror in mirrors:
        others = [leg for leg in mirror.legs.all() if leg.disk_server_id != server.pk]
        alive = [leg for leg in others if leg.disk_server.state not in DOWN]
        (exposed if alive else lost).append(mirror.vm.name)
        mirror_degraded(mirror, f"{message}: its leg on {server.name} is gone.", no_leg_left=not alive)
    text = (f"{len(mirrors)} mirror(s) with a leg on {server.name} degraded; the guests keep running on "
            f"their other leg. Exposed (one leg left): {', '.join(exposed) or 'none'}.")
    if lost:
        text += f" No leg left: {', '.join(lost)}."
    record(incident, EventKind.NOTE, text, exposed=exposed, lost=lost, mirrors=len(mirrors))
    set_state(incident, IncidentState.DEGRADED, summary=f"{message}. Exposed: {', '.join(exposed) or 'none'}")
    return incident


@dataclass
class DiskRecovery:
    """Brings a returned disk server's legs back, across monitor cycles: restore its exports once
    (idempotent: a real disk server's boot unit, or the lab, may have done it already), mark its
    mirrors resyncing, then healthy as soon as both legs answer on the wire and the guest (when its
    agent answers) says the array is whole, then close."""
    restored: set[int] = field(default_factory=set)  # incident ids whose exports were restored
    failed: set[int] = field(default_factory=set)  # incident ids whose restore failure was reported

    def recover(self, server: DiskServer, wire: frozenset[Address] | None, changes: list[str]) -> None:
        incident = Incident.objects.filter(disk_server=server, kind=IncidentKind.DISK_SERVER_FAILED).exclude(
            state=IncidentState.CLOSED).first()
        if incident is None:
            return
        if incident.pk not in self.restored:
            self._restore(server, incident, changes)
            return  # the probes of this cycle ran before the restore: check the legs next cycle
        if wire is None:
            return
        healed = []
        for mirror in _mirrors_on(server).filter(state__in=NOT_HEALTHY):
            # The guest's md decides when its resync is done; without an agent, the wire alone.
            if mirror.health in GUEST_NOT_WHOLE:
                continue
            if {(leg.shelf, leg.slot) for leg in mirror.legs.all()} <= wire:
                if Mirror.objects.filter(pk=mirror.pk, state=mirror.state).update(state=MirrorState.HEALTHY):
                    healed.append(mirror.vm.name)
                    mirror_resynced(mirror)
        if healed:
            record(incident, EventKind.NOTE, f"Both legs answer on the SAN again and no guest reports its array "
                                             f"incomplete: {', '.join(healed)} healthy.", healthy=healed)
            changes.append(f"{server.name}: mirrors healthy: {', '.join(healed)}")
        pending = _mirrors_on(server).filter(state__in=NOT_HEALTHY).count()
        if not pending:
            close(incident, f"{server.name} is back: every mirror with a leg on it has both legs on the SAN.")
            self.restored.discard(incident.pk)
            changes.append(f"{server.name}: incident #{incident.pk} closed")

    def _restore(self, server: DiskServer, incident: Incident, changes: list[str]) -> None:
        try:
            started = vblade.restore_exports(ssh_target(server), timeout=RESTORE_TIMEOUT)
            # They come back with the MAC lists they were saved with: a fence this server missed
            # while it was away (or one lifted meanwhile) is applied now.
            relisted = restore_storage_access([server])
        except DriverError as exc:
            if incident.pk not in self.failed:  # once, not every cycle; tried again each cycle
                self.failed.add(incident.pk)
                record(incident, EventKind.NOTE, f"Restoring the exports of {server.name} failed: {exc}")
            changes.append(f"{server.name}: restoring exports failed: {exc}")
            return
        self.restored.add(incident.pk)
        plugged = _plug_back(server, incident)
        degraded = list(_mirrors_on(server).filter(state=MirrorState.DEGRADED))
        Mirror.objects.filter(pk__in=[m.pk for m in degraded], state=MirrorState.DEGRADED).update(
            state=MirrorState.RESYNCING)
        resyncing = [m.vm.name for m in degraded]
        names = ", ".join(e.name for e in started) or "none needed starting: all were running"
        acls = f" MAC lists brought in line: {'; '.join(relisted)}." if relisted else ""
        record(incident, EventKind.NOTE,
               f"Exports of {server.name} restored ({names}); resyncing: {', '.join(resyncing) or 'none'}. "
               f"Each mirror is healthy once both its legs answer on the SAN and its guest's array is whole.{acls}",
               started=[e.name for e in started], resyncing=resyncing, acls=relisted, plugged=plugged)
        changes.append(f"{server.name}: exports restored, {len(resyncing)} mirror(s) resyncing")


def _plug_back(server: DiskServer, incident: Incident) -> list[str]:
    """Guests started while the server was away run without their leg on it (a start boots on the
    leg that answers): give it back to them. Guests that ran through keep theirs and are left alone."""
    plugged = []
    for mirror in _mirrors_on(server).select_related("vm__cpu_server"):
        vm = mirror.vm
        if vm.state != VmState.RUNNING or vm.cpu_server is None:
            continue
        legs = [leg for leg in mirror.legs.select_related("disk_server") if leg.disk_server_id == server.pk]
        try:
            plugged += [f"{vm.name} {name}" for name in guest_setup.plug_missing_legs(vm, legs, lambda _m: None)]
        except DriverError as exc:
            record(incident, EventKind.NOTE, f"{vm.name}: putting its leg on {server.name} back failed: {exc}")
    if plugged:
        record(incident, EventKind.NOTE, f"Legs plugged back into the guests that started without them: "
                                         f"{', '.join(plugged)}.", plugged=plugged)
    return plugged


def return_to_service(server: DiskServer) -> None:
    """Maintenance -> up for a disk server (an operator's decision). Refused while its failure
    incident is open: some mirror with a leg on it is not healthy yet."""
    open_incident_ = Incident.objects.filter(disk_server=server, kind=IncidentKind.DISK_SERVER_FAILED).exclude(
        state=IncidentState.CLOSED).first()
    if open_incident_ is not None:
        raise ValidationError(f"{server.name}: incident #{open_incident_.pk} is still open (mirrors not healthy yet)")
    if not change_state(server, HostState.UP, expected=HostState.MAINTENANCE, missed_checks=0):
        raise ValidationError(f"{server.name} is not in maintenance")
