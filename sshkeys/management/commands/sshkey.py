"""`manage.py sshkey add USER FILE` / `sshkey list USER`: a user's SSH public keys (every VM the user
creates from an image lets them in)."""
from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from sshkeys.models import SshKey
from sshkeys.services import add_key


class Command(BaseCommand):
    help = "Add or list a user's SSH public keys."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add the key in FILE (one OpenSSH public key line)")
        add.add_argument("user")
        add.add_argument("file", type=Path)
        listing = sub.add_parser("list")
        listing.add_argument("user")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"no user named {options['user']!r}")
        if options["action"] == "list":
            for key in SshKey.objects.filter(user=user):
                self.stdout.write(f"{key.fingerprint} {key.name}")
            return
        try:
            key, created = add_key(user, options["file"].read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {options['file']}: {exc}") from exc
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"{'added' if created else 'already there'}: {key.fingerprint} for {user.username}")
