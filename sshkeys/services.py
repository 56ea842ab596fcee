"""Adding a user's SSH key: parsed, never taken on trust; the same key twice is one key."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from sshkeys.models import SshKey
from sshkeys.validation import parse_key


def add_key(user: AbstractBaseUser, text: str) -> tuple[SshKey, bool]:
    """The user's key for `text` (ValidationError if it is not one), and whether it is new."""
    parsed = parse_key(text)
    return SshKey.objects.get_or_create(user=user, fingerprint=parsed.fingerprint,
                                        defaults={"key": parsed.line, "name": parsed.comment[:100]})
