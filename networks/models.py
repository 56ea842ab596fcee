"""Guest networks (a bridge on every CPU server, its VLAN, an IPv4 or IPv6 subnet and an address
pool) and the NICs of VMs on them. docs/networks.md."""
from __future__ import annotations

import ipaddress

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from tenants.querysets import SharedQuerySet
from xenaoe_panel.names import NAME

network_name_validator = RegexValidator(
    rf"\A{NAME}\Z", "A network name is 1-63 lower-case letters, digits and '-', starting with a letter.")
# A Linux interface name: at most 15 characters, never starting with '-' (it reaches ip(8) as argv).
bridge_name_validator = RegexValidator(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\Z", "Not a bridge name (1-15 characters).")


class BridgeType(models.TextChoices):
    LINUX = "linux", "Linux bridge"
    OPENVSWITCH = "openvswitch", "Open vSwitch"


class Network(models.Model):
    name = models.CharField(max_length=63, unique=True, validators=[network_name_validator])
    bridge = models.CharField(max_length=15, validators=[bridge_name_validator],
                              help_text="The bridge every CPU server has for this network (same name everywhere).")
    bridge_type = models.CharField(max_length=16, choices=BridgeType.choices, default=BridgeType.LINUX)
    vlan = models.PositiveSmallIntegerField("VLAN", null=True, blank=True,
                                            validators=[MinValueValidator(1), MaxValueValidator(4094)])
    cidr = models.CharField("subnet", max_length=64)
    gateway = models.GenericIPAddressField(null=True, blank=True)
    dns = models.CharField("DNS servers", max_length=255, blank=True, help_text="Space-separated addresses.")
    pool_start = models.GenericIPAddressField()
    pool_end = models.GenericIPAddressField()
    # The site's DHCP server hands out addresses: the panel assigns none (it reads them back).
    dhcp = models.BooleanField("DHCP", default=False)
    is_default = models.BooleanField("default", default=False)
    # Tenants use the public networks and those given to them; operators every network.
    public = models.BooleanField(default=True)
    tenants = models.ManyToManyField("tenants.Tenant", blank=True, related_name="networks")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = SharedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=models.Q(is_default=True),
                                    name="one_default_network"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def subnet(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def dns_servers(self) -> list[str]:
        return self.dns.split()

    @property
    def pool_size(self) -> int:
        return int(ipaddress.ip_address(self.pool_end)) - int(ipaddress.ip_address(self.pool_start)) + 1

    def clean(self) -> None:
        errors: dict[str, str] = {}
        try:
            subnet = ipaddress.ip_network(self.cidr, strict=True)
        except ValueError as exc:
            raise ValidationError({"cidr": f"not a subnet: {exc}"}) from exc
        usable = {subnet.network_address, subnet.broadcast_address} if subnet.num_addresses > 2 else set()
        addresses = {}
        for field in ("gateway", "pool_start", "pool_end"):
            value = getattr(self, field)
            if not value:
                continue
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                errors[field] = f"not an IP address: {value!r}"
                continue
            if address not in subnet:
                errors[field] = f"{address} is not in {subnet}"
            elif address in usable:
                errors[field] = f"{address} is the subnet's network or broadcast address"
            addresses[field] = address
        start, end = addresses.get("pool_start"), addresses.get("pool_end")
        if start is not None and end is not None and "pool_start" not in errors and "pool_end" not in errors:
            if start > end:
                errors["pool_end"] = f"the pool ends ({end}) before it starts ({start})"
            elif addresses.get("gateway") is not None and start <= addresses["gateway"] <= end:
                errors["gateway"] = f"the gateway {addresses['gateway']} is inside the pool {start}-{end}"
        for server in self.dns.split():
            try:
                ipaddress.ip_address(server)
            except ValueError:
                errors["dns"] = f"not an IP address: {server!r}"
        if self.vlan is not None and not 1 <= self.vlan <= 4094:
            errors["vlan"] = f"a VLAN id is 1-4094, not {self.vlan}"
        if errors:
            raise ValidationError(errors)


class Nic(models.Model):
    """A VM's network card: its MAC from the panel's prefix and its address from the pool, kept
    for the VM's whole life (across migrations and failover restarts)."""

    vm = models.ForeignKey("vms.VirtualMachine", on_delete=models.CASCADE, related_name="nics")
    network = models.ForeignKey(Network, on_delete=models.PROTECT, related_name="nics")
    index = models.PositiveSmallIntegerField(default=0)
    mac = models.CharField("MAC", max_length=17, unique=True)
    ip = models.GenericIPAddressField("address", null=True, blank=True)

    class Meta:
        ordering = ["vm", "index"]
        constraints = [
            models.UniqueConstraint(fields=["network", "ip"], name="one_address_per_nic"),
            models.UniqueConstraint(fields=["vm", "index"], name="nic_index_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.vm} eth{self.index} {self.mac}"

    @property
    def address_with_prefix(self) -> str:
        return f"{self.ip}/{self.network.subnet.prefixlen}" if self.ip else ""
