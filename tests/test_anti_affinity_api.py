"""Anti-affinity over the API and the command line: groups listed, made and removed, a VM's groups
set and shown, a create or a migration that breaks a group warned; a tenant sees and touches only
its own groups and VMs, and reads no host names."""
from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
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


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _guest(name: str, server: CpuServer, tenant=None, *groups: AntiAffinityGroup) -> VirtualMachine:
    vm = VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=128, disk_mib=32, cpu_server=server,
                                       state=VmState.RUNNING, tenant=tenant)
    vm.anti_affinity_groups.set(groups)
    return vm


# --- the API ------------------------------------------------------------------------------------

def test_a_tenant_lists_makes_and_removes_its_own_groups_only(cpus):
    acme, globex = create_tenant("acme"), create_tenant("globex")
    theirs = create_group("web", tenant="globex")
    alice = _client(add_user(acme, "alice"))
    made = alice.post("/api/anti-affinity-groups/", {"name": "web", "description": "front ends",
                                                     "tenant": "globex"}, content_type="application/json")
    assert made.status_code == 400 and made.json() == {"tenant": ["no tenant named 'globex'"]}
    made = alice.post("/api/anti-affinity-groups/", {"name": "web", "description": "front ends"},
                      content_type="application/json")
    assert made.status_code == 201
    mine = made.json()
    assert {k: mine[k] for k in ("name", "tenant", "description", "members")} == {
        "name": "web", "tenant": "acme", "description": "front ends", "members": []}
    assert [g["id"] for g in alice.get("/api/anti-affinity-groups/").json()["results"]] == [mine["id"]]
    assert alice.get(f"/api/anti-affinity-groups/{theirs.pk}/").status_code == 404
    assert alice.delete(f"/api/anti-affinity-groups/{theirs.pk}/").status_code == 404
    assert AntiAffinityGroup.objects.filter(pk=theirs.pk).exists()
    assert alice.delete(mine["url"]).status_code == 204
    assert not AntiAffinityGroup.objects.filter(tenant=acme).exists()
    globex.may_create_vms = False
    globex.save()
    bob = _client(add_user(globex, "bob"))
    assert bob.post("/api/anti-affinity-groups/", {"name": "db"}, content_type="application/json").status_code == 403
    assert bob.delete(f"/api/anti-affinity-groups/{theirs.pk}/").status_code == 403


def test_a_vm_is_created_into_groups_shows_them_and_has_them_set(cpus):
    acme = create_tenant("acme")
    web, db = create_group("web", tenant="acme"), create_group("db", tenant="acme")
    _guest("web1", cpus["cpu1"], acme, web)
    alice = _client(add_user(acme, "alice"))
    created = alice.post("/api/vms/", {"name": "web2", "vcpus": 1, "memory_mib": 128, "disk_mib": 64,
                                       "anti_affinity_groups": ["web"]}, content_type="application/json")
    assert created.status_code == 202 and created.json()["warnings"] == []
    assert VirtualMachine.objects.get(name="web2").cpu_server.name != "cpu1"
    assert alice.get("/api/vms/web2/").json()["anti_affinity_groups"] == ["web"]
    refused = alice.post("/api/vms/", {"name": "web3", "vcpus": 1, "memory_mib": 128, "disk_mib": 64,
                                       "anti_affinity_groups": ["nope"]}, content_type="application/json")
    assert refused.status_code == 400
    assert refused.json() == {"anti_affinity_groups": ["acme has no anti-affinity group named 'nope' (a VM's groups "
                                                       "are its owner's)"]}
    _guest("web3", cpus["cpu1"], acme)
    answer = alice.post("/api/vms/web3/anti-affinity-groups/", {"groups": ["web", "db"]},
                        content_type="application/json")
    assert answer.status_code == 200
    assert answer.json() == {"anti_affinity_groups": ["db", "web"],
                             "warnings": ["anti-affinity group web: web1 and web3 both on one CPU server"]}
    assert set(VirtualMachine.objects.get(name="web3").anti_affinity_groups.all()) == {web, db}
    globex = create_tenant("globex")
    _guest("rival", cpus["cpu2"], globex)
    assert alice.post("/api/vms/rival/anti-affinity-groups/", {"groups": []},
                      content_type="application/json").status_code == 404


def test_a_migration_to_a_server_beside_a_member_answers_with_a_warning(cpus):
    web = create_group("web")
    _guest("web1", cpus["cpu1"], None, web)
    _guest("web2", cpus["cpu2"], None, web)
    operator = _client(User.objects.create_user("op", is_staff=True))
    answer = operator.post("/api/vms/web2/migrate/", {"target": "cpu1"}, content_type="application/json")
    assert answer.status_code == 202
    assert answer.json()["warnings"] == ["broke anti-affinity group web: web1 and web2 both on cpu1"]


# --- the command line ---------------------------------------------------------------------------

def _run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("vm", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_command_line_makes_groups_sets_them_and_warns_when_a_vm_shares_a_server(cpus):
    create_tenant("acme")
    assert _run("group", "create", "web")[0] == "anti-affinity group web created\n"
    assert _run("group", "create", "web", "--tenant", "acme", "--description", "shop")[0] == (
        "anti-affinity group acme/web created\n")
    with pytest.raises(CommandError, match="the operators have a group named 'web' already"):
        _run("group", "create", "web")
    _guest("web1", cpus["cpu1"])
    _guest("web2", cpus["cpu1"])
    _run("set-groups", "web1", "web")
    out, err = _run("set-groups", "web2", "web")
    assert out == "web2: anti-affinity groups web\n"
    assert err == ("warning: anti-affinity group web: web1 and web2 both on cpu1 until one of them moves "
                   "(`vm migrate` without --to puts it apart)\n")
    out, _ = _run("group", "list")
    assert out.splitlines() == [f"{'web':<32} web1@cpu1, web2@cpu1", f"{'acme/web':<32} (no members)"]
    assert "groups       web" in _run("show", "web2")[0]
    with pytest.raises(CommandError, match="the operators have no anti-affinity group named 'db'"):
        _run("set-groups", "web2", "db")
    out, err = _run("create", "web3", "--vcpus", "1", "--memory-mib", "128", "--disk-mib", "64", "--on", "cpu1",
                    "--group", "web")
    assert out.startswith("job #")
    assert err == "warning: broke anti-affinity group web: web1, web2 and web3 all on cpu1\n"
    assert _run("group", "delete", "web", "--tenant", "acme")[0] == "anti-affinity group acme/web deleted\n"
    assert list(AntiAffinityGroup.objects.values_list("name", "tenant")) == [("web", None)]
