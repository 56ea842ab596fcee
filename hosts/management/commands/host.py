"""`manage.py host list|show|maintenance`: hosts for operators and scripts.

`host maintenance HOST on` moves the CPU server's running guests away (the host.evacuate job;
docs/maintenance.md); `off` makes it take guests again (the host.return job). `--wait` follows either.
"""
from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from audit.actors import AuditedCommand
from ha.maintenance import active_evacuation, enter_maintenance, leave_maintenance
from hosts.models import CpuServer, DiskServer
from jobs.follow import follow
from jobs.services import WorkerUnavailable, check_workers
from vms.placement import server_load, server_loads


def host_summary(host: CpuServer | DiskServer) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "name": host.name,
        "role": "cpu" if isinstance(host, CpuServer) else "disk",
        "state": host.state,
        "state_changed_at": host.state_changed_at.isoformat() if host.state_changed_at else None,
        "missed_checks": host.missed_checks,
        "last_seen_at": host.last_seen_at.isoformat() if host.last_seen_at else None,
        "last_check_error": host.last_check_error,
        "address": host.address,
    }
    if isinstance(host, CpuServer):
        evacuation = active_evacuation(host)
        summary |= {
            "memory_mib": host.memory_mib,
            "free_memory_mib": server_load(host).free_mib,
            # Domains the panel did not make, as last seen (hosts/foreign.py): counted as used.
            "foreign_memory_mib": host.foreign_memory_mib,
            "foreign_seen_at": host.foreign_seen_at.isoformat() if host.foreign_seen_at else None,
            "foreign_domains": host.foreign_domains,
            "storage_fenced_at": host.storage_fenced_at.isoformat() if host.storage_fenced_at else None,
            "evacuation_job": evacuation.pk if evacuation else None,
            "guests": [{"name": name, "state": state, "memory_mib": memory}
                       for name, state, memory in host.vms.order_by("name").values_list("name", "state", "memory_mib")],
        }
    else:
        summary |= {"capacity_mib": host.capacity_mib, "used_mib": host.used_mib, "exports": host.exports.count()}
    return summary


class Command(AuditedCommand):
    help = "List and show hosts; put a CPU server into maintenance (its guests live-migrate away) and back."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="one line per host")
        show = sub.add_parser("show", help="one host: state, missed checks, guests")
        show.add_argument("name")
        show.add_argument("--json", action="store_true")
        maintenance = sub.add_parser("maintenance", help="on: evacuate the CPU server's guests; off: take guests again")
        maintenance.add_argument("name")
        maintenance.add_argument("switch", choices=["on", "off"])
        maintenance.add_argument("--max-mib-per-s", type=int, default=None,
                                 help="cap each migration's bandwidth (default: XENAOE_EVACUATE_MAX_MIB_PER_S)")
        maintenance.add_argument("--wait", action="store_true", help="follow the job until it ends")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"do_{options['action']}")(options)

    def do_list(self, options: dict) -> None:
        loads = server_loads()
        for host in [*CpuServer.objects.all(), *DiskServer.objects.all()]:
            role = "cpu" if isinstance(host, CpuServer) else "disk"
            detail = (f"{loads[host.pk].free_mib} of {host.memory_mib} MiB free, {host.vms.count()} guests"
                      if isinstance(host, CpuServer) else f"{host.used_mib} of {host.capacity_mib} MiB used")
            self.stdout.write(f"{host.name:<16} {role:<5} {host.state:<12} {detail}")

    def do_show(self, options: dict) -> None:
        host = CpuServer.objects.filter(name=options["name"]).first() or DiskServer.objects.filter(
            name=options["name"]).first()
        if host is None:
            raise CommandError(f"no host named {options['name']!r}")
        summary = host_summary(host)
        if options["json"]:
            self.stdout.write(json.dumps(summary))
            return
        for key, value in summary.items():
            if key not in ("guests", "foreign_domains"):
                self.stdout.write(f"{key:<17} {'-' if value in (None, '') else value}")
        for guest in summary.get("guests", []):
            self.stdout.write(f"guest             {guest['name']} ({guest['state']}, {guest['memory_mib']} MiB)")
        for domain in summary.get("foreign_domains", []):
            self.stdout.write(f"foreign domain    {domain['name']} ({domain['state']}, {domain['memory_mib']} MiB)")

    def do_maintenance(self, options: dict) -> None:
        host = CpuServer.objects.filter(name=options["name"]).first()
        if host is None:
            raise CommandError(f"no CPU server named {options['name']!r}")
        try:
            if options["wait"]:
                check_workers()
            if options["switch"] == "off":
                job = leave_maintenance(host)
                self.stdout.write(f"job #{job.pk} {job.kind} {job.target_name} returns {host.name} to service")
            else:
                job = enter_maintenance(host, max_mib_per_s=options["max_mib_per_s"])
                self.stdout.write(f"{host.name} is in maintenance; job #{job.pk} {job.kind} {job.target_name} "
                                  f"moves its guests away")
        except WorkerUnavailable as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        if options["wait"]:
            job = follow(job.pk, self.stdout.write)
            if job.state != "succeeded":
                raise CommandError(f"job #{job.pk} {job.state}: {job.message}")
