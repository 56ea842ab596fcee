"""CPU servers, disk servers, maintenance and cluster verify over the API: operators only (anyone
else gets a 404, as for the pages)."""
from __future__ import annotations

from django.db.models import QuerySet, Sum
from django.db.models.functions import Coalesce
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.common import IsOperator, service_call
from api.jobs import JobAcceptedSerializer, accepted
from ha import maintenance, storage_health
from hosts.choices import HostState, Hypervisor
from hosts.models import CpuServer, DiskServer
from hosts.verify import start_verify
from vms.placement import Load, server_loads
from xenaoe_panel.names import NAME

NAME_REGEX = NAME
_HOST_FIELDS = ["name", "address", "state", "state_changed_at", "last_seen_at", "missed_checks", "last_check_error"]


class CpuServerSerializer(serializers.ModelSerializer):
    state = serializers.ChoiceField(choices=HostState.choices)
    hypervisor = serializers.ChoiceField(choices=Hypervisor.choices)
    # The allocator's numbers (vms.placement: guests, holds for moves under way, foreign domains).
    used_memory_mib = serializers.SerializerMethodField()
    free_memory_mib = serializers.SerializerMethodField()
    guests = serializers.SerializerMethodField()

    class Meta:
        model = CpuServer
        fields = [*_HOST_FIELDS, "hypervisor", "memory_mib", "vcpus", "used_memory_mib", "free_memory_mib",
                  "guests", "fence_methods"]
        read_only_fields = fields

    def _load(self, server: CpuServer) -> Load:
        if "loads" not in self.context:  # once per response, not once per server
            self.context["loads"] = server_loads()
        return self.context["loads"][server.pk]

    def get_used_memory_mib(self, server: CpuServer) -> int:
        return self._load(server).used_mib

    def get_free_memory_mib(self, server: CpuServer) -> int:
        return self._load(server).free_mib

    def get_guests(self, server: CpuServer) -> int:
        return self._load(server).guests


class DiskServerSerializer(serializers.ModelSerializer):
    state = serializers.ChoiceField(choices=HostState.choices)
    used_mib = serializers.IntegerField(source="used")

    class Meta:
        model = DiskServer
        fields = [*_HOST_FIELDS, "aoe_shelf", "capacity_mib", "used_mib"]
        read_only_fields = fields


class EnterMaintenanceSerializer(serializers.Serializer):
    max_mib_per_s = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                             help_text="Each migration's bandwidth cap.")


class _HostViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    permission_classes = [IsOperator]
    lookup_field = "name"
    lookup_value_regex = NAME_REGEX
    filter_backends: list = []


class CpuServerViewSet(_HostViewSet):
    serializer_class = CpuServerSerializer

    def get_queryset(self) -> QuerySet[CpuServer]:
        return CpuServer.objects.order_by("name")

    @extend_schema(request=EnterMaintenanceSerializer, responses={202: JobAcceptedSerializer},
                   summary="Put the CPU server in maintenance and evacuate its guests (a host.evacuate job)")
    @action(detail=True, methods=["post"], url_path="enter-maintenance")
    def enter_maintenance(self, request: Request, name: str | None = None) -> Response:
        host = self.get_object()
        body = EnterMaintenanceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with service_call():
            job = maintenance.enter_maintenance(host, request.user,
                                                max_mib_per_s=body.validated_data.get("max_mib_per_s"))
        return accepted(job, request)

    @extend_schema(request=None, responses={202: JobAcceptedSerializer},
                   summary="Return the CPU server to service: maintenance -> up (a host.return job; one "
                           "already queued or running is returned)")
    @action(detail=True, methods=["post"], url_path="leave-maintenance")
    def leave_maintenance(self, request: Request, name: str | None = None) -> Response:
        host = self.get_object()
        with service_call():
            job = maintenance.leave_maintenance(host, request.user)
        return accepted(job, request)


class DiskServerViewSet(_HostViewSet):
    serializer_class = DiskServerSerializer

    def get_queryset(self) -> QuerySet[DiskServer]:
        return DiskServer.objects.annotate(used=Coalesce(Sum("exports__size_mib"), 0)).order_by("name")

    @extend_schema(request=None, responses=DiskServerSerializer,
                   summary="Maintenance -> up (refused while its failure incident is open)")
    @action(detail=True, methods=["post"], url_path="leave-maintenance")
    def leave_maintenance(self, request: Request, name: str | None = None) -> Response:
        server = self.get_object()
        with service_call():
            storage_health.return_to_service(server)
        return Response(self.get_serializer(self.get_object()).data)


class VerifyView(APIView):
    permission_classes = [IsOperator]

    @extend_schema(request=None, responses={202: JobAcceptedSerializer},
                   summary="Start a cluster verify job (one already queued or running is returned)")
    def post(self, request: Request) -> Response:
        return accepted(start_verify(user=request.user), request)
