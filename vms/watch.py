"""VM state follows the hypervisors: libvirt events as they happen, a reconcile pass as a net.

While a job works on a VM the job owns its state; otherwise what the hypervisor says wins, and
open pages are told at once. Only the CPU server the panel runs a VM on speaks for it: a copy on
another host is `cluster verify`'s business, never a reason to flip the state here.
"""
from __future__ import annotations

import logging

from drivers import hypervisor
from drivers.domain_events import DomainEvent
from drivers.errors import DriverError
from hosts.choices import HostState
from hosts.foreign import record_foreign_domains
from hosts.models import CpuServer
from jobs.choices import ACTIVE_STATES
from vms.choices import VmState
from vms.models import VirtualMachine
from vms.states import set_vm_state
from xenaoe_panel.names import DOMAIN_PREFIX

log = logging.getLogger(__name__)
# States the hypervisor's word may change; creating/deleting belong to their jobs.
FOLLOWED_STATES = (VmState.RUNNING, VmState.STOPPED, VmState.UNKNOWN)
RUNNING_STATES = {"running", "paused", "blocked"}


def _followed_vm(server: str, domain: str) -> VirtualMachine | None:
    if not domain.startswith(DOMAIN_PREFIX):
        return None
    vm = (VirtualMachine.objects.select_related("cpu_server")
          .filter(name=domain[len(DOMAIN_PREFIX):], state__in=FOLLOWED_STATES).first())
    if vm is None or vm.cpu_server is None or vm.cpu_server.name != server:
        return None
    if vm.jobs.filter(state__in=ACTIVE_STATES).exists():
        return None
    return vm


def state_after(event: DomainEvent) -> str | None:
    """The VM state an event leads to, or None when it says nothing about it."""
    if event.event in ("started", "resumed"):
        return VmState.RUNNING
    if event.event == "stopped" and event.detail != "migrated":  # a migrated guest runs elsewhere
        return VmState.STOPPED
    if event.event == "crashed":
        return VmState.STOPPED
    return None


def apply_event(event: DomainEvent) -> str | None:
    """Record what a domain event means for its VM; returns the new state if it changed."""
    new = state_after(event)
    if new is None:
        return None
    vm = _followed_vm(event.server, event.domain)
    if vm is None or vm.state == new:
        return None
    log.info("%s on %s: %s %s -> VM %s", event.domain, event.server, event.event, event.detail, new)
    set_vm_state(vm.pk, new)
    return new


def reconcile(timeout: float = 20) -> dict[str, str]:
    """Compare every followed VM with its CPU server's domains; returns {vm: new state} changed.
    The domains the panel did not make are recorded on the way (their memory counts as used).
    A CPU server that does not answer is skipped (the host monitor deals with it)."""
    changed: dict[str, str] = {}
    for server in CpuServer.objects.filter(state=HostState.UP):
        try:
            domains = {d.name: d for d in hypervisor.list_domains(server.libvirt_uri, timeout=timeout)}
        except DriverError as exc:
            log.warning("reconcile: %s does not answer: %s", server.name, exc)
            continue
        record_foreign_domains(server, domains.values())
        for vm in VirtualMachine.objects.filter(cpu_server=server, state__in=FOLLOWED_STATES):
            info = domains.get(vm.domain_name)
            actual = VmState.UNKNOWN if info is None else (
                VmState.RUNNING if info.state in RUNNING_STATES else VmState.STOPPED)
            if actual != vm.state and not vm.jobs.filter(state__in=ACTIVE_STATES).exists():
                set_vm_state(vm.pk, actual)
                changed[vm.name] = actual
    return changed
