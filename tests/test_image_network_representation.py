"""One representation of an image and of a network (images/serializers.py, networks/serializers.py):
the API and `manage.py image|network list --json` read the same fields, told as their audience may
be (where an image's copies are and where it came from, a network's bridge, VLAN and publication,
only to operators). The JSON is pinned here, keys in order: clients read it."""
from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from hosts.models import DiskServer
from images.choices import CopyState, ImageKind, ImageState
from images.models import MD_RESERVE_MIB, Image, ImageCopy
from images.serializers import ImageSerializer
from networks.models import Network, Nic
from networks.serializers import NetworkSerializer
from networks.services import NetworkRequest, create_network
from tenants.services import add_user, create_tenant
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db
User = get_user_model()

IMAGE_FOR_OPERATORS = {
    "name": "debian-12", "kind": "disk", "os": "Debian", "os_version": "12", "login_user": "debian", "size_mib": 640,
    "min_disk_mib": 640 + MD_RESERVE_MIB, "sha256": "a" * 64, "kernel_version": "6.1.0", "state": "ready",
    "default": True, "public": True, "disk_servers": ["disk1", "disk2"], "source": "built from recipe debian-12",
}
IMAGE_FOR_TENANTS = {key: value for key, value in IMAGE_FOR_OPERATORS.items()
                     if key not in ("disk_servers", "source")}
NETWORK_FOR_OPERATORS = {
    "name": "lab", "bridge": "br-guest", "bridge_type": "linux", "vlan": 214, "cidr": "10.214.0.0/24",
    "gateway": "10.214.0.1", "dns": ["10.214.0.1", "10.214.0.2"], "range": "10.214.0.100-10.214.0.102",
    "dhcp": False, "default": True, "public": True, "addresses_used": 1, "pool_size": 3,
}
NETWORK_FOR_TENANTS = {key: value for key, value in NETWORK_FOR_OPERATORS.items()
                       if key not in ("bridge", "bridge_type", "vlan", "public")}


@pytest.fixture
def world() -> dict[str, Client]:
    image = Image.objects.create(name="debian-12", os_name="Debian", os_version="12", size_mib=640, sha256="a" * 64,
                                 kernel_version="6.1.0", login_user="debian", state=ImageState.READY, is_default=True,
                                 source="built from recipe debian-12")
    for i, state in ((2, CopyState.READY), (1, CopyState.READY), (3, CopyState.COPYING)):  # disk3's is not there yet
        disk = DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=10**5)
        ImageCopy.objects.create(image=image, disk_server=disk, path=f"/srv/images/{i}", state=state)
    network = create_network(NetworkRequest(name="lab", bridge="br-guest", vlan=214, cidr="10.214.0.0/24",
                                            gateway="10.214.0.1", pool="10.214.0.100-10.214.0.102",
                                            dns="10.214.0.1,10.214.0.2"))
    vm = VirtualMachine.objects.create(name="web1", vcpus=1, memory_mib=128, disk_mib=1024)
    Nic.objects.create(vm=vm, network=network, mac="02:a0:e0:00:00:01", ip="10.214.0.100")
    Nic.objects.create(vm=vm, network=network, mac="02:a0:e0:00:00:02", index=1)  # no address: not counted
    clients = {}
    for who, user in (("operator", User.objects.create_user("op", is_staff=True)),
                      ("tenant", add_user(create_tenant("acme"), "alice"))):
        clients[who] = Client()
        clients[who].force_login(user)
    return clients


def _items(data: dict) -> list[tuple[str, object]]:
    return list(data.items())  # the keys' order too


@pytest.mark.parametrize("who, expected", [("operator", IMAGE_FOR_OPERATORS), ("tenant", IMAGE_FOR_TENANTS)])
def test_the_api_tells_an_image_as_its_reader_may_know_it(world, who, expected):
    client = world[who]
    assert _items(client.get("/api/images/debian-12/").json()) == _items(expected)
    listed = client.get("/api/images/").json()
    assert [_items(image) for image in listed["results"]] == [_items(expected)]
    assert client.get("/api/images/?kind=iso").json()["results"] == []


@pytest.mark.parametrize("who, expected", [("operator", NETWORK_FOR_OPERATORS), ("tenant", NETWORK_FOR_TENANTS)])
def test_the_api_tells_a_network_as_its_reader_may_know_it(world, who, expected):
    client = world[who]
    assert _items(client.get("/api/networks/lab/").json()) == _items(expected)
    assert [_items(network) for network in client.get("/api/networks/").json()["results"]] == [_items(expected)]


def test_the_cli_lists_what_the_api_tells_operators(world):
    Image.objects.create(name="installer", kind=ImageKind.ISO, os_name="Debian", size_mib=600, sha256="b" * 64,
                         public=False)
    out = io.StringIO()
    call_command("image", "list", "--json", stdout=out)
    images = json.loads(out.getvalue())
    assert [_items(image) for image in images] == [_items(IMAGE_FOR_OPERATORS), _items({
        "name": "installer", "kind": "iso", "os": "Debian", "os_version": "", "login_user": "", "size_mib": 600,
        "min_disk_mib": 600 + MD_RESERVE_MIB, "sha256": "b" * 64, "kernel_version": "", "state": "pending",
        "default": False, "public": False, "disk_servers": [], "source": ""})]
    assert _items(world["operator"].get("/api/images/installer/").json()) == _items(images[1])
    out = io.StringIO()
    call_command("network", "list", "--json", stdout=out)
    assert [_items(network) for network in json.loads(out.getvalue())] == [_items(NETWORK_FOR_OPERATORS)]


def test_a_representation_must_say_whom_it_is_for(world):
    image, network = Image.objects.get(), Network.objects.get()
    for serializer in (ImageSerializer(image), NetworkSerializer(network)):
        with pytest.raises(TypeError, match="needs for_operator"):
            serializer.data  # noqa: B018 - reading it builds it
    assert "source" not in ImageSerializer(image, for_operator=False).data
    assert NetworkSerializer(network, for_operator=True).data["bridge"] == "br-guest"
