"""Networks: the list (tenants see those they may use) and the operators' form to add one."""
from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import ValidationError
from django.db.models import Count, Q
from django.shortcuts import redirect
from django.views.generic import FormView, ListView

from networks.models import BridgeType, Network, bridge_name_validator, network_name_validator
from networks.services import NetworkRequest, create_network
from tenants.access import is_operator
from xenaoe_panel.mixins import OperatorRequiredMixin


class NetworkListView(LoginRequiredMixin, ListView):
    template_name = "networks/network_list.html"

    def get_queryset(self):
        networks = Network.objects.visible_to(self.request.user)
        return networks.annotate(used=Count("nics", filter=Q(nics__ip__isnull=False)))

    def get_context_data(self, **kwargs):
        return super().get_context_data(**kwargs) | {"operator": is_operator(self.request.user)}


class NetworkForm(forms.Form):
    name = forms.CharField(max_length=63, validators=[network_name_validator])
    bridge = forms.CharField(max_length=15, validators=[bridge_name_validator],
                             help_text="The bridge's name on every CPU server.")
    bridge_type = forms.ChoiceField(choices=BridgeType.choices, initial=BridgeType.LINUX)
    vlan = forms.IntegerField(label="VLAN", required=False, min_value=1, max_value=4094,
                              help_text="Tagged by Open vSwitch; on a Linux bridge, the bridge is the VLAN's own.")
    cidr = forms.CharField(label="Subnet", max_length=64, help_text="e.g. 192.0.2.0/24")
    gateway = forms.CharField(required=False, max_length=45)
    pool = forms.CharField(label="Address pool", required=False, max_length=100,
                           help_text="FIRST-LAST (default: every address after the gateway).")
    dns = forms.CharField(label="DNS servers", required=False, max_length=255)
    dhcp = forms.BooleanField(label="The site's DHCP server gives the addresses", required=False)
    make_default = forms.BooleanField(label="Default network for new VMs", required=False)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            if not isinstance(field, forms.BooleanField):
                field.widget.attrs.setdefault(
                    "class", "form-select" if isinstance(field, forms.ChoiceField) else "form-control")


class NetworkCreateView(OperatorRequiredMixin, FormView):
    form_class = NetworkForm
    template_name = "networks/network_form.html"

    def form_valid(self, form):
        data = form.cleaned_data
        try:
            network = create_network(NetworkRequest(
                name=data["name"], bridge=data["bridge"], bridge_type=data["bridge_type"], vlan=data["vlan"],
                cidr=data["cidr"], gateway=data["gateway"], pool=data["pool"], dns=data["dns"], dhcp=data["dhcp"],
                make_default=data["make_default"]))
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                target = {"pool_start": "pool", "pool_end": "pool"}.get(field, field)
                form.add_error(target if target in form.fields else None, errors)
            return self.form_invalid(form)
        messages.success(self.request, f"network {network.name} created: {network.pool_size} addresses")
        return redirect("network-list")
