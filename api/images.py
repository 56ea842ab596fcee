"""Images and networks in the API: what a VM can be created from and put on. Read for everyone
(filtered: tenants see what is published to them), written by operators through the CLI and pages."""
from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import mixins, viewsets

from api.common import ForViewerSerializer
from images.models import Image
from images.serializers import ImageSerializer
from networks.models import Network
from networks.serializers import NetworkSerializer
from xenaoe_panel.names import NAME

NAME_REGEX = r"[a-z0-9][a-z0-9.-]{0,62}"


@extend_schema_serializer(component_name="Image")
class ImageApiSerializer(ForViewerSerializer, ImageSerializer):
    """An image, as much of it as the caller may be told (images/serializers.py)."""


@extend_schema(tags=["images"])
class ImageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = ImageApiSerializer
    lookup_field = "name"
    lookup_value_regex = NAME_REGEX

    def get_queryset(self) -> QuerySet[Image]:
        images = Image.objects.visible_to(self.request.user).prefetch_related("copies__disk_server")
        kind = self.request.query_params.get("kind")
        return images.filter(kind=kind) if kind else images


@extend_schema_serializer(component_name="Network")
class NetworkApiSerializer(ForViewerSerializer, NetworkSerializer):
    """A network, as much of it as the caller may be told (networks/serializers.py)."""


@extend_schema(tags=["networks"])
class NetworkViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = NetworkApiSerializer
    lookup_field = "name"
    lookup_value_regex = NAME

    def get_queryset(self) -> QuerySet[Network]:
        return Network.objects.visible_to(self.request.user)
