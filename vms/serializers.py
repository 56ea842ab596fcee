"""A VM as data: the one place its fields are written down, and the one place that decides what a
viewer is told about it.

The API's representation (api/vms.py adds what the caller may do and where to find things), the
state events pushed to open pages (vms/events.py), `manage.py vm show` and the VM's pages read their
fields from `VmSerializer`, each choosing which (`fields=`). Whoever they are for (`Audience`): only
those shown CPU servers get `cpu_server`, only operators where its parts live (`domain`, `legs`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from storage.models import AoEExport
from tenants.access import is_operator, shows_cpu_server
from tenants.models import Tenant
from vms.choices import VmState
from vms.models import VirtualMachine

OPERATOR_FIELDS = ("domain", "legs")  # where its parts live on the hosts
CPU_SERVER_FIELDS = ("cpu_server",)


@dataclass(frozen=True)
class Audience:
    """Who a VM's representation is for: what they may be told."""

    operator: bool
    shows_cpu_server: bool

    @classmethod
    def of(cls, user: Any) -> Audience:
        return cls(operator=is_operator(user), shows_cpu_server=shows_cpu_server(user))

    @classmethod
    def of_tenant(cls, tenant: Tenant) -> Audience:
        """A tenant's users together (their websocket group)."""
        return cls(operator=False, shows_cpu_server=tenant.shows_cpu_server)

    @property
    def hidden(self) -> frozenset[str]:
        """The fields this audience is not told."""
        hidden = () if self.shows_cpu_server else CPU_SERVER_FIELDS
        return frozenset(hidden + (() if self.operator else OPERATOR_FIELDS))


OPERATORS = Audience(operator=True, shows_cpu_server=True)


class LegSerializer(serializers.Serializer):
    disk_server = serializers.CharField(source="disk_server.name")
    shelf = serializers.IntegerField()
    slot = serializers.IntegerField()
    state = serializers.CharField()
    backing_path = serializers.CharField()


class NicSerializer(serializers.Serializer):
    network = serializers.CharField(source="network.name")
    mac = serializers.CharField()
    ip = serializers.IPAddressField(allow_null=True)


@extend_schema_field(LegSerializer(many=True))
class LegsField(serializers.Field):
    """The mirror's two legs, read from the prefetched rows when there are (mirror__legs__disk_server)."""

    def get_attribute(self, vm: VirtualMachine) -> VirtualMachine:
        return vm

    def to_representation(self, vm: VirtualMachine) -> list[dict[str, Any]]:
        mirror = getattr(vm, "mirror", None)
        legs: list[AoEExport] = sorted(mirror.legs.all(), key=lambda leg: leg.leg) if mirror else []
        return LegSerializer(legs, many=True).data


@extend_schema_field(NicSerializer(many=True))
class NicsField(serializers.Field):
    """Its network cards in order, read from the prefetched rows when there are (nics__network)."""

    def get_attribute(self, vm: VirtualMachine) -> VirtualMachine:
        return vm

    def to_representation(self, vm: VirtualMachine) -> list[dict[str, Any]]:
        return NicSerializer(sorted(vm.nics.all(), key=lambda nic: nic.index), many=True).data


@extend_schema_field(serializers.ListField(child=serializers.CharField()))
class NamesField(serializers.Field):
    """The names of the rows a to-many relation holds (from the prefetched rows when there are), by name."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(read_only=True, **kwargs)

    def to_representation(self, related: Any) -> list[str]:
        return sorted(row.name for row in related.all())


class VmSerializer(serializers.Serializer):
    name = serializers.CharField()
    state = serializers.ChoiceField(choices=VmState.choices)
    state_display = serializers.CharField(source="get_state_display")
    colour = serializers.CharField(source="state_colour",
                                   help_text="The state's colour on the pages (a Bootstrap name).")
    tenant = serializers.CharField(source="tenant.slug", allow_null=True)
    vcpus = serializers.IntegerField()
    memory_mib = serializers.IntegerField()
    disk_mib = serializers.IntegerField()
    cpu_server = serializers.CharField(source="cpu_server.name", allow_null=True, required=False,
                                       help_text="Only for users shown CPU servers.")
    running_since = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    domain = serializers.CharField(source="domain_name", required=False, help_text="Operators only.")
    image = serializers.CharField(source="image.name", allow_null=True, default=None)
    login_user = serializers.CharField(source="image.login_user", allow_null=True, default=None)
    iso = serializers.CharField(source="iso.name", allow_null=True, default=None,
                                help_text="The ISO in its CD drive (installing), or null.")
    nics = NicsField()
    legs = LegsField(required=False, help_text="Operators only: the mirror's legs.")
    anti_affinity_groups = NamesField(
        help_text="Its owner's anti-affinity groups it is in: kept on CPU servers apart from their other members.")

    def __init__(self, *args: Any, audience: Audience | None = None, fields: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.audience, self.wanted = audience, fields

    def get_audience(self) -> Audience | None:
        """Who the representation is for. The API's answers None while the OpenAPI schema is built
        (which shows every field); anything else must say."""
        if self.audience is None:
            raise TypeError(f"{type(self).__name__} needs an audience: who is it for?")
        return self.audience

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        if self.wanted is not None:
            fields = {name: fields[name] for name in self.wanted}
        audience = self.get_audience()
        if audience is None:
            return fields
        return {name: field for name, field in fields.items() if name not in audience.hidden}


SUMMARY_FIELDS = ("name", "state", "cpu_server", "vcpus", "memory_mib", "disk_mib", "domain", "image", "login_user",
                  "nics", "legs", "anti_affinity_groups")


def vm_summary(vm: VirtualMachine, audience: Audience = OPERATORS) -> dict[str, Any]:
    """The VM as `manage.py vm show` prints it and its pages read it (its legs, for operators)."""
    return dict(VmSerializer(vm, audience=audience, fields=SUMMARY_FIELDS).data)
