"""VMs over the API: list, read, create, delete and the lifecycle actions, each a job (202).

The queryset is always VirtualMachine.objects.visible_to(user): another tenant's VM is a 404. A VM the
user sees but may not act on is a 403; the services check everything again themselves.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse

from api.common import service_call, viewer
from api.groups import refuse_unless_may_manage
from api.jobs import JobAcceptedSerializer, accepted
from jobs.redaction import redactor_for
from tenants.access import is_operator, may_create_vms, may_run, shows_cpu_server
from tenants.models import TENANT_ACTIONS
from vms.affinity import set_vm_groups
from vms.filtersets import VmFilterSet
from vms.job_params import VmCreateParams, VmMigrateParams
from vms.migration import MAX_BANDWIDTH_MIB, migrate_vm
from vms.models import VirtualMachine
from vms.passwords import generate_password
from vms.serializers import Audience, VmSerializer
from vms.services import VmRequest, create_vm, delete_vm, eject_cd, vm_action
from xenaoe_panel.names import NAME

NAME_REGEX = NAME
OPERATOR_ACTIONS = [*TENANT_ACTIONS, "migrate"]


@extend_schema_serializer(component_name="Vm")
class VmApiSerializer(VmSerializer):
    """A VM, as much of it as the caller may be told (the CPU server to users shown CPU servers, the
    mirror's legs to operators), what the caller may do to it, and where to find it and its console."""

    # Which fields the API gives; the fields themselves, and who is told them, are vms/serializers.py's.
    API_FIELDS = ("name", "state", "tenant", "vcpus", "memory_mib", "disk_mib", "cpu_server", "running_since",
                  "created_at", "legs", "actions", "url", "iso", "console_url", "anti_affinity_groups")

    actions = serializers.SerializerMethodField(help_text="What this user may do to it.")
    url = serializers.SerializerMethodField()
    console_url = serializers.SerializerMethodField(
        help_text="Its serial console's websocket (binary frames, docs/api.md); null if you may not use it.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, fields=self.API_FIELDS, **kwargs)

    def get_audience(self) -> Audience | None:
        user = viewer(self)
        return None if user is None else Audience.of(user)

    def get_actions(self, vm: VirtualMachine) -> list[str]:
        user = self.context["request"].user
        if is_operator(user):
            return list(OPERATOR_ACTIONS)
        return [name for name in TENANT_ACTIONS if may_run(user, name)]

    def get_url(self, vm: VirtualMachine) -> str:
        return reverse("api:vm-detail", args=[vm.name], request=self.context["request"])

    def get_console_url(self, vm: VirtualMachine) -> str | None:
        request = self.context["request"]
        if not may_run(request.user, "console"):
            return None
        return f"{'wss' if request.is_secure() else 'ws'}://{request.get_host()}/ws/vms/{quote(vm.name)}/console/serial/"


class VmCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=63)
    vcpus = serializers.IntegerField()
    memory_mib = serializers.IntegerField()
    disk_mib = serializers.IntegerField()
    tenant = serializers.CharField(required=False, allow_blank=True, max_length=63,
                                   help_text="The owning tenant's short name (operators; a tenant's users "
                                             "always create for their own).")
    cpu_server = serializers.CharField(required=False, allow_blank=True, max_length=63,
                                       help_text="Operators only; empty: the panel chooses.")
    allow_n_plus_one_break = serializers.BooleanField(required=False, default=False,
                                                      help_text="Operators only.")
    kernel_path = serializers.CharField(required=False, allow_blank=True, max_length=255,
                                        help_text="Operators only: direct kernel boot from this path.")
    image = serializers.CharField(required=False, allow_blank=True, max_length=63,
                                  help_text="An image's name (GET /api/images/); empty: the site's default; "
                                            "'none': an empty disk (operators).")
    iso = serializers.CharField(required=False, allow_blank=True, max_length=63,
                                help_text="An ISO's name (GET /api/images/?kind=iso): in the VM's CD drive, booted "
                                          "before its empty disk; install on the console, then POST .../eject/.")
    networks = serializers.ListField(child=serializers.CharField(max_length=63), required=False, max_length=8,
                                     help_text="One NIC on each (GET /api/networks/); none: the default network.")
    ssh_keys = serializers.ListField(child=serializers.CharField(max_length=16384), required=False, max_length=32,
                                     help_text="OpenSSH public keys for the image's login user, besides your "
                                               "profile's.")
    generate_password = serializers.BooleanField(required=False, default=False,
                                                 help_text="Give the login user a password, returned once in "
                                                           "this response (`password`).")
    anti_affinity_groups = serializers.ListField(
        child=serializers.CharField(max_length=63), required=False, max_length=32,
        help_text="Names of its owner's anti-affinity groups (GET /api/anti-affinity-groups/) it joins: placed "
                  "apart from their members where a CPU server has room (`warnings` says when not).")

    def request(self, password: str = "") -> VmRequest:
        data = self.validated_data
        return VmRequest(
            name=data["name"], vcpus=data["vcpus"], memory_mib=data["memory_mib"], disk_mib=data["disk_mib"],
            cpu_server=data.get("cpu_server") or None, kernel_path=data.get("kernel_path", ""),
            allow_n_plus_one_break=data["allow_n_plus_one_break"], tenant=data.get("tenant") or None,
            image=data.get("image", ""), iso=data.get("iso", ""), networks=tuple(data.get("networks", ())),
            ssh_keys=tuple(data.get("ssh_keys", ())), password=password,
            anti_affinity_groups=tuple(data.get("anti_affinity_groups", ())),
        )


class GroupsSerializer(serializers.Serializer):
    groups = serializers.ListField(child=serializers.CharField(max_length=63), max_length=32, allow_empty=True,
                                   help_text="Every anti-affinity group of its owner it is to be in (the others: not).")


class GroupsAnswerSerializer(serializers.Serializer):
    anti_affinity_groups = serializers.ListField(child=serializers.CharField())
    warnings = serializers.ListField(child=serializers.CharField(),
                                     help_text="Members of its groups it shares a CPU server with now (nothing moved).")


class ShutdownSerializer(serializers.Serializer):
    timeout_s = serializers.IntegerField(required=False, min_value=0, max_value=3600,
                                         help_text="Forced off after this long (default: the site's).")


class MigrateSerializer(serializers.Serializer):
    target = serializers.CharField(required=False, allow_blank=True, max_length=63,
                                   help_text="A CPU server; empty: the one with most free memory.")
    max_mib_per_s = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                             max_value=MAX_BANDWIDTH_MIB, help_text="Bandwidth cap.")


def _refuse_unless_may(user: Any, action_name: str) -> None:
    if action_name == "migrate" and not is_operator(user):
        raise PermissionDenied("only operators migrate VMs")
    if not may_run(user, action_name):
        raise PermissionDenied(f"your tenant's users may not {action_name.replace('_', ' ')} VMs; ask an operator")


_ACCEPTED = {202: JobAcceptedSerializer}


class VmViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = VmApiSerializer
    filterset_class = VmFilterSet
    lookup_field = "name"
    lookup_value_regex = NAME_REGEX

    def get_queryset(self) -> QuerySet[VirtualMachine]:
        vms = VirtualMachine.objects.visible_to(self.request.user).select_related("tenant", "cpu_server", "iso")
        vms = vms.prefetch_related("anti_affinity_groups")
        if is_operator(self.request.user):
            vms = vms.prefetch_related("mirror__legs__disk_server")
        return vms

    @extend_schema(request=VmCreateSerializer, responses=_ACCEPTED, summary="Create a VM (a vm.create job)")
    def create(self, request: Request) -> Response:
        if not may_create_vms(request.user):
            raise PermissionDenied("you may not create VMs; ask an operator")
        body = VmCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        password = generate_password() if body.validated_data["generate_password"] else ""
        with service_call():
            job = create_vm(body.request(password), user=request.user)
        response = accepted(job, request)
        if password:
            response.data["password"] = password  # this once: the panel keeps only its hash
        # The anti-affinity groups it had to be placed against (no CPU server apart had room).
        response.data["warnings"] = redactor_for(request.user)(VmCreateParams.of(job).anti_affinity_broken)
        return response

    @extend_schema(request=None, responses=_ACCEPTED, summary="Delete a VM (a vm.delete job)")
    def destroy(self, request: Request, name: str | None = None) -> Response:
        vm = self.get_object()
        _refuse_unless_may(request.user, "delete")
        with service_call():
            job = delete_vm(vm.name, user=request.user)
        return accepted(job, request)

    def _lifecycle(self, request: Request, action_name: str, **options: Any) -> Response:
        vm = self.get_object()
        _refuse_unless_may(request.user, action_name)
        with service_call():
            job = vm_action(vm.name, action_name, user=request.user, **options)
        return accepted(job, request)

    @extend_schema(request=None, responses=_ACCEPTED, summary="Start a stopped VM")
    @action(detail=True, methods=["post"], filter_backends=[])
    def start(self, request: Request, name: str | None = None) -> Response:
        return self._lifecycle(request, "start")

    @extend_schema(request=ShutdownSerializer, responses=_ACCEPTED,
                   summary="Shut a running VM down (ACPI; forced off after the timeout)")
    @action(detail=True, methods=["post"], filter_backends=[])
    def shutdown(self, request: Request, name: str | None = None) -> Response:
        body = ShutdownSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._lifecycle(request, "shutdown", shutdown_timeout_s=body.validated_data.get("timeout_s"))

    @extend_schema(request=None, responses=_ACCEPTED, summary="Reboot a running VM")
    @action(detail=True, methods=["post"], filter_backends=[])
    def reboot(self, request: Request, name: str | None = None) -> Response:
        return self._lifecycle(request, "reboot")

    @extend_schema(request=None, responses=_ACCEPTED, summary="Power a VM off at once")
    @action(detail=True, methods=["post"], filter_backends=[])
    def force_off(self, request: Request, name: str | None = None) -> Response:
        return self._lifecycle(request, "force_off")

    @extend_schema(request=None, responses=_ACCEPTED,
                   summary="Eject the ISO from the VM's CD drive: it boots from its disk from then on")
    @action(detail=True, methods=["post"], filter_backends=[])
    def eject(self, request: Request, name: str | None = None) -> Response:
        vm = self.get_object()
        _refuse_unless_may(request.user, "console")
        with service_call():
            job = eject_cd(vm.name, user=request.user)
        return accepted(job, request)

    @extend_schema(request=MigrateSerializer, responses=_ACCEPTED,
                   summary="Live-migrate a running VM to another CPU server (operators)")
    @action(detail=True, methods=["post"], filter_backends=[])
    def migrate(self, request: Request, name: str | None = None) -> Response:
        vm = self.get_object()
        _refuse_unless_may(request.user, "migrate")
        body = MigrateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with service_call():
            job = migrate_vm(vm.name, body.validated_data.get("target") or None, user=request.user,
                             max_mib_per_s=body.validated_data.get("max_mib_per_s"))
        response = accepted(job, request)
        response.data["warnings"] = VmMigrateParams.of(job).anti_affinity_broken  # a target chosen next to a member
        return response

    @extend_schema(request=GroupsSerializer, responses=GroupsAnswerSerializer,
                   summary="Set the VM's anti-affinity groups (nothing moves)")
    @action(detail=True, methods=["post"], url_path="anti-affinity-groups", url_name="anti-affinity-groups",
            filter_backends=[])
    def anti_affinity_groups(self, request: Request, name: str | None = None) -> Response:
        vm = self.get_object()
        refuse_unless_may_manage(request.user)
        body = GroupsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with service_call():
            shared = set_vm_groups(vm.name, body.validated_data["groups"], request.user)
        shown = shows_cpu_server(request.user)
        return Response({"anti_affinity_groups": list(vm.anti_affinity_groups.values_list("name", flat=True)),
                         "warnings": [f"anti-affinity group {b.group}: {b.together(server_shown=shown)}"
                                      for b in shared]})
