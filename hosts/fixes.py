"""The fixes verify may propose, and applying one as a "cluster.fix" job.

Only fixes that are safe and well defined are here, each behind a whitelist entry with typed
arguments. Applying one validates it (ValidationError, nothing written) and queues a job; the job
re-checks the condition on the hosts first, because the cluster may have changed since the verify:
if the difference is gone it does nothing, and if the fix no longer fits (the copy it would keep has
stopped, a VM now owns the export) it refuses (JobFailed) rather than guess.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError

from drivers import aoe, hypervisor, vblade
from drivers.errors import DriverError
from drivers.hypervisor import DomainInfo
from hosts.choices import HostState
from hosts.job_params import FixParams
from hosts.models import CpuServer, DiskServer
from hosts.targets import ssh_target
from hosts.verify import INACTIVE_STATES
from jobs.models import Job
from jobs.runner import JobContext, JobFailed
from jobs.services import start_job
from storage import access as storage_access
from storage.choices import ExportState
from storage.models import AoEExport
from vms.choices import VmState
from vms.events import publish_vm
from vms.guest_setup import legs_of
from vms.models import VirtualMachine
from xenaoe_panel.names import DOMAIN_PREFIX, NAME

DOMAIN_NAME = re.compile(rf"{DOMAIN_PREFIX}{NAME}")  # the panel's names only
LIBVIRT_TIMEOUT = 30.0
MAX_LABEL = 200


@dataclass(frozen=True)
class FixAction:
    args: dict[str, type]  # exactly these arguments, of these types
    run: Callable[[JobContext, dict[str, Any]], str]  # returns what it did, for the job's message


def _active(info: DomainInfo | None) -> bool:
    return info is not None and info.state not in INACTIVE_STATES


def _owner(domain: str) -> VirtualMachine | None:
    """The VM whose domain this is, if the panel has one."""
    return VirtualMachine.objects.select_related("cpu_server").filter(name=domain.removeprefix(DOMAIN_PREFIX)).first()


def _cpu(name: str) -> CpuServer:
    return CpuServer.objects.get(name=name)


def _where_active(domain: str, skip: str = "") -> list[str]:
    """Every CPU server (but `skip`) where the domain is active. Refuses when one cannot be asked,
    unless the database records it fenced: "it might run there" is exactly what must not be guessed."""
    found = []
    for cpu in CpuServer.objects.exclude(name=skip):
        try:
            info = hypervisor.domain_info(cpu.libvirt_uri, domain, timeout=LIBVIRT_TIMEOUT)
        except DriverError as exc:
            if cpu.state == HostState.FENCED:
                continue
            raise JobFailed(f"refused: cannot check whether {domain} runs on {cpu.name} ({exc})") from exc
        if _active(info):
            found.append(cpu.name)
    return found


# --- the actions (job step bodies) --------------------------------------------------------------

def destroy_domain(ctx: JobContext, args: dict[str, Any]) -> str:
    cpu, domain = _cpu(args["cpu_server"]), args["domain"]
    if not _active(hypervisor.domain_info(cpu.libvirt_uri, domain, timeout=LIBVIRT_TIMEOUT)):
        return f"nothing done: {domain} no longer runs on {cpu.name}"
    vm = _owner(domain)
    if vm is not None:
        home = vm.cpu_server.name if vm.cpu_server else None
        if home is None or home == cpu.name:
            raise JobFailed(f"refused: {cpu.name} is where the panel runs {vm.name}; this is not a stray copy")
        if not _active(hypervisor.domain_info(vm.cpu_server.libvirt_uri, domain, timeout=LIBVIRT_TIMEOUT)):
            raise JobFailed(f"refused: {domain} no longer runs on {home}; forcing off the copy on {cpu.name} "
                            f"would stop {vm.name} altogether")
        ctx.log(f"{domain} runs on {home} (kept) and on {cpu.name}: forcing off the copy on {cpu.name}")
    hypervisor.destroy(cpu.libvirt_uri, domain, timeout=LIBVIRT_TIMEOUT)
    return f"{domain} forced off on {cpu.name}"


def undefine_domain(ctx: JobContext, args: dict[str, Any]) -> str:
    cpu, domain = _cpu(args["cpu_server"]), args["domain"]
    info = hypervisor.domain_info(cpu.libvirt_uri, domain, timeout=LIBVIRT_TIMEOUT)
    if info is None:
        return f"nothing done: {domain} is not defined on {cpu.name}"
    if _active(info):
        raise JobFailed(f"refused: {domain} is {info.state} on {cpu.name}; force it off first")
    vm = _owner(domain)
    if vm is not None and vm.cpu_server is not None and vm.cpu_server.name == cpu.name:
        raise JobFailed(f"refused: this is {vm.name}'s own definition on {cpu.name}")
    hypervisor.undefine(cpu.libvirt_uri, domain, timeout=LIBVIRT_TIMEOUT)
    return f"{domain} undefined on {cpu.name}"


def start_domain(ctx: JobContext, args: dict[str, Any]) -> str:
    vm = VirtualMachine.objects.select_related("cpu_server").get(name=args["vm"])
    if vm.state != VmState.RUNNING or vm.cpu_server is None:
        raise JobFailed(f"refused: the panel records {vm.name} as {vm.state}, not running on a CPU server")
    cpu = vm.cpu_server
    elsewhere = _where_active(vm.domain_name, skip=cpu.name)
    if elsewhere:
        raise JobFailed(f"refused: {vm.domain_name} runs on {', '.join(elsewhere)}; a second copy would corrupt "
                        "its disks")
    info = hypervisor.domain_info(cpu.libvirt_uri, vm.domain_name, timeout=LIBVIRT_TIMEOUT)
    if info is None:
        raise JobFailed(f"refused: {vm.domain_name} is not defined on {cpu.name}")
    if _active(info):
        return f"nothing done: {vm.domain_name} is already {info.state} on {cpu.name}"
    # After a reboot of the CPU server its /dev/etherd devices are gone: the domain needs them.
    for leg in legs_of(vm):
        ctx.log(f"{leg.name} is {aoe.attach(ssh_target(cpu), leg.shelf, leg.slot)} on {cpu.name}")
    info = hypervisor.start(cpu.libvirt_uri, vm.domain_name)
    return f"{vm.domain_name} started on {cpu.name}: {info.state}"


def _leg(args: dict[str, Any]) -> AoEExport | None:
    return AoEExport.objects.select_related("disk_server", "mirror__vm__cpu_server").filter(
        disk_server__name=args["disk_server"], shelf=args["shelf"], slot=args["slot"]).first()


def start_export(ctx: JobContext, args: dict[str, Any]) -> str:
    leg = _leg(args)
    if leg is None:
        raise JobFailed(f"refused: the panel no longer has export e{args['shelf']}.{args['slot']} on "
                        f"{args['disk_server']}")
    disk, target = leg.disk_server, ssh_target(leg.disk_server)
    running = [e for e in vblade.list_exports(target) if (e.shelf, e.slot) == (leg.shelf, leg.slot)]
    if running:
        return f"nothing done: {leg.name} already runs on {disk.name} (pid {running[0].pid})"
    spec = vblade.ExportSpec(shelf=leg.shelf, slot=leg.slot, interface=disk.san_interface, path=leg.backing_path)
    try:  # never open to all while a fence stands: its config on the disk server may say otherwise
        export = storage_access.start_export(target, spec)
    except storage_access.UnsafeAcl as exc:
        raise JobFailed(f"refused: {exc}") from exc
    AoEExport.objects.filter(pk=leg.pk).update(state=ExportState.EXPORTED)
    cpu = leg.mirror.vm.cpu_server if leg.mirror else None
    if cpu is not None:  # confirm on the wire from where the guest runs; a silent SAN is worth a warning
        heard = aoe.probe(ssh_target(cpu), cpu.san_interface, leg.shelf, leg.slot, identify=False)
        ctx.log(f"{leg.name} answers from {cpu.name}" if heard else f"{leg.name} does not answer from {cpu.name} yet",
                "info" if heard else "warning")
    return f"{leg.name} exported again on {disk.name} (vblade pid {export.pid})"


def stop_export(ctx: JobContext, args: dict[str, Any]) -> str:
    name = f"e{args['shelf']}.{args['slot']}"
    if _leg(args) is not None:
        raise JobFailed(f"refused: {name} on {args['disk_server']} now belongs to the panel")
    disk = DiskServer.objects.get(name=args["disk_server"])
    if not any((e.shelf, e.slot) == (args["shelf"], args["slot"]) for e in vblade.list_exports(ssh_target(disk))):
        return f"nothing done: {name} no longer runs on {disk.name}"
    vblade.stop_export(ssh_target(disk), args["shelf"], args["slot"])
    return f"{name} stopped on {disk.name}; its file stays"


def record_vm_host(ctx: JobContext, args: dict[str, Any]) -> str:
    vm = VirtualMachine.objects.select_related("cpu_server").get(name=args["vm"])
    cpu = _cpu(args["cpu_server"])
    if vm.cpu_server_id == cpu.pk:
        return f"nothing done: the panel already records {vm.name} on {cpu.name}"
    active = _where_active(vm.domain_name)
    if active != [cpu.name]:
        raise JobFailed(f"refused: {vm.domain_name} runs on {', '.join(active) or 'no CPU server'}, "
                        f"not on {cpu.name} alone")
    info = hypervisor.domain_info(cpu.libvirt_uri, vm.domain_name, timeout=LIBVIRT_TIMEOUT)
    if info is None or vm.domain_uuid is None or info.uuid.lower() != str(vm.domain_uuid):
        raise JobFailed(f"refused: {vm.domain_name} on {cpu.name} is another guest (UUID differs)")
    # Compare-and-set: a job that moved the VM meanwhile wins.
    if not VirtualMachine.objects.filter(pk=vm.pk, cpu_server=vm.cpu_server).update(cpu_server=cpu):
        raise JobFailed(f"refused: {vm.name}'s CPU server changed meanwhile")
    _publish(vm.pk)
    return f"{vm.name} recorded on {cpu.name} (was {vm.cpu_server.name if vm.cpu_server else 'none'})"


def mark_vm_running(ctx: JobContext, args: dict[str, Any]) -> str:
    vm = VirtualMachine.objects.select_related("cpu_server").get(name=args["vm"])
    if vm.state != VmState.STOPPED:
        return f"nothing done: the panel records {vm.name} as {vm.state}"
    info = hypervisor.domain_info(vm.cpu_server.libvirt_uri, vm.domain_name, timeout=LIBVIRT_TIMEOUT) \
        if vm.cpu_server else None
    if not _active(info):
        raise JobFailed(f"refused: {vm.domain_name} does not run on {vm.cpu_server or 'its CPU server'}")
    if not VirtualMachine.objects.filter(pk=vm.pk, state=VmState.STOPPED).update(state=VmState.RUNNING):
        return f"nothing done: {vm.name}'s state changed meanwhile"
    _publish(vm.pk)
    return f"{vm.name} recorded as running"


def _publish(vm_pk: int) -> None:
    """Open pages show VM state live: tell them about a change made here."""
    publish_vm(VirtualMachine.objects.select_related("cpu_server").get(pk=vm_pk))


EXPORT_ARGS = {"disk_server": str, "shelf": int, "slot": int}
DOMAIN_ARGS = {"cpu_server": str, "domain": str}
FIXES: dict[str, FixAction] = {
    "destroy-domain": FixAction(DOMAIN_ARGS, destroy_domain),
    "undefine-domain": FixAction(DOMAIN_ARGS, undefine_domain),
    "start-domain": FixAction({"vm": str}, start_domain),
    "start-export": FixAction(EXPORT_ARGS, start_export),
    "stop-export": FixAction(EXPORT_ARGS, stop_export),
    "record-vm-host": FixAction({"vm": str, "cpu_server": str}, record_vm_host),
    "mark-vm-running": FixAction({"vm": str}, mark_vm_running),
}


# --- validating and applying --------------------------------------------------------------------

def validate_fix(code: str, args: Any) -> VirtualMachine | None:
    """ValidationError unless `code` is a known fix and `args` exactly its arguments, naming
    things that exist. Returns the VM the fix concerns, if any (its jobs exclude each other)."""
    action = FIXES.get(code) if isinstance(code, str) else None
    if action is None:
        raise ValidationError(f"unknown fix {code!r}; known: {', '.join(sorted(FIXES))}")
    if not isinstance(args, dict) or set(args) != set(action.args):
        raise ValidationError(f"{code} takes exactly the arguments {', '.join(sorted(action.args))}")
    for key, kind in action.args.items():
        # bool is an int in Python; a JSON true is not a slot number.
        if not isinstance(args[key], kind) or isinstance(args[key], bool):
            raise ValidationError(f"{code}: {key} must be {kind.__name__}, not {args[key]!r}")
    if "cpu_server" in args and not CpuServer.objects.filter(name=args["cpu_server"]).exists():
        raise ValidationError(f"no CPU server named {args['cpu_server']!r}")
    if "disk_server" in args and not DiskServer.objects.filter(name=args["disk_server"]).exists():
        raise ValidationError(f"no disk server named {args['disk_server']!r}")
    if "shelf" in args:
        try:
            vblade.check_address(args["shelf"], args["slot"])
        except DriverError as exc:
            raise ValidationError(str(exc)) from exc
    if "domain" in args:
        if not DOMAIN_NAME.fullmatch(args["domain"]):
            raise ValidationError(f"{args['domain']!r} is not the name of a panel domain ({DOMAIN_PREFIX}...)")
        return _owner(args["domain"])
    if "vm" in args:
        vm = VirtualMachine.objects.filter(name=args["vm"]).first()
        if vm is None:
            raise ValidationError(f"no VM named {args['vm']!r}")
        return vm
    leg = _leg(args)
    return leg.mirror.vm if leg is not None and leg.mirror is not None else None


def _target_name(args: dict[str, Any]) -> str:
    if "vm" in args:
        return args["vm"]
    if "domain" in args:
        return f"{args['domain']} on {args['cpu_server']}"
    return f"e{args['shelf']}.{args['slot']} on {args['disk_server']}"


def apply_fix(code: str, args: Any, user: AbstractBaseUser | None = None, *, label: str = "",
              source: dict[str, int] | None = None) -> Job:
    """Validate the fix and queue the "cluster.fix" job that applies it (`source`: the verify job
    and log serial of the finding, so the findings page can link to the fix's job)."""
    vm = validate_fix(code, args)
    if not isinstance(label, str) or len(label) > MAX_LABEL:
        raise ValidationError("a fix's label is a short text")
    return start_job("cluster.fix", vm=vm, target_name=_target_name(args)[:63], user=user, params=FixParams(
        fix=code, args=args, label=label or f"{code} {_target_name(args)}", source=source or {},
        cpu_server=args.get("cpu_server"), disk_server=args.get("disk_server")))


def run_fix(ctx: JobContext) -> None:
    """The step of a cluster.fix job: validate again (the job may have waited), then act."""
    params = FixParams.of(ctx.job)
    try:
        validate_fix(params.fix, params.args)
    except ValidationError as exc:
        raise JobFailed("; ".join(exc.messages)) from exc
    ctx.data["result"] = FIXES[params.fix].run(ctx, params.args)
    ctx.log(ctx.data["result"])
