"""The audit log over the API: the events this user may see, filtered as on the page."""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import mixins, serializers, viewsets

from api.common import viewer
from audit.choices import Action, ActorKind
from audit.filtersets import AuditEventFilterSet
from audit.models import AuditEvent
from jobs.redaction import redactor_for
from tenants.access import is_operator


class AuditEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    time = serializers.DateTimeField()
    actor = serializers.CharField(source="shown_actor", allow_blank=True,
                                  help_text="A user name; for manage.py, the system's user; monitor; system. To a "
                                            "tenant's users, someone outside the tenant is \"an operator\".")
    actor_kind = serializers.ChoiceField(choices=ActorKind.choices)
    action = serializers.ChoiceField(choices=Action.choices)
    target_kind = serializers.CharField(allow_blank=True, help_text="vm, host, user, tenant, image, cluster.")
    target_name = serializers.CharField(allow_blank=True)
    tenant = serializers.CharField(source="tenant.slug", allow_null=True, help_text="None: operators only.")
    source_ip = serializers.IPAddressField(source="shown_ip", allow_null=True,
                                           help_text="Where it came from, when known (an operator's: operators only).")
    details = serializers.DictField()

    def to_representation(self, instance: AuditEvent) -> dict[str, Any]:
        data = super().to_representation(instance)
        user = viewer(self)
        if user is None or is_operator(user):
            return data
        # What a tenant's user reads of a name or a detail, as in the job history (jobs/redaction.py).
        if "redact" not in self.context:  # once per response, not once per event
            self.context["redact"] = redactor_for(user)
        redact = self.context["redact"]
        return data | {"target_name": redact(data["target_name"]), "details": redact(data["details"])}


class AuditEventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Audit events: every one for operators, their tenant's for a tenant's users; newest first."""

    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilterSet

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return AuditEvent.objects.visible_to(self.request.user).select_related("tenant")
