from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import DetailView, ListView

from hosts.models import CpuServer, DiskServer
from jobs.filtersets import JobFilterSet
from jobs.models import Job
from jobs.redaction import redactor_for
from jobs.services import request_cancel
from tenants.access import is_operator, shows_cpu_server
from xenaoe_panel.pagination import HistoryPaginationMixin

LOG_PAGE = 500
# Suggestions offered under the user filter; operators are a handful, this only bounds a mistake.
MAX_USER_SUGGESTIONS = 200


class JobListView(LoginRequiredMixin, HistoryPaginationMixin, ListView):
    """The job history of the whole cluster, filtered by the query string (jobs/filtersets.py, which
    the API's list uses too).

    /jobs/?vm=NAME is one VM's history. Bad filter values show the form's messages, with status
    400 and no jobs, rather than a list that silently ignores them.
    """

    template_name = "jobs/job_list.html"
    paginate_by = 50
    filterset: JobFilterSet

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        jobs = Job.objects.visible_to(request.user).select_related("user")
        self.filterset = JobFilterSet(request.GET, jobs, request=request)
        response = super().get(request, *args, **kwargs)
        if self.filterset.errors:
            response.status_code = 400
        return response

    def get_queryset(self) -> QuerySet[Job]:
        return self.filterset.qs if self.filterset.is_valid() else self.filterset.queryset.none()

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        count = context["paginator"].count
        operator = is_operator(self.request.user)
        context.update(
            hide_hosts=not shows_cpu_server(self.request.user),
            form=self.filterset.form,
            job_count=count,
            count_text=f"{count:,} job{'' if count == 1 else 's'}",
            host_names=sorted(
                [*CpuServer.objects.values_list("name", flat=True), *DiskServer.objects.values_list("name", flat=True)]
            ) if operator else [],
            user_names=self.filterset.form.users.order_by("username").values_list("username", flat=True)[
                :MAX_USER_SUGGESTIONS
            ],
        )
        return context


class JobDetailView(LoginRequiredMixin, DetailView):
    template_name = "jobs/job_detail.html"

    def get_queryset(self) -> QuerySet[Job]:
        return Job.objects.visible_to(self.request.user)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        redact = redactor_for(self.request.user)
        context["entries"] = [redact(e.as_event()) | {"time": e.time} for e in self.object.log.order_by("serial")]
        context["summary"] = redact(self.object.summary())
        context["message"] = redact(self.object.message)
        return context


class JobLogView(LoginRequiredMixin, View):
    """The log after a serial, as JSON: for clients without websockets and for scripts."""

    def get(self, request, pk: int):
        job = get_object_or_404(Job.objects.visible_to(request.user), pk=pk)
        try:
            after = max(int(request.GET.get("after", 0)), 0)
        except ValueError:
            after = 0
        entries = job.log.filter(serial__gt=after).order_by("serial")[:LOG_PAGE]
        redact = redactor_for(request.user)
        return JsonResponse(redact({"job": job.summary(), "entries": [e.as_event() for e in entries]}))


class JobCancelView(LoginRequiredMixin, View):
    """Operators cancel any job; a tenant's user the jobs they started themselves."""

    def post(self, request, pk: int):
        job = get_object_or_404(Job.objects.visible_to(request.user), pk=pk)
        if not (is_operator(request.user) or job.user_id == request.user.pk):
            messages.error(request, "Only an operator or whoever started this job can cancel it.")
            return redirect(job)
        if request_cancel(job):
            job.refresh_from_db(fields=["state"])
            if job.finished:
                messages.warning(request, f"Job #{job.pk} cancelled before it started.")
            else:
                messages.warning(request, f"Cancelling job #{job.pk}: it stops at its next safe point and undoes "
                                          "its work.")
        else:
            messages.info(request, f"Job #{job.pk} has already finished.")
        return redirect(job)
