"""Every websocket, whatever its consumer (xenaoe_panel/routing.py), goes through here:

- a frame that is not JSON text is dropped before any consumer sees it (the consumers speak JSON
  and take nothing from the client; a bad frame must not end them with an exception). The one
  exception: binary frames on a console (BINARY_ROUTES), which carry keystrokes;
- a signed-in user's socket listens on the group `user.<id>`: when the user is moved to another
  tenant or deactivated (tenants.services, on commit), or loses a permission a socket depends on
  (the console), the socket is closed with CLOSE_ACCESS_CHANGED and its consumer ends, so that it
  streams nothing of the old tenant. The page reconnects and is checked again from scratch;
- a socket signed in by a session also listens on `session.<digest of the session key>`: logging
  out of that session closes it the same way (a token's sockets have no session to end).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from typing import Any

from channels.layers import get_channel_layer

from xenaoe_panel.broadcast import send_on_commit

CLOSE_ACCESS_CHANGED = 4403
ACCESS_CHANGED = "user.access_changed"
# Routes whose consumers take raw bytes from the client (vms/console_consumer.py).
BINARY_ROUTES = re.compile(r"/ws/vms/[^/]+/console/(serial|vnc)/\Z")


def user_streams_group(user_id: int) -> str:
    return f"user.{user_id}"


def session_streams_group(session_key: str) -> str:
    # Group names are visible to whoever reads Redis: never the session key itself.
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def end_session_streams(session_key: str, why: str) -> None:
    """Close every open socket signed in by this session once the current transaction commits."""
    send_on_commit([session_streams_group(session_key)], {"type": ACCESS_CHANGED, "why": why},
                   "the end of a session's websockets")


def end_user_streams(user_id: int, why: str) -> None:
    """Close every open socket of this user once the current transaction commits."""
    send_on_commit([user_streams_group(user_id)], {"type": ACCESS_CHANGED, "why": why},
                   f"the end of user {user_id}'s websockets")


def _is_json_text(message: dict[str, Any]) -> bool:
    text = message.get("text")
    if text is None:
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class StreamGuardMiddleware:
    """Inside the authentication middleware (it needs scope["user"]), around the URL router."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        closed = False
        binary = bool(BINARY_ROUTES.match(scope.get("path", "")))

        async def guarded_send(message: dict[str, Any]) -> None:
            # Once this side has closed the socket, whatever the consumer still sends is dropped.
            if not closed:
                await send(message)

        async def pump() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.receive" and not _is_json_text(message) and not (
                        binary and message.get("bytes") is not None):
                    continue
                await inbox.put(message)
                if message["type"] == "websocket.disconnect":
                    return

        async def listen(layer: Any, channel: str) -> None:
            nonlocal closed
            while (await layer.receive(channel)).get("type") != ACCESS_CHANGED:
                pass
            await send({"type": "websocket.close", "code": CLOSE_ACCESS_CHANGED})
            closed = True
            await inbox.put({"type": "websocket.disconnect", "code": CLOSE_ACCESS_CHANGED})

        tasks = [asyncio.ensure_future(pump())]
        user = scope.get("user")
        layer = get_channel_layer()
        group = channel = session_group = None
        if layer is not None and user is not None and user.is_authenticated:
            # Joined before the consumer reads the user's tenant: a change committed after that
            # read reaches this socket.
            group, channel = user_streams_group(user.pk), await layer.new_channel()
            await layer.group_add(group, channel)
            session = scope.get("session")
            session_key = getattr(session, "session_key", None) if not scope.get("token_auth") else None
            if session_key:
                session_group = session_streams_group(session_key)
                await layer.group_add(session_group, channel)
            tasks.append(asyncio.ensure_future(listen(layer, channel)))
        try:
            return await self.app(scope, inbox.get, guarded_send)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if group is not None:
                await layer.group_discard(group, channel)
            if session_group is not None:
                await layer.group_discard(session_group, channel)
