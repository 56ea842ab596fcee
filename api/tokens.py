"""Making and checking API tokens (`manage.py api token`, the REST API and websockets).

A token is 256 random bits (URL-safe base64); only its SHA-256 is stored. A hash of so much
randomness needs no salt or slow hash: nobody can guess a token whose hash they stole. Tokens
expire after XENAOE_API_TOKEN_DAYS (90 by default); making a new one replaces the old.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from api.models import ApiToken
from audit.choices import Action
from audit.services import record_for_user

MAX_DAYS = 3650


class TokenExpired(Exception):
    """The token was right but is past its expiry."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue_token(user: Any, *, days: int | None = None) -> str:
    """A new token for `user`, replacing any they had; the only time it is seen."""
    days = settings.API_TOKEN_DAYS if days is None else days
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"a token lasts 1 to {MAX_DAYS} days, not {days}")
    key = secrets.token_urlsafe(32)
    now = timezone.now()
    with transaction.atomic():
        replaced = ApiToken.objects.filter(user=user).delete()[0]
        token = ApiToken.objects.create(user=user, digest=digest(key), created_at=now,
                                        expires_at=now + datetime.timedelta(days=days))
        record_for_user(Action.TOKEN_ROTATED if replaced else Action.TOKEN_CREATED, user,
                        details={"expires_at": token.expires_at})
    return key


def current_token(user: Any) -> ApiToken | None:
    """The user's token if it has not expired."""
    return ApiToken.objects.filter(user=user, expires_at__gt=timezone.now()).first()


def user_for_token(key: str) -> Any:
    """The active user this token signs in, or None; raises TokenExpired for an expired one."""
    wanted = digest(key)
    token = ApiToken.objects.select_related("user").filter(digest=wanted).first()
    # The lookup is by hash already; the comparison is constant-time all the same.
    if token is None or not hmac.compare_digest(token.digest, wanted) or not token.user.is_active:
        return None
    if token.expires_at <= timezone.now():
        raise TokenExpired(f"token expired on {token.expires_at:%Y-%m-%d}; ask for a new one")
    return token.user
