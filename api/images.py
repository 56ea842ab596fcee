"""Images and networks in the API: what a VM can be created from and put on. Read for everyone
(filtered: tenants see what is published to them), written by operators through the CLI and pages."""
from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, viewsets

from images.models import Image
from images.serializers import image_summary
from networks.models import Network
from networks.serializers import network_summary
from tenants.access import is_operator
from xenaoe_panel.names import NAME

NAME_REGEX = r"[a-z0-9][a-z0-9.-]{0,62}"


class ImageSerializer(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField(help_text="'disk': a VM boots it; 'iso': an installer for a new VM's CD drive.")
    os = serializers.CharField()
    os_version = serializers.CharField()
    login_user = serializers.CharField(help_text="The user a VM's SSH keys go to.")
    size_mib = serializers.IntegerField()
    min_disk_mib = serializers.IntegerField(help_text="A VM's disk must be at least this.")
    sha256 = serializers.CharField()
    kernel_version = serializers.CharField()
    state = serializers.CharField()
    default = serializers.BooleanField()
    disk_servers = serializers.ListField(child=serializers.CharField(), help_text="Where its copies are (operators).")

    def to_representation(self, image: Image) -> dict:
        data = image_summary(image)
        if not is_operator(self.context["request"].user):
            data.pop("disk_servers")
            data.pop("source")
        return data


@extend_schema(tags=["images"])
class ImageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = ImageSerializer
    lookup_field = "name"
    lookup_value_regex = NAME_REGEX

    def get_queryset(self) -> QuerySet[Image]:
        images = Image.objects.visible_to(self.request.user).prefetch_related("copies__disk_server")
        kind = self.request.query_params.get("kind")
        return images.filter(kind=kind) if kind else images


class NetworkSerializer(serializers.Serializer):
    name = serializers.CharField()
    cidr = serializers.CharField()
    gateway = serializers.CharField(allow_null=True)
    dns = serializers.ListField(child=serializers.CharField())
    range = serializers.CharField()
    dhcp = serializers.BooleanField()
    default = serializers.BooleanField()
    addresses_used = serializers.IntegerField()
    pool_size = serializers.IntegerField()
    bridge = serializers.CharField(help_text="Operators only.")
    vlan = serializers.IntegerField(allow_null=True, help_text="Operators only.")

    def to_representation(self, network: Network) -> dict:
        data = network_summary(network)
        if not is_operator(self.context["request"].user):
            for hidden in ("bridge", "bridge_type", "vlan", "public"):
                data.pop(hidden)
        return data


@extend_schema(tags=["networks"])
class NetworkViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = NetworkSerializer
    lookup_field = "name"
    lookup_value_regex = NAME

    def get_queryset(self) -> QuerySet[Network]:
        return Network.objects.visible_to(self.request.user)
