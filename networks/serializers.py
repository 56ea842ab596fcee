"""A network as data: its fields written down once, for the API (api/images.py says whom for) and
`manage.py network list --json`; how it reaches the CPU servers (bridge, VLAN) and whom it is
published to told to operators only."""
from __future__ import annotations

from rest_framework import serializers

from networks.models import BridgeType, Network
from xenaoe_panel.serializers import OperatorFieldsSerializer


class NetworkSerializer(OperatorFieldsSerializer):
    OPERATOR_FIELDS = ("bridge", "bridge_type", "vlan", "public")

    name = serializers.CharField()
    bridge = serializers.CharField(required=False, help_text="Operators only.")
    bridge_type = serializers.ChoiceField(choices=BridgeType.choices, required=False, help_text="Operators only.")
    vlan = serializers.IntegerField(allow_null=True, required=False, help_text="Operators only.")
    cidr = serializers.CharField()
    gateway = serializers.CharField(allow_null=True)
    dns = serializers.ListField(child=serializers.CharField(), source="dns_servers")
    range = serializers.SerializerMethodField(help_text="The address pool, first-last.")
    dhcp = serializers.BooleanField()
    default = serializers.BooleanField(source="is_default")
    public = serializers.BooleanField(required=False, help_text="Operators only: open to every tenant.")
    addresses_used = serializers.SerializerMethodField()
    pool_size = serializers.IntegerField()

    def get_range(self, network: Network) -> str:
        return f"{network.pool_start}-{network.pool_end}"

    def get_addresses_used(self, network: Network) -> int:
        return network.nics.exclude(ip=None).count()
