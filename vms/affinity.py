"""Anti-affinity groups: VMs kept on different CPU servers (docs/operations.md, "Anti-affinity").

The verbs on groups and memberships (`create_group`, `delete_group`, `set_vm_groups`), the lookups
the wizard, the API and the CLI share (`resolve`: the groups a request names, in the VM owner's
scope), and what the rule looks like as it stands: `sharing` (whom a VM shares its server with, for
its page) and `crowded` (what cluster verify reports). The rule itself is the allocator's
(vms/placement.py: `Apart`, `Placement.breaks`); changing a membership never moves a VM.

Who may: operators, for any owner; a tenant's users, for their own tenant's groups and VMs, when the
tenant may create VMs (a group is a wish about where its VMs are placed, as a create is).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from tenants.access import is_operator, may_create_vms, tenant_of
from tenants.models import Tenant
from vms.models import AntiAffinityGroup, VirtualMachine, group_name_validator
from vms.placement import AntiAffinityBreak, Apart, Cluster, lock_servers

FIELD = "anti_affinity_groups"  # the request field the refusals name (the wizard's, the API's)


def may_manage(user: Any) -> bool:
    """May this user (None: the CLI) create groups and choose their VMs' groups?"""
    return user is None or may_create_vms(user)


def _owner_has(owner: Tenant | None) -> str:
    """"acme has", "the operators have": the start of a refusal about an owner's groups."""
    return f"{owner.slug} has" if owner is not None else "the operators have"


def resolve(names: Iterable[str], owner: Tenant | None) -> list[AntiAffinityGroup]:
    """The groups named, among those of the VM's owner (a VM's groups are its owner's), locked until
    the transaction ends (by pk: a delete waits, a create's membership never points at a deleted
    group). ValidationError naming the first unknown one."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    found = {g.name: g for g in AntiAffinityGroup.objects.select_for_update().filter(tenant=owner, name__in=wanted)
             .order_by("pk")}
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ValidationError({FIELD: f"{_owner_has(owner)} no anti-affinity group named {missing[0]!r} (a VM's "
                                      "groups are its owner's)"})
    return [found[name] for name in wanted]


def _owner_for(user: Any, tenant: str | None) -> Tenant | None:
    """Whose a new group is: an operator's (or the CLI's) choice; a tenant's user's own tenant."""
    if user is None or is_operator(user):
        if not tenant:
            return None
        owner = Tenant.objects.filter(slug=tenant).first()
        if owner is None:
            raise ValidationError({"tenant": f"no tenant named {tenant!r}"})
        return owner
    own = tenant_of(user)
    if own is None or not may_manage(user):
        raise ValidationError({"__all__": "your tenant's users may not manage anti-affinity groups; ask an operator"})
    if tenant and tenant != own.slug:
        raise ValidationError({"tenant": f"no tenant named {tenant!r}"})
    return own


def create_group(name: str, *, user: Any = None, tenant: str | None = None, description: str = "") -> AntiAffinityGroup:
    """A new, empty group of `tenant` (its short name; None: the operators'; a tenant's user always
    makes their own tenant's). ValidationError, nothing written, for a bad or taken name."""
    try:
        group_name_validator(name)
    except ValidationError as exc:
        raise ValidationError({"name": exc.messages[0]}) from exc
    if len(description) > 255 or not description.isprintable():
        raise ValidationError({"description": "at most 255 printable characters"})
    owner = _owner_for(user, tenant)
    taken = ValidationError({"name": f"{_owner_has(owner)} a group named {name!r} already"})
    if AntiAffinityGroup.objects.filter(tenant=owner, name=name).exists():
        raise taken
    try:
        with transaction.atomic():
            return AntiAffinityGroup.objects.create(name=name, tenant=owner, description=description)
    except IntegrityError as exc:  # made meanwhile by someone else
        raise taken from exc


def _check_may_change(user: Any, owner_id: int | None) -> None:
    if user is None or is_operator(user):
        return
    own = tenant_of(user)
    if own is None or own.pk != owner_id or not may_manage(user):
        raise ValidationError({"__all__": "your tenant's users may not manage anti-affinity groups; ask an operator"})


def delete_group(group: AntiAffinityGroup, user: Any = None) -> None:
    """Forget the group; its VMs stay where they are, free of its rule from now on."""
    _check_may_change(user, group.tenant_id)
    with transaction.atomic():
        AntiAffinityGroup.objects.select_for_update().filter(pk=group.pk).delete()


def group_named(name: str, tenant: str | None) -> AntiAffinityGroup:
    """The CLI's lookup: `name` among `tenant`'s groups (None: the operators')."""
    owner = Tenant.objects.filter(slug=tenant).first() if tenant else None
    if tenant and owner is None:
        raise ValidationError({"tenant": f"no tenant named {tenant!r}"})
    group = AntiAffinityGroup.objects.filter(name=name, tenant=owner).first()
    if group is None:
        raise ValidationError({"name": f"{_owner_has(owner)} no anti-affinity group named {name!r}"})
    return group


def set_vm_groups(name: str, groups: Iterable[str], user: Any = None) -> list[AntiAffinityBreak]:
    """Make the VM a member of exactly these groups (its owner's, by name). Nothing moves: returns
    where it now shares a CPU server with a member of one of them (for the caller to say so; a
    migration without a target puts it apart). ValidationError with nothing changed otherwise."""
    with transaction.atomic():
        vms = VirtualMachine.objects.all() if user is None else VirtualMachine.objects.visible_to(user)
        vm = vms.select_for_update(of=("self",)).select_related("tenant").filter(name=name).first()
        if vm is None:
            raise ValidationError({"name": f"no VM named {name!r}"})
        _check_may_change(user, vm.tenant_id)
        chosen = resolve(groups, vm.tenant)
        # The allocator's lock: a placement under way sees the membership before or after, never half.
        lock_servers()
        vm.anti_affinity_groups.set(chosen)
        return sharing(vm)


def sharing(vm: VirtualMachine) -> list[AntiAffinityBreak]:
    """For each of the VM's groups, the other members recorded on its CPU server."""
    if vm.cpu_server_id is None:
        return []
    apart = Apart.of(vm)
    everyone = set().union(*(peers for _group, peers in apart.groups))
    here = set(VirtualMachine.objects.filter(cpu_server=vm.cpu_server_id, name__in=everyone)
               .values_list("name", flat=True))
    server = vm.cpu_server.name if vm.cpu_server else ""
    return [AntiAffinityBreak(group, vm.name, tuple(sorted(peers & here)), server)
            for group, peers in apart.groups if peers & here]


# --- what cluster verify reports ------------------------------------------------------------------

@dataclass(frozen=True)
class Crowding:
    """Members of one group on one up CPU server while `room_on`, which runs none of them, has room for
    `movable` (the smallest of them): the rule is broken and need not be."""

    group: str  # its label: `acme/web`, or `web` for the operators'
    server: str
    vms: tuple[str, ...]
    movable: str
    movable_mib: int
    room_on: str

    def __str__(self) -> str:
        names = f"{', '.join(self.vms[:-1])} and {self.vms[-1]}"
        return (f"{names} of anti-affinity group {self.group} {'both' if len(self.vms) == 2 else 'all'} on "
                f"{self.server}; {self.room_on} runs none of them and has room for {self.movable} "
                f"({self.movable_mib} MiB)")


def crowded(busy: Collection[str] = ()) -> list[Crowding]:
    """Every group with two or more members on one up CPU server while a server without a member has
    room for one of them, by group and server. Members in `busy` (a job under way may be moving them)
    are left out. Where a member is counts as for placement: recorded there or held there."""
    cluster = Cluster.load()
    groups: dict[int, list[VirtualMachine]] = defaultdict(list)
    labels: dict[int, str] = {}
    through = AntiAffinityGroup.members.through.objects.select_related("antiaffinitygroup__tenant", "virtualmachine")
    for row in through.order_by("antiaffinitygroup__name", "antiaffinitygroup__pk", "virtualmachine__name"):
        groups[row.antiaffinitygroup_id].append(row.virtualmachine)
        labels[row.antiaffinitygroup_id] = row.antiaffinitygroup.label
    found = []
    for pk, members in groups.items():
        names = {vm.name for vm in members}
        on: dict[int, list[VirtualMachine]] = defaultdict(list)
        for vm in members:
            if vm.cpu_server_id in cluster.loads and vm.name not in busy:
                on[vm.cpu_server_id].append(vm)
        for server_pk, together in on.items():
            if len(together) < 2:
                continue
            smallest = min(together, key=lambda vm: (vm.memory_mib, vm.name))
            room = [other for other in cluster.loads if not cluster.names_on(other) & names
                    and cluster.free[other] >= smallest.memory_mib]
            if room:
                best = max(room, key=lambda other: (cluster.free[other], -other))
                found.append(Crowding(labels[pk], cluster.loads[server_pk].server.name,
                                      tuple(vm.name for vm in together), smallest.name, smallest.memory_mib,
                                      cluster.loads[best].server.name))
    return found
