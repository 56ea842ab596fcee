"""Notification targets over the API: the caller's own (every one for operators), made, changed and
removed; a test sent; a webhook's secret rotated; the delivery log. Thin, as the pages are: every
change goes through notifications/services.py, which decides what a tenant's user may hear of,
writes the audit event and refuses bad input with nothing changed. A webhook's signing secret is in
the answer that made it (create, rotate-secret) and in no other."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse

from api.common import error_dict, viewer
from jobs.redaction import redactor_for
from notifications import services
from notifications.choices import (
    SEVERITY_NAMES,
    SUBSCRIBABLE_KINDS,
    DeliveryState,
    EventKind,
    Severity,
    TargetKind,
)
from notifications.models import Delivery, Target
from tenants.access import is_operator

# The webhook's address is `webhook_url` here: `url` is, as everywhere in the API, the object's own link.
URL_FIELD = "webhook_url"
# An answer holding a secret is kept by no cache along the way.
NO_STORE = {"Cache-Control": "no-store"}


class SeverityField(serializers.ChoiceField):
    """A severity by name (info, warning, error, critical), as the webhooks' bodies say it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=SEVERITY_NAMES, **kwargs)

    def to_internal_value(self, data: Any) -> int:
        name = super().to_internal_value(data)
        return next(severity.value for severity in Severity if severity.label == name)

    def to_representation(self, value: int) -> str:
        return Severity(value).label


def _kinds_field(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(child=serializers.ChoiceField(choices=[kind.value for kind in SUBSCRIBABLE_KINDS]),
                                 **kwargs)


class TargetSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=TargetKind.choices)
    email = serializers.EmailField(allow_blank=True, help_text="An email target's address (empty for a webhook).")
    webhook_url = serializers.URLField(source="url", allow_blank=True,
                                       help_text="A webhook's URL (empty for an email target).")
    kinds = _kinds_field(help_text="The event kinds it wants; empty: every kind its owner may hear of.")
    min_severity = SeverityField(help_text="It is sent events of this severity or above.")
    enabled = serializers.BooleanField()
    owner = serializers.CharField(source="owner.username", help_text="Whose it is: what they may hear of is what "
                                                                      "it may be sent (a tenant's user: their VMs').")
    created_at = serializers.DateTimeField()
    url = serializers.SerializerMethodField()
    deliveries_url = serializers.SerializerMethodField()

    def get_url(self, target: Target) -> str:
        return reverse("api:notificationtarget-detail", args=[target.pk], request=self.context["request"])

    def get_deliveries_url(self, target: Target) -> str:
        return reverse("api:notificationtarget-deliveries", args=[target.pk], request=self.context["request"])


class TargetWithSecretSerializer(TargetSerializer):
    secret = serializers.CharField(allow_null=True, help_text="The webhook's signing secret, in this answer only: "
                                                              "the panel never shows it again. Null for an email.")


class TargetCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=TargetKind.choices)
    email = serializers.EmailField(required=False, allow_blank=True, help_text="For kind email.")
    webhook_url = serializers.URLField(max_length=500, required=False, allow_blank=True,
                                       help_text="For kind webhook: http:// or https://.")
    kinds = _kinds_field(required=False, default=list, help_text="Empty: every kind you may hear of (a tenant's "
                                                                 "users: their VMs' kinds only).")
    min_severity = SeverityField(required=False, help_text="Default: warning.")
    enabled = serializers.BooleanField(required=False, default=True)


class TargetUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    kind = serializers.ChoiceField(choices=TargetKind.choices, required=False,
                                   help_text="Only its own: a target stays an email or a webhook.")
    email = serializers.EmailField(required=False, allow_blank=True)
    webhook_url = serializers.URLField(max_length=500, required=False, allow_blank=True)
    kinds = _kinds_field(required=False)
    min_severity = SeverityField(required=False)
    enabled = serializers.BooleanField(required=False)


class DeliveryEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=EventKind.choices)
    severity = SeverityField()
    subject = serializers.CharField()
    vm = serializers.CharField(source="vm_name", allow_blank=True)
    time = serializers.DateTimeField(source="created_at")


class DeliverySerializer(serializers.Serializer):
    """One event to one target: a line of the target's delivery log."""

    id = serializers.IntegerField()
    event = DeliveryEventSerializer()
    state = serializers.ChoiceField(choices=DeliveryState.choices)
    attempts = serializers.IntegerField()
    response_code = serializers.IntegerField(allow_null=True, help_text="A webhook's last HTTP status.")
    last_error = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    next_attempt_at = serializers.DateTimeField(help_text="When it is tried again, while it is retrying.")
    sent_at = serializers.DateTimeField(allow_null=True)

    def to_representation(self, instance: Delivery) -> dict[str, Any]:
        data = super().to_representation(instance)
        user = viewer(self)
        if user is None or is_operator(user):
            return data
        # As the target's page shows it to a tenant's user (jobs/redaction.py).
        if "redact" not in self.context:
            self.context["redact"] = redactor_for(user)
        redact = self.context["redact"]
        data["event"]["subject"] = redact(data["event"]["subject"])
        return data | {"last_error": redact(data["last_error"])}


@contextmanager
def target_call() -> Iterator[None]:
    """The service's refusal (nothing changed) as a 400, its `url` errors under `webhook_url`."""
    try:
        yield
    except DjangoValidationError as exc:
        errors = error_dict(exc)
        if "url" in errors:
            errors[URL_FIELD] = errors.pop("url")
        raise serializers.ValidationError(errors) from exc


def _refuse_the_other_address(kind: str, data: dict[str, Any]) -> None:
    """An address of the other kind is a mistake to report, not to drop in silence."""
    other = URL_FIELD if kind == TargetKind.EMAIL else "email"
    if data.get(other):
        raise serializers.ValidationError({other: f"an {kind} target has no {other.replace('_', ' ')}"})


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    """The model's fields from a request's validated data."""
    fields = dict(data)
    if URL_FIELD in fields:
        fields["url"] = fields.pop(URL_FIELD)
    if "kinds" in fields:
        fields["kinds"] = list(dict.fromkeys(fields["kinds"]))
    return fields


@extend_schema(tags=["notifications"])
class NotificationTargetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Your notification targets (operators: everyone's); another user's is a 404."""

    serializer_class = TargetSerializer
    filter_backends: list = []

    def get_queryset(self) -> QuerySet[Target]:
        return Target.objects.visible_to(self.request.user).select_related("owner")

    @extend_schema(request=TargetCreateSerializer, responses={201: TargetWithSecretSerializer},
                   summary="Add a notification target (a webhook's secret is in this answer only)")
    def create(self, request: Request) -> Response:
        if not services.may_have_targets(request.user):
            raise PermissionDenied("only operators and a tenant's users receive notifications")
        body = TargetCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        _refuse_the_other_address(body.validated_data["kind"], body.validated_data)
        # The model's default (warning): a serializer's default would skip SeverityField's conversion.
        target = Target(owner=request.user, **_fields(body.validated_data))
        with target_call():
            secret = services.save_target(target)
        data = TargetWithSecretSerializer(target, context=self.get_serializer_context()).data | {"secret": secret}
        return Response(data, status=status.HTTP_201_CREATED, headers=NO_STORE | {"Location": data["url"]})

    @extend_schema(request=TargetUpdateSerializer, responses=TargetSerializer,
                   summary="Change a notification target (its secret stays; rotate-secret makes a new one)")
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        target = self.get_object()
        body = TargetUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        _refuse_the_other_address(target.kind, body.validated_data)
        for field, value in _fields(body.validated_data).items():
            setattr(target, field, value)
        with target_call():
            services.save_target(target)
        return Response(self.get_serializer(target).data)

    @extend_schema(request=None, responses={204: None}, summary="Remove a notification target and its log")
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        services.delete_target(self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={202: DeliverySerializer},
                   summary="Send a test event to this target alone, whatever its filter")
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        target = self.get_object()
        delivery = services.test_target(target)
        data = DeliverySerializer(delivery, context=self.get_serializer_context()).data
        location = reverse("api:notificationtarget-deliveries", args=[target.pk], request=request)
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": location})

    @extend_schema(request=None, responses=TargetWithSecretSerializer,
                   summary="A new signing secret for a webhook, in this answer only; the old one stops at once")
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        target = self.get_object()
        with target_call():
            secret = services.rotate_secret(target)
        data = TargetWithSecretSerializer(target, context=self.get_serializer_context()).data | {"secret": secret}
        return Response(data, headers=NO_STORE)

    @extend_schema(responses=DeliverySerializer(many=True), summary="The target's deliveries, newest first")
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str | None = None) -> Response:
        target = self.get_object()
        page = self.paginate_queryset(target.deliveries.select_related("event").order_by("-created_at", "-id"))
        return self.get_paginated_response(DeliverySerializer(page, many=True,
                                                              context=self.get_serializer_context()).data)
