"""`manage.py lab up|down|status [--json]` and `lab kill HOST`: the lab cluster (see lab/README.md)."""
import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from lab import cluster
from lab.system import LabError
from lab.topology import HOSTS


def register_or_explain(result: cluster.LabStatus) -> None:
    from lab.register import register_hosts

    try:
        register_hosts(result)
    except DatabaseError as exc:
        raise CommandError(f"the lab is up, but recording its hosts in the database failed "
                           f"(has `manage.py migrate` run?): {exc}") from exc


class Command(BaseCommand):
    help = "Bring the lab cluster (2 disk servers, 2 CPU servers in network namespaces) up or down."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("action", choices=["up", "down", "status", "kill"])
        parser.add_argument("host", nargs="?", help="kill: the host whose plug to pull (up restarts it)")
        parser.add_argument("--json", action="store_true", help="print the lab's hosts as JSON")
        parser.add_argument("--no-register", action="store_true", help="up: do not add the hosts to the database")

    def handle(self, *args: Any, **options: Any) -> None:
        def say(line: str) -> None:
            if not options["json"]:
                self.stdout.write(line)

        try:
            if options["action"] == "up":
                result = cluster.up(out=say)
                if not options["no_register"]:
                    register_or_explain(result)
            elif options["action"] == "kill":
                if not options["host"]:
                    raise CommandError("usage: lab kill HOST")
                cluster.kill_host(options["host"])
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
                self.stdout.write(f"{h.name:<6} {h.role:<4} {h.address:<12} {h.netns:<9} {h.libvirt_uri or ''}")
            if not result.complete:
                missing = sorted({h.name for h in HOSTS} - {h.name for h in result.hosts})
                self.stdout.write(f"not running: {', '.join(missing)}")
        if options["action"] == "status" and not result.complete:
            raise SystemExit(1)
