"""Events from Django's auth: logins, failed ones and the locks they cause, logouts, and changes to a
user's rights and password wherever they are made (the services, the admin site,
`manage.py ensure_operator`, `createsuperuser`, the password reset link). Connected in
audit/apps.py."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.http import HttpRequest

from audit.actors import Actor, actor_for, request_ip
from audit.choices import Action
from audit.services import TARGET_MAX, change, record, record_for_user, tenant_id_of
from xenaoe_panel.login_limit import Lockout

OPERATOR_FIELDS = ("is_staff", "is_superuser")
WATCHED = (*OPERATOR_FIELDS, "is_active")


def logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    details = {}
    if request is not None:  # Channels' own login() sends none
        match = getattr(request, "resolver_match", None)
        details["page"] = "admin" if match is not None and match.app_name == "admin" else "panel"
    record_for_user(Action.LOGIN, user, details=details, actor=_actor(request, user))


def logged_out(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if user is not None:
        record_for_user(Action.LOGOUT, user, actor=_actor(request, user))


def _actor(request: HttpRequest | None, user: Any) -> Actor:
    return actor_for(request, user) if request is not None else Actor.of_user(user)


def login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None,
                 **kwargs: Any) -> None:
    """A wrong password (or an inactive account): the name tried, never the password (Django has
    already masked it in `credentials`), and where from."""
    _failure(Action.LOGIN_FAILED, str(credentials.get("username") or ""), request, {})


def locked_out(username: str, request: HttpRequest, lockout: Lockout) -> None:
    """A failure that reached a limit (xenaoe_panel/login_limit.py). Only the lock is recorded, not
    each refusal while it holds: a guesser would otherwise write a row per request."""
    _failure(Action.LOGIN_LOCKED, username, request, {"scope": lockout.scope, "for_s": lockout.retry_after_s})


def _failure(action: str, username: str, request: HttpRequest | None, details: dict[str, Any]) -> None:
    username = username[:TARGET_MAX]
    user = get_user_model()._default_manager.filter(username=username).first() if username else None
    ip = request_ip(request) if request is not None else None
    # The tenant of the account tried sees the attempt; a name that is nobody's, operators only.
    record(action, "user", username, tenant_id=tenant_id_of(user), actor=Actor.anonymous(ip),
           details={"user_exists": user is not None, **details})


def user_saving(sender: Any, instance: Any, raw: bool = False, update_fields: Any = None, **kwargs: Any) -> None:
    """Before a user is saved: what their rights were (the last login's save is left alone)."""
    if raw or instance._state.adding or (update_fields is not None and not set(update_fields) & set(WATCHED)):
        return
    instance._audit_before = sender._base_manager.filter(pk=instance.pk).values(*WATCHED).first()


def user_saved(sender: Any, instance: Any, created: bool, raw: bool = False, **kwargs: Any) -> None:
    if raw:
        return
    before = instance.__dict__.pop("_audit_before", None)
    if created:
        before = {"is_staff": False, "is_superuser": False, "is_active": instance.is_active}
    if before is not None:
        rights = {f: change(before[f], getattr(instance, f)) for f in OPERATOR_FIELDS
                  if before[f] != getattr(instance, f)}
        if rights:
            record_for_user(Action.USER_OPERATOR, instance, details=rights)
        if before["is_active"] != instance.is_active:
            record_for_user(Action.USER_ACTIVATED if instance.is_active else Action.USER_DEACTIVATED, instance)
    # set_password() keeps the new password in _password until the save; a hash upgraded at a login
    # (check_password) does not, and is no change of password.
    if not created and instance._password is not None:
        record_for_user(Action.USER_PASSWORD, instance)
