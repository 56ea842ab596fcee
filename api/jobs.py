"""Jobs over the API: the history (filtered), one job, its log after a serial (long-poll), cancel."""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse

from api.common import viewer
from api.schema import DETAIL
from jobs.choices import JobState, LogLevel
from jobs.filtersets import JobFilterSet
from jobs.long_poll import wait_for_job, waiting_slot
from jobs.models import Job
from jobs.redaction import redactor_for
from jobs.services import request_cancel
from tenants.access import is_operator

LOG_PAGE = 500  # entries per answer; a client asks again after next_after
MAX_WAIT_S = 30.0


LINK_FIELDS = ("url", "log_url", "ws_url", "job_url")


def _request(serializer: serializers.Field) -> Request:
    return serializer.context["request"]


class JobSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    state = serializers.ChoiceField(choices=JobState.choices)
    step = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    percent = serializers.IntegerField()
    message = serializers.CharField(allow_blank=True)
    finished = serializers.BooleanField()
    cancel_requested = serializers.BooleanField()
    state_display = serializers.CharField()
    colour = serializers.CharField(help_text="The state's colour on the pages (a Bootstrap name).")


class JobSerializer(JobSummarySerializer):
    """A job: its summary (the progress a client draws), and what it is about."""

    state_display = serializers.CharField(source="get_state_display")
    colour = serializers.CharField(source="state_colour")
    vm = serializers.CharField(source="target_name", allow_blank=True, help_text="The VM (or host) it acts on.")
    tenant = serializers.CharField(source="tenant.slug", allow_null=True)
    user = serializers.CharField(source="user.username", allow_null=True, help_text="Who started it.")
    parent = serializers.IntegerField(source="parent_id", allow_null=True)
    params = serializers.DictField(required=False, help_text="Operators only.")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    url = serializers.SerializerMethodField()
    log_url = serializers.SerializerMethodField()
    ws_url = serializers.SerializerMethodField(help_text="Websocket streaming the log: add ?after=SERIAL.")

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        user = viewer(self)
        if user is not None and not is_operator(user):
            del fields["params"]  # a tenant is not told hosts and placement
        return fields

    def to_representation(self, instance: Job) -> dict[str, Any]:
        data = super().to_representation(instance)
        user = viewer(self)
        if user is None:
            return data
        if "redact" not in self.context:  # once per response, not once per job of a list
            self.context["redact"] = redactor_for(user)
        links = {key: data.pop(key) for key in LINK_FIELDS if key in data}  # the panel's own URLs
        return self.context["redact"](data) | links

    def get_url(self, job: Job) -> str:
        return reverse("api:job-detail", args=[job.pk], request=_request(self))

    def get_log_url(self, job: Job) -> str:
        return reverse("api:job-log", args=[job.pk], request=_request(self))

    def get_ws_url(self, job: Job) -> str:
        request = _request(self)
        return f"{'wss' if request.is_secure() else 'ws'}://{request.get_host()}/ws/jobs/{job.pk}/"


class JobAcceptedSerializer(JobSerializer):
    """The answer of an operation: the job it started (also in the Location header)."""

    job_url = serializers.SerializerMethodField()

    def get_job_url(self, job: Job) -> str:
        return self.get_url(job)


def accepted(job: Job, request: Request) -> Response:
    """202: the job is queued; its representation, and where to follow it."""
    data = JobAcceptedSerializer(job, context={"request": request}).data
    return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["job_url"]})


class LogEntrySerializer(serializers.Serializer):
    serial = serializers.IntegerField()
    time = serializers.DateTimeField()
    level = serializers.ChoiceField(choices=LogLevel.choices)
    message = serializers.CharField(allow_blank=True)
    step = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    data = serializers.DictField()


class JobLogSerializer(serializers.Serializer):
    job = JobSummarySerializer()
    entries = LogEntrySerializer(many=True)
    next_after = serializers.IntegerField(help_text="The serial to ask after next time.")


class LogQuerySerializer(serializers.Serializer):
    after = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0,
                                     help_text="Entries with a serial above this one.")
    wait = serializers.FloatField(min_value=0, max_value=MAX_WAIT_S, default=0,
                                  help_text="Seconds to wait for an entry when there is none yet (0-30).")


class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Jobs this user may see: every job for operators, their tenant's for a tenant's users."""

    serializer_class = JobSerializer
    filterset_class = JobFilterSet

    def get_queryset(self) -> QuerySet[Job]:
        return Job.objects.visible_to(self.request.user).select_related("tenant", "user")

    @extend_schema(request=None, responses={202: JobSerializer, 403: DETAIL, 409: DETAIL},
                   summary="Ask a queued or running job to stop (it undoes its work)")
    @action(detail=True, methods=["post"], filter_backends=[])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        if not (is_operator(request.user) or (job.user_id is not None and job.user_id == request.user.pk)):
            raise PermissionDenied("only operators and the user who started it may cancel this job")
        if not request_cancel(job):
            return Response({"detail": f"job #{job.pk} has already finished ({job.state})"},
                            status=status.HTTP_409_CONFLICT)
        job.refresh_from_db()
        return Response(self.get_serializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(parameters=[LogQuerySerializer], responses=JobLogSerializer,
                   summary="The job's log after a serial; waits up to `wait` s for the next entry")
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def log(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        query = LogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        after, wait = query.validated_data["after"], query.validated_data["wait"]
        entries = _entries_after(job, after)
        if not entries and not job.finished and wait > 0:
            entries = long_poll(job, after, wait)
        redact = redactor_for(request.user)  # a tenant not shown the hosts gets them by role
        return Response(JobLogSerializer({
            "job": redact(job.summary()),
            "entries": [redact(entry.as_event()) for entry in entries],
            "next_after": entries[-1].serial if entries else after,
        }).data)


def _entries_after(job: Job, after: int) -> list[Any]:
    return list(job.log.filter(serial__gt=after).order_by("serial")[:LOG_PAGE])


def long_poll(job: Job, after: int, wait: float) -> list[Any]:
    """The entries after `after`, waiting up to `wait` s for the first (jobs/long_poll.py); at once
    when XENAOE_API_MAX_LONG_POLLS polls of this process already wait."""
    with waiting_slot() as admitted:
        if not admitted:
            return []

        def ready() -> list[Any] | None:
            job.refresh_from_db()
            entries = _entries_after(job, after)
            return entries if entries or job.finished else None

        return wait_for_job(job.pk, wait, ready) or []
