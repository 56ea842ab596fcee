"""One representation of a network, for the CLI's --json and the API."""
from __future__ import annotations

from networks.models import Network


def network_summary(network: Network) -> dict[str, object]:
    return {
        "name": network.name, "bridge": network.bridge, "bridge_type": network.bridge_type, "vlan": network.vlan,
        "cidr": network.cidr, "gateway": network.gateway, "dns": network.dns_servers,
        "range": f"{network.pool_start}-{network.pool_end}", "dhcp": network.dhcp, "default": network.is_default,
        "public": network.public, "addresses_used": network.nics.exclude(ip=None).count(),
        "pool_size": network.pool_size,
    }
