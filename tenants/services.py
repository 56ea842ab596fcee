"""Verbs on tenants, their users and quotas: one place for the CLI, the API and the admin's forms.

Each validates everything first and raises ValidationError with nothing changed.
"""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from audit.choices import Action
from audit.services import change, record
from tenants.models import TENANT_ACTIONS, Membership, Tenant, tenant_slug_validator
from tenants.quotas import RESOURCES, usage
from xenaoe_panel.ws_guard import end_user_streams

QUOTA_FIELDS = tuple(f"quota_{r.field}" for r in RESOURCES)
PERMISSION_FIELDS = ("may_create_vms", "allowed_actions", "shows_cpu_server")
# Upper bounds that catch a slip of the keyboard (an extra zero or three), not policy.
QUOTA_MAX = {"quota_vms": 100_000, "quota_vcpus": 1_000_000, "quota_memory_mib": 1 << 31,
             "quota_disk_mib": 1 << 40}


def check_actions(actions: Any) -> list[str]:
    if not isinstance(actions, list | tuple) or not all(isinstance(a, str) for a in actions):
        raise ValidationError({"allowed_actions": "a list of action names"})
    unknown = sorted(set(actions) - set(TENANT_ACTIONS))
    if unknown:
        raise ValidationError({"allowed_actions": f"unknown action(s) {', '.join(unknown)}; "
                                                  f"choose from {', '.join(TENANT_ACTIONS)}"})
    return [a for a in TENANT_ACTIONS if a in actions]  # a stable order


def check_quotas(quotas: dict[str, Any]) -> dict[str, int]:
    errors, clean = {}, {}
    for field, value in quotas.items():
        if field not in QUOTA_FIELDS:
            errors[field] = f"unknown quota; one of {', '.join(QUOTA_FIELDS)}"
        elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= QUOTA_MAX[field]:
            errors[field] = f"a whole number from 0 to {QUOTA_MAX[field]}, not {value!r}"
        else:
            clean[field] = value
    if errors:
        raise ValidationError(errors)
    return clean


def create_tenant(slug: str, name: str = "", *, may_create_vms: bool = True, allowed_actions: list[str] | None = None,
                  shows_cpu_server: bool = False, **quotas: int) -> Tenant:
    try:
        tenant_slug_validator(slug)
    except ValidationError as exc:
        raise ValidationError({"slug": exc.messages[0]}) from exc
    fields: dict[str, Any] = {"may_create_vms": bool(may_create_vms), "shows_cpu_server": bool(shows_cpu_server)}
    if allowed_actions is not None:
        fields["allowed_actions"] = check_actions(allowed_actions)
    fields |= check_quotas(quotas)
    try:
        with transaction.atomic():
            tenant = Tenant.objects.create(slug=slug, name=name or slug, **fields)
            record(Action.TENANT_CREATED, "tenant", slug, tenant_id=tenant.pk, details=settings_of(tenant))
            return tenant
    except IntegrityError as exc:
        raise ValidationError({"slug": f"a tenant named {slug!r} already exists"}) from exc


def set_quotas(tenant: Tenant, **quotas: int) -> Tenant:
    """Change quotas. Lowering one below what is in use is allowed (nothing is taken away) and
    blocks new VMs until usage is under it again."""
    clean = check_quotas(quotas)
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        before = settings_of(locked)
        for field, value in clean.items():
            setattr(locked, field, value)
        locked.save(update_fields=list(clean) or None)
        record_changes(before, locked)
    return locked


def set_permissions(tenant: Tenant, *, may_create_vms: bool | None = None, allowed_actions: list[str] | None = None,
                    shows_cpu_server: bool | None = None) -> Tenant:
    changes: dict[str, Any] = {}
    if may_create_vms is not None:
        changes["may_create_vms"] = bool(may_create_vms)
    if shows_cpu_server is not None:
        changes["shows_cpu_server"] = bool(shows_cpu_server)
    if allowed_actions is not None:
        changes["allowed_actions"] = check_actions(allowed_actions)
    if changes:
        with transaction.atomic():
            before = settings_of(Tenant.objects.select_for_update().get(pk=tenant.pk))
            Tenant.objects.filter(pk=tenant.pk).update(**changes)
            record_changes(before, Tenant.objects.get(pk=tenant.pk))
            if tenant.allows("console") and "console" not in changes.get("allowed_actions", ["console"]):
                # Open consoles end (with the users' other sockets, which reconnect and are let in again).
                for user_id in Membership.objects.filter(tenant=tenant).values_list("user_id", flat=True):
                    end_user_streams(user_id, "console no longer allowed")
        tenant.refresh_from_db()
    return tenant


def add_user(tenant: Tenant, username: str, *, email: str = "", password: str | None = None):
    """A new user of this tenant (not staff). Without a password the user sets one through the
    password reset flow."""
    user_model = get_user_model()
    errors = {}
    if not username or len(username) > 150:
        errors["username"] = "a user name of 1 to 150 characters"
    elif user_model.objects.filter(username=username).exists():
        errors["username"] = f"a user named {username!r} already exists"
    if password is not None:
        try:
            validate_password(password, user_model(username=username, email=email))
        except ValidationError as exc:
            errors["password"] = " ".join(exc.messages)
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        user = user_model.objects.create_user(username=username, email=email, password=password)
        Membership.objects.create(user=user, tenant=tenant)
        record(Action.USER_CREATED, "user", username, tenant_id=tenant.pk)
    return user


def move_user(user, tenant: Tenant | None) -> None:
    """Put a user in a tenant, or take them out (None). Operators belong to none. Their open
    websockets end (on commit): they streamed the old tenant's events."""
    if user.is_staff and tenant is not None:
        raise ValidationError({"tenant": f"{user.username} is an operator: operators belong to no tenant"})
    with transaction.atomic():
        before = Membership.objects.filter(user=user).values_list("tenant_id", flat=True).first()
        if tenant is None:
            Membership.objects.filter(user=user).delete()
        else:
            Membership.objects.update_or_create(user=user, defaults={"tenant": tenant})
        if before != (tenant.pk if tenant else None):
            record_membership(user, left=before, joined=tenant.pk if tenant else None)
            end_user_streams(user.pk, "moved to another tenant")


def set_active(user, active: bool, *, by=None) -> None:
    """Let a user sign in again, or no longer: their sessions and API tokens stop working at once
    (Django and DRF refuse inactive users), and their open websockets end (on commit)."""
    if not active and by is not None and user.pk == by.pk:
        raise ValidationError({"is_active": "you cannot deactivate yourself"})
    if user.is_active != active:
        with transaction.atomic():
            user.is_active = active
            user.save(update_fields=["is_active"])
            if not active:
                end_user_streams(user.pk, "deactivated")


def delete_tenant(tenant: Tenant) -> None:
    if tenant.vms.exists():
        raise ValidationError({"slug": f"{tenant.slug} still has {tenant.vms.count()} VM(s); delete them first"})
    with transaction.atomic():
        # Operators' only: the tenant's users go with it. Its earlier events keep the slug as their target.
        record(Action.TENANT_DELETED, "tenant", tenant.slug)
        tenant.delete()


def settings_of(tenant: Tenant) -> dict[str, Any]:
    """What the audit log compares before and after a change: quotas and what the tenant may do."""
    return {field: getattr(tenant, field) for field in (*QUOTA_FIELDS, *PERMISSION_FIELDS)}


def record_changes(before: dict[str, Any], tenant: Tenant) -> None:
    """Audit events for what changed since `before` (settings_of): one for the quotas, one for what
    its users may do; none when nothing did. For the services and the admin's form alike."""
    after = settings_of(tenant)
    for action, fields in ((Action.TENANT_QUOTAS, QUOTA_FIELDS), (Action.TENANT_PERMISSIONS, PERMISSION_FIELDS)):
        changed = {f.removeprefix("quota_"): change(before[f], after[f]) for f in fields if before[f] != after[f]}
        if changed:
            record(action, "tenant", tenant.slug, tenant_id=tenant.pk, details=changed)


def record_membership(user: Any, *, left: int | None, joined: int | None) -> None:
    """A user taken out of one tenant and put in another (either may be None): an event for each,
    seen by that tenant, so that neither learns the other's name."""
    if left is not None:
        record(Action.USER_REMOVED, "user", user.get_username(), tenant_id=left)
    if joined is not None:
        record(Action.USER_ADDED, "user", user.get_username(), tenant_id=joined)


def tenant_summary(tenant: Tenant) -> dict[str, Any]:
    return {
        "slug": tenant.slug, "name": tenant.name, "may_create_vms": tenant.may_create_vms,
        "allowed_actions": list(tenant.allowed_actions), "shows_cpu_server": tenant.shows_cpu_server,
        "quotas": {u.resource.field: u.as_dict() for u in usage(tenant)},
        "users": list(tenant.memberships.order_by("user__username").values_list("user__username", flat=True)),
    }
