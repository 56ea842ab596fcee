"""Who may use a shared object (an image, a network): every tenant, or the tenants it is given to."""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models, transaction

from tenants.models import Tenant


def publish(queryset: models.QuerySet, name: str, *, public: bool, tenants: list[str], what: str) -> models.Model:
    """Set `public` and the tenant list of the object named `name`; ValidationError (nothing changed)
    for an unknown object or tenant."""
    item = queryset.filter(name=name).first()
    if item is None:
        raise ValidationError({"name": f"no {what} named {name!r}"})
    found = list(Tenant.objects.filter(slug__in=tenants))
    unknown = sorted(set(tenants) - {t.slug for t in found})
    if unknown:
        raise ValidationError({"tenants": f"no tenant named {', '.join(unknown)}"})
    with transaction.atomic():
        queryset.filter(pk=item.pk).update(public=public)
        item.tenants.set(found)
    item.public = public
    return item
