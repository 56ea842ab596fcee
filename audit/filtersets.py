"""The audit log's filters, for the page (/audit/) and the API (/api/audit/) alike
(xenaoe_panel/filtersets.py); each narrows what the user may see (AuditEvent.objects.visible_to).
Each but the address is an indexed column compared with `=`, a prefix or a range (AuditEvent's
indexes), so the first page comes off an index whatever the filters."""
from __future__ import annotations

import django_filters
from django import forms
from django.db.models import QuerySet

from audit.choices import Action, ActorKind
from audit.models import AuditEvent
from tenants.access import is_operator
from tenants.models import Tenant
from xenaoe_panel.filtersets import FilterForm, NameFilter, PanelFilterSet, TimeRangeFilters

NO_TENANT = "-"  # events only operators see


def _tenant_choices() -> list[tuple[str, str]]:
    return [("", "Any tenant"), (NO_TENANT, "None (operators')"),
            *((slug, slug) for slug in Tenant.objects.order_by("slug").values_list("slug", flat=True))]


class AddressFilter(django_filters.Filter):
    field_class = forms.GenericIPAddressField


class AuditFilterForm(FilterForm):
    page_help = ("actor", "target")


class AuditEventFilterSet(TimeRangeFilters, PanelFilterSet):
    """Who, what, on what, whose, from where, when. The page draws all but `since` and `before`
    (it has its two dates); the API takes them all."""

    action = django_filters.ChoiceFilter(
        choices=[(a.value, f"{a.value}: {a.label}") for a in Action], empty_label="Any action",
        error_messages={"invalid_choice": "“%(value)s” is not an action of the audit log."})
    actor = django_filters.CharFilter(field_name="shown_actor", max_length=150, label="Who",
                                      help_text="A user name; for manage.py, the system's user.")
    actor_kind = django_filters.ChoiceFilter(choices=ActorKind.choices, empty_label="Any way", label="How")
    target = django_filters.CharFilter(method="filter_target", max_length=200, label="On",
                                       help_text="A VM, host, user or tenant name; end with * for a prefix.")
    tenant = NameFilter(method="filter_tenant", choices=_tenant_choices, max_length=63, label="Tenant",
                        help_text=f"A tenant's short name, or {NO_TENANT} for events only operators see.")
    # The address as this user may read it (AuditEvent.objects.visible_to): nobody probes for what is hidden.
    ip = AddressFilter(field_name="shown_ip", label="From address")
    date_from = django_filters.DateFilter(method="filter_date_from", label="From",
                                          help_text="On or after this day (YYYY-MM-DD, the panel's time zone).",
                                          widget=forms.DateInput(attrs={"type": "date"}))
    date_to = django_filters.DateFilter(method="filter_date_to", label="To",
                                        help_text="On or before this day (YYYY-MM-DD, the panel's time zone).",
                                        widget=forms.DateInput(attrs={"type": "date"}))
    since = django_filters.IsoDateTimeFilter(method="filter_since", label="Since",
                                             help_text="At or after this ISO 8601 time.")
    before = django_filters.IsoDateTimeFilter(method="filter_before", label="Before",
                                              help_text="Before this ISO 8601 time.")

    time_field = "time"

    class Meta:
        model = AuditEvent
        fields = ["action", "actor", "actor_kind", "target", "tenant", "ip", "date_from", "date_to", "since",
                  "before"]
        form = AuditFilterForm

    def shown_on_page(self, name: str) -> bool:
        # A tenant's user sees their tenant's events only: the page offers no tenant to choose.
        return (super().shown_on_page(name) and name not in ("since", "before")
                and (name != "tenant" or is_operator(self.user)))

    def filter_target(self, events: QuerySet[AuditEvent], name: str, value: str) -> QuerySet[AuditEvent]:
        if value.endswith("*"):
            return events.filter(target_name__startswith=value[:-1])
        return events.filter(target_name=value)

    def filter_tenant(self, events: QuerySet[AuditEvent], name: str, value: str) -> QuerySet[AuditEvent]:
        return events.filter(tenant__isnull=True) if value == NO_TENANT else events.filter(tenant__slug=value)
