"""`manage.py notify list|add|remove|test|rotate-secret|deliveries`: notification targets from the shell.

    notify add op oncall --email oncall@example.org --min-severity critical
    notify add alice chat --webhook https://hooks.example.org/xenaoe --kinds job.failed mirror.degraded
    notify test 3            # a test event to target #3 alone; `notify deliveries 3` says how it went

The verbs are notifications/services.py's, as for the pages and the API: a tenant's user's target is
refused kinds beyond their VMs', every change is in the audit log (as done by whoever ran the command),
and a webhook's signing secret is printed once, when it is made or rotated.
"""
from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from audit.actors import AuditedCommand
from notifications import services
from notifications.choices import SEVERITY_NAMES, SUBSCRIBABLE_KINDS, Severity, TargetKind
from notifications.models import Target

DELIVERIES_SHOWN = 20


def _refusal(exc: ValidationError) -> CommandError:
    if hasattr(exc, "error_dict"):
        return CommandError("; ".join(f"{field}: {', '.join(messages)}" if field != "__all__" else ", ".join(messages)
                                      for field, messages in exc.message_dict.items()))
    return CommandError("; ".join(exc.messages))


class Command(AuditedCommand):
    help = "List, add, remove and test notification targets (docs/operations.md, Notifications)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        listing = sub.add_parser("list", help="one line per target: id, owner, kind, name, address, filter")
        listing.add_argument("--user", help="only this user's targets")
        add = sub.add_parser("add", help="a new target of USER's (a webhook's secret is printed this once)")
        add.add_argument("user")
        add.add_argument("name")
        where = add.add_mutually_exclusive_group(required=True)
        where.add_argument("--email", help="send by email to this address")
        where.add_argument("--webhook", metavar="URL", help="POST signed JSON to this http(s) URL")
        add.add_argument("--kinds", nargs="+", default=[], choices=[kind.value for kind in SUBSCRIBABLE_KINDS],
                         help="only these event kinds (default: every kind USER may hear of)")
        add.add_argument("--min-severity", choices=SEVERITY_NAMES, default=Severity.WARNING.label)
        add.add_argument("--disabled", action="store_true", help="made, but sent nothing until enabled")
        for verb, text in (("remove", "remove a target and its delivery log"),
                           ("test", "send a test event to this target alone, whatever its filter"),
                           ("rotate-secret", "a new signing secret for a webhook, printed once; the old one stops"),
                           ("deliveries", f"the target's last {DELIVERIES_SHOWN} deliveries, newest first")):
            sub.add_parser(verb, help=text).add_argument("id", type=int, help="the target's number (`notify list`)")

    def handle(self, *args: Any, verb: str, **options: Any) -> None:
        try:
            getattr(self, f"do_{verb.replace('-', '_')}")(options)
        except ValidationError as exc:
            raise _refusal(exc) from exc

    def _target(self, pk: int) -> Target:
        target = Target.objects.select_related("owner").filter(pk=pk).first()
        if target is None:
            raise CommandError(f"no notification target #{pk}")
        return target

    def do_list(self, options: dict) -> None:
        targets = Target.objects.select_related("owner").order_by("id")
        if options["user"]:
            targets = targets.filter(owner__username=options["user"])
        for t in targets:
            kinds = ",".join(t.kinds) or "all"
            self.stdout.write(f"{t.pk:5}  {t.owner.username:16} {t.kind:8} {t.name:24} {t.address}  kinds={kinds} "
                              f"severity>={Severity(t.min_severity).label}{'' if t.enabled else ' (disabled)'}")

    def do_add(self, options: dict) -> None:
        owner = get_user_model().objects.filter(username=options["user"]).first()
        if owner is None:
            raise CommandError(f"no user named {options['user']!r}")
        kind = TargetKind.EMAIL if options["email"] is not None else TargetKind.WEBHOOK
        target = Target(owner=owner, name=options["name"], kind=kind, email=options["email"] or "",
                        url=options["webhook"] or "", kinds=list(dict.fromkeys(options["kinds"])),
                        min_severity=Severity[options["min_severity"].upper()], enabled=not options["disabled"])
        secret = services.save_target(target)
        self.stdout.write(f"added {kind} target #{target.pk} {target.name} of {owner.username}: {target.address}")
        if secret is not None:
            self.stdout.write(f"signing secret (shown this once): {secret}")

    def do_remove(self, options: dict) -> None:
        target = self._target(options["id"])
        services.delete_target(target)
        self.stdout.write(f"removed notification target #{options['id']} {target.name} of {target.owner.username}")

    def do_test(self, options: dict) -> None:
        target = self._target(options["id"])
        delivery = services.test_target(target)
        self.stdout.write(f"test notification queued for #{target.pk} {target.name} (delivery #{delivery.pk}): "
                          f"`notify deliveries {target.pk}` says how it went")

    def do_rotate_secret(self, options: dict) -> None:
        target = self._target(options["id"])
        secret = services.rotate_secret(target)
        self.stdout.write(f"new signing secret of #{target.pk} {target.name} (shown this once; the old one is "
                          f"refused from now on): {secret}")

    def do_deliveries(self, options: dict) -> None:
        target = self._target(options["id"])
        for d in target.deliveries.select_related("event").order_by("-created_at", "-id")[:DELIVERIES_SHOWN]:
            code = f" HTTP {d.response_code}" if d.response_code else ""
            error = f"  {d.last_error}" if d.last_error else ""
            self.stdout.write(f"{d.created_at:%Y-%m-%d %H:%M:%S} #{d.pk} {d.event.kind} {d.state} "
                              f"attempts={d.attempts}{code}  {d.event.subject}{error}")
