"""Incident pages and the operator's HA buttons. Thin: the verbs live in ha.failover,
ha.maintenance and ha.storage_health; rendering never touches the network."""
from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import ValidationError
from django.db.models import Case, IntegerField, Value, When
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import DetailView, ListView

from ha import failover, maintenance, storage_health
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.fencing import manual_confirmation_refused
from ha.models import Incident
from ha.tenant_view import timeline
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from tenants.access import is_operator, shows_cpu_server, tenant_of
from xenaoe_panel.mixins import OperatorRequiredMixin


def open_first(queryset):
    closed_last = Case(When(state=IncidentState.CLOSED, then=Value(1)), default=Value(0), output_field=IntegerField())
    return queryset.annotate(closed_last=closed_last).order_by("closed_last", "-opened_at", "-id")


def fence_confirmation_refused(incident: Incident) -> str | None:
    """Why the page offers no "I confirm it is off" now; None when it does. The API asks the same
    rule, and the verb asks it again under its locks."""
    return manual_confirmation_refused(incident, incident.cpu_server)


def _errors(exc: ValidationError) -> str:
    return "; ".join(exc.messages)


class IncidentListView(LoginRequiredMixin, ListView):
    """Every incident for operators; a tenant's users see those that touched their VMs."""

    template_name = "ha/incident_list.html"
    context_object_name = "incidents"
    paginate_by = 50

    def get_queryset(self):
        return open_first(Incident.objects.visible_to(self.request.user))

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(**kwargs) | {"hide_hosts": not shows_cpu_server(self.request.user)}


class IncidentDetailView(LoginRequiredMixin, DetailView):
    context_object_name = "incident"

    def get_queryset(self):
        return Incident.objects.visible_to(self.request.user)

    def get_template_names(self) -> list[str]:
        return ["ha/incident_detail.html" if is_operator(self.request.user) else "ha/incident_tenant.html"]

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        incident = self.object
        context["event_kinds_json"] = json.dumps(dict(EventKind.choices))
        if not is_operator(self.request.user):
            tenant = tenant_of(self.request.user)
            kinds = dict(EventKind.choices)
            context["events"] = [event | {"kind_display": kinds.get(event["kind"], event["kind"])}
                                 for event in timeline(incident, tenant)]
            context["show_host"] = tenant.shows_cpu_server
            return context
        context["events"] = incident.events.select_related("job", "user")
        if incident.kind == IncidentKind.CPU_SERVER_FAILED and incident.is_open and not incident.fenced_by:
            # What the panel last saw of the host, beside the button or instead of it (and why).
            context["fence_box"] = True
            context["fence_refused"] = fence_confirmation_refused(incident)
            context["can_confirm_fence"] = context["fence_refused"] is None
        if incident.kind == IncidentKind.DISK_SERVER_FAILED and incident.is_open:
            context["exposed"] = storage_health.exposed_guests()
        return context


class ConfirmFencedView(OperatorRequiredMixin, View):
    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        incident = get_object_or_404(Incident, pk=pk)
        refused = fence_confirmation_refused(incident)
        if refused:
            messages.error(request, f"Nothing recorded: {refused}.")
            return redirect(incident)
        try:
            job = failover.confirm_fenced_manually(incident, request.user)
        except ValidationError as exc:
            messages.error(request, _errors(exc))
            return redirect(incident)
        messages.success(request, f"Recorded: {incident.host_name} is powered off. Failover job #{job.pk} restarts "
                                  "its guests.")
        return redirect(incident)


class EnterMaintenanceView(OperatorRequiredMixin, View):
    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        host = get_object_or_404(CpuServer, pk=pk)
        try:
            job = maintenance.enter_maintenance(host, request.user)
        except ValidationError as exc:
            messages.error(request, _errors(exc))
            return redirect(host)
        messages.success(request, f"{host.name} is in maintenance; job #{job.pk} moves its guests away.")
        return redirect("job-detail", job.pk)


class ReturnToServiceView(OperatorRequiredMixin, View):
    """A CPU server returns through a job (its stale guest copies destroyed, its disks given back
    over SSH): the job's page follows it. A disk server returns at once (rows only)."""

    def post(self, request: HttpRequest, kind: str, pk: int) -> HttpResponse:
        if kind not in ("cpu", "disk"):
            raise Http404
        host = get_object_or_404(CpuServer if kind == "cpu" else DiskServer, pk=pk)
        if host.state != HostState.MAINTENANCE:
            messages.error(request, f"{host.name} is {host.get_state_display().lower()}, not in maintenance.")
            return redirect(host)
        try:
            if kind == "cpu":
                job = maintenance.leave_maintenance(host, request.user)
                messages.success(request, f"Job #{job.pk} returns {host.name} to service.")
                return redirect("job-detail", job.pk)
            storage_health.return_to_service(host)
        except ValidationError as exc:
            messages.error(request, _errors(exc))
            return redirect(host)
        messages.success(request, f"{host.name} is back in service.")
        return redirect(host)
