"""Verbs on networks: create one, choose which a user may use, and give a VM its NICs (a MAC from
the panel's prefix, the lowest free address of the pool), all under the network's row lock."""
from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from networks.models import BridgeType, Network, Nic
from tenants.publishing import publish

MAC_ATTEMPTS = 20


@dataclass(frozen=True)
class NetworkRequest:
    name: str
    bridge: str
    cidr: str
    gateway: str = ""
    pool: str = ""  # "A-B"; empty: the whole subnet after the gateway
    vlan: int | None = None
    dns: str = ""
    dhcp: bool = False
    bridge_type: str = BridgeType.LINUX
    make_default: bool = False


def _pool(req: NetworkRequest) -> tuple[str, str]:
    if req.pool:
        start, sep, end = req.pool.partition("-")
        if not sep:
            raise ValidationError({"pool": f"a range is FIRST-LAST, not {req.pool!r}"})
        return start.strip(), end.strip()
    try:
        subnet = ipaddress.ip_network(req.cidr, strict=True)
    except ValueError as exc:
        raise ValidationError({"cidr": f"not a subnet: {exc}"}) from exc
    hosts = list(subnet.hosts()) if subnet.num_addresses <= 65536 else []
    if not hosts:
        raise ValidationError({"pool": "give the pool as FIRST-LAST for a subnet this large"})
    gateway = ipaddress.ip_address(req.gateway) if req.gateway else None
    usable = [h for h in hosts if gateway is None or h > gateway] or hosts
    return str(usable[0]), str(usable[-1])


def create_network(req: NetworkRequest) -> Network:
    """A new network; ValidationError (nothing created) for anything wrong."""
    start, end = _pool(req)
    network = Network(name=req.name, bridge=req.bridge, bridge_type=req.bridge_type, vlan=req.vlan, cidr=req.cidr,
                      gateway=req.gateway or None, dns=" ".join(req.dns.replace(",", " ").split()),
                      pool_start=start, pool_end=end, dhcp=req.dhcp)
    network.full_clean(exclude=["is_default"])
    try:
        with transaction.atomic():
            network.save()
            if req.make_default or not Network.objects.filter(is_default=True).exclude(pk=network.pk).exists():
                Network.objects.filter(is_default=True).update(is_default=False)
                Network.objects.filter(pk=network.pk).update(is_default=True)
                network.is_default = True
    except IntegrityError as exc:
        raise ValidationError({"name": f"a network named {req.name!r} already exists"}) from exc
    return network


def delete_network(name: str) -> None:
    with transaction.atomic():
        network = Network.objects.select_for_update().filter(name=name).first()
        if network is None:
            raise ValidationError({"name": f"no network named {name!r}"})
        used = list(network.nics.values_list("vm__name", flat=True)[:5])
        if used:
            raise ValidationError({"name": f"{name} is used by {', '.join(used)}"})
        network.delete()


def publish_network(name: str, *, public: bool, tenants: list[str]) -> Network:
    """Who may put VMs on the network: every tenant (public) or the listed ones (and operators)."""
    return publish(Network.objects.all(), name, public=public, tenants=tenants, what="network")


def usable_networks(user: AbstractBaseUser | None) -> QuerySet[Network]:
    """The networks `user` may put VMs on (Network.objects.visible_to), or every one for the CLI (no user)."""
    return Network.objects.all() if user is None else Network.objects.visible_to(user)


def resolve_networks(names: list[str], user: AbstractBaseUser | None) -> list[Network]:
    """The networks named, in order, if the user may use them."""
    allowed = usable_networks(user)
    found = {n.name: n for n in allowed.filter(name__in=names)}
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValidationError({"network": f"no network named {', '.join(repr(n) for n in unknown)}"})
    if len(set(names)) != len(names):
        raise ValidationError({"network": "a network is named twice"})
    return [found[n] for n in names]


def _free_address(network: Network) -> str | None:
    start = int(ipaddress.ip_address(network.pool_start))
    end = int(ipaddress.ip_address(network.pool_end))
    taken = {int(ipaddress.ip_address(ip)) for ip in network.nics.exclude(ip=None).values_list("ip", flat=True)}
    if network.gateway:
        taken.add(int(ipaddress.ip_address(network.gateway)))
    for candidate in range(start, end + 1):
        if candidate not in taken:
            return str(ipaddress.ip_address(candidate))
    return None


def random_mac() -> str:
    prefix = settings.MAC_PREFIX.lower()
    return prefix + "".join(f":{b:02x}" for b in secrets.token_bytes(6 - len(prefix.split(":"))))


def add_nics(vm: object, networks: list[Network]) -> list[Nic]:
    """Give `vm` one NIC on each network, in order; call inside the creating transaction. Locks
    each network's row (in pk order, like every caller) so two creates never take one address.
    ValidationError when a pool is full."""
    locked = {n.pk: n for n in Network.objects.select_for_update().filter(pk__in=[n.pk for n in networks])
              .order_by("pk")}
    nics = []
    for index, wanted in enumerate(networks):
        network = locked[wanted.pk]
        address = None
        if not network.dhcp:
            address = _free_address(network)
            if address is None:
                raise ValidationError({"network": f"{network.name} has no free address left in its pool "
                                                  f"{network.pool_start}-{network.pool_end}"})
        for _attempt in range(MAC_ATTEMPTS):
            try:
                with transaction.atomic():
                    nics.append(Nic.objects.create(vm=vm, network=network, index=index, mac=random_mac(), ip=address))
                break
            except IntegrityError:
                continue  # a MAC that happened to be taken: draw another
        else:
            raise ValidationError({"network": "could not find a free MAC address"})
    return nics
