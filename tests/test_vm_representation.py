"""One representation of a VM (vms/serializers.py): the API, the state events, `manage.py vm show` and
the VM's pages read the same fields, told as their audience may be (the CPU server only to those
shown it, where the parts live only to operators)."""
from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from hosts.models import CpuServer, DiskServer
from storage.models import AoEExport, Mirror
from tenants.services import add_user, create_tenant, set_permissions
from vms.choices import VmState
from vms.events import EVENT_FIELDS, vm_event
from vms.models import AntiAffinityGroup, VirtualMachine
from vms.serializers import OPERATORS, Audience, VmSerializer, vm_summary

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture
def vm() -> VirtualMachine:
    cpu = CpuServer.objects.create(name="cpu1", address="192.0.2.21", libvirt_uri="test:///default", memory_mib=4096,
                                   vcpus=4)
    acme = create_tenant("acme")
    vm = VirtualMachine.objects.create(name="web1", vcpus=1, memory_mib=128, disk_mib=64, cpu_server=cpu, tenant=acme,
                                       state=VmState.RUNNING, running_since=timezone.now())
    mirror = Mirror.objects.create(vm=vm)
    for leg in (0, 1):
        disk = DiskServer.objects.create(name=f"disk{leg + 1}", address=f"192.0.2.{11 + leg}", aoe_shelf=leg + 1,
                                         capacity_mib=10_000)
        AoEExport.objects.create(disk_server=disk, mirror=mirror, leg=leg, shelf=leg + 1, slot=3,
                                 backing_path=f"/srv/web1-{leg}.img", size_mib=64)
    return vm


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_event_and_the_api_say_the_same_of_a_vm(vm):
    operator = User.objects.create_user("op", is_staff=True)
    event = vm_event(vm)["vm"]
    api = _client(operator).get("/api/vms/web1/").json()
    assert set(event) == set(EVENT_FIELDS)
    shared = set(event) & set(api)
    assert shared == {"name", "state", "cpu_server", "running_since"}
    assert {key: event[key] for key in shared} == {key: api[key] for key in shared}  # the same time, written alike


def test_a_tenant_not_shown_cpu_servers_is_told_none_by_the_event_the_api_or_the_page(vm):
    alice = add_user(vm.tenant, "alice")
    tenant_view = Audience.of_tenant(vm.tenant)
    assert tenant_view == Audience.of(alice) == Audience(operator=False, shows_cpu_server=False)
    assert "cpu_server" not in vm_event(vm, tenant_view)["vm"]
    api = _client(alice).get("/api/vms/web1/").json()
    assert "cpu_server" not in api and "legs" not in api
    summary = vm_summary(vm, tenant_view)
    assert not {"cpu_server", "domain", "legs"} & set(summary) and summary["name"] == "web1"
    set_permissions(vm.tenant, shows_cpu_server=True)
    vm.tenant.refresh_from_db()
    assert vm_event(vm, Audience.of_tenant(vm.tenant))["vm"]["cpu_server"] == "cpu1"
    alice = User.objects.get(pk=alice.pk)  # a fresh user: tenant_of caches the tenant on the object
    api = _client(alice).get("/api/vms/web1/").json()
    assert api["cpu_server"] == "cpu1" and "legs" not in api


def test_the_summary_is_what_vm_show_prints_and_the_operators_pages_show(vm):
    AntiAffinityGroup.objects.create(name="web", tenant=vm.tenant).members.add(vm)
    out = io.StringIO()
    call_command("vm", "show", "web1", "--json", stdout=out)
    shown = json.loads(out.getvalue())
    assert shown == json.loads(json.dumps(vm_summary(vm)))
    assert list(shown) == ["name", "state", "cpu_server", "vcpus", "memory_mib", "disk_mib", "domain", "image",
                           "login_user", "nics", "legs", "anti_affinity_groups"]
    assert shown["anti_affinity_groups"] == ["web"]
    assert shown["domain"] == "xa-web1" and shown["state"] == "running" and shown["nics"] == []
    assert [(leg["disk_server"], leg["shelf"], leg["slot"], leg["backing_path"]) for leg in shown["legs"]] == [
        ("disk1", 1, 3, "/srv/web1-0.img"), ("disk2", 2, 3, "/srv/web1-1.img")]
    operator = User.objects.create_user("op", is_staff=True)
    page = _client(operator).get("/vms/web1/").content.decode()
    assert "/srv/web1-0.img" in page and "xa-web1" in page
    api = _client(operator).get("/api/vms/web1/").json()
    assert api["legs"] == shown["legs"] and api["anti_affinity_groups"] == ["web"]


def test_a_representation_must_say_who_it_is_for(vm):
    with pytest.raises(TypeError, match="needs an audience"):
        VmSerializer(vm).data  # noqa: B018 - reading it builds it
    assert VmSerializer(vm, audience=OPERATORS, fields=("name", "legs")).data["legs"][0]["disk_server"] == "disk1"
