"""Cluster verify: compare what the database says with what runs on the hosts.

hosts.verify_collect reads the database into plain records (`load_inventory`) and asks every host
through the drivers (`collect`) for a `Reality`; `compare()` here is
pure: inventory + reality -> findings, each with what it means and, where one is safe and well
defined, the fix an operator may apply (hosts.fixes). Nothing here changes a host; the one thing
written is what each CPU server runs besides the panel's guests (hosts/foreign.py), whose memory
placement then counts.

A host that does not answer is itself a finding, and its part of the comparison is skipped: an
unknown is never taken for "absent". The rules, finding by finding, are in docs/verify.md.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from drivers.aoe import AoEAnswer
from drivers.hypervisor import DomainInfo
from hosts import verify_networks
from hosts.findings import Finding, Fix
from hosts.foreign import holds_memory, is_foreign, record_listings
from hosts.verify_collect import (
    Inventory,
    Note,
    Reality,
    VmRecord,
    collect,
    load_inventory,
    quiet,
    settle,
)
from jobs.choices import ACTIVE_STATES
from jobs.models import Job
from jobs.services import start_job
from storage.models import SECTORS_PER_MIB
from vms.choices import VmState
from xenaoe_panel.names import DOMAIN_PREFIX

SEVERITIES = ("critical", "error", "warning")


# --- findings ---------------------------------------------------------------------------------

def result_text(findings: list[Finding]) -> str:
    if not findings:
        return "no differences"
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    detail = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return f"{len(findings)} difference{'s' if len(findings) != 1 else ''} ({detail})"


# --- the comparison (pure) --------------------------------------------------------------------

CHECKED_VM_STATES = frozenset({VmState.RUNNING, VmState.STOPPED, VmState.UNKNOWN})
RUNNING_STATES = frozenset({"running", "blocked"})  # blocked: running but idle (Xen says so)
INACTIVE_STATES = frozenset({"shutoff", "crashed"})  # anything else holds memory and may write
# Within one severity, the order an operator should read them in.
CODES = ("domain-on-two-hosts", "export-answered-twice", "host-unreachable", "vm-failed", "vm-on-wrong-host",
         "bridge-missing", "mac-used-twice",
         "domain-missing", "domain-not-running", "domain-uuid-mismatch", "unknown-domain", "volume-missing",
         "export-not-running", "export-mismatch", "export-size-mismatch", "export-not-answering", "domain-state",
         "domain-not-stopped", "domain-transient", "domain-defined-elsewhere", "foreign-domain", "unknown-export",
         "unknown-san-target", "guest-address-mismatch", "n-plus-one", "anti-affinity")
PARTS = {"libvirt": "its domains", "exports": "its exports and volumes", "volumes": "its backing volumes",
         "san": "which exports it sees on the SAN"}
TWO_COPIES = ("Two copies of {vm} write the same AoE disks: its file systems are being corrupted. "
              "Force off the copy the panel does not expect now.")


def compare(inventory: Inventory, real: Reality, network: list[Finding] = ()) -> list[Finding]:
    """Every difference between the inventory and what the hosts said, most serious first; `network`:
    the guests' networks' findings (hosts/verify_networks.py), gathered on their own."""
    findings = [*_host_findings(inventory, real), *_failed_vms(inventory), *_domain_findings(inventory, real),
                *_export_findings(inventory, real), *_san_findings(inventory, real), *network]
    findings += [Finding("n-plus-one", "warning", s.failed, str(s),
                         f"N+1 is broken: if {s.failed} fails, these guests stay down until memory is freed "
                         "or a CPU server is added.") for s in inventory.shortfalls]
    findings += [Finding("anti-affinity", "warning", c.group, str(c),
                         f"If {c.server} fails, {' and '.join(c.vms)} go down together, which the group is there to "
                         f"avoid. Migrate {c.movable} without a target: placement puts it apart.")
                 for c in inventory.crowded]
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), CODES.index(f.code), f.subject, f.message))


def _active(info: DomainInfo) -> bool:
    return info.state not in INACTIVE_STATES


def _checked(inventory: Inventory) -> list[VmRecord]:
    return [vm for vm in inventory.vms if not vm.busy and vm.state in CHECKED_VM_STATES]


def _host_findings(inventory: Inventory, real: Reality) -> Iterator[Finding]:
    for gap in real.unreachable:
        host = inventory.host(gap.host)
        if host is None or host.expected_up:
            yield Finding("host-unreachable", "error", gap.host, f"{gap.host} unreachable ({gap.part}): {gap.error}",
                          f"{PARTS.get(gap.part, gap.part).capitalize()} could not be checked: verify says "
                          "nothing about them, good or bad.")


def _failed_vms(inventory: Inventory) -> Iterator[Finding]:
    for vm in inventory.vms:
        if vm.state == VmState.FAILED:
            legs = ", ".join(f"{leg.name} on {leg.disk_server}" for leg in vm.legs) or "none recorded"
            yield Finding("vm-failed", "error", vm.name, f"{vm.name}'s create failed and could not undo all it did "
                          f"(legs: {legs})", "Its volumes, exports or domain may be left on the hosts, and its "
                          "slot and memory stay taken. Delete the VM: the delete removes whatever is left.")


def _domain_findings(inventory: Inventory, real: Reality) -> Iterator[Finding]:
    where: dict[str, list[tuple[str, DomainInfo]]] = defaultdict(list)
    for host, infos in sorted(real.domains.items()):
        for info in infos:
            where[info.name].append((host, info))
    everyone = all(c.name in real.domains for c in inventory.cpu_servers)
    for vm in _checked(inventory):
        yield from _vm_domain(vm, where.get(vm.domain, []), real, everyone)
    claimed = {vm.domain for vm in inventory.vms}
    for name, copies in sorted(where.items()):
        if name.startswith(DOMAIN_PREFIX) and name not in claimed:
            for host, info in copies:
                yield _stray_domain(host, info)
        elif is_foreign(name):
            for host, info in copies:
                yield _foreign_domain(host, info)


def _vm_domain(vm: VmRecord, copies: list[tuple[str, DomainInfo]], real: Reality, everyone: bool
               ) -> Iterator[Finding]:
    home = vm.cpu_server
    active = [host for host, info in copies if _active(info)]
    if len(active) > 1:
        yield from _two_hosts(vm, active)
        return
    home_known = home in real.domains if home else everyone
    if active and active[0] != home:
        yield _wrong_host(vm, active[0], can_fix=home_known and everyone)
        return
    if not home_known:
        return  # never guess: the host that should run it did not answer
    here = next((info for host, info in copies if host == home), None)
    if here is None:
        yield Finding("domain-missing", "error", vm.name, f"{vm.domain} is not defined on {home or 'any CPU server'}",
                      f"The panel shows {vm.name} as {vm.state} on {home or 'no CPU server'}, but no such guest "
                      "exists: it is down and the panel cannot start it.")
    else:
        yield from _domain_state(vm, home or "", here)
    for host, info in copies:
        if home and host != home:  # inactive: an active one was handled above
            yield Finding("domain-defined-elsewhere", "warning", vm.name, f"{vm.domain} is also defined "
                          f"({info.state}) on {host}", f"Starting it there (by hand, or autostart) would run a "
                          f"second copy of {vm.name} on the same disks.",
                          Fix("undefine-domain", {"cpu_server": host, "domain": vm.domain},
                              f"Undefine the stale copy of {vm.domain} on {host} (the one on {home} stays)"))


def _two_hosts(vm: VmRecord, active: list[str]) -> Iterator[Finding]:
    if vm.cpu_server not in active:
        yield Finding("domain-on-two-hosts", "critical", vm.name,
                      f"{vm.domain} runs on {' and '.join(active)}; the panel expects it on "
                      f"{vm.cpu_server or 'no CPU server'}", TWO_COPIES.format(vm=vm.name) + " Neither copy is "
                      "where the panel expects it: decide by hand which to keep.")
        return
    for host in active:
        if host != vm.cpu_server:
            yield Finding("domain-on-two-hosts", "critical", vm.name,
                          f"{vm.domain} runs on {vm.cpu_server} (where the panel expects it) and on {host}",
                          TWO_COPIES.format(vm=vm.name),
                          Fix("destroy-domain", {"cpu_server": host, "domain": vm.domain},
                              f"Force off the copy of {vm.domain} on {host}; keep the one on {vm.cpu_server}"))


def _wrong_host(vm: VmRecord, host: str, *, can_fix: bool) -> Finding:
    home = vm.cpu_server or "no CPU server"
    message = f"{vm.domain} runs on {host}; the panel records it on {home}"
    if not can_fix:
        return Finding("vm-on-wrong-host", "error", vm.name, message + ", and not every CPU server answered",
                       f"If a CPU server that did not answer runs {vm.name} too, two copies write the same disks: "
                       "check or fence it before anything else.")
    return Finding("vm-on-wrong-host", "error", vm.name, message,
                   f"The guest runs, but its memory is counted on {home}: placement and N+1 are wrong, and a "
                   f"failover of {host} would not restart it.",
                   Fix("record-vm-host", {"vm": vm.name, "cpu_server": host}, f"Record {vm.name} as running on {host}"))


def _domain_state(vm: VmRecord, home: str, here: DomainInfo) -> Iterator[Finding]:
    if vm.uuid and here.uuid.lower() != vm.uuid.lower():
        yield Finding("domain-uuid-mismatch", "error", vm.name, f"{vm.domain} on {home} has UUID {here.uuid}, "
                      f"the panel's is {vm.uuid}", f"Another guest carries {vm.name}'s name: the panel's commands "
                      "for this VM would act on it. Rename or remove it by hand.")
        return
    if vm.state == VmState.RUNNING and not _active(here):
        yield Finding("domain-not-running", "error", vm.name, f"{vm.domain} is {here.state} on {home}",
                      f"{vm.name} is down although the panel shows it running.",
                      Fix("start-domain", {"vm": vm.name}, f"Start {vm.domain} on {home} again"))
    elif vm.state == VmState.RUNNING and here.state not in RUNNING_STATES:
        yield Finding("domain-state", "warning", vm.name, f"{vm.domain} is {here.state} on {home}, not running",
                      "The guest does not execute (paused by hand, or left so by a failed migration).")
    elif vm.state == VmState.STOPPED and _active(here):
        yield Finding("domain-not-stopped", "warning", vm.name, f"{vm.domain} is {here.state} on {home}; the panel "
                      "records the VM as stopped", "The guest runs and uses memory while the panel shows it stopped.",
                      Fix("mark-vm-running", {"vm": vm.name}, f"Record {vm.name} as running"))
    if not here.persistent:
        yield Finding("domain-transient", "warning", vm.name, f"{vm.domain} on {home} has no persistent definition",
                      f"Once it stops, {home} forgets it and the panel cannot start it again.")


def _stray_domain(host: str, info: DomainInfo) -> Finding:
    if _active(info):
        return Finding("unknown-domain", "error", info.name,
                       f"{info.name} runs on {host}, but the panel has no VM of that name",
                       "It uses memory the panel does not count; if it uses a guest's disks, two writers corrupt them.",
                       Fix("destroy-domain", {"cpu_server": host, "domain": info.name},
                           f"Force off the stray domain {info.name} on {host}"))
    return Finding("unknown-domain", "warning", info.name,
                   f"{info.name} is defined ({info.state}) on {host}, but the panel has no VM of that name",
                   "A leftover: harmless until someone starts it.",
                   Fix("undefine-domain", {"cpu_server": host, "domain": info.name},
                       f"Undefine the stray domain {info.name} on {host} (its definition is lost)"))


def _foreign_domain(host: str, info: DomainInfo) -> Finding:
    """Not the panel's: reported, counted (hosts/foreign.py), never touched, so no fix."""
    if holds_memory(info):
        return Finding("foreign-domain", "warning", info.name,
                       f"{info.name} is {info.state} on {host} and holds {info.memory_mib} MiB, but the panel did "
                       "not make it",
                       f"The panel never touches it. Its memory counts as used on {host}, so placement and N+1 "
                       "leave it alone; but it has no mirror, no quota and no failover. Make it a panel VM, or move "
                       "it off the cluster.")
    return Finding("foreign-domain", "warning", info.name,
                   f"{info.name} is defined ({info.state}) on {host}, but the panel did not make it",
                   f"It holds no memory now. Started, it would take {info.memory_mib} MiB that the panel counts only "
                   "from the next reconcile pass of the domain watcher or the next verify.")


def _export_findings(inventory: Inventory, real: Reality) -> Iterator[Finding]:
    for vm in _checked(inventory):
        for leg in vm.legs:
            if leg.disk_server not in real.exports:
                continue  # unreachable: reported as such
            running = next((e for e in real.exports[leg.disk_server] if (e.shelf, e.slot) == (leg.shelf, leg.slot)),
                           None)
            gone = leg.path in real.missing_volumes.get(leg.disk_server, set())
            where = f"{leg.name} on {leg.disk_server}"
            if gone:
                held = " (vblade still serves the deleted file it holds open)" if running else ""
                yield Finding("volume-missing", "error", vm.name, f"volume {leg.path} of {where} is missing{held}",
                              f"One leg of {vm.name}'s mirror has lost its data: the guest lives on the other leg "
                              "alone until a new volume is made and resynced.")
            if running is None:
                fix = None if gone else Fix("start-export", {"disk_server": leg.disk_server, "shelf": leg.shelf,
                                                             "slot": leg.slot},
                                            f"Start export {leg.name} on {leg.disk_server} again")
                yield Finding("export-not-running", "error", vm.name, f"{where} is not exported (no vblade serves it)",
                              f"{vm.name}'s mirror has one leg left: one more failure and the guest loses its disk.",
                              fix)
            elif (running.path, running.interface) != (leg.path, leg.interface):
                yield Finding("export-mismatch", "error", vm.name, f"{where} serves {running.path} on "
                              f"{running.interface}; the panel expects {leg.path} on {leg.interface}",
                              "The guest may be writing to a file that is not its disk: decide by hand which is right.")
    for disk, exports in sorted(real.exports.items()):
        for export in exports:
            if (disk, export.shelf, export.slot) not in inventory.reserved:
                yield Finding("unknown-export", "warning", f"{disk} {export.name}", f"{export.name} on {disk} serves "
                              f"{export.path}, but the panel has no export {export.name} on {disk}",
                              "A leftover or an export made by hand: it takes a shelf.slot the panel may give to a "
                              "new VM, and anyone on the SAN can write to it.",
                              Fix("stop-export", {"disk_server": disk, "shelf": export.shelf, "slot": export.slot},
                                  f"Stop the stray export {export.name} on {disk} (its file stays)"))


def _san_findings(inventory: Inventory, real: Reality) -> Iterator[Finding]:
    heard: dict[tuple[int, int], dict[str, list[AoEAnswer]]] = defaultdict(lambda: defaultdict(list))
    for cpu, answers in real.san.items():
        for answer in answers:
            heard[(answer.shelf, answer.slot)][cpu].append(answer)
    for vm in _checked(inventory) if real.san else []:
        for leg in vm.legs:
            key = (leg.shelf, leg.slot)
            exports = real.exports.get(leg.disk_server)
            if exports is not None and not any((e.shelf, e.slot) == key for e in exports):
                continue  # not running: export-not-running says so already
            answers = [a for cpu_answers in heard.get(key, {}).values() for a in cpu_answers]
            silent = [cpu for cpu in sorted(real.san) if not heard.get(key, {}).get(cpu)]
            if silent:
                own = vm.cpu_server in silent
                yield Finding("export-not-answering", "error" if own else "warning", vm.name,
                              f"{leg.name} ({leg.disk_server}) does not answer an AoE query from {', '.join(silent)}",
                              (f"{vm.name} on {vm.cpu_server} cannot reach this leg: its mirror runs degraded."
                               if own else f"{vm.name} could not run on {', '.join(silent)} with both legs.")
                              + " Look at the SAN links and the export's MAC ACL.")
            macs = sorted({a.mac for a in answers})
            if len(macs) > 1:
                yield Finding("export-answered-twice", "critical", vm.name, f"{leg.name} is answered by "
                              f"{len(macs)} targets on the SAN ({', '.join(macs)})",
                              "Initiators spread I/O over every target that answers a shelf.slot: writes of "
                              f"{vm.name} land on two different disks. Stop the target that is not {leg.disk_server}.")
            sizes = sorted({a.sectors for a in answers if a.sectors is not None})
            if sizes and sizes != [leg.size_mib * SECTORS_PER_MIB]:
                yield Finding("export-size-mismatch", "error", vm.name, f"{leg.name} reports "
                              f"{', '.join(map(str, sizes))} sectors; the panel made {leg.size_mib} MiB "
                              f"({leg.size_mib * SECTORS_PER_MIB} sectors)",
                              "The leg is not the volume the panel made for this VM: the mirror's legs differ.")
    known = {(shelf, slot) for _, shelf, slot in inventory.reserved}
    known |= {(e.shelf, e.slot) for exports in real.exports.values() for e in exports}
    for (shelf, slot), per_cpu in sorted(heard.items()):
        if (shelf, slot) not in known:
            macs = sorted({a.mac for answers in per_cpu.values() for a in answers})
            yield Finding("unknown-san-target", "warning", f"e{shelf}.{slot}", f"e{shelf}.{slot} answers on the SAN "
                          f"(MAC {', '.join(macs)}), but no disk server of the panel exports it",
                          "A target the panel does not manage: a shelf.slot a new VM may collide with.")


# --- the whole verify -------------------------------------------------------------------------

@dataclass(frozen=True)
class Verification:
    findings: list[Finding]
    checked: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"findings": [f.as_dict() for f in self.findings], "checked": self.checked}


def checked_counts(inventory: Inventory, real: Reality) -> dict[str, int]:
    """What verify looked at, so that "no differences" can be told from "nothing checked"."""
    domains = [d for infos in real.domains.values() for d in infos]
    return {
        "cpu_servers": len(inventory.cpu_servers),
        "cpu_servers_answering": len(real.domains),
        "disk_servers": len(inventory.disk_servers),
        "disk_servers_answering": len(real.exports),
        "vms": len(_checked(inventory)),
        "vms_busy": sum(1 for vm in inventory.vms if vm.busy or vm.state not in CHECKED_VM_STATES),
        "domains": sum(1 for d in domains if d.name.startswith(DOMAIN_PREFIX)),
        "foreign_domains": sum(1 for d in domains if is_foreign(d.name)),
        "exports": sum(len(e) for e in real.exports.values()),
        "san_answers": sum(len(a) for a in real.san.values()),
    }


def verify(note: Note = quiet) -> Verification:
    """Collect and compare in this process (the CLI: no worker needed, so cron works without one)."""
    before = load_inventory()
    real = collect(before, note)
    record_listings(real.domains)  # what runs besides the panel's guests counts as used from now
    network = verify_networks.findings()
    inventory = settle(before, load_inventory())
    return Verification(compare(inventory, real, network), checked_counts(inventory, real))


def start_verify(user: Any = None) -> Job:
    """Queue a cluster.verify job; one already queued or running is returned instead of a second."""
    running = Job.objects.filter(kind="cluster.verify", state__in=ACTIVE_STATES).first()
    return running or start_job("cluster.verify", target_name="cluster", user=user)
