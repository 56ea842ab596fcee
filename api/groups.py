"""Anti-affinity groups over the API: the groups the caller sees (a tenant's users: their tenant's),
with their members; a new group, a group removed. A VM's own groups are set on the VM
(`POST /api/vms/{name}/anti-affinity-groups/`, api/vms.py). Changes go through vms/affinity.py."""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse

from api.common import service_call
from vms.affinity import create_group, delete_group, may_manage
from vms.models import AntiAffinityGroup
from vms.serializers import NamesField


class AntiAffinityGroupSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    tenant = serializers.CharField(source="tenant.slug", allow_null=True,
                                   help_text="Whose it is (its members are that tenant's VMs); null: the operators'.")
    description = serializers.CharField(allow_blank=True)
    members = NamesField(help_text="Its VMs, by name.")
    url = serializers.SerializerMethodField()

    def get_url(self, group: AntiAffinityGroup) -> str:
        return reverse("api:antiaffinitygroup-detail", args=[group.pk], request=self.context["request"])


class GroupCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=63)
    description = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    tenant = serializers.CharField(required=False, allow_blank=True, max_length=63,
                                   help_text="Operators: whose it is (empty: the operators'); a tenant's users "
                                             "always make their own tenant's.")


def refuse_unless_may_manage(user: Any) -> None:
    if not may_manage(user):
        raise PermissionDenied("your tenant's users may not manage anti-affinity groups; ask an operator")


@extend_schema(tags=["anti-affinity groups"])
class AntiAffinityGroupViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = AntiAffinityGroupSerializer
    filter_backends: list = []

    def get_queryset(self) -> QuerySet[AntiAffinityGroup]:
        return AntiAffinityGroup.objects.visible_to(self.request.user).select_related("tenant").prefetch_related(
            "members")

    @extend_schema(request=GroupCreateSerializer, responses={201: AntiAffinityGroupSerializer},
                   summary="Create an anti-affinity group")
    def create(self, request: Request) -> Response:
        refuse_unless_may_manage(request.user)
        body = GroupCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        with service_call():
            group = create_group(data["name"], user=request.user, tenant=data.get("tenant") or None,
                                 description=data["description"])
        return Response(self.get_serializer(group).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={204: None},
                   summary="Remove an anti-affinity group (its VMs stay where they are)")
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        group = self.get_object()
        refuse_unless_may_manage(request.user)
        with service_call():
            delete_group(group, request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
