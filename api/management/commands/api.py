"""`manage.py api token USER [--rotate] [--days N]`: a new API token for USER, shown this once."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser

from api.tokens import MAX_DAYS, current_token, issue_token
from audit.actors import AuditedCommand


class Command(AuditedCommand):
    help = "REST API administration: `api token USER [--rotate]` makes USER's token (docs/api.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        token = sub.add_parser("token", help="Make a user's API token and print it (the only time it is shown).")
        token.add_argument("username")
        token.add_argument("--rotate", action="store_true",
                           help="Replace the user's token: scripts using the old one are refused from now on.")
        token.add_argument("--days", type=int, default=None,
                           help=f"How long it lasts (1-{MAX_DAYS}; default XENAOE_API_TOKEN_DAYS).")

    def handle(self, *args: Any, verb: str, **options: Any) -> None:
        if verb == "token":
            self.stdout.write(token_for(options["username"], rotate=options["rotate"], days=options["days"]))


def token_for(username: str, *, rotate: bool = False, days: int | None = None) -> str:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"no user named {username!r}")
    if not user.is_active:
        raise CommandError(f"{username} is deactivated: a token would be refused")
    existing = current_token(user)
    if existing is not None and not rotate:
        raise CommandError(f"{username} already has a token (expires {existing.expires_at:%Y-%m-%d}); only its hash "
                           "is kept, so it cannot be shown again: --rotate makes a new one and ends the old")
    try:
        return issue_token(user, days=days)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
