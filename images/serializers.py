"""An image as data: its fields written down once, for the API (api/images.py says whom for) and
`manage.py image list --json`; where its copies are and where it came from told to operators only."""
from __future__ import annotations

from rest_framework import serializers

from images.choices import ImageKind, ImageState
from xenaoe_panel.serializers import OperatorFieldsSerializer


class ImageSerializer(OperatorFieldsSerializer):
    OPERATOR_FIELDS = ("disk_servers", "source")

    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=ImageKind.choices,
                                   help_text="'disk': a VM boots it; 'iso': an installer for a new VM's CD drive.")
    os = serializers.CharField(source="os_name")
    os_version = serializers.CharField()
    login_user = serializers.CharField(help_text="The user a VM's SSH keys go to.")
    size_mib = serializers.IntegerField()
    min_disk_mib = serializers.IntegerField(help_text="A VM's disk must be at least this.")
    sha256 = serializers.CharField()
    kernel_version = serializers.CharField()
    state = serializers.ChoiceField(choices=ImageState.choices)
    default = serializers.BooleanField(source="is_default")
    public = serializers.BooleanField(help_text="Published to every tenant; else to those it names.")
    disk_servers = serializers.ListField(child=serializers.CharField(), required=False,
                                         help_text="Operators only: the disk servers holding a verified copy.")
    source = serializers.CharField(required=False,
                                   help_text="Operators only: built from a recipe, imported or uploaded.")
