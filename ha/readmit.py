"""Returning a CPU server a storage fence left out: its stale guests gone before its disks come back.

A storage fence (ha/fencing.py) cuts a host off its guests' disks but leaves the guests running,
their I/O waiting. Once the failover restarted one elsewhere, the copy left on the fenced host must
never get its disks back: its writes would resume beside the new copy's. So before the host's SAN
MAC goes back in any export's list, the panel asks the host (libvirt) which domains it holds,
forces off and undefines every panel domain that is not a guest placed on that host, and asks
again to prove none is left. A host that cannot be asked stays fenced. Each copy destroyed is an
event on the host's incident. The host.return job (ha/maintenance.py: the operator's "Return to
service") calls `readmit` for a host with `storage_fenced_at` set.
"""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError

from drivers import hypervisor
from drivers.errors import DriverError
from drivers.hypervisor import DomainInfo
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.incidents import record
from ha.models import Incident
from hosts.models import CpuServer
from vms.models import VirtualMachine
from xenaoe_panel.names import DOMAIN_PREFIX

LIBVIRT_TIMEOUT_S = 30.0


def _incident(host: CpuServer) -> Incident | None:
    """Where the story of the fence is told: the host's open failure incident, else its latest."""
    incidents = Incident.objects.filter(cpu_server=host, kind=IncidentKind.CPU_SERVER_FAILED)
    return incidents.exclude(state=IncidentState.CLOSED).first() or incidents.first()


def _held(host: CpuServer) -> str:
    return "stays fenced" if host.storage_fenced_at is not None else "stays in maintenance"


def stale_copies(host: CpuServer) -> list[DomainInfo]:
    """The panel's domains on `host` that are not guests placed there: each is a copy of a guest
    restarted elsewhere (or since deleted: its shelf.slot may serve another VM by now). ValidationError
    when the host cannot be asked: "it might run there" is exactly what must not be guessed."""
    try:
        domains = hypervisor.list_domains(host.libvirt_uri, timeout=LIBVIRT_TIMEOUT_S)
    except DriverError as exc:
        raise ValidationError(f"{host.name} {_held(host)}: the panel cannot ask it which guests run there ({exc}). "
                              "It takes no guests (and a fenced one gets no disks) until libvirt on it answers."
                              ) from exc
    own = {vm.domain_name for vm in VirtualMachine.objects.filter(cpu_server=host)}
    return [d for d in domains if d.name.startswith(DOMAIN_PREFIX) and d.name not in own]


def _where(name: str) -> str:
    vm = VirtualMachine.objects.select_related("cpu_server").filter(name=name).first()
    if vm is None:
        return "no VM of that name any more"
    return f"{name} runs on {vm.cpu_server.name}" if vm.cpu_server else f"{name} has no CPU server"


def failed_over_since_its_return(host: CpuServer) -> bool:
    """Its guests were restarted elsewhere after a fence (its latest failure incident) and it has
    not been returned to service since: its libvirt may still hold their definitions."""
    incident = Incident.objects.filter(cpu_server=host, kind=IncidentKind.CPU_SERVER_FAILED).order_by(
        "-opened_at").first()
    return (incident is not None and incident.fenced_by != ""
            and not incident.events.filter(kind=EventKind.NOTE, data__returned=True).exists())


def return_to_service(host: CpuServer, user: AbstractBaseUser | None = None) -> list[str]:
    """What a CPU server in maintenance goes through before it takes guests again (a step of the
    host.return job, ha/maintenance.py): a storage fence lifted (`readmit`); after any other fence,
    its stale copies removed, and it cannot return while it cannot be asked; after a plain
    maintenance, stale copies removed if it answers (a failed migration may have left one; verify
    reports what stays)."""
    if host.storage_fenced_at is not None:
        return readmit(host, user)
    if failed_over_since_its_return(host):
        done = remove_stale_copies(host, user)
        incident = _incident(host)
        record(incident, EventKind.NOTE, f"{host.name} returned to service: {len(done)} stale "
               f"definition{'' if len(done) == 1 else 's'} removed", user=user, destroyed=len(done), returned=True)
        return done
    try:
        return remove_stale_copies(host, user)
    except ValidationError:
        return []


def remove_stale_copies(host: CpuServer, user: AbstractBaseUser | None = None) -> list[str]:
    """Force off and undefine every stale copy on `host`, each recorded on its incident; then ask
    again. ValidationError (the host stays fenced, or in maintenance) when it cannot be asked or a
    copy will not go. Also for a host that was powered off (IPMI fence, a crash): its guests do not
    run, but libvirt kept their definitions, which a start by hand or an autostart would boot
    beside the copies restarted elsewhere."""
    incident = _incident(host)
    done = []
    for domain in stale_copies(host):
        name = domain.name.removeprefix(DOMAIN_PREFIX)
        try:
            hypervisor.destroy(host.libvirt_uri, domain.name, timeout=LIBVIRT_TIMEOUT_S)
            hypervisor.undefine(host.libvirt_uri, domain.name, timeout=LIBVIRT_TIMEOUT_S)
        except DriverError as exc:
            raise ValidationError(f"{host.name} {_held(host)}: its stale copy {domain.name} could not be removed "
                                  f"({exc})") from exc
        message = f"{name}: the stale copy on {host.name} was destroyed and undefined ({_where(name)})"
        if incident is not None:
            record(incident, EventKind.STALE_COPY, message, user=user, vm=name, cpu_server=host.name,
                   domain=domain.name, was=domain.state)
        done.append(message)
    left = stale_copies(host)  # the proof the return rests on: asked again, not assumed
    if left:
        raise ValidationError(f"{host.name} {_held(host)}: {', '.join(d.name for d in left)} still there after "
                              "being destroyed and undefined")
    return done


def readmit(host: CpuServer, user: AbstractBaseUser | None = None) -> list[str]:
    """Lift the storage fence of `host` (in maintenance): stale copies removed, then the mark cleared
    (compare-and-set: a fence begun meanwhile wins), so that the next list built lets it in. The
    caller rebuilds the lists (fencing.restore_storage_access). Returns what was destroyed."""
    done = remove_stale_copies(host, user)
    if not CpuServer.objects.filter(pk=host.pk, storage_fenced_at=host.storage_fenced_at).update(
            storage_fenced_at=None):
        raise ValidationError(f"{host.name} was fenced again meanwhile: look at its incident")
    host.storage_fenced_at = None
    incident = _incident(host)
    if incident is not None:
        who = user.get_username() if user is not None and user.is_authenticated else "an operator"
        record(incident, EventKind.NOTE, f"{host.name} returned to service by {who}: "
               f"{len(done)} stale cop{'y' if len(done) == 1 else 'ies'} destroyed; its SAN MAC goes back in the "
               "exports' MAC lists", user=user, destroyed=len(done), returned=True)
    return done
