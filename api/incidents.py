"""Incidents over the API: operators see everything; a tenant's users see the incidents that touched
their VMs, reduced as on their pages (ha.tenant_view): no host unless shown CPU servers, and only
their VMs' part of the timeline."""
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

from api.common import service_call
from api.jobs import JobAcceptedSerializer, accepted
from api.schema import DETAIL
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.failover import confirm_fenced_manually
from ha.fencing import manual_confirmation_refused
from ha.models import Incident
from ha.tenant_view import incident_summary, timeline
from tenants.access import is_operator, tenant_of


class IncidentEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    time = serializers.DateTimeField()
    kind = serializers.ChoiceField(choices=EventKind.choices)
    message = serializers.CharField(allow_blank=True)
    data = serializers.DictField()
    job = serializers.IntegerField(allow_null=True)


class IncidentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=IncidentKind.choices)
    kind_display = serializers.CharField()
    state = serializers.ChoiceField(choices=IncidentState.choices)
    state_display = serializers.CharField()
    host = serializers.CharField(allow_null=True, help_text="Only for users shown CPU servers.")
    summary = serializers.CharField(allow_blank=True)
    opened_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(allow_null=True)
    url = serializers.CharField()

    def to_representation(self, incident: Incident) -> dict[str, Any]:
        return super().to_representation(self.seen(incident))

    def seen(self, incident: Incident) -> dict[str, Any]:
        """The incident as this user may see it (a tenant's view hides hosts and other tenants)."""
        data = incident_summary(incident, self._tenant())
        return data | {"opened_at": incident.opened_at, "closed_at": incident.closed_at,
                       "url": reverse("api:incident-detail", args=[incident.pk], request=self.context["request"])}

    def _tenant(self) -> Any:
        user = self.context["request"].user
        return None if is_operator(user) else tenant_of(user)


class IncidentDetailSerializer(IncidentSerializer):
    events = IncidentEventSerializer(many=True)

    def seen(self, incident: Incident) -> dict[str, Any]:
        return super().seen(incident) | {"events": timeline(incident, self._tenant())}


class IncidentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    lookup_value_regex = r"[0-9]{1,18}"

    def get_queryset(self) -> QuerySet[Incident]:
        return Incident.objects.visible_to(self.request.user)

    def get_serializer_class(self) -> type[serializers.Serializer]:
        return IncidentSerializer if self.action == "list" else IncidentDetailSerializer

    @extend_schema(request=None, responses={202: JobAcceptedSerializer, 409: DETAIL},
                   summary="Confirm by hand that the failed host is off; starts the failover job (operators)")
    @action(detail=True, methods=["post"], url_path="confirm-fence", filter_backends=[])
    def confirm_fence(self, request: Request, pk: str | None = None) -> Response:
        incident = self.get_object()
        if not is_operator(request.user):
            raise PermissionDenied("only operators confirm a fence")
        refused = manual_confirmation_refused(incident, incident.cpu_server)
        if refused:
            return Response({"detail": refused}, status=status.HTTP_409_CONFLICT)
        with service_call():
            job = confirm_fenced_manually(incident, request.user)
        return accepted(job, request)
