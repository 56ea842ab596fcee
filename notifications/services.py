"""Verbs on notification targets, for the pages, the API and `manage.py notify`: each one checks,
changes and writes its audit event in one transaction (a refusal changes nothing and records nothing)."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import transaction

from audit.choices import Action
from audit.services import change, record, tenant_id_of
from notifications.choices import VM_KINDS, Severity, TargetKind
from notifications.models import Delivery, Target
from notifications.notify import send_test
from notifications.webhook_secrets import new_secret
from tenants.access import is_operator, tenant_of

AUDIT_KIND = "notification"  # the audit events' target_kind
# What a change's audit event compares (the owner and the kind never change).
CHANGE_FIELDS = ("name", "address", "kinds", "min_severity", "enabled")


def may_have_targets(user: Any) -> bool:
    """Operators, and a tenant's users (for their VMs' events); nobody else hears of anything."""
    return is_operator(user) or tenant_of(user) is not None


def _check(target: Target) -> None:
    beyond = sorted(set(target.kinds) - VM_KINDS)
    if beyond and not is_operator(target.owner):
        raise ValidationError({"kinds": f"a tenant's user hears only of their VMs' events, not {', '.join(beyond)}"})
    # Only the address of its kind is kept: a form may send both.
    if target.kind == TargetKind.EMAIL:
        target.url = ""
    else:
        target.email = ""
    target.full_clean(exclude=["owner"])


def shown_address(target: Target) -> str:
    """Where a target sends, as the audit log keeps it: an email address whole, a webhook's scheme,
    host and port only (a chat service's incoming webhook carries its credential in the path)."""
    if target.kind == TargetKind.EMAIL:
        return target.email
    parts = urlsplit(target.url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _described(target: Target) -> dict[str, Any]:
    return {"target": target.pk, "owner": target.owner.get_username(), "kind": target.kind, "name": target.name,
            "address": shown_address(target), "kinds": sorted(target.kinds),
            "min_severity": Severity(target.min_severity).label, "enabled": target.enabled}


def _record(action: str, target: Target, details: dict[str, Any]) -> None:
    # Seen by the owner's tenant (None for an operator's target: operators only).
    record(action, AUDIT_KIND, target.name, tenant_id=tenant_id_of(target.owner), details=details)


def save_target(target: Target) -> str | None:
    """Create or change a target (its owner set). A new webhook gets its secret, returned in clear:
    shown to its owner once, never again. Refused (ValidationError, nothing saved) for a user who
    hears of nothing, an email target turned into a webhook or back, or kinds beyond the owner's."""
    if not may_have_targets(target.owner):
        raise ValidationError("only operators and a tenant's users receive notifications")
    with transaction.atomic():
        before = None
        if target.pk is not None:
            before = Target.objects.select_for_update().select_related("owner").filter(pk=target.pk).first()
            if before is None:
                raise ValidationError("this notification target was removed meanwhile")
            if before.kind != target.kind:
                raise ValidationError({"kind": "a target stays an email or a webhook: make a new one instead"})
            # The stored one: a rotation since `target` was read must not be undone by this save.
            target.secret_encrypted = before.secret_encrypted
        _check(target)
        plain = None
        if target.kind == TargetKind.WEBHOOK and not target.secret_encrypted:
            plain, target.secret_encrypted = new_secret()
        target.save()
        if before is None:
            _record(Action.NOTIFY_TARGET_CREATED, target, _described(target))
        else:
            old, new = _described(before), _described(target)
            changes = {field: change(old[field], new[field]) for field in CHANGE_FIELDS if old[field] != new[field]}
            if changes:  # saved unchanged: nothing to record
                _record(Action.NOTIFY_TARGET_CHANGED, target, {"target": target.pk, "owner": new["owner"]} | changes)
    return plain


def delete_target(target: Target) -> None:
    """Forget the target and its delivery log."""
    with transaction.atomic():
        if Target.objects.filter(pk=target.pk).delete()[0]:
            _record(Action.NOTIFY_TARGET_DELETED, target, _described(target))


def rotate_secret(target: Target) -> str:
    """A new signing secret for a webhook, in clear once; the old one stops at once."""
    if target.kind != TargetKind.WEBHOOK:
        raise ValidationError("only a webhook has a secret")
    plain, encrypted = new_secret()
    with transaction.atomic():
        if not Target.objects.filter(pk=target.pk).update(secret_encrypted=encrypted):
            raise ValidationError("this notification target was removed meanwhile")
        _record(Action.NOTIFY_SECRET_ROTATED, target, {"target": target.pk, "owner": target.owner.get_username()})
    target.secret_encrypted = encrypted
    return plain


def test_target(target: Target) -> Delivery:
    """A test event to this target only, whatever its filter (the "Send a test" button)."""
    with transaction.atomic():
        delivery = send_test(target)
        _record(Action.NOTIFY_TEST, target, {"target": target.pk, "owner": target.owner.get_username(),
                                             "delivery": delivery.pk})
    return delivery
