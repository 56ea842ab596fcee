"""Verbs on notification targets, for the pages (and anything else that manages them)."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from notifications.choices import VM_KINDS, TargetKind
from notifications.models import Delivery, Target
from notifications.notify import send_test
from notifications.webhook_secrets import new_secret
from tenants.access import is_operator, tenant_of


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


def save_target(target: Target) -> str | None:
    """Create or change a target (its owner set). A new webhook gets its secret, returned in clear:
    shown to its owner once, never again. Refused (ValidationError, nothing saved) for a user who
    hears of nothing, an email target turned into a webhook or back, or kinds beyond the owner's."""
    if not may_have_targets(target.owner):
        raise ValidationError("only operators and a tenant's users receive notifications")
    if target.pk is not None:
        if Target.objects.filter(pk=target.pk).values_list("kind", flat=True).get() != target.kind:
            raise ValidationError({"kind": "a target stays an email or a webhook: make a new one instead"})
    _check(target)
    plain = None
    if target.kind == TargetKind.WEBHOOK and not target.secret_encrypted:
        plain, target.secret_encrypted = new_secret()
    target.save()
    return plain


def rotate_secret(target: Target) -> str:
    """A new signing secret for a webhook, in clear once; the old one stops at once."""
    if target.kind != TargetKind.WEBHOOK:
        raise ValidationError("only a webhook has a secret")
    plain, encrypted = new_secret()
    Target.objects.filter(pk=target.pk).update(secret_encrypted=encrypted)
    target.secret_encrypted = encrypted
    return plain


def test_target(target: Target) -> Delivery:
    """A test event to this target only, whatever its filter (the "Send a test" button)."""
    return send_test(target)
