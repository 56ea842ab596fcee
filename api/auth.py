"""`Authorization: Token KEY` for the REST API, checked against the stored hashes (api/tokens.py)."""
from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from api.tokens import TokenExpired, user_for_token
from audit.choices import ActorKind

KEYWORD = "Token"


def token_from_header(value: bytes) -> str | None:
    """The key of a `Token KEY` header; None for another scheme or none."""
    scheme, _, key = value.decode("latin-1").partition(" ")
    return key.strip() if scheme.lower() == KEYWORD.lower() else None


class ApiTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, str] | None:
        key = token_from_header(get_authorization_header(request))
        if key is None:
            return None  # the session may sign the request in
        if not key or " " in key:
            raise AuthenticationFailed("invalid token header")
        try:
            user = user_for_token(key)
        except TokenExpired as exc:
            raise AuthenticationFailed(str(exc)) from exc
        if user is None:
            raise AuthenticationFailed("invalid token")
        return user, ActorKind.TOKEN  # the request's `auth`: signed in by token, for the audit log

    def authenticate_header(self, request: Request) -> str:
        return KEYWORD


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "api.auth.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Token KEY`; a key from `manage.py api token USER` (docs/api.md)."}
