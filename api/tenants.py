"""Tenants, their users and quotas over the API (operators), and /api/me/ (anyone signed in).
Every change goes through tenants.services, which validates and raises with nothing changed."""
from __future__ import annotations

from typing import Any

import django_filters
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from api.common import IsOperator, service_call
from api.vms import OPERATOR_ACTIONS
from tenants import services
from tenants.access import is_operator, may_create_vms, may_run, shows_cpu_server, tenant_of
from tenants.models import TENANT_ACTIONS, Tenant
from tenants.quotas import usage
from xenaoe_panel.names import NAME

SLUG_REGEX = NAME
USERNAME_REGEX = r"[\w.@+-]{1,150}"


class UsageSerializer(serializers.Serializer):
    resource = serializers.CharField()
    label = serializers.CharField(help_text="In a sentence: 'memory'.")
    title = serializers.CharField(help_text="As a heading: 'Memory'.")
    unit = serializers.CharField(allow_blank=True)
    used = serializers.IntegerField()
    limit = serializers.IntegerField()
    remaining = serializers.IntegerField()


class QuotasSerializer(serializers.Serializer):
    vms = UsageSerializer()
    vcpus = UsageSerializer()
    memory_mib = UsageSerializer()
    disk_mib = UsageSerializer()


class TenantSerializer(serializers.Serializer):
    """tenants.services.tenant_summary, with the usage of every quota."""

    slug = serializers.CharField()
    name = serializers.CharField()
    may_create_vms = serializers.BooleanField()
    allowed_actions = serializers.ListField(child=serializers.ChoiceField(choices=list(TENANT_ACTIONS)))
    shows_cpu_server = serializers.BooleanField()
    quotas = QuotasSerializer()
    users = serializers.ListField(child=serializers.CharField())
    url = serializers.CharField()

    def to_representation(self, tenant: Tenant) -> dict[str, Any]:
        url = reverse("api:tenant-detail", args=[tenant.slug], request=self.context["request"])
        return super().to_representation(services.tenant_summary(tenant) | {"url": url})


class TenantCreateSerializer(serializers.Serializer):
    slug = serializers.CharField(max_length=63)
    name = serializers.CharField(max_length=120, required=False, allow_blank=True)
    may_create_vms = serializers.BooleanField(required=False, default=True)
    allowed_actions = serializers.ListField(child=serializers.ChoiceField(choices=list(TENANT_ACTIONS)),
                                            required=False)
    shows_cpu_server = serializers.BooleanField(required=False, default=False)
    quota_vms = serializers.IntegerField(required=False, min_value=0)
    quota_vcpus = serializers.IntegerField(required=False, min_value=0)
    quota_memory_mib = serializers.IntegerField(required=False, min_value=0)
    quota_disk_mib = serializers.IntegerField(required=False, min_value=0)


class TenantUpdateSerializer(serializers.Serializer):
    may_create_vms = serializers.BooleanField(required=False)
    allowed_actions = serializers.ListField(child=serializers.ChoiceField(choices=list(TENANT_ACTIONS)),
                                            required=False)
    shows_cpu_server = serializers.BooleanField(required=False)


class QuotaUpdateSerializer(serializers.Serializer):
    vms = serializers.IntegerField(required=False, min_value=0)
    vcpus = serializers.IntegerField(required=False, min_value=0)
    memory_mib = serializers.IntegerField(required=False, min_value=0, help_text="MiB")
    disk_mib = serializers.IntegerField(required=False, min_value=0, help_text="MiB")


class TenantViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    permission_classes = [IsOperator]
    serializer_class = TenantSerializer
    lookup_field = "slug"
    lookup_value_regex = SLUG_REGEX
    filter_backends: list = []
    queryset = Tenant.objects.prefetch_related("memberships__user")

    @extend_schema(request=TenantCreateSerializer, responses={201: TenantSerializer}, summary="Create a tenant")
    def create(self, request: Request) -> Response:
        body = TenantCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with service_call():
            tenant = services.create_tenant(**body.validated_data)
        return Response(self.get_serializer(tenant).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=TenantUpdateSerializer, responses=TenantSerializer,
                   summary="Change what the tenant's users may do")
    def partial_update(self, request: Request, slug: str | None = None) -> Response:
        tenant = self.get_object()
        body = TenantUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with service_call():
            tenant = services.set_permissions(tenant, **body.validated_data)
        return Response(self.get_serializer(tenant).data)

    @extend_schema(request=None, responses={204: None}, summary="Delete a tenant that has no VMs")
    def destroy(self, request: Request, slug: str | None = None) -> Response:
        tenant = self.get_object()
        with service_call():
            services.delete_tenant(tenant)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=QuotaUpdateSerializer, responses=TenantSerializer,
                   summary="Change quotas (lowering one below usage blocks new VMs, takes nothing away)")
    @action(detail=True, methods=["patch"])
    def quota(self, request: Request, slug: str | None = None) -> Response:
        tenant = self.get_object()
        body = QuotaUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with service_call():
            tenant = services.set_quotas(tenant, **{f"quota_{k}": v for k, v in body.validated_data.items()})
        return Response(self.get_serializer(tenant).data)


class UserSerializer(serializers.Serializer):
    username = serializers.CharField()
    email = serializers.CharField(allow_blank=True)
    is_active = serializers.BooleanField()
    is_operator = serializers.BooleanField(source="is_staff")
    tenant = serializers.CharField(source="membership.tenant.slug", allow_null=True)
    date_joined = serializers.DateTimeField()
    last_login = serializers.DateTimeField(allow_null=True)
    url = serializers.SerializerMethodField()

    def get_url(self, user: Any) -> str:
        return reverse("api:user-detail", args=[user.username], request=self.context["request"])


class UserCreateSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    email = serializers.EmailField(required=False, allow_blank=True, default="")
    password = serializers.CharField(required=False, write_only=True, max_length=4096,
                                     help_text="Omitted: the user sets one through the password reset.")
    tenant = serializers.CharField(max_length=63, help_text="The tenant's short name.")


class UserUpdateSerializer(serializers.Serializer):
    tenant = serializers.CharField(required=False, allow_null=True, max_length=63,
                                   help_text="Move the user to this tenant; null takes them out of any.")
    is_active = serializers.BooleanField(required=False, help_text="false: the user can no longer sign in.")


class UserFilter(django_filters.FilterSet):
    tenant = django_filters.CharFilter(field_name="membership__tenant__slug", max_length=63)
    is_active = django_filters.BooleanFilter()

    class Meta:
        model = get_user_model()
        fields = ["tenant", "is_active"]


def _tenant_named(slug: str, field: str = "tenant") -> Tenant:
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise serializers.ValidationError({field: [f"no tenant named {slug!r}"]})
    return tenant


class UserViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The panel's users: operators (staff) and tenants' users. Never a password or its hash."""

    permission_classes = [IsOperator]
    serializer_class = UserSerializer
    filterset_class = UserFilter
    lookup_field = "username"
    lookup_value_regex = USERNAME_REGEX

    def get_queryset(self) -> QuerySet:
        return get_user_model().objects.select_related("membership__tenant").order_by("username")

    @extend_schema(request=UserCreateSerializer, responses={201: UserSerializer},
                   summary="Create a user of a tenant (not an operator)")
    def create(self, request: Request) -> Response:
        body = UserCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        tenant = _tenant_named(data["tenant"])
        with service_call():
            user = services.add_user(tenant, data["username"], email=data["email"], password=data.get("password"))
        return Response(self.get_serializer(self.get_queryset().get(pk=user.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=UserUpdateSerializer, responses=UserSerializer,
                   summary="Move a user to another tenant (or out of any), deactivate or reactivate them")
    def partial_update(self, request: Request, username: str | None = None) -> Response:
        user = self.get_object()
        body = UserUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        with service_call():
            if "is_active" in data:
                services.set_active(user, data["is_active"], by=request.user)
            if "tenant" in data:
                services.move_user(user, _tenant_named(data["tenant"]) if data["tenant"] else None)
        return Response(self.get_serializer(self.get_queryset().get(pk=user.pk)).data)


class MeTenantSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()


class MayDoSerializer(serializers.Serializer):
    create_vms = serializers.BooleanField()
    vm_actions = serializers.ListField(child=serializers.CharField(), help_text="On the VMs this user sees.")
    see_cpu_servers = serializers.BooleanField()
    operate_cluster = serializers.BooleanField(help_text="Hosts, incidents, tenants, users: operators.")


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    is_operator = serializers.BooleanField()
    tenant = MeTenantSerializer(allow_null=True)
    quotas = UsageSerializer(many=True, allow_null=True, help_text="The tenant's quotas and what is in use.")
    may = MayDoSerializer()


class MeView(APIView):
    @extend_schema(responses=MeSerializer, summary="Who am I: my tenant, its quotas in use, what I may do")
    def get(self, request: Request) -> Response:
        user = request.user
        tenant = tenant_of(user)
        operator = is_operator(user)
        actions = list(OPERATOR_ACTIONS) if operator else [a for a in TENANT_ACTIONS if may_run(user, a)]
        return Response(MeSerializer({
            "username": user.get_username(),
            "is_operator": operator,
            "tenant": {"slug": tenant.slug, "name": tenant.name} if tenant else None,
            "quotas": [u.as_dict() for u in usage(tenant)] if tenant else None,
            "may": {"create_vms": may_create_vms(user), "vm_actions": actions,
                    "see_cpu_servers": shows_cpu_server(user), "operate_cluster": operator},
        }).data)

