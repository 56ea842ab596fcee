"""`manage.py network create NAME --bridge BR [--vlan N] --cidr CIDR --gateway IP [--range A-B]`,
`network list [--json]`, `network delete NAME`: guest networks (docs/networks.md)."""
from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from networks.models import BridgeType, Network
from networks.serializers import NetworkSerializer
from networks.services import NetworkRequest, create_network, delete_network, publish_network


class Command(BaseCommand):
    help = "Create, list and delete the networks VMs are put on."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        make = sub.add_parser("create", help="a network: a bridge on every CPU server, a subnet, a pool")
        make.add_argument("name")
        make.add_argument("--bridge", required=True, help="the bridge's name on the CPU servers")
        make.add_argument("--bridge-type", choices=[c.value for c in BridgeType], default=BridgeType.LINUX)
        make.add_argument("--vlan", type=int, default=None)
        make.add_argument("--cidr", required=True, help="e.g. 192.0.2.0/24")
        make.add_argument("--gateway", default="")
        make.add_argument("--range", default="", metavar="A-B", help="the address pool (default: after the gateway)")
        make.add_argument("--dns", default="", help="DNS servers, comma-separated")
        make.add_argument("--dhcp", action="store_true", help="the site's DHCP server gives addresses")
        make.add_argument("--default", action="store_true", help="VMs go on it when none is named")
        listing = sub.add_parser("list")
        listing.add_argument("--json", action="store_true")
        pub = sub.add_parser("publish", help="who may put VMs on it")
        pub.add_argument("name")
        pub.add_argument("--tenants", default="", help="comma-separated tenant short names")
        pub.add_argument("--private", action="store_true", help="only the listed tenants (default: every tenant)")
        remove = sub.add_parser("delete")
        remove.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"do_{options['action']}")(options)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {', '.join(v)}" if k != "__all__" else ", ".join(v)
                                         for k, v in exc.message_dict.items())) from exc

    def do_create(self, options: dict) -> None:
        network = create_network(NetworkRequest(
            name=options["name"], bridge=options["bridge"], bridge_type=options["bridge_type"], vlan=options["vlan"],
            cidr=options["cidr"], gateway=options["gateway"], pool=options["range"], dns=options["dns"],
            dhcp=options["dhcp"], make_default=options["default"]))
        default = " (default)" if network.is_default else ""
        self.stdout.write(f"{network.name}: {network.cidr} on bridge {network.bridge}, pool {network.pool_start}-"
                          f"{network.pool_end} ({network.pool_size} addresses){default}")

    def do_list(self, options: dict) -> None:
        networks = list(Network.objects.all())
        listed = NetworkSerializer(networks, many=True, for_operator=True).data
        if options["json"]:
            self.stdout.write(json.dumps(listed, indent=2))
            return
        for network, told in zip(networks, listed, strict=True):
            self.stdout.write(f"{network.name:<16} {network.cidr:<18} bridge {network.bridge:<15} "
                              f"{told['addresses_used']}/{network.pool_size} used"
                              f"{' default' if network.is_default else ''}")

    def do_publish(self, options: dict) -> None:
        tenants = [t for t in options["tenants"].split(",") if t]
        network = publish_network(options["name"], public=not options["private"], tenants=tenants)
        who = "every tenant" if network.public else (", ".join(tenants) or "operators only")
        self.stdout.write(f"{network.name}: {who}")

    def do_delete(self, options: dict) -> None:
        delete_network(options["name"])
        self.stdout.write(f"{options['name']} deleted")
