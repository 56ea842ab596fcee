from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.views.generic import DetailView, TemplateView

from ha.choices import IncidentState
from ha.leadership import monitor_sessions
from ha.models import Incident
from ha.storage_health import exposed_guests
from hosts import history
from hosts.capacity import cluster_capacity, cpu_capacity, disk_capacity
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from jobs.choices import ACTIVE_STATES
from jobs.models import Job
from storage.models import AoEExport
from xenaoe_panel.mixins import OperatorRequiredMixin

RUNNING_JOBS_SHOWN = 20
RECENT_JOBS_SHOWN = 5
OPEN_INCIDENTS_SHOWN = 20


# A large site's dashboard shows the servers that need a look: those not up, then the fullest; the
# Hosts page lists every one. (200 servers drawn as bars made a 300 KB page rendered in 0.4 s.)
DASHBOARD_SERVERS_SHOWN = 24


def _needing_a_look(servers: list, fullness: Any) -> list:
    if len(servers) <= DASHBOARD_SERVERS_SHOWN:
        return servers
    shown = sorted(servers, key=lambda c: (c.server.state == HostState.UP, -fullness(c)))[:DASHBOARD_SERVERS_SHOWN]
    return sorted(shown, key=lambda c: c.server.name)


def _capacity_context() -> dict[str, Any]:
    capacity = cluster_capacity()
    cpu = _needing_a_look(capacity.cpu, lambda c: c.used_mib / max(c.server.memory_mib, 1))
    disk = _needing_a_look(capacity.disk, lambda d: d.used_mib / max(d.server.capacity_mib, 1))
    return {"cpu_servers": cpu, "disk_servers": disk, "shortfalls": capacity.shortfalls,
            "cpu_servers_hidden": len(capacity.cpu) - len(cpu), "disk_servers_hidden": len(capacity.disk) - len(disk)}


def _jobs_context() -> dict[str, Any]:
    active = Job.objects.filter(state__in=ACTIVE_STATES)
    return {"jobs": list(active.order_by("created_at", "id")[:RUNNING_JOBS_SHOWN]), "jobs_total": active.count(),
            "recent_jobs": list(Job.objects.exclude(state__in=ACTIVE_STATES)[:RECENT_JOBS_SHOWN])}


def _monitors_context() -> dict[str, Any]:
    """Which panel machine's monitor leads and which stand by (None on SQLite: nothing elected)."""
    sessions = monitor_sessions()
    if sessions is None:
        return {"monitors": None}
    return {"monitors": sessions, "monitor_leader": next((s for s in sessions if s.leads), None),
            "monitor_standbys": [s for s in sessions if not s.leads]}


def _incidents_context() -> dict[str, Any]:
    return {"open_incidents": Incident.objects.exclude(state=IncidentState.CLOSED)[:OPEN_INCIDENTS_SHOWN],
            "exposed": exposed_guests()}


class DashboardView(OperatorRequiredMixin, TemplateView):
    """The cluster at a glance. Each live part is also served alone (`?fragment=capacity|jobs|incidents`):
    static/js/dashboard.js fetches it again when an event says it changed, so the page and its
    updates come from the same template."""

    template_name = "hosts/dashboard.html"
    fragments = {"capacity": _capacity_context, "jobs": _jobs_context, "incidents": _incidents_context}

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        name = request.GET.get("fragment")
        if name is None:
            return super().get(request, *args, **kwargs)
        if name not in self.fragments:
            raise Http404("No such fragment.")
        response = TemplateResponse(request, f"hosts/dashboard_{name}.html", self.fragments[name]())
        response["Cache-Control"] = "no-store"
        return response

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        for make in self.fragments.values():
            context.update(make())
        context.update(_monitors_context())
        return context


class CpuServerDetailView(OperatorRequiredMixin, DetailView):
    """A CPU server: its state, what it carries (with the N+1 reserve) and its history (`?range=1h|24h|7d`)."""

    model = CpuServer
    template_name = "hosts/cpuserver_detail.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["open_incidents"] = self.object.incidents.exclude(state=IncidentState.CLOSED)
        context["capacity"] = cpu_capacity(self.object.pk)[0][0]
        context["chart"] = history.chart(self.object, self.request.GET.get("range", history.DEFAULT_RANGE))
        context["ranges"] = list(history.RANGES)
        return context


class DiskServerDetailView(OperatorRequiredMixin, DetailView):
    model = DiskServer
    template_name = "hosts/diskserver_detail.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["capacity"] = disk_capacity(self.object.pk)[0]
        context["exports"] = AoEExport.objects.filter(disk_server=self.object).select_related(
            "mirror__vm", "image_copy__image")
        context["open_incidents"] = self.object.incidents.exclude(state=IncidentState.CLOSED)
        return context


EXPORTS_PER_PAGE = 100


class HostListView(OperatorRequiredMixin, TemplateView):
    template_name = "hosts/host_list.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["cpu_servers"] = CpuServer.objects.all()
        context["disk_servers"] = DiskServer.objects.all()
        # A page of exports at a time: a site's SAN holds thousands (each disk server's own page lists
        # all of its, at most a shelf's 255).
        exports = AoEExport.objects.select_related("disk_server", "mirror__vm", "image_copy__image")
        page = Paginator(exports, EXPORTS_PER_PAGE).get_page(self.request.GET.get("page"))
        context.update(exports=page.object_list, page_obj=page, is_paginated=page.has_other_pages())
        return context
