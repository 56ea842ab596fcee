"""VM names are unique across the cluster (libvirt domains xa-NAME), yet a tenant's user must not
learn which names other tenants use: a request answers the same for a name taken by a VM they
cannot see as for a free one, until the VM would really be created (and then the answer says the
name is not available, without saying whose or what)."""
from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from hosts.models import CpuServer, DiskServer
from jobs.models import Job
from storage.models import AoEExport
from tenants.services import add_user, create_tenant
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(django_user_model):
    for i in (1, 2):
        CpuServer.objects.create(name=f"cpu{i}", address=f"192.0.2.{20 + i}", libvirt_uri="test:///default",
                                 memory_mib=8192, vcpus=8)
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=100_000)
    alice = add_user(create_tenant("acme"), "alice")
    create_tenant("globex")
    operator = django_user_model.objects.create_user("op", is_staff=True)
    create_vm(VmRequest(name="b1", vcpus=1, memory_mib=256, disk_mib=100, tenant="globex"), user=operator)
    create_vm(VmRequest(name="a1", vcpus=1, memory_mib=256, disk_mib=100), user=alice)
    return {"alice": alice, "operator": operator}


def _counts() -> tuple[int, int, int]:
    return VirtualMachine.objects.count(), AoEExport.objects.count(), Job.objects.count()


def _api_answer(client: APIClient, name: str, **fields) -> dict:
    response = client.post("/api/vms/", {"name": name, "vcpus": 1, "memory_mib": 256, "disk_mib": 100} | fields,
                           format="json")
    assert response.status_code == 400
    return {field: [m.replace(name, "NAME") for m in messages] for field, messages in response.json().items()}


@pytest.mark.parametrize("bad", [{"vcpus": 0}, {"memory_mib": 1}, {"disk_mib": 0}, {"vcpus": 1000, "disk_mib": 0}])
def test_a_bad_request_answers_the_same_for_another_tenants_name_and_a_free_one(world, bad):
    client = APIClient()
    client.force_authenticate(world["alice"])
    before = _counts()
    assert _api_answer(client, "b1", **bad) == _api_answer(client, "free1", **bad)
    assert _counts() == before


def test_the_wizard_answers_the_same_too(world):
    client = Client()
    client.force_login(world["alice"])

    def errors(name: str) -> str:
        page = client.post("/vms/new/", {"name": name, "vcpus": 0, "memory_mib": 256, "disk_mib": 100})
        return page.content.decode().replace(name, "NAME").split('name="csrfmiddlewaretoken"')[0]

    assert errors("b1") == errors("free1")


def test_a_good_request_for_a_taken_name_says_only_that_it_is_not_available(world):
    client = APIClient()
    client.force_authenticate(world["alice"])
    before = _counts()
    answer = client.post("/api/vms/", {"name": "b1", "vcpus": 1, "memory_mib": 256, "disk_mib": 100}, format="json")
    assert answer.status_code == 400
    message = " ".join(answer.json()["name"])
    assert "not available" in message and "exists" not in message and "globex" not in message
    assert _counts() == before
    # Their own VM's name: they know it, and are told so.
    own = client.post("/api/vms/", {"name": "a1", "vcpus": 1, "memory_mib": 256, "disk_mib": 100}, format="json")
    assert own.status_code == 400 and "already exists" in " ".join(own.json()["name"])
    # Operators see every VM: told it exists.
    with pytest.raises(Exception, match="a VM named 'b1' already exists"):
        create_vm(VmRequest(name="b1", vcpus=1, memory_mib=256, disk_mib=100), user=world["operator"])
