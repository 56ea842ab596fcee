"""Cluster verify, the guests' networks: every up CPU server has the bridges the networks name, no MAC
of a VM is worn by two domains, and each running guest has the address the panel gave it (as its
guest agent says). Gathered here and compared here: it needs none of the storage collection."""
from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from drivers import guest_agent, hostnet, hypervisor
from drivers.errors import DriverError
from hosts.choices import HostState
from hosts.findings import Finding
from hosts.models import CpuServer
from hosts.targets import ssh_target
from jobs.choices import ACTIVE_STATES
from jobs.models import Job
from networks.models import Network, Nic
from vms.choices import VmState

TIMEOUT = 15.0
AGENT_TIMEOUT = 8.0


@dataclass
class NetworkReality:
    bridges: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> {bridge: kind}
    macs: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)  # host -> {domain: MACs}
    guest_addresses: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # vm -> {MAC: IPs}
    unreachable: set[str] = field(default_factory=set)


def collect(servers: list[CpuServer], nics: list[Nic]) -> NetworkReality:
    """Ask every up CPU server for its bridges and its domains' MACs, and every running guest with a
    NIC for its addresses, in parallel; what cannot be asked is left out (and not a finding here:
    the storage side reports unreachable hosts)."""
    real = NetworkReality()
    bridges = sorted(set(Network.objects.values_list("bridge", flat=True)))

    def host(server: CpuServer) -> None:
        try:
            real.bridges[server.name] = hostnet.interfaces(ssh_target(server), bridges, timeout=TIMEOUT)
            real.macs[server.name] = hypervisor.interface_macs(server.libvirt_uri, timeout=TIMEOUT)
        except DriverError:
            real.unreachable.add(server.name)

    def guest(vm_name: str, uri: str, domain: str) -> None:
        try:
            real.guest_addresses[vm_name] = guest_agent.addresses(uri, domain, timeout=AGENT_TIMEOUT)
        except DriverError:
            pass  # no agent (yet): the mirror health says so already

    running = {nic.vm for nic in nics if nic.vm.state == VmState.RUNNING and nic.vm.cpu_server is not None}
    with ThreadPoolExecutor(max_workers=16) as pool:
        jobs = [pool.submit(host, s) for s in servers]
        jobs += [pool.submit(guest, vm.name, vm.cpu_server.libvirt_uri, vm.domain_name) for vm in running]
        for job in jobs:
            job.result()
    return real


def compare(real: NetworkReality, servers: list[CpuServer], nics: list[Nic], busy: frozenset[str] = frozenset()
            ) -> list[Finding]:
    """`busy`: VMs a job is working on (a live migration has the guest on two hosts for a while)."""
    findings = []
    used = {nic.network for nic in nics}
    for network in sorted(used, key=lambda n: n.name):
        for server in servers:
            if server.name in real.bridges and network.bridge not in real.bridges[server.name]:
                findings.append(Finding(
                    "bridge-missing", "error", server.name,
                    f"{server.name} has no bridge {network.bridge} (network {network.name})",
                    f"VMs on {network.name} cannot be created, migrated or restarted on {server.name}: "
                    "create the bridge there (docs/networks.md)."))
    wearers: dict[str, list[str]] = defaultdict(list)
    for host, domains in real.macs.items():
        for domain, macs in domains.items():
            for mac in macs:
                wearers[mac].append(f"{domain} on {host}")
    owner = {nic.mac: nic.vm.domain_name for nic in nics}
    moving = {nic.mac for nic in nics if nic.vm.name in busy}
    for mac, where in sorted(wearers.items()):
        if mac in moving:
            continue
        others = [w for w in where if not w.startswith(f"{owner.get(mac)} on ")]
        if len(where) > 1 or (mac in owner and others):
            findings.append(Finding(
                "mac-used-twice", "error", mac, f"MAC {mac} is worn by {', '.join(sorted(where))}"
                + (f"; the panel gave it to {owner[mac]}" if mac in owner else ""),
                "Two interfaces with one MAC confuse every switch on the network: traffic reaches one of them "
                "at random. Remove the duplicate (or the copy of the guest)."))
    for nic in nics:
        seen = None if nic.vm.name in busy else real.guest_addresses.get(nic.vm.name)
        if seen is None or not nic.ip:
            continue
        addresses = seen.get(nic.mac)
        if addresses is None:
            message = f"{nic.vm.name} has no interface with MAC {nic.mac} (its agent lists {sorted(seen) or 'none'})"
        elif nic.ip not in addresses:
            has = ", ".join(sorted(addresses)) or "no address"
            message = f"{nic.vm.name}'s eth{nic.index} ({nic.mac}) has {has}, the panel gave it {nic.ip}"
        else:
            continue
        findings.append(Finding("guest-address-mismatch", "warning", nic.vm.name, message,
                                "The guest does not use the address the panel assigned: another guest given that "
                                "address later would clash with it. Fix the guest's network settings."))
    return findings


def findings() -> list[Finding]:
    servers = [s for s in CpuServer.objects.order_by("name") if s.state == HostState.UP]
    nics = list(Nic.objects.select_related("network", "vm__cpu_server"))
    busy = frozenset(Job.objects.filter(state__in=ACTIVE_STATES, vm__isnull=False).values_list("vm__name", flat=True))
    return compare(collect(servers, nics), servers, nics, busy)
