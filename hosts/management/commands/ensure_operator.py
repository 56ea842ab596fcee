"""Create (or reset) an operator login, its password read from a file (never from argv)."""
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from audit.actors import AuditedCommand


class Command(AuditedCommand):
    help = "Create or update an operator (staff, superuser) account."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--password-file", type=Path, required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            password = options["password_file"].read_text().strip()
        except OSError as exc:
            raise CommandError(f"cannot read the password file: {exc}") from exc
        if len(password) < 8:
            raise CommandError("the password must have at least 8 characters")
        user, created = get_user_model().objects.get_or_create(username=options["username"])
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"operator {user.username} {'created' if created else 'updated'}")
