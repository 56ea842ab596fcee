from django.views.generic import DetailView, TemplateView

from ha.choices import IncidentState
from ha.models import Incident
from ha.storage_health import exposed_guests
from hosts.models import CpuServer, DiskServer
from jobs.models import Job
from storage.models import AoEExport
from vms.models import VirtualMachine
from vms.placement import cpu_candidates
from xenaoe_panel.mixins import OperatorRequiredMixin


def disk_usage() -> list[dict]:
    return [
        {"server": s, "used_mib": s.used_mib, "free_mib": s.capacity_mib - s.used_mib,
         "percent": int(100 * s.used_mib / s.capacity_mib) if s.capacity_mib else 0}
        for s in DiskServer.objects.all()
    ]


class DashboardView(OperatorRequiredMixin, TemplateView):
    template_name = "hosts/dashboard.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["cpu_servers"] = [
            {"server": c.server, "used_mib": c.used_mib, "free_mib": c.free_mib,
             "percent": int(100 * c.used_mib / c.server.memory_mib) if c.server.memory_mib else 0}
            for c in cpu_candidates()
        ]
        context["all_cpu_servers"] = CpuServer.objects.all()
        context["disk_servers"] = disk_usage()
        context["vms"] = VirtualMachine.objects.select_related("cpu_server")[:20]
        context["jobs"] = Job.objects.all()[:10]
        context["open_incidents"] = Incident.objects.exclude(state=IncidentState.CLOSED)[:20]
        context["exposed"] = exposed_guests()
        return context


class CpuServerDetailView(OperatorRequiredMixin, DetailView):
    model = CpuServer
    template_name = "hosts/cpuserver_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["open_incidents"] = self.object.incidents.exclude(state=IncidentState.CLOSED)
        return context


class DiskServerDetailView(OperatorRequiredMixin, DetailView):
    model = DiskServer
    template_name = "hosts/diskserver_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["exports"] = AoEExport.objects.filter(disk_server=self.object).select_related("mirror__vm")
        context["open_incidents"] = self.object.incidents.exclude(state=IncidentState.CLOSED)
        return context


class HostListView(OperatorRequiredMixin, TemplateView):
    template_name = "hosts/host_list.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["cpu_servers"] = CpuServer.objects.all()
        context["disk_servers"] = DiskServer.objects.all()
        context["exports"] = AoEExport.objects.select_related("disk_server", "mirror__vm")
        return context
