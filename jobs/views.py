from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import DetailView, ListView

from jobs.models import Job
from jobs.services import request_cancel
from xenaoe_panel.mixins import OperatorRequiredMixin

LOG_PAGE = 500


class JobListView(OperatorRequiredMixin, ListView):
    queryset = Job.objects.select_related("user")
    template_name = "jobs/job_list.html"
    paginate_by = 50


class JobDetailView(OperatorRequiredMixin, DetailView):
    model = Job
    template_name = "jobs/job_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["entries"] = self.object.log.order_by("serial")
        context["summary"] = self.object.summary()
        return context


class JobLogView(OperatorRequiredMixin, View):
    """The log after a serial, as JSON: for clients without websockets and for scripts."""

    def get(self, request, pk: int):
        job = get_object_or_404(Job, pk=pk)
        try:
            after = max(int(request.GET.get("after", 0)), 0)
        except ValueError:
            after = 0
        entries = job.log.filter(serial__gt=after).order_by("serial")[:LOG_PAGE]
        return JsonResponse({"job": job.summary(), "entries": [e.as_event() for e in entries]})


class JobCancelView(OperatorRequiredMixin, View):
    def post(self, request, pk: int):
        job = get_object_or_404(Job, pk=pk)
        if request_cancel(job):
            messages.warning(request, f"Cancelling job #{job.pk}: it stops at its next safe point and undoes its work.")
        else:
            messages.info(request, f"Job #{job.pk} has already finished.")
        return redirect(job)
