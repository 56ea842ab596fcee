"""Cluster verify pages: run it (a job), read the findings of a verify job, apply a proposed fix.

The findings are read from the verify job's log (one entry per finding, the finding in its data):
rendering never touches a host. A fix is taken from the stored finding, never from the browser,
and goes through hosts.fixes.apply_fix like any other caller.
"""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import TemplateView

from hosts.fixes import apply_fix
from hosts.job_params import FixParams
from hosts.verify import Finding, start_verify
from jobs.choices import ACTIVE_STATES, FINISHED_STATES
from jobs.models import Job
from xenaoe_panel.mixins import OperatorRequiredMixin

VERIFY = "cluster.verify"
SEVERITY_COLOURS = {"critical": "danger", "error": "warning", "warning": "info"}


def findings_of(job: Job) -> list[tuple[int, Finding]]:
    """(log serial, finding) of every finding a verify job logged, in the order it logged them."""
    entries = job.log.filter(data__has_key="finding").order_by("serial")
    return [(entry.serial, Finding.from_dict(entry.data["finding"])) for entry in entries]


class VerifyView(OperatorRequiredMixin, TemplateView):
    """The findings of one verify job: the latest finished one, or the one in the URL."""

    template_name = "hosts/verify.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        finished = Job.objects.filter(kind=VERIFY, state__in=FINISHED_STATES)
        latest = finished.first()
        job = get_object_or_404(Job, pk=kwargs["pk"], kind=VERIFY) if "pk" in kwargs else latest
        context.update(job=job, latest=latest, running=Job.objects.filter(kind=VERIFY, state__in=ACTIVE_STATES).first())
        if job is None:
            return context
        fix_jobs = {
            FixParams.of(fix).source.get("serial"): fix
            for fix in Job.objects.filter(kind="cluster.fix", params__source__job=job.pk).order_by("created_at")
        }
        context["rows"] = [
            {"serial": serial, "finding": finding, "colour": SEVERITY_COLOURS.get(finding.severity, "secondary"),
             "fix_job": fix_jobs.get(serial)}
            for serial, finding in findings_of(job)
        ]
        summary = job.log.filter(data__has_key="checked").order_by("-serial").first()
        context["checked"] = summary.data["checked"] if summary else None
        return context


class VerifyRunView(OperatorRequiredMixin, View):
    def post(self, request: HttpRequest) -> HttpResponse:
        job = start_verify(user=request.user)
        return redirect(job)


class VerifyFixView(OperatorRequiredMixin, View):
    def post(self, request: HttpRequest, pk: int, serial: int) -> HttpResponse:
        job = get_object_or_404(Job, pk=pk, kind=VERIFY)
        entry = job.log.filter(serial=serial, data__has_key="finding").first()
        if entry is None:
            raise Http404("no such finding")
        finding = Finding.from_dict(entry.data["finding"])
        if finding.fix is None:
            messages.error(request, f"{finding.code} {finding.subject}: verify proposes no fix for this.")
            return redirect("cluster-verify-job", pk=job.pk)
        try:
            fix_job = apply_fix(finding.fix.code, finding.fix.args, request.user, label=finding.fix.label,
                                source={"job": job.pk, "serial": serial})
        except ValidationError as exc:
            messages.error(request, f"{finding.fix.label}: {'; '.join(exc.messages)}")
            return redirect("cluster-verify-job", pk=job.pk)
        return redirect(fix_job)
