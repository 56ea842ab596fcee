"""Tenants: quotas, who may create and act, and what each user sees in pages and search."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from ha.choices import IncidentKind
from ha.models import Incident
from hosts.models import CpuServer, DiskServer
from jobs.models import Job
from storage.models import AoEExport
from tenants.models import Tenant
from tenants.quotas import usage
from tenants.services import add_user, create_tenant, set_quotas
from vms.choices import VmState
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm, delete_vm, vm_action

pytestmark = pytest.mark.django_db


@pytest.fixture
def cluster():
    for i in (1, 2):
        CpuServer.objects.create(name=f"cpu{i}", address=f"192.0.2.{20 + i}", libvirt_uri="test:///default",
                                 memory_mib=8192, vcpus=8)
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=100_000)


@pytest.fixture
def acme(cluster):
    return create_tenant("acme", "Acme Ltd", quota_vms=2, quota_vcpus=3, quota_memory_mib=1024, quota_disk_mib=1000)


@pytest.fixture
def globex(cluster):
    return create_tenant("globex", "Globex")


@pytest.fixture
def alice(acme):
    return add_user(acme, "alice", password="a-long-enough-secret-1")


@pytest.fixture
def bob(globex):
    return add_user(globex, "bob", password="a-long-enough-secret-2")


@pytest.fixture
def operator(django_user_model):
    return django_user_model.objects.create_user("op", password="x", is_staff=True)


def _request(name: str, **overrides) -> VmRequest:
    return VmRequest(**({"name": name, "vcpus": 1, "memory_mib": 256, "disk_mib": 100} | overrides))


def _counts() -> tuple[int, int, int]:
    return VirtualMachine.objects.count(), AoEExport.objects.count(), Job.objects.count()


def test_a_tenants_user_creates_for_their_own_tenant(alice, acme):
    job = create_vm(_request("a1"), user=alice)
    vm = VirtualMachine.objects.get(name="a1")
    assert vm.tenant == acme and job.tenant == acme
    assert [u.used for u in usage(acme)] == [1, 1, 256, 100]


def test_quota_refuses_what_would_exceed_it_and_writes_nothing(alice, acme):
    create_vm(_request("a1", vcpus=2), user=alice)
    before = _counts()
    with pytest.raises(ValidationError) as err:
        create_vm(_request("a2", vcpus=2), user=alice)
    message = " ".join(err.value.message_dict["__all__"])
    assert "acme's vCPUs quota is 3: 2 in use, 1 left, this VM needs 2" in message
    assert _counts() == before
    create_vm(_request("a2", vcpus=1), user=alice)  # what fits still goes
    with pytest.raises(ValidationError, match="VMs quota is 2"):
        create_vm(_request("a3"), user=alice)


def test_lowering_a_quota_below_use_blocks_new_vms_only(alice, acme):
    create_vm(_request("a1", memory_mib=512), user=alice)
    set_quotas(acme, quota_memory_mib=256)
    assert VirtualMachine.objects.filter(name="a1").exists()
    with pytest.raises(ValidationError, match="memory quota is 256 MiB: 512 MiB in use, 0 MiB left"):
        create_vm(_request("a2", memory_mib=128), user=alice)


def test_tenant_users_cannot_choose_placement_or_another_tenant(alice, globex):
    for overrides in ({"cpu_server": "cpu1"}, {"allow_n_plus_one_break": True}, {"kernel_path": "/boot/x"}):
        with pytest.raises(ValidationError, match="only operators"):
            create_vm(_request("a1", **overrides), user=alice)
    with pytest.raises(ValidationError, match="no tenant named 'globex'"):
        create_vm(_request("a1", tenant="globex"), user=alice)
    assert not VirtualMachine.objects.exists()


def test_a_tenant_that_may_not_create_cannot(alice, acme):
    Tenant.objects.filter(pk=acme.pk).update(may_create_vms=False)
    alice.refresh_from_db()
    with pytest.raises(ValidationError, match="you may not create VMs"):
        create_vm(_request("a1"), user=alice)


def test_operators_create_for_any_tenant_and_quotas_still_hold(operator, acme):
    create_vm(_request("a1", tenant="acme", cpu_server="cpu2", memory_mib=1024), user=operator)
    assert VirtualMachine.objects.get(name="a1").tenant == acme
    with pytest.raises(ValidationError, match="memory quota"):
        create_vm(_request("a2", tenant="acme"), user=operator)
    with pytest.raises(ValidationError, match="no tenant named 'nope'"):
        create_vm(_request("a2", tenant="nope"), user=operator)


def test_actions_follow_what_the_tenant_allows_and_other_tenants_vms_do_not_exist(alice, bob, acme):
    create_vm(_request("a1"), user=alice)
    vm = VirtualMachine.objects.get(name="a1")
    Job.objects.update(state="succeeded")
    VirtualMachine.objects.filter(pk=vm.pk).update(state=VmState.RUNNING)
    assert vm_action("a1", "reboot", alice).kind == "vm.reboot"
    Job.objects.update(state="succeeded")
    with pytest.raises(ValidationError, match="may not force off VMs"):
        vm_action("a1", "force_off", alice)
    with pytest.raises(ValidationError, match="may not delete VMs"):
        delete_vm("a1", alice)
    with pytest.raises(ValidationError, match="no VM named 'a1'"):
        vm_action("a1", "reboot", bob)
    with pytest.raises(ValidationError, match="no VM named 'a1'"):
        delete_vm("a1", bob)
    acme.allowed_actions = ["delete"]
    acme.save()
    alice.refresh_from_db()
    assert delete_vm("a1", alice).kind == "vm.delete"


def test_visibility_of_vms_jobs_and_incidents_is_on_their_querysets(alice, bob, operator, acme, globex,
                                                                     django_user_model):
    create_vm(_request("a1"), user=alice)
    create_vm(_request("b1", tenant="globex"), user=operator)
    create_vm(_request("ops1"), user=operator)
    incident = Incident.objects.create(kind=IncidentKind.CPU_SERVER_FAILED, host_name="cpu1")
    incident.tenants.set([acme, globex])
    Incident.objects.create(kind=IncidentKind.DISK_SERVER_FAILED, host_name="disk1").tenants.set([globex])
    nobody = django_user_model.objects.create_user("nobody")
    assert set(VirtualMachine.objects.visible_to(alice).values_list("name", flat=True)) == {"a1"}
    assert set(VirtualMachine.objects.visible_to(bob).values_list("name", flat=True)) == {"b1"}
    assert VirtualMachine.objects.visible_to(operator).count() == 3
    assert set(Job.objects.visible_to(alice).values_list("target_name", flat=True)) == {"a1"}
    assert set(Job.objects.visible_to(bob).values_list("target_name", flat=True)) == {"b1"}
    assert list(Incident.objects.visible_to(alice)) == [incident]
    assert Incident.objects.visible_to(bob).count() == 2 and Incident.objects.visible_to(operator).count() == 2
    for model in (VirtualMachine, Job, Incident):  # a user of no tenant, an anonymous one, no user: nothing
        assert not model.objects.visible_to(nobody).exists() and not model.objects.visible_to(None).exists()
    # It narrows whatever it is chained to, and whatever is chained after it.
    assert not VirtualMachine.objects.filter(name="b1").visible_to(alice).exists()
    assert VirtualMachine.objects.visible_to(alice).filter(name="a1").exists()
    deactivated = alice
    deactivated.is_active = False
    assert not VirtualMachine.objects.visible_to(deactivated).exists()


def test_the_access_module_imports_no_model_of_another_app():
    """Who-is-who (tenants/access.py) is imported by every app: it must not import theirs back."""
    tree = ast.parse((Path(__file__).parent.parent / "tenants" / "access.py").read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    panel_apps = {"vms", "jobs", "ha", "hosts", "storage", "images", "networks", "sshkeys", "api", "xenaoe_panel"}
    assert not [name for name in imported if name and name.split(".")[0] in panel_apps]


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _vms_listed(page) -> set[str]:
    """The VMs a page lists (their state badges), not any "b1" that a random CSRF token may hold."""
    return set(re.findall(r'data-vm-state="([^"]+)"', page.content.decode()))


def _job_targets(page) -> set[str]:
    """The VMs the job rows of a page name (the links to each VM's history)."""
    return set(re.findall(r'href="/jobs/\?vm=([^"]+)"', page.content.decode()))


def test_pages_show_a_tenant_only_its_own_and_404_the_rest(alice, bob, operator):
    create_vm(_request("a1"), user=alice)
    create_vm(_request("b1", tenant="globex"), user=operator)
    b1_job = Job.objects.get(target_name="b1")
    page = _client(alice).get("/vms/")
    assert page.status_code == 200
    assert _vms_listed(page) == {"a1"}
    assert b"cpu1" not in page.content and b"cpu2" not in page.content  # not told where VMs run
    own = _client(alice).get("/vms/a1/")
    assert own.status_code == 200 and b"Uptime" in own.content and b"Live-migrate" not in own.content
    for url in ("/vms/b1/", "/vms/b1/delete/", f"/jobs/{b1_job.pk}/", f"/jobs/{b1_job.pk}/log.json", "/hosts/",
                "/vms/placement.json"):
        assert _client(alice).get(url).status_code == 404, url
    for url in ("/vms/b1/action/", "/vms/b1/migrate/", f"/jobs/{b1_job.pk}/cancel/", "/vms/a1/migrate/"):
        assert _client(alice).post(url, {"action": "start"}).status_code == 404, url
    assert VirtualMachine.objects.get(name="b1").state == VmState.CREATING
    jobs = _client(alice).get("/jobs/")
    assert _job_targets(jobs) == {"a1"}
    assert _client(alice).get("/").url == "/vms/"  # a tenant's front page is its VMs


def test_search_and_filters_only_ever_narrow_what_the_user_sees(alice, globex, operator):
    create_vm(_request("a1"), user=alice)
    create_vm(_request("b1", tenant="globex"), user=operator)
    create_vm(_request("b2", tenant="globex"), user=operator)
    assert _vms_listed(_client(alice).get("/vms/?q=b")) == set()
    assert _vms_listed(_client(operator).get("/vms/?tenant=globex&q=2")) == {"b2"}
    assert _client(operator).get("/vms/?state=bogus").status_code == 400
    # A tenant's user is offered no tenant filter; given one (the API takes it), it narrows, never widens.
    assert b'name="tenant"' not in _client(alice).get("/vms/").content
    assert _vms_listed(_client(alice).get("/vms/?tenant=globex")) == set()
    assert _vms_listed(_client(alice).get("/vms/?tenant=acme")) == {"a1"}


def test_wizard_shows_the_quota_and_what_remains(alice, acme):
    page = _client(alice).get("/vms/new/")
    assert page.status_code == 200
    assert b'data-resource="memory_mib" data-used="0" data-limit="1024"' in page.content
    assert b'name="cpu_server"' not in page.content
    quota = _client(alice).get("/vms/quota.json").json()
    assert quota["tenant"] == "acme" and {u["resource"]: u["remaining"] for u in quota["usage"]}["vms"] == 2
    response = _client(alice).post("/vms/new/", {"name": "big", "vcpus": 1, "memory_mib": 2048, "disk_mib": 100})
    assert response.status_code == 200 and b"memory quota is 1024 MiB" in response.content
    assert not VirtualMachine.objects.exists()


def test_quota_json_for_operators_names_the_tenant_and_404s_for_users_of_none(operator, acme, django_user_model):
    assert _client(operator).get("/vms/quota.json?tenant=acme").json()["tenant"] == "acme"
    assert _client(operator).get("/vms/quota.json?tenant=nope").status_code == 404
    loner = django_user_model.objects.create_user("loner", password="x")
    assert _client(loner).get("/vms/quota.json").status_code == 404
    assert _client(loner).get("/vms/new/").status_code == 404
    assert b"No VMs yet" in _client(loner).get("/vms/").content


def test_tenant_cli(cluster, tmp_path, capsys):
    call_command("tenant", "create", "initech", "--name", "Initech", "--vms", "3", "--memory-mib", "2048")
    secret = tmp_path / "pw"
    secret.write_text("a-long-enough-secret-3\n")
    call_command("tenant", "adduser", "initech", "peter", "--password-file", str(secret))
    call_command("tenant", "quota", "initech", "--vcpus", "5")
    call_command("tenant", "allow", "initech", "--actions", "start", "--no-create")
    tenant = Tenant.objects.get(slug="initech")
    assert (tenant.quota_vms, tenant.quota_vcpus, tenant.quota_memory_mib) == (3, 5, 2048)
    assert tenant.allowed_actions == ["start"] and not tenant.may_create_vms
    assert tenant.memberships.get().user.check_password("a-long-enough-secret-3")
    with pytest.raises(CommandError, match="already exists"):
        call_command("tenant", "create", "initech")
    with pytest.raises(CommandError, match="quota_vms: a whole number from 0"):
        call_command("tenant", "quota", "initech", "--vms", "-1")
    with pytest.raises(CommandError, match="no tenant named 'nope'"):
        call_command("tenant", "show", "nope")
    call_command("tenant", "list")
    assert "initech" in capsys.readouterr().out


def test_job_logs_hide_the_hosts_from_tenants_not_told_them(alice, operator, acme):
    from jobs.models import JobLogEntry

    job = create_vm(_request("a1"), user=alice)
    JobLogEntry.objects.create(job=job, serial=1, message="attach e1.0 and e2.0 on cpu1 (disk1, disk2)",
                               data={"cpu_server": "cpu1", "legs": ["disk1", "disk2"], "percent": 50})
    Job.objects.filter(pk=job.pk).update(message="running on cpu1")
    page = _client(alice).get(f"/jobs/{job.pk}/").content.decode()
    assert "attach a disk export and a disk export on a CPU server (a disk server, a disk server)" in page
    assert "running on a CPU server" in page and "cpu1" not in page and "disk1" not in page
    log = _client(alice).get(f"/jobs/{job.pk}/log.json").json()
    assert log["entries"][0]["data"] == {"cpu_server": "a CPU server", "legs": ["a disk server"] * 2, "percent": 50}
    assert "on cpu1 (disk1, disk2)" in _client(operator).get(f"/jobs/{job.pk}/").content.decode()
    acme.shows_cpu_server = True
    acme.save()
    page = _client(alice).get(f"/jobs/{job.pk}/").content.decode()
    assert "attach a disk export and a disk export on cpu1 (disk1, disk2)" in page
