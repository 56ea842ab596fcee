"""Who is who, and what they may do: every page, API view, websocket and search asks here.

Operators (active staff) see everything. A tenant's user sees only the tenant's VMs, the jobs on
them and the incidents that touched them; anything else does not exist for them (404, never 403).
A signed-in user who is neither sees nothing. Which rows that is, is each model's queryset's to say
(`Model.objects.visible_to(user)`, tenants/querysets.py), so this module imports no other app.
"""
from __future__ import annotations

from typing import Any

from tenants.models import Tenant


def is_operator(user: Any) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


def tenant_of(user: Any) -> Tenant | None:
    """The user's tenant, cached on the user object for the request."""
    if not (user and user.is_authenticated and user.is_active):
        return None
    if not hasattr(user, "_xenaoe_tenant"):
        membership = getattr(user, "membership", None) if user.pk else None
        user._xenaoe_tenant = membership.tenant if membership is not None else None
    return user._xenaoe_tenant


def shows_cpu_server(user: Any) -> bool:
    """Whether this user is told which CPU server runs a VM."""
    if is_operator(user):
        return True
    tenant = tenant_of(user)
    return bool(tenant and tenant.shows_cpu_server)


def may_create_vms(user: Any) -> bool:
    if is_operator(user):
        return True
    tenant = tenant_of(user)
    return bool(tenant and tenant.may_create_vms)


def may_run(user: Any, action: str) -> bool:
    """May this user run `action` (start, shutdown, reboot, force_off, delete) on a VM they see?"""
    if is_operator(user):
        return True
    tenant = tenant_of(user)
    return bool(tenant and tenant.allows(action))
