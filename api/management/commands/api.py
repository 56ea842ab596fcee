"""`manage.py api token USER [--rotate]`: the user's API token (created if needed), for scripts."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "REST API administration: `api token USER [--rotate]` prints USER's token (docs/api.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        token = sub.add_parser("token", help="Print a user's API token, creating it if needed.")
        token.add_argument("username")
        token.add_argument("--rotate", action="store_true",
                           help="Replace the token: scripts using the old one are refused from now on.")

    def handle(self, *args: Any, verb: str, **options: Any) -> None:
        if verb == "token":
            self.stdout.write(token_for(options["username"], rotate=options["rotate"]))


def token_for(username: str, *, rotate: bool = False) -> str:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"no user named {username!r}")
    if not user.is_active:
        raise CommandError(f"{username} is deactivated: a token would be refused")
    with transaction.atomic():
        if rotate:
            Token.objects.filter(user=user).delete()
        token, _created = Token.objects.get_or_create(user=user)
    return token.key
