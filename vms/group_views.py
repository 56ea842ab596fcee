"""The anti-affinity groups' page: the groups a user sees (their members, where they run, which share
a CPU server), a new group, a group removed. The verbs are vms/affinity.py's."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import FormView

from tenants.access import is_operator, shows_cpu_server
from vms.affinity import create_group, delete_group, may_manage
from vms.forms import GroupForm
from vms.models import AntiAffinityGroup


def group_row(group: AntiAffinityGroup, *, operator: bool, server_shown: bool) -> dict[str, Any]:
    """A group as its page lists it: its members, and the servers two or more of them share."""
    members = sorted(group.members.all(), key=lambda vm: vm.name)
    on: dict[str, list[str]] = defaultdict(list)
    for vm in members:
        if vm.cpu_server is not None:
            on[vm.cpu_server.name].append(vm.name)
    shared = [f"{' and '.join(names)} {'both' if len(names) == 2 else 'all'} on "
              f"{server if server_shown else 'one CPU server'}"
              for server, names in sorted(on.items()) if len(names) > 1]
    return {"group": group, "name": group.label if operator else group.name, "members": members, "shared": shared}


class GroupListView(LoginRequiredMixin, FormView):
    form_class = GroupForm
    template_name = "vms/group_list.html"

    def get_form_kwargs(self):
        return super().get_form_kwargs() | {"user": self.request.user}

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        user = self.request.user
        operator, shown = is_operator(user), shows_cpu_server(user)
        groups = AntiAffinityGroup.objects.visible_to(user).select_related("tenant").prefetch_related(
            "members__cpu_server")
        context.update(rows=[group_row(g, operator=operator, server_shown=shown) for g in groups],
                       may_manage=may_manage(user), operator=operator, show_cpu_server=shown)
        return context

    def form_valid(self, form):
        data = form.cleaned_data
        try:
            group = create_group(data["name"], user=self.request.user, tenant=data.get("tenant") or None,
                                 description=data.get("description", ""))
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
            return self.form_invalid(form)
        messages.success(self.request, f"anti-affinity group {group.name} created: choose it on a VM's page or in "
                                       "the wizard")
        return redirect("vm-group-list")


class GroupDeleteView(LoginRequiredMixin, View):
    def post(self, request, pk: int):
        group = get_object_or_404(AntiAffinityGroup.objects.visible_to(request.user), pk=pk)  # another's: 404
        try:
            delete_group(group, request.user)
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
            return redirect("vm-group-list")
        messages.success(request, f"anti-affinity group {group.name} removed; its VMs stay where they are")
        return redirect("vm-group-list")
