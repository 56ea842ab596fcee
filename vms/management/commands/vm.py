"""`manage.py vm create|delete|list|show|console|group|set-groups`: the VM services for operators and scripts."""
from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from audit.actors import AuditedCommand
from jobs.follow import follow
from jobs.models import Job
from jobs.services import WorkerUnavailable, check_workers
from vms.affinity import create_group, delete_group, group_named, set_vm_groups
from vms.job_params import VmCreateParams, VmMigrateParams
from vms.migration import migrate_vm
from vms.models import AntiAffinityGroup, VirtualMachine
from vms.passwords import generate_password
from vms.serializers import vm_summary
from vms.services import VmRequest, create_vm, delete_vm, eject_cd, vm_action


class Command(AuditedCommand):
    help = "Create, delete, list and show virtual machines."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a VM with a mirrored disk and start it")
        create.add_argument("name")
        create.add_argument("--vcpus", type=int, required=True)
        create.add_argument("--memory-mib", type=int, required=True)
        create.add_argument("--disk-mib", type=int, required=True)
        create.add_argument("--on", metavar="HOST", help="CPU server (default: the panel chooses)")
        create.add_argument("--kernel", default="", metavar="PATH",
                            help="direct kernel boot from PATH on the CPU servers")
        create.add_argument("--tenant", default=None, metavar="SLUG", help="the tenant that owns it")
        create.add_argument("--image", default="", help="the image (default: the site's default; 'none': empty disk)")
        create.add_argument("--iso", default="", help="an installer ISO in its CD drive, booted before its empty "
                                                       "disk (install on the console, then `vm eject NAME`)")
        create.add_argument("--network", action="append", default=[], metavar="NAME",
                            help="a NIC on this network (repeat for more; default: the default network)")
        create.add_argument("--ssh-key-file", action="append", default=[], type=Path, metavar="FILE",
                            help="public keys for the image's login user (repeat for more files)")
        create.add_argument("--password", action="store_true",
                            help="generate a password for the login user and print it (once)")
        create.add_argument("--group", action="append", default=[], metavar="NAME",
                            help="an anti-affinity group of its owner it joins (repeat for more)")
        create.add_argument("--wait", action="store_true", help="follow the job until it ends")
        delete = sub.add_parser("delete", help="remove the domain, both exports and both volumes")
        delete.add_argument("name")
        delete.add_argument("--wait", action="store_true")
        for action, text in (("start", "start a stopped VM"),
                             ("stop", "ACPI shutdown, forced off after --timeout seconds"),
                             ("reboot", "ACPI shutdown (forced off after --timeout), then start"),
                             ("force-off", "cut the power: no guest shutdown")):
            parser_ = sub.add_parser(action, help=text)
            parser_.add_argument("name")
            if action in ("stop", "reboot"):
                parser_.add_argument("--timeout", type=int, default=None, metavar="SECONDS",
                                     help="how long the guest gets before it is forced off")
            parser_.add_argument("--wait", action="store_true")
        eject = sub.add_parser("eject", help="take the ISO out of the CD drive: the VM boots from its disk")
        eject.add_argument("name")
        eject.add_argument("--wait", action="store_true")
        migrate = sub.add_parser("migrate", help="live-migrate a running VM to another CPU server")
        migrate.add_argument("name")
        migrate.add_argument("--to", metavar="HOST", help="target CPU server (default: the panel chooses)")
        migrate.add_argument("--max-mib-per-s", type=int, default=None, help="bandwidth cap")
        migrate.add_argument("--wait", action="store_true")
        sub.add_parser("list", help="one line per VM")
        groups = sub.add_parser("group", help="anti-affinity groups: VMs kept on different CPU servers")
        group_sub = groups.add_subparsers(dest="group_action", required=True)
        group_sub.add_parser("list", help="every group, its members and where they run")
        for verb, text in (("create", "a new, empty group"), ("delete", "forget a group (its VMs stay put)")):
            one = group_sub.add_parser(verb, help=text)
            one.add_argument("group")
            one.add_argument("--tenant", default=None, metavar="SLUG", help="whose (default: the operators')")
            if verb == "create":
                one.add_argument("--description", default="")
        set_groups = sub.add_parser("set-groups", help="the anti-affinity groups a VM is in (nothing moves)")
        set_groups.add_argument("name")
        set_groups.add_argument("groups", nargs="*", metavar="GROUP", help="its owner's groups (none: no group)")
        show = sub.add_parser("show", help="one VM in detail")
        show.add_argument("name")
        show.add_argument("--json", action="store_true")
        console = sub.add_parser("console", help="attach this terminal to the VM's serial console (exit with Ctrl-])")
        console.add_argument("name")
        console.add_argument("--force", action="store_true", help="take the console over from another session")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"do_{options['action'].replace('-', '_')}")(options)

    def _submit(self, options: dict, submit: Any, announce: str = "") -> None:
        if options["wait"]:
            try:
                check_workers()
            except WorkerUnavailable as exc:
                raise CommandError(str(exc)) from exc
        try:
            job = submit()
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"job #{job.pk} {job.kind} {job.target_name} queued")
        params = VmCreateParams if job.kind == "vm.create" else VmMigrateParams if job.kind == "vm.migrate" else None
        for broken in params.of(job).anti_affinity_broken if params else ():
            self.stderr.write(f"warning: {broken}")
        if announce:
            self.stdout.write(announce)
        if options["wait"]:
            self._wait(job)

    def _wait(self, job: Job) -> None:
        job = follow(job.pk, self.stdout.write)
        if job.state != "succeeded":
            raise CommandError(f"job #{job.pk} {job.state}: {job.message}")

    def do_create(self, options: dict) -> None:
        keys = []
        for path in options["ssh_key_file"]:
            try:
                keys.append(path.read_text())
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"cannot read {path}: {exc}") from exc
        password = generate_password() if options["password"] else ""
        request = VmRequest(
            name=options["name"], vcpus=options["vcpus"], memory_mib=options["memory_mib"],
            disk_mib=options["disk_mib"], cpu_server=options["on"], kernel_path=options["kernel"],
            tenant=options["tenant"], image=options["image"], iso=options["iso"], networks=tuple(options["network"]),
            ssh_keys=tuple(keys), password=password, anti_affinity_groups=tuple(options["group"]),
        )
        self._submit(options, lambda: create_vm(request), announce=(
            f"password of the login user (shown once): {password}" if password else ""))

    def do_eject(self, options: dict) -> None:
        self._submit(options, lambda: eject_cd(options["name"]))

    def do_delete(self, options: dict) -> None:
        self._submit(options, lambda: delete_vm(options["name"]))

    def _lifecycle(self, options: dict, action: str) -> None:
        self._submit(options, lambda: vm_action(options["name"], action, shutdown_timeout_s=options.get("timeout")))

    def do_start(self, options: dict) -> None:
        self._lifecycle(options, "start")

    def do_stop(self, options: dict) -> None:
        self._lifecycle(options, "shutdown")

    def do_reboot(self, options: dict) -> None:
        self._lifecycle(options, "reboot")

    def do_force_off(self, options: dict) -> None:
        self._lifecycle(options, "force_off")

    def do_migrate(self, options: dict) -> None:
        self._submit(
            options, lambda: migrate_vm(options["name"], options["to"], max_mib_per_s=options["max_mib_per_s"])
        )

    def do_list(self, options: dict) -> None:
        for vm in VirtualMachine.objects.select_related("cpu_server"):
            host = vm.cpu_server.name if vm.cpu_server else "-"
            self.stdout.write(
                f"{vm.name:<24} {vm.state:<9} {host:<12} {vm.vcpus} vCPU {vm.memory_mib} MiB {vm.disk_mib} MiB disk"
            )

    def do_group(self, options: dict) -> None:
        try:
            if options["group_action"] == "list":
                for group in AntiAffinityGroup.objects.select_related("tenant").prefetch_related("members__cpu_server"):
                    members = ", ".join(f"{vm.name}@{vm.cpu_server.name if vm.cpu_server else '-'}"
                                        for vm in sorted(group.members.all(), key=lambda vm: vm.name))
                    self.stdout.write(f"{group.label:<32} {members or '(no members)'}")
            elif options["group_action"] == "create":
                group = create_group(options["group"], tenant=options["tenant"], description=options["description"])
                self.stdout.write(f"anti-affinity group {group.label} created")
            else:
                group = group_named(options["group"], options["tenant"])
                delete_group(group)
                self.stdout.write(f"anti-affinity group {group.label} deleted")
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc

    def do_set_groups(self, options: dict) -> None:
        try:
            shared = set_vm_groups(options["name"], options["groups"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"{options['name']}: anti-affinity groups {', '.join(options['groups']) or 'none'}")
        for broken in shared:
            self.stderr.write(f"warning: anti-affinity group {broken.group}: {broken.together()} until one of them "
                              "moves (`vm migrate` without --to puts it apart)")

    def do_show(self, options: dict) -> None:
        vm = VirtualMachine.objects.select_related("cpu_server", "image").filter(name=options["name"]).first()
        if vm is None:
            raise CommandError(f"no VM named {options['name']!r}")
        summary = vm_summary(vm)
        if options["json"]:
            self.stdout.write(json.dumps(summary))
            return
        for key, value in summary.items():
            if key not in ("legs", "nics", "anti_affinity_groups"):
                self.stdout.write(f"{key:<12} {value}")
        self.stdout.write(f"{'groups':<12} {', '.join(summary['anti_affinity_groups']) or '-'}")
        for leg in summary["legs"]:
            self.stdout.write(f"leg          e{leg['shelf']}.{leg['slot']} on {leg['disk_server']} ({leg['state']})")
        for index, nic in enumerate(summary["nics"]):
            self.stdout.write(f"eth{index:<9} {nic['mac']} on {nic['network']}, {nic['ip'] or 'DHCP'}")

    def do_console(self, options: dict) -> None:
        from vms.console import BUSY, GONE, TAKEN_OVER
        from vms.console_cli import attach

        vm = VirtualMachine.objects.filter(name=options["name"]).first()
        if vm is None:
            raise CommandError(f"no VM named {options['name']!r}")
        reason = attach(vm, force=options["force"])
        if reason == BUSY:
            raise CommandError(f"{reason} (--force takes it over)")
        if reason in (TAKEN_OVER, GONE):
            raise CommandError(reason)
