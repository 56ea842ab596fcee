"""`manage.py fleet up [--cpus N] [--disks M] | down | status | kill HOST | boot HOST`: a fleet of light
hosts beside the lab (lab/fleet.py, docs/lab.md "The fleet"). Nothing is registered in the
database: bench/monitor_scale.py registers the fleet in a database of its own."""
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from lab import fleet
from lab.system import LabError


class Command(BaseCommand):
    help = "Bring a fleet of light namespace hosts (sshd only; one shared libvirtd) up or down."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("action", choices=["up", "down", "status", "kill", "boot"])
        parser.add_argument("host", nargs="?", help="kill/boot: the fleet host (e.g. fc001)")
        parser.add_argument("--cpus", type=int, default=200, help="up: CPU hosts (default 200)")
        parser.add_argument("--disks", type=int, default=20, help="up: disk hosts (default 20)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "up":
                fleet.up(options["cpus"], options["disks"], out=self.stdout.write)
            elif options["action"] == "down":
                fleet.down(out=self.stdout.write)
            elif options["action"] == "status":
                hosts = fleet.running()
                for host in hosts:
                    self.stdout.write(f"{host.name:<6} {host.role:<4} {host.address:<12} {host.netns}")
                self.stdout.write(f"{len(hosts)} fleet hosts running; known_hosts {fleet.known_hosts()}")
            else:
                if not options["host"]:
                    raise CommandError(f"usage: fleet {options['action']} HOST")
                host = next((h for h in fleet.recorded() if h.name == options["host"]), None)
                if host is None:
                    raise CommandError(f"no fleet host {options['host']!r} (fleet status lists them)")
                (fleet.kill if options["action"] == "kill" else fleet.boot)(host)
        except LabError as exc:
            raise CommandError(str(exc)) from exc
