"""The VM list's search and filters, for the page (/vms/) and the API (/api/vms/) alike
(xenaoe_panel/filtersets.py). Each narrows what the user may see (VirtualMachine.objects.visible_to);
each but the search is an indexed column (VirtualMachine's indexes end in name, the list's order), so
a page stays cheap with 10,000 VMs."""
from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from django.db.models import QuerySet

from hosts.models import CpuServer
from tenants.access import is_operator, shows_cpu_server
from tenants.models import Tenant
from vms.choices import VmState
from vms.models import VirtualMachine
from xenaoe_panel.filtersets import FilterForm, NameFilter, PanelFilterSet

NO_TENANT = "-"  # the operators' own VMs


def _tenant_choices() -> list[tuple[str, str]]:
    return [("", "Any tenant"), (NO_TENANT, "None (operators')"),
            *((slug, slug) for slug in Tenant.objects.order_by("slug").values_list("slug", flat=True))]


def _cpu_server_choices() -> list[tuple[str, str]]:
    return [("", "Any CPU server"),
            *((name, name) for name in CpuServer.objects.order_by("name").values_list("name", flat=True))]


class VmFilterForm(FilterForm):
    compact = True


class VmFilterSet(PanelFilterSet):
    q = django_filters.CharFilter(field_name="name", lookup_expr="icontains", max_length=63, label="Search",
                     help_text="Part of the name, in any case.",
                     widget=forms.TextInput(attrs={"type": "search", "placeholder": "name contains…"}))
    state = django_filters.ChoiceFilter(choices=VmState.choices, empty_label="Any state")
    tenant = NameFilter(method="filter_tenant", choices=_tenant_choices, max_length=63, label="Tenant",
                        help_text=f"A tenant's short name, or {NO_TENANT} for the operators' own VMs.")
    cpu_server = NameFilter(field_name="cpu_server__name", choices=_cpu_server_choices, max_length=63,
                            label="CPU server", help_text="Only for users shown CPU servers.")

    # The page's name for the CPU server filter, before the page and the API shared one filter set.
    aliases = {"host": "cpu_server"}

    class Meta:
        model = VirtualMachine
        fields = ["q", "state", "tenant", "cpu_server"]
        form = VmFilterForm

    def filter_tenant(self, vms: QuerySet[VirtualMachine], name: str, value: str) -> QuerySet[VirtualMachine]:
        return vms.filter(tenant__isnull=True) if value == NO_TENANT else vms.filter(tenant__slug=value)

    def shown_on_page(self, name: str) -> bool:
        # A tenant's user may filter on their tenant (the API takes it); the page offers no choice.
        return super().shown_on_page(name) and (name != "tenant" or is_operator(self.user))

    def refused(self) -> dict[str, Any]:
        if shows_cpu_server(self.user):
            return {}
        return {"cpu_server": "you are not shown which CPU server runs a VM"}
