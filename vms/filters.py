"""The VM list's search and filters: a form that validates the query string and narrows a queryset
the user may see (VirtualMachine.objects.visible_to). Each filter is an indexed column (VirtualMachine's
indexes end in name, the list's order), so a page stays cheap with 10,000 VMs."""
from __future__ import annotations

from typing import Any

from django import forms
from django.db.models import QuerySet

from hosts.models import CpuServer
from tenants.access import is_operator, shows_cpu_server
from tenants.models import Tenant
from vms.choices import VmState


class VmFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=63, label="Search",
                        widget=forms.TextInput(attrs={"type": "search", "placeholder": "name contains…"}))
    state = forms.ChoiceField(required=False, choices=[("", "Any state"), *VmState.choices])
    tenant = forms.ChoiceField(required=False)
    host = forms.ChoiceField(required=False, label="CPU server")

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if is_operator(user):
            self.fields["tenant"].choices = [("", "Any tenant"), ("-", "None (operators')")] + [
                (slug, slug) for slug in Tenant.objects.values_list("slug", flat=True)]
        else:
            del self.fields["tenant"]
        if shows_cpu_server(user):
            self.fields["host"].choices = [("", "Any CPU server")] + [
                (name, name) for name in CpuServer.objects.order_by("name").values_list("name", flat=True)]
        else:
            del self.fields["host"]
        for field in self.fields.values():
            field.widget.attrs.setdefault("class", "form-select form-select-sm" if isinstance(
                field, forms.ChoiceField) else "form-control form-control-sm")

    @property
    def active(self) -> bool:
        return self.is_valid() and any(self.cleaned_data.values())

    def filter(self, vms: QuerySet) -> QuerySet:
        data = self.cleaned_data
        if data.get("q"):
            vms = vms.filter(name__contains=data["q"].strip().lower())
        if data.get("state"):
            vms = vms.filter(state=data["state"])
        if data.get("tenant") == "-":
            vms = vms.filter(tenant__isnull=True)
        elif data.get("tenant"):
            vms = vms.filter(tenant__slug=data["tenant"])
        if data.get("host"):
            vms = vms.filter(cpu_server__name=data["host"])
        return vms
