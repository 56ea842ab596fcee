"""`manage.py lab up|down|status [--json]`, `lab kill HOST [--with-bmc]`, `lab partition|heal HOST`,
`lab bmc HOST psu-fail|psu-ok|fan-fail|fan-ok`: the lab cluster (see docs/lab.md); `lab installer-iso`: the
path of the lab's bootable installer ISO, built (and cached) if needed, for `image import`."""
import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from lab import bmc, cluster
from lab.system import LabError
from lab.topology import HOSTS, host


def register_or_explain(result: cluster.LabStatus) -> None:
    from lab.register import register_guest_network, register_hosts

    try:
        register_hosts(result)
        register_guest_network()
    except DatabaseError as exc:
        raise CommandError(f"the lab is up, but recording its hosts in the database failed "
                           f"(has `manage.py migrate` run?): {exc}") from exc


class Command(BaseCommand):
    help = "Bring the lab cluster (2 disk servers, 2 CPU servers in network namespaces) up or down."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("action", choices=["up", "down", "status", "kill", "partition", "heal", "bmc",
                                                      "installer-iso"])
        parser.add_argument("host", nargs="?", help="kill: the host whose plug to pull (up restarts it); "
                            "partition/heal: the host whose management link to cut/restore; bmc: the CPU host "
                            "whose BMC reports a sensor failing or well again")
        parser.add_argument("drill", nargs="?", choices=list(bmc.DRILLS),
                            help="bmc: fail or restore its power supply PS1 or its fan Fan1")
        parser.add_argument("--with-bmc", action="store_true", help="kill: the host's BMC loses power too")
        parser.add_argument("--san", action="store_true", help="partition: cut the host's SAN link instead")
        parser.add_argument("--json", action="store_true", help="print the lab's hosts as JSON")
        parser.add_argument("--no-register", action="store_true", help="up: do not add the hosts to the database")

    def handle(self, *args: Any, **options: Any) -> None:
        def say(line: str) -> None:
            if not options["json"]:
                self.stdout.write(line)

        try:
            if options["action"] == "installer-iso":
                from django.conf import settings

                from lab.guests import installer_iso
                from lab.guests.mirror_guest import GuestBuildError

                try:
                    self.stdout.write(str(installer_iso.build(Path(settings.IMAGE_BUILD_CACHE))))
                except GuestBuildError as exc:
                    raise CommandError(str(exc)) from exc
                return
            if options["action"] == "up":
                result = cluster.up(out=say)
                if not options["no_register"]:
                    register_or_explain(result)
            elif options["action"] == "bmc":
                board = host(options["host"]).bmc if options["host"] else None
                if board is None or not options["drill"]:
                    raise CommandError(f"usage: lab bmc CPU-HOST {'|'.join(bmc.DRILLS)}")
                bmc.drill(board, options["drill"])
                self.stdout.write(f"{options['host']}: BMC {options['drill']}")
                return
            elif options["action"] in ("kill", "partition", "heal"):
                if not options["host"]:
                    raise CommandError(f"usage: lab {options['action']} HOST")
                if options["action"] == "kill":
                    cluster.kill_host(options["host"], with_bmc=options["with_bmc"])
                elif options["action"] == "partition":
                    cluster.partition_host(options["host"], "san" if options["san"] else "mgmt")
                else:
                    cluster.heal_host(options["host"])
                result = cluster.status()
            elif options["action"] == "down":
                cluster.down(out=say)
                result = cluster.LabStatus([])
            else:
                result = cluster.status()
        except LabError as exc:
            raise CommandError(str(exc)) from exc
        except KeyError as exc:  # an unknown host name
            raise CommandError(exc.args[0]) from exc
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2))
        elif options["action"] == "status":
            for h in result.hosts:
                cut = (" PARTITIONED" if h.partitioned else "") + (" SAN-CUT" if h.san_partitioned else "")
                self.stdout.write(f"{h.name:<6} {h.role:<4} {h.address:<12} {h.netns:<9}{cut} {h.libvirt_uri or ''}")
            if not result.complete:
                missing = sorted({h.name for h in HOSTS} - {h.name for h in result.hosts})
                self.stdout.write(f"not running: {', '.join(missing)}")
        if options["action"] == "status" and not result.complete:
            raise SystemExit(1)
