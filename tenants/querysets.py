"""Who sees which rows, on the queryset: `Model.objects.visible_to(user)` (NetBox's RestrictedQuerySet).

Each model a tenant's users may see uses one of these as its manager, so that every page, API view,
websocket and search starts from the same rule and no module has to import every app's models to
apply it. Operators see every row; a tenant's user the tenant's part; anyone else (a user of no
tenant, an inactive or anonymous one, None) nothing. The command line, which operators run, passes
no user and asks for `objects.all()` itself.
"""
from __future__ import annotations

from typing import Any, Self

from django.db import models

from tenants.access import is_operator, tenant_of
from tenants.models import Tenant


class TenantScopedQuerySet(models.QuerySet):
    """Rows that belong to one tenant, through the foreign key `tenant_field` (None: the operators')."""

    tenant_field = "tenant"

    def visible_to(self, user: Any) -> Self:
        if is_operator(user):
            return self.all()
        tenant = tenant_of(user)
        return self.of_tenant(tenant) if tenant is not None else self.none()

    def of_tenant(self, tenant: Tenant) -> Self:
        return self.filter(**{self.tenant_field: tenant})


class SharedQuerySet(TenantScopedQuerySet):
    """Things shared with tenants (an image, a network): public ones, and those given to the tenant."""

    def of_tenant(self, tenant: Tenant) -> Self:
        return self.filter(models.Q(public=True) | models.Q(tenants=tenant)).distinct()
