"""`manage.py tenant create|list|show|adduser|quota|allow|delete`: tenants for operators and scripts.

    tenant create acme --name "Acme Ltd" --vms 10 --vcpus 16 --memory-mib 16384 --disk-mib 204800
    tenant adduser acme alice --email alice@example.com      # sets a password through the reset link
    tenant quota acme --memory-mib 32768
    tenant allow acme --actions start shutdown reboot --no-create
"""
from __future__ import annotations

import json
from argparse import ArgumentParser, BooleanOptionalAction
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from audit.actors import AuditedCommand
from tenants.models import TENANT_ACTIONS, Tenant
from tenants.services import add_user, create_tenant, delete_tenant, set_permissions, set_quotas, tenant_summary

QUOTA_OPTIONS = (("vms", "quota_vms"), ("vcpus", "quota_vcpus"), ("memory_mib", "quota_memory_mib"),
                 ("disk_mib", "quota_disk_mib"))


def _add_quota_options(parser: ArgumentParser) -> None:
    for option, _field in QUOTA_OPTIONS:
        parser.add_argument(f"--{option.replace('_', '-')}", type=int, default=None, metavar="N")


def _quotas(options: dict) -> dict[str, int]:
    return {field: options[option] for option, field in QUOTA_OPTIONS if options[option] is not None}


class Command(AuditedCommand):
    help = "Create tenants, add their users, set their quotas and what they may do."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="a new tenant")
        create.add_argument("slug")
        create.add_argument("--name", default="")
        create.add_argument("--actions", nargs="*", choices=list(TENANT_ACTIONS), default=None)
        create.add_argument("--create", action=BooleanOptionalAction, default=True, help="may create VMs")
        create.add_argument("--show-cpu-server", action="store_true")
        _add_quota_options(create)
        sub.add_parser("list", help="one line per tenant, with usage")
        show = sub.add_parser("show", help="a tenant in detail, as JSON")
        show.add_argument("slug")
        adduser = sub.add_parser("adduser", help="a new user of the tenant")
        adduser.add_argument("slug")
        adduser.add_argument("username")
        adduser.add_argument("--email", default="")
        adduser.add_argument("--password-file", default=None,
                             help="read the password from this file (never on the command line)")
        quota = sub.add_parser("quota", help="change quotas")
        quota.add_argument("slug")
        _add_quota_options(quota)
        allow = sub.add_parser("allow", help="what its users may do")
        allow.add_argument("slug")
        allow.add_argument("--actions", nargs="*", choices=list(TENANT_ACTIONS), default=None)
        allow.add_argument("--create", action=BooleanOptionalAction, default=None, help="may create VMs")
        allow.add_argument("--show-cpu-server", action=BooleanOptionalAction, default=None)
        delete = sub.add_parser("delete", help="remove a tenant without VMs (its users stay, without tenant)")
        delete.add_argument("slug")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"do_{options['action']}")(options)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {', '.join(v)}" for k, v in exc.message_dict.items())) from exc

    def _tenant(self, slug: str) -> Tenant:
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"no tenant named {slug!r}")
        return tenant

    def do_create(self, options: dict) -> None:
        tenant = create_tenant(options["slug"], options["name"], may_create_vms=options["create"],
                               allowed_actions=options["actions"], shows_cpu_server=options["show_cpu_server"],
                               **_quotas(options))
        self.stdout.write(f"created tenant {tenant.slug}")

    def do_list(self, options: dict) -> None:
        for tenant in Tenant.objects.all():
            summary = tenant_summary(tenant)
            use = " ".join(f"{k}={q['used']}/{q['limit']}" for k, q in summary["quotas"].items())
            self.stdout.write(f"{tenant.slug:20} {len(summary['users']):3} users  {use}")

    def do_show(self, options: dict) -> None:
        self.stdout.write(json.dumps(tenant_summary(self._tenant(options["slug"])), indent=2))

    def do_adduser(self, options: dict) -> None:
        tenant = self._tenant(options["slug"])
        password = None
        if options["password_file"]:
            try:
                with open(options["password_file"]) as handle:
                    password = handle.read().strip()
            except OSError as exc:
                raise CommandError(f"cannot read the password file: {exc}") from exc
        user = add_user(tenant, options["username"], email=options["email"], password=password)
        how = "" if password else " (no password yet: use the password reset link, or `manage.py changepassword`)"
        self.stdout.write(f"added {user.username} to {tenant.slug}{how}")

    def do_quota(self, options: dict) -> None:
        quotas = _quotas(options)
        if not quotas:
            raise CommandError("give at least one of --vms, --vcpus, --memory-mib, --disk-mib")
        tenant = set_quotas(self._tenant(options["slug"]), **quotas)
        self.stdout.write(json.dumps(tenant_summary(tenant)["quotas"], indent=2))

    def do_allow(self, options: dict) -> None:
        tenant = set_permissions(self._tenant(options["slug"]), may_create_vms=options["create"],
                                 allowed_actions=options["actions"], shows_cpu_server=options["show_cpu_server"])
        self.stdout.write(f"{tenant.slug}: create VMs {'yes' if tenant.may_create_vms else 'no'}; actions "
                          f"{', '.join(tenant.allowed_actions) or 'none'}; sees CPU servers "
                          f"{'yes' if tenant.shows_cpu_server else 'no'}")

    def do_delete(self, options: dict) -> None:
        tenant = self._tenant(options["slug"])
        users = list(get_user_model().objects.filter(membership__tenant=tenant).values_list("username", flat=True))
        delete_tenant(tenant)
        self.stdout.write(f"deleted tenant {tenant.slug}; its users {', '.join(users) or '(none)'} have no tenant now")
