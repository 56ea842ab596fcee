"""Who is acting: the actor an audit event records when the service writing it is not told.

The services record events without taking a `by=` argument through every layer: who acts is the
code's surroundings, kept in a context variable (asgiref and Channels carry it across their thread
hops; a plain thread starts without it). Three kinds of surroundings set it:
- a web request (`AuditContextMiddleware`): its user, signed in by session or by API token, and
  its client's address. Kept as the request itself and read when an event is written, because
  Django REST framework signs a token's user in only inside the view;
- a management command (`AuditedCommand`): the operating system user who ran it (the monitor: itself);
- `acting_as(actor)` around anything else.
Nothing set — a Celery worker, a periodic task — is the system.
"""
from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.management.base import BaseCommand
from django.http import HttpRequest, HttpResponse

from audit.choices import ActorKind
from xenaoe_panel.login_limit import client_ip

NAME_MAX = 150  # a user name's length in Django's user model


@dataclass(frozen=True)
class Actor:
    kind: str  # ActorKind
    name: str  # a user name, an operating system user, "monitor", "system", "job #N"
    user: Any = None  # the user row, when a user of the panel acts
    ip: str | None = None

    @classmethod
    def of_user(cls, user: Any, *, via_token: bool = False, ip: str | None = None) -> Actor:
        return cls(ActorKind.TOKEN if via_token else ActorKind.USER, user.get_username(), user, ip or None)

    @classmethod
    def anonymous(cls, ip: str | None = None) -> Actor:
        return cls(ActorKind.ANONYMOUS, "", None, ip)

    @classmethod
    def command(cls) -> Actor:
        # Under sudo, the person who ran sudo rather than root.
        return cls(ActorKind.COMMAND, (os.environ.get("SUDO_USER") or getpass.getuser())[:NAME_MAX])

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        return cls(ActorKind.SYSTEM, name)


MONITOR = Actor(ActorKind.MONITOR, "monitor")

# An Actor, or the request being served (its user is read when an event is written).
_acting: ContextVar[Actor | HttpRequest | None] = ContextVar("xenaoe_audit_actor", default=None)


@contextmanager
def acting_as(actor: Actor) -> Iterator[None]:
    token = _acting.set(actor)
    try:
        yield
    finally:
        _acting.reset(token)


def request_ip(request: HttpRequest) -> str | None:
    ip = client_ip(request)
    return str(ip) if ip is not None else None


def actor_for(request: HttpRequest, user: Any = None) -> Actor:
    """Who acts in this request: `user` if given (a login names whom it signed in), else the
    request's user; signed in by token when Django REST framework's authentication said so
    (api/auth.py gives ActorKind.TOKEN as the request's `auth`)."""
    ip = request_ip(request)
    user = user if user is not None else getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return Actor.anonymous(ip)
    via_token = getattr(request, "auth", None) == ActorKind.TOKEN and user == getattr(request, "user", None)
    return Actor.of_user(user, via_token=via_token, ip=ip)


def current_actor(user: Any = None) -> Actor:
    """The actor of the code running now. `user`, when the service knows it, names the user who
    acts (the job's requester); the surroundings still say how (a request's address and token)."""
    acting = _acting.get()
    if isinstance(acting, HttpRequest):
        return actor_for(acting, user)
    if user is not None and user.is_authenticated:
        return Actor.of_user(user)
    return acting if acting is not None else Actor.system()


class AuditContextMiddleware:
    """Marks the code serving a request as acting for its user (settings.MIDDLEWARE, after the
    authentication middleware). Sync and async alike: under Daphne the view runs in a thread that
    asgiref gives a copy of this context."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._serve_async(request)
        token = _acting.set(request)
        try:
            return self.get_response(request)
        finally:
            _acting.reset(token)

    async def _serve_async(self, request: HttpRequest) -> HttpResponse:
        token = _acting.set(request)
        try:
            return await self.get_response(request)
        finally:
            _acting.reset(token)


class AuditedCommand(BaseCommand):
    """A management command: what it does is recorded as done by `actor`, by default whoever ran it."""

    actor: Actor | None = None

    def execute(self, *args: Any, **options: Any) -> Any:
        with acting_as(self.actor or Actor.command()):
            return super().execute(*args, **options)
