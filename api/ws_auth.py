"""Websockets for scripts: `Authorization: Token KEY` on the upgrade request signs the connection in
as the token's user, as the REST API does. Without the header the session (browsers) decides.
The token is never read from the query string, where proxies and logs would keep it."""
from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.contrib.auth.models import AnonymousUser

from api.auth import token_from_header
from api.tokens import TokenExpired, user_for_token


def _token_key(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return token_from_header(value)
    return None


@database_sync_to_async
def _user_for(key: str) -> Any:
    try:
        user = user_for_token(key)
    except TokenExpired:
        user = None
    return user or AnonymousUser()


class TokenAuthMiddleware(BaseMiddleware):
    """Inside AuthMiddlewareStack: a token header overrides the (absent) session user."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        key = _token_key(scope)
        if key is not None:
            scope = dict(scope, user=await _user_for(key), token_auth=True)
        return await super().__call__(scope, receive, send)
