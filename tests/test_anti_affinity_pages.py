"""Anti-affinity on the pages: the wizard offers the groups a user sees and shows where the members
of the chosen ones run (and where "automatic" would go), the VM page shows and sets a VM's groups
and whom it shares its server with, the groups' page lists, creates and removes them; a tenant sees
only its own and no host names."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.test import Client

from hosts.models import CpuServer, DiskServer
from tenants.services import add_user, create_tenant
from vms.affinity import create_group
from vms.choices import VmState
from vms.models import AntiAffinityGroup, VirtualMachine

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture
def cpus() -> dict[str, CpuServer]:
    for i in (1, 2):
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=10**6)
    return {f"cpu{i}": CpuServer.objects.create(name=f"cpu{i}", address=f"192.0.2.{20 + i}",
                                                libvirt_uri=f"fake:///cpu{i}", memory_mib=1024, vcpus=4)
            for i in (1, 2, 3)}


@pytest.fixture
def acme():
    return create_tenant("acme")


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _operator() -> Client:
    return _client(User.objects.create_user("op", is_staff=True))


def _guest(name: str, server: CpuServer, tenant=None, *groups: AntiAffinityGroup, memory_mib: int = 128):
    vm = VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=memory_mib, disk_mib=32, cpu_server=server,
                                       state=VmState.RUNNING, tenant=tenant)
    vm.anti_affinity_groups.set(groups)
    return vm


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_the_wizard_offers_each_user_the_groups_they_see_and_creates_the_vm_apart(cpus, acme):
    web = create_group("web", tenant="acme")
    create_group("web", tenant=create_tenant("globex").slug)
    create_group("ops")
    _guest("web1", cpus["cpu1"], acme, web)
    operator = _operator()
    page = operator.get("/vms/new/").content.decode()
    assert all(f">{label}</option>" in page for label in ("acme/web", "globex/web", "ops"))
    alice = _client(add_user(acme, "alice"))
    page = alice.get("/vms/new/").content.decode()
    assert f'<option value="{web.pk}">web</option>' in page and "globex" not in page and ">ops<" not in page
    response = alice.post("/vms/new/", {"name": "web2", "vcpus": 1, "memory_mib": 128, "disk_mib": 64,
                                        "anti_affinity_groups": [web.pk]})
    assert response.status_code == 302, response.content.decode()[:500]
    web2 = VirtualMachine.objects.get(name="web2")
    assert list(web2.anti_affinity_groups.all()) == [web] and web2.cpu_server.name != "cpu1"


def test_the_wizard_refuses_a_group_of_another_owner_than_the_vms(cpus, acme):
    ops = create_group("ops")
    response = _operator().post("/vms/new/", {"name": "web2", "vcpus": 1, "memory_mib": 128, "disk_mib": 64,
                                              "tenant": "acme", "anti_affinity_groups": [ops.pk]})
    assert response.status_code == 200
    assert "ops is not a group of acme: a VM&#x27;s groups are its owner&#x27;s" in response.content.decode()
    assert not VirtualMachine.objects.filter(name="web2").exists()


def test_a_create_that_breaks_a_group_says_so_without_the_host_to_a_tenant(cpus, acme):
    web = create_group("web", tenant="acme")
    _guest("web1", cpus["cpu1"], acme, web)
    for server in ("cpu2", "cpu3"):
        _guest(f"full-{server}", cpus[server], acme, memory_mib=1000)
    acme.quota_memory_mib = 10_000
    acme.save()
    operator = _operator()
    response = operator.post("/vms/new/", {"name": "web2", "vcpus": 1, "memory_mib": 128, "disk_mib": 64,
                                           "tenant": "acme", "anti_affinity_groups": [web.pk], "cpu_server": "cpu1",
                                           "allow_n_plus_one_break": "on"})
    assert response.status_code == 302
    assert _messages(response) == ["broke anti-affinity group web: web1 and web2 both on cpu1"]
    alice = _client(add_user(acme, "alice"))
    response = alice.post("/vms/new/", {"name": "web3", "vcpus": 1, "memory_mib": 128, "disk_mib": 64,
                                        "anti_affinity_groups": [web.pk]})
    assert response.status_code == 200  # the cluster is full for N+1, which a tenant may not override
    assert "breaks N+1" in response.content.decode()


def test_the_wizards_table_shows_where_the_chosen_groups_members_run_and_where_automatic_goes(cpus, acme):
    web = create_group("web", tenant="acme")
    _guest("web1", cpus["cpu1"], acme, web)
    _guest("ballast", cpus["cpu3"], memory_mib=512)
    operator = _operator()
    alone = operator.get("/vms/placement.json", {"memory_mib": 128}).json()
    assert alone["automatic"] == "cpu2" and all(s["anti_affinity"] == [] for s in alone["servers"])
    grouped = operator.get(f"/vms/placement.json?memory_mib=128&groups={web.pk}").json()
    assert {s["name"]: s["anti_affinity"] for s in grouped["servers"]} == {
        "cpu1": [{"group": "web", "members": ["web1"]}], "cpu2": [], "cpu3": []}
    assert grouped["automatic"] == "cpu2"
    _guest("web3", cpus["cpu2"], acme, web)
    grouped = operator.get(f"/vms/placement.json?memory_mib=128&groups={web.pk}").json()
    assert grouped["automatic"] == "cpu3"  # the only server apart, with the least free memory
    assert operator.get("/vms/placement.json?groups=web").status_code == 400


def test_the_vm_page_shows_and_sets_its_groups_and_whom_it_shares_its_server_with(cpus, acme):
    web, db = create_group("web", tenant="acme"), create_group("db", tenant="acme")
    create_group("web")  # the operators' "web": not a choice for acme's VM
    _guest("web1", cpus["cpu1"], acme, web)
    _guest("web2", cpus["cpu1"], acme)
    alice = _client(add_user(acme, "alice"))
    page = alice.get("/vms/web2/").content.decode()
    assert "in no group" in page and f'<option value="{db.pk}">db</option>' in page
    assert page.count("<option") == 2
    response = alice.post("/vms/web2/groups/", {"anti_affinity_groups": [web.pk, db.pk]})
    assert set(VirtualMachine.objects.get(name="web2").anti_affinity_groups.all()) == {web, db}
    assert _messages(response) == [
        "web2's anti-affinity groups: db, web",
        "anti-affinity group web: web1 and web2 both on one CPU server until one of them moves (a migration "
        "without a target puts it apart)"]
    page = alice.get("/vms/web2/").content.decode()
    assert "anti-affinity group web: web1 and web2 both on one CPU server" in page and "cpu1" not in page
    page = _operator().get("/vms/web2/").content.decode()
    assert "anti-affinity group web: web1 and web2 both on cpu1" in page
    alice.post("/vms/web2/groups/", {})
    assert not VirtualMachine.objects.get(name="web2").anti_affinity_groups.exists()


def test_a_migration_to_a_chosen_server_beside_a_member_is_started_and_warned(cpus):
    web = create_group("web")
    _guest("web1", cpus["cpu1"], None, web)
    _guest("web2", cpus["cpu2"], None, web)
    response = _operator().post("/vms/web2/migrate/", {"target": "cpu1"})
    assert response.status_code == 302 and response.url.startswith("/jobs/")
    assert _messages(response) == ["broke anti-affinity group web: web1 and web2 both on cpu1"]


def test_the_groups_page_lists_creates_and_removes_a_users_own_groups(cpus, acme):
    web = create_group("web", tenant="acme")
    create_group("web", tenant=create_tenant("globex").slug)
    _guest("web1", cpus["cpu1"], acme, web)
    _guest("web2", cpus["cpu1"], acme, web)
    alice = _client(add_user(acme, "alice"))
    page = alice.get("/anti-affinity/").content.decode()
    assert page.count('data-group="web"') == 1 and "web1 and web2 both on one CPU server" in page
    assert 'name="tenant"' not in page  # a tenant's user makes their own tenant's
    response = alice.post("/anti-affinity/", {"name": "db", "description": "the replicas"})
    assert response.status_code == 302
    assert AntiAffinityGroup.objects.get(name="db").tenant == acme
    again = alice.post("/anti-affinity/", {"name": "db"})
    assert "acme has a group named &#x27;db&#x27; already" in again.content.decode()
    operator_page = _operator().get("/anti-affinity/").content.decode()
    assert 'data-group="acme/web"' in operator_page and 'data-group="globex/web"' in operator_page
    assert "web1 and web2 both on cpu1" in operator_page
    alice.post(f"/anti-affinity/{web.pk}/delete/")
    assert not AntiAffinityGroup.objects.filter(pk=web.pk).exists()
    assert VirtualMachine.objects.get(name="web1").cpu_server.name == "cpu1"
