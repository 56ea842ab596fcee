"""Domains on a CPU server that the panel did not make: never touched, always counted.

The panel's own domains are named `xa-<vm>` (VirtualMachine.domain_name). Anything else on a CPU
server (a guest started by hand with virsh, another tool's) takes memory the panel would otherwise
hand out twice. Whoever lists a server's domains anyway (the domain watcher's reconcile pass every
XENAOE_RECONCILE_INTERVAL_S, cluster verify) records what it saw here, on the CpuServer row; the
allocator (vms/placement.py) counts `foreign_memory_mib` as used, and cluster verify reports each
such domain as a `foreign-domain` finding (with no fix: they are not the panel's to touch).
"""
from __future__ import annotations

from collections.abc import Iterable

from django.utils import timezone

from drivers.hypervisor import DomainInfo
from drivers.hypervisors import CONTROL_DOMAINS
from hosts.models import CpuServer
from xenaoe_panel.names import DOMAIN_PREFIX

INACTIVE_STATES = frozenset({"shutoff", "crashed"})  # hold no memory


def is_foreign(name: str) -> bool:
    # A hypervisor's own domain (Xen's Domain-0) is the host: its memory is not in memory_mib to begin with.
    return not name.startswith(DOMAIN_PREFIX) and name not in CONTROL_DOMAINS


def holds_memory(info: DomainInfo) -> bool:
    return info.state not in INACTIVE_STATES


def foreign_domains(domains: Iterable[DomainInfo]) -> list[DomainInfo]:
    return [d for d in domains if is_foreign(d.name)]


def record_foreign_domains(server: CpuServer, domains: Iterable[DomainInfo]) -> int:
    """Store what `server` runs besides the panel's guests (from a complete listing of its
    domains); returns the memory (MiB) they hold, now counted as used on it."""
    found = foreign_domains(domains)
    memory = sum(d.memory_mib for d in found if holds_memory(d))
    CpuServer.objects.filter(pk=server.pk).update(
        foreign_domains=[{"name": d.name, "uuid": d.uuid, "state": d.state, "memory_mib": d.memory_mib}
                         for d in found],
        foreign_memory_mib=memory, foreign_seen_at=timezone.now())
    server.foreign_memory_mib = memory
    return memory


def record_listings(listings: dict[str, list[DomainInfo]]) -> None:
    """`record_foreign_domains` for every CPU server that answered a listing ({name: domains})."""
    for server in CpuServer.objects.filter(name__in=list(listings)):
        record_foreign_domains(server, listings[server.name])
