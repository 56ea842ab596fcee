"""Verbs on VMs. Each validates, reserves in one transaction, writes the job and queues it."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from hosts.models import CpuServer
from images.choices import ImageState
from images.models import Image
from images.services import visible_images
from jobs.models import Job
from jobs.services import start_job
from networks.models import Network
from networks.services import add_nics, resolve_networks, usable_networks
from sshkeys.models import SshKey
from sshkeys.validation import parse_keys
from storage.models import AoEExport, Mirror
from tenants.access import is_operator, may_run, tenant_of
from tenants.models import Tenant
from tenants.quotas import lock as quota_lock
from tenants.quotas import shortfalls as quota_shortfalls
from vms.affinity import resolve as resolve_groups
from vms.choices import VmState
from vms.events import publish_vm
from vms.job_params import NicParams, VmCreateParams, VmDeleteParams, VmEjectParams, VmPowerParams
from vms.models import VirtualMachine, vm_name_validator
from vms.passwords import hash_password
from vms.placement import Apart, PlacementError, choose_cpu_server, choose_disk_servers, free_slot, lock_servers


@dataclass(frozen=True)
class VmRequest:
    name: str
    vcpus: int
    memory_mib: int
    disk_mib: int
    cpu_server: str | None = None  # None: the panel chooses
    kernel_path: str = ""  # direct kernel boot from this path on the CPU servers
    initrd_path: str = ""  # with kernel_path: its initramfs, same rule
    kernel_cmdline: str = ""  # with kernel_path: its command line
    # Place it even if a CPU server's failure would then leave guests without room (recorded).
    allow_n_plus_one_break: bool = False
    tenant: str | None = None  # the owning tenant's short name; a tenant's user always creates for their own
    image: str = ""  # "": the site's default image (if there is one); "none": an empty disk (operators)
    networks: tuple[str, ...] = ()  # one NIC on each; none named: the default network (if there is one)
    ssh_keys: tuple[str, ...] = ()  # public keys for the image's login user, besides the creator's own
    password: str = ""  # a password for the login user (kept only hashed); "": none
    iso: str = ""  # an installer ISO in its CD drive, booted first: the VM's disk starts empty
    # Its owner's anti-affinity groups it joins: placed apart from their members where there is room.
    anti_affinity_groups: tuple[str, ...] = ()


NO_IMAGE = "none"


def _check_range(errors: dict[str, str], field: str, what: str, value: int, bounds: tuple[int, int], unit: str) -> None:
    low, high = bounds
    if not low <= value <= high:
        errors[field] = f"{what} must be between {low} and {high} {unit}".rstrip() + f", not {value}"


def validate_request(req: VmRequest) -> None:
    errors: dict[str, str] = {}
    try:
        vm_name_validator(req.name)
    except ValidationError as exc:
        errors["name"] = exc.messages[0]
    _check_range(errors, "vcpus", "vCPUs", req.vcpus, (1, settings.VM_MAX_VCPUS), "")
    _check_range(errors, "memory_mib", "memory", req.memory_mib,
                 (settings.VM_MIN_MEMORY_MIB, settings.VM_MAX_MEMORY_MIB), "MiB")
    _check_range(errors, "disk_mib", "disk", req.disk_mib, (settings.VM_MIN_DISK_MIB, settings.VM_MAX_DISK_MIB), "MiB")
    if req.kernel_path and (not req.kernel_path.startswith("/") or not req.kernel_path.isprintable()):
        errors["kernel_path"] = f"the kernel must be an absolute path, not {req.kernel_path!r}"
    if req.initrd_path and (not req.initrd_path.startswith("/") or not req.initrd_path.isprintable()):
        errors["initrd_path"] = f"the initramfs must be an absolute path, not {req.initrd_path!r}"
    if req.kernel_cmdline and not req.kernel_cmdline.isprintable():
        errors["kernel_cmdline"] = f"bad kernel command line {req.kernel_cmdline!r}"
    if req.iso and req.kernel_path:
        errors["iso"] = "a VM boots its ISO or a kernel, not both"
    if (req.initrd_path or req.kernel_cmdline) and not req.kernel_path:
        errors["kernel_path"] = "an initramfs or a kernel command line needs a kernel"
    if req.cpu_server and not CpuServer.objects.filter(name=req.cpu_server).exists():
        errors["cpu_server"] = f"no CPU server named {req.cpu_server!r}"
    if errors:
        raise ValidationError(errors)


def _name_taken(name: str, user: AbstractBaseUser | None) -> ValidationError:
    """VM names are unique across the cluster, but whose a name is, is not a tenant's to learn: a
    name used by a VM this user cannot see is "not available", and only said once everything else
    about the request was accepted (so no request probes names without creating a VM)."""
    if user is None or VirtualMachine.objects.visible_to(user).filter(name=name).exists():
        return ValidationError({"name": f"a VM named {name!r} already exists"})
    return ValidationError({"name": f"the name {name!r} is not available; choose another"})


def _owner(req: VmRequest, user: AbstractBaseUser | None) -> Tenant | None:
    """The tenant the new VM will belong to, after checking the user may create it there.

    Operators (and the CLI, with no user) create for any tenant or none; a tenant's user creates
    only for their own tenant, if it may create VMs, and leaves placement to the panel."""
    if user is None or is_operator(user):
        if not req.tenant:
            return None
        tenant = Tenant.objects.filter(slug=req.tenant).first()
        if tenant is None:
            raise ValidationError({"tenant": f"no tenant named {req.tenant!r}"})
        return tenant
    tenant = tenant_of(user)
    if tenant is None or not tenant.may_create_vms:
        raise ValidationError({"__all__": "you may not create VMs; ask an operator"})
    if req.tenant and req.tenant != tenant.slug:
        raise ValidationError({"tenant": f"no tenant named {req.tenant!r}"})
    if req.cpu_server or req.allow_n_plus_one_break or req.kernel_path or req.initrd_path or req.kernel_cmdline:
        raise ValidationError({"__all__": "only operators choose the CPU server, the kernel or to break N+1"})
    return tenant


@dataclass(frozen=True)
class FirstBoot:
    """What a VM's first boot is given, resolved and checked before anything is written."""

    image: Image | None
    networks: list[Network]
    ssh_keys: str
    password_hash: str
    iso: Image | None = None


def _iso(req: VmRequest, user: AbstractBaseUser | None) -> Image | None:
    """The installer ISO for the new VM's CD drive, checked: one the user sees, ready, and (for a
    tenant's user) a tenant allowed the console the installation is done through."""
    if not req.iso:
        return None
    if req.image not in ("", NO_IMAGE):
        raise ValidationError({"iso": "an ISO installs onto an empty disk: choose no image with it"})
    iso = visible_images(user).isos().filter(name=req.iso).first()
    if iso is None:
        raise ValidationError({"iso": f"no ISO named {req.iso!r}"})
    if iso.state != ImageState.READY:
        raise ValidationError({"iso": f"ISO {iso.name} is not ready ({iso.get_state_display().lower()})"})
    if user is not None and not may_run(user, "console"):
        raise ValidationError({"iso": "installing from an ISO is done on the console, which your tenant's users "
                                      "may not open; ask an operator"})
    return iso


def _image(req: VmRequest, user: AbstractBaseUser | None) -> Image | None:
    if req.iso:
        return None  # the installer on the ISO writes the disk (checked in _iso)
    if req.image == NO_IMAGE:
        if user is not None and not is_operator(user):
            raise ValidationError({"image": "only operators create VMs without an operating system"})
        return None
    images = visible_images(user).disks()
    image = images.filter(name=req.image).first() if req.image else images.filter(is_default=True).first()
    if image is None:
        if req.image:
            raise ValidationError({"image": f"no image named {req.image!r}"})
        return None  # a site without images yet: an empty disk, as before there were images
    if image.state != ImageState.READY:
        raise ValidationError({"image": f"image {image.name} is not ready ({image.get_state_display().lower()})"})
    if req.disk_mib < image.min_disk_mib:
        raise ValidationError({"disk_mib": f"{image.name} needs a disk of at least {image.min_disk_mib} MiB, "
                                           f"not {req.disk_mib}"})
    return image


def _first_boot(req: VmRequest, user: AbstractBaseUser | None) -> FirstBoot:
    iso = _iso(req, user)
    image = _image(req, user)
    if req.networks:
        networks = resolve_networks(list(req.networks), user)
    else:
        default = usable_networks(user).filter(is_default=True).first()
        networks = [default] if default is not None else []  # no default network yet: no NIC
    keys: list[str] = []
    for text in req.ssh_keys:
        try:
            keys += [key.line for key in parse_keys(text)]
        except ValidationError as exc:
            raise ValidationError({"ssh_keys": exc.messages[0]}) from exc
    if req.password and not 12 <= len(req.password) <= 128:
        raise ValidationError({"password": "a password is 12 to 128 characters"})
    if image is None and (keys or req.password):
        field = "iso" if iso else "image"
        raise ValidationError({field: "SSH keys and a password need an image to give them to"
                                      + (" (the ISO's installer asks for its own)" if iso else "")})
    if image is not None and user is not None and user.is_authenticated:
        keys += [key.key for key in SshKey.objects.filter(user=user)]  # the creator's own, from their profile
    unique = list(dict.fromkeys(keys))
    return FirstBoot(image, networks, "".join(k + "\n" for k in unique),
                     hash_password(req.password) if req.password else "", iso)


def create_vm(req: VmRequest, user: AbstractBaseUser | None = None) -> Job:
    """Reserve the VM's memory, slot, volumes, MACs and addresses, and queue the job that builds it.

    Raises ValidationError (nothing changed) for bad input, a quota it would exceed, a full address
    pool, or when the cluster has no room.
    """
    validate_request(req)
    owner = _owner(req, user)
    boot = _first_boot(req, user)
    try:
        with transaction.atomic():
            if owner is not None:
                # The tenant's row first (quota checks of one tenant are serialised), then the
                # servers': every create takes its locks in this order.
                over = quota_shortfalls(quota_lock(owner.pk), vcpus=req.vcpus, memory_mib=req.memory_mib,
                                        disk_mib=req.disk_mib)
                if over:
                    raise ValidationError({"__all__": over})
            # Lock every server row: placements (creates, migrations, restarts, evacuations) are
            # serialised, so two cannot both take the last free memory or the same slot.
            groups = resolve_groups(req.anti_affinity_groups, owner)  # their rows, then the servers'
            lock_servers(disk_servers=True)
            requested = CpuServer.objects.get(name=req.cpu_server) if req.cpu_server else None
            placement = choose_cpu_server(req.memory_mib, requested, allow_n_plus_one_break=req.allow_n_plus_one_break,
                                          apart=Apart.new(req.name, groups))
            cpu = placement.server
            disks = choose_disk_servers(req.disk_mib)
            slot = free_slot(disks)
            if VirtualMachine.objects.filter(name=req.name).exists():
                raise _name_taken(req.name, user)
            vm = VirtualMachine.objects.create(
                name=req.name, vcpus=req.vcpus, memory_mib=req.memory_mib, disk_mib=req.disk_mib,
                cpu_server=cpu, state=VmState.CREATING, domain_uuid=uuid.uuid4(), kernel_path=req.kernel_path,
                initrd_path=req.initrd_path, kernel_cmdline=req.kernel_cmdline,
                tenant=owner, image=boot.image, ssh_keys=boot.ssh_keys, password_hash=boot.password_hash,
                iso=boot.iso,
            )
            vm.anti_affinity_groups.set(groups)
            mirror = Mirror.objects.create(vm=vm)
            nics = add_nics(vm, boot.networks)
            for leg, disk in enumerate(disks):
                AoEExport.objects.create(
                    disk_server=disk, mirror=mirror, leg=leg, shelf=disk.aoe_shelf, slot=slot,
                    size_mib=req.disk_mib,
                    backing_path=f"{disk.volume_dir.rstrip('/')}/{vm.name}-e{disk.aoe_shelf}.{slot}.img",
                )
            return start_job("vm.create", vm=vm, user=user, params=VmCreateParams(
                vcpus=req.vcpus, memory_mib=req.memory_mib, disk_mib=req.disk_mib,
                cpu_server=cpu.name, requested_cpu_server=req.cpu_server or "automatic",
                tenant=owner.slug if owner else None, image=boot.image.name if boot.image else None,
                iso=boot.iso.name if boot.iso else None,
                nics=[NicParams(network=n.network.name, mac=n.mac, ip=n.ip) for n in nics],
                n_plus_one_override=[str(s) for s in placement.shortfalls],
                anti_affinity_groups=[g.name for g in groups], anti_affinity_broken=[str(b) for b in placement.breaks],
            ))
    except PlacementError as exc:
        raise ValidationError({"cpu_server" if req.cpu_server else "__all__": str(exc)}) from exc
    except IntegrityError as exc:
        # A concurrent create took the name between the check and the insert.
        raise _name_taken(req.name, user) from exc


def locked_vm(name: str, user: AbstractBaseUser | None, action: str) -> VirtualMachine:
    """The VM row, locked, if `user` may see it and run `action` on it (no user: the CLI, which
    operators run). A VM the user may not see does not exist for them."""
    vms = VirtualMachine.objects.all() if user is None else VirtualMachine.objects.visible_to(user)
    vm = vms.select_for_update().filter(name=name).first()
    if vm is None:
        raise ValidationError({"name": f"no VM named {name!r}"})
    if user is not None and not may_run(user, action):
        verb = action.replace("_", " ")
        raise ValidationError({"action": f"your tenant's users may not {verb} VMs; ask an operator"})
    return vm


def delete_vm(name: str, user: AbstractBaseUser | None = None) -> Job:
    """Queue the job that removes the domain, both exports and both volumes."""
    with transaction.atomic():
        vm = locked_vm(name, user, "delete")
        job = start_job("vm.delete", vm=vm, user=user, params=VmDeleteParams(state_before=vm.state))
        vm.state = VmState.DELETING
        vm.save(update_fields=["state", "updated_at"])
        publish_vm(vm)
        return job


@dataclass(frozen=True)
class Action:
    kind: str
    label: str  # for buttons
    phrase: str  # for messages: "cannot shut it down"
    allowed_states: tuple[str, ...]


ACTIONS = {
    "start": Action("vm.start", "Start", "start it", (VmState.STOPPED,)),
    "shutdown": Action("vm.shutdown", "Shut down", "shut it down", (VmState.RUNNING,)),
    "reboot": Action("vm.reboot", "Reboot", "reboot it", (VmState.RUNNING,)),
    "force_off": Action("vm.force_off", "Force off", "force it off", (VmState.RUNNING, VmState.UNKNOWN)),
}


def vm_action(name: str, action: str, user: AbstractBaseUser | None = None, *,
              shutdown_timeout_s: int | None = None) -> Job:
    """Start, shut down (ACPI, forced off after a timeout), reboot or force off a VM, as a job.

    Refused with a clear message when the VM is not in a state the action applies to, or is busy
    with another job."""
    spec = ACTIONS.get(action)
    if spec is None:
        raise ValidationError({"action": f"unknown action {action!r}; one of {', '.join(ACTIONS)}"})
    timeout = settings.VM_SHUTDOWN_TIMEOUT_S if shutdown_timeout_s is None else shutdown_timeout_s
    if not 0 <= timeout <= 3600:
        raise ValidationError({"timeout": f"the shutdown timeout must be 0 to 3600 s, not {timeout}"})
    with transaction.atomic():
        vm = locked_vm(name, user, action)
        if vm.cpu_server_id is None:
            raise ValidationError({"name": f"{name} has no CPU server"})
        if vm.state not in spec.allowed_states:
            raise ValidationError({"name": f"{name} is {vm.get_state_display().lower()}: cannot {spec.phrase}"})
        return start_job(spec.kind, vm=vm, user=user, params=VmPowerParams(timeout_s=timeout))


def eject_cd(name: str, user: AbstractBaseUser | None = None) -> Job:
    """Queue the job that takes the ISO out of the VM's CD drive (live, if it runs) and makes it boot
    from its disk from then on: the end of an installation. Who may open the console may eject."""
    with transaction.atomic():
        vm = locked_vm(name, user, "console")
        if vm.iso_id is None:
            raise ValidationError({"name": f"{name}'s CD drive is empty"})
        if vm.state not in (VmState.RUNNING, VmState.STOPPED):
            raise ValidationError({"name": f"{name} is {vm.get_state_display().lower()}: cannot eject its CD now"})
        return start_job("vm.eject", vm=vm, user=user, params=VmEjectParams(iso=vm.iso.name))
