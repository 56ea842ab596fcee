"""API tokens: only a hash of each is kept (api/tokens.py makes and checks them)."""
from __future__ import annotations

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    """A user's one API token. The token itself is shown once, when made; a stolen database (or
    backup) holds only its SHA-256, which signs nobody in."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_token")
    digest = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the token, hex.")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"API token of {self.user} (expires {self.expires_at:%Y-%m-%d})"
