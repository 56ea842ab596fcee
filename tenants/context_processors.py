"""What every page needs to know about the user: operator or a tenant's, and what they may do."""
from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from tenants.access import is_operator, may_create_vms, tenant_of


def access(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"is_operator": False, "may_create_vms": False, "user_tenant": None}
    return {"is_operator": is_operator(user), "may_create_vms": may_create_vms(user), "user_tenant": tenant_of(user)}
