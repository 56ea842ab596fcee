"""One filter set per list: the VM list and the job history filter alike on their page and in the API
(vms/filtersets.py, jobs/filtersets.py): the same rows for the same query string, the same refusals,
names matched in any case, and the CPU server filter under both its names."""
from __future__ import annotations

import datetime
import re

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from hosts.models import CpuServer
from jobs.choices import JobState
from jobs.models import Job, hosts_column
from tenants.services import add_user, create_tenant, set_permissions
from vms.choices import VmState
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture
def world() -> dict:
    cpus = {name: CpuServer.objects.create(name=name, address=f"192.0.2.{20 + n}", libvirt_uri="test:///default",
                                           memory_mib=8192, vcpus=8) for n, name in enumerate(("cpu1", "cpu2"))}
    acme, globex = create_tenant("acme"), create_tenant("globex")
    set_permissions(globex, shows_cpu_server=True)
    for name, tenant, cpu, state in (("web1", acme, "cpu1", VmState.RUNNING), ("web2", acme, "cpu2", VmState.STOPPED),
                                     ("db1", globex, "cpu1", VmState.RUNNING), ("ops1", None, "cpu2", VmState.STOPPED)):
        VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=64, disk_mib=16, tenant=tenant,
                                      cpu_server=cpus[cpu], state=state)
    users = {"op": User.objects.create_user("op", is_staff=True), "alice": add_user(acme, "alice"),
             "bob": add_user(globex, "bob")}
    clients = {}
    for name, user in users.items():
        clients[name] = Client()
        clients[name].force_login(user)
    return clients


def _page(client: Client, query: str) -> tuple[int, set[str], str]:
    response = client.get(f"/vms/?{query}")
    html = response.content.decode()
    return response.status_code, set(re.findall(r'data-vm-state="([^"]+)"', html)), html


def _api(client: Client, query: str) -> tuple[int, set[str], dict]:
    response = client.get(f"/api/vms/?{query}")
    body = response.json()
    return response.status_code, {vm["name"] for vm in body.get("results", [])}, body


@pytest.mark.parametrize(("who", "query", "expected"), [
    ("op", "", {"web1", "web2", "db1", "ops1"}),
    ("op", "q=web", {"web1", "web2"}),
    ("op", "q=WEB", {"web1", "web2"}),  # in any case, as users expect
    ("op", "q=%20Eb1%20", {"web1"}),
    ("op", "state=running", {"web1", "db1"}),
    ("op", "tenant=acme", {"web1", "web2"}),
    ("op", "tenant=-", {"ops1"}),  # the operators' own: the page had it, the API had not
    ("op", "cpu_server=cpu1", {"web1", "db1"}),  # the API's name ...
    ("op", "host=cpu1", {"web1", "db1"}),  # ... and the page's
    ("op", "host=cpu2&cpu_server=cpu1", {"web1", "db1"}),  # cpu_server wins
    ("op", "tenant=initech", set()),  # a name that names nothing: nothing, not an error
    ("op", "cpu_server=cpu9", set()),
    ("op", "q=web&state=stopped&tenant=acme&host=cpu2", {"web2"}),
    ("bob", "host=cpu1", {"db1"}),
    ("bob", "tenant=acme", set()),  # narrows what bob sees, never widens it
    ("alice", "q=WEB", {"web1", "web2"}),
    ("alice", "tenant=acme", {"web1", "web2"}),
])
def test_the_page_and_the_api_list_the_same_vms_for_the_same_query(world, who, query, expected):
    page_status, page_names, _ = _page(world[who], query)
    api_status, api_names, body = _api(world[who], query)
    assert (page_status, api_status) == (200, 200), body
    assert page_names == api_names == expected


@pytest.mark.parametrize("query", ["cpu_server=cpu1", "host=cpu1"])
def test_a_user_not_shown_cpu_servers_may_filter_on_them_neither_on_the_page_nor_in_the_api(world, query):
    status, names, html = _page(world["alice"], query)
    assert status == 400 and names == set()
    assert "CPU server: you are not shown which CPU server runs a VM" in html
    assert 'name="cpu_server"' not in html  # the page offers no such filter
    status, _, body = _api(world["alice"], query)
    assert status == 400 and body == {"cpu_server": ["you are not shown which CPU server runs a VM"]}


@pytest.mark.parametrize(("query", "field", "message"), [
    ("state=bogus", "state", "Select a valid choice. bogus is not one of the available choices."),
    (f"q={'x' * 64}", "q", "Ensure this value has at most 63 characters (it has 64)."),
    (f"tenant={'x' * 64}", "tenant", "Ensure this value has at most 63 characters (it has 64)."),
    ("cpu_server=cpu%00", "cpu_server", "Null characters are not allowed."),
])
def test_a_bad_vm_filter_is_the_same_400_on_the_page_and_in_the_api(world, query, field, message):
    status, names, html = _page(world["op"], query)
    assert status == 400 and names == set()
    assert message in html and 'aria-invalid="true"' in html and "is-invalid" in html
    status, _, body = _api(world["op"], query)
    assert status == 400 and body == {field: [message]}


def test_the_vm_page_shows_what_it_filters_by_and_keeps_its_form(world):
    _, _, html = _page(world["op"], "host=cpu1")  # the page's old name for the filter
    assert '<option value="cpu1" selected>cpu1</option>' in html
    _, names, html = _page(world["op"], "cpu_server=cpu9&tenant=initech")
    assert names == set() and "No VMs match these filters" in html
    assert '<option value="cpu9" selected>cpu9</option>' in html
    assert '<option value="initech" selected>initech</option>' in html
    _, _, html = _page(world["op"], "")
    assert 'class="form-control form-control-sm"' in html and 'placeholder="name contains…"' in html
    for field in ('name="q"', 'name="state"', 'name="tenant"', 'name="cpu_server"'):
        assert field in html
    _, _, html = _page(world["alice"], "")
    assert 'name="tenant"' not in html and 'name="cpu_server"' not in html and 'name="q"' in html


def test_the_schema_documents_both_names_of_the_cpu_server_filter(world):
    schema = yaml.safe_load(Client().get("/api/schema/").content)
    parameters = {p["name"]: p for p in schema["paths"]["/api/vms/"]["get"]["parameters"]}
    assert {"q", "state", "tenant", "cpu_server", "host"} <= set(parameters)
    assert parameters["host"]["schema"] == parameters["cpu_server"]["schema"] == {"type": "string"}
    assert "cpu_server" in parameters["host"]["description"]
    jobs = {p["name"] for p in schema["paths"]["/api/jobs/"]["get"]["parameters"]}
    assert {"kind", "state", "vm", "host", "user", "date_from", "date_to", "since"} <= jobs


# --- jobs -------------------------------------------------------------------------------------------

@pytest.fixture
def history(world) -> dict[str, Job]:
    op, alice = User.objects.get(username="op"), User.objects.get(username="alice")
    acme = alice.membership.tenant

    def job(kind: str, target: str, *, state: str = JobState.SUCCEEDED, user=None, hosts=(), tenant=None,
            days_ago: float = 0) -> Job:
        made = Job.objects.create(kind=kind, state=state, target_name=target, user=user, hosts=hosts_column(hosts),
                                  tenant=tenant)
        Job.objects.filter(pk=made.pk).update(created_at=timezone.now() - datetime.timedelta(days=days_ago))
        return made

    return {
        "create_web1": job("vm.create", "web1", user=alice, hosts=["cpu1"], tenant=acme, days_ago=2),
        "reboot_web1": job("vm.reboot", "web1", state=JobState.RUNNING, user=alice, tenant=acme),
        "migrate_db1": job("vm.migrate", "db1", user=op, hosts=["cpu1", "cpu2"]),
        "fix": job("cluster.fix", "", state=JobState.FAILED, hosts=["disk2"], days_ago=10),
    }


def _job_page(client: Client, query: str) -> tuple[int, set[int], str]:
    response = client.get(f"/jobs/?{query}")
    jobs = response.context["page_obj"].object_list if response.status_code == 200 else []
    return response.status_code, {job.pk for job in jobs}, response.content.decode()


def _job_api(client: Client, query: str) -> tuple[int, set[int], dict]:
    response = client.get(f"/api/jobs/?{query}")
    body = response.json()
    return response.status_code, {job["id"] for job in body.get("results", [])}, body


@pytest.mark.parametrize(("who", "query", "expected"), [
    ("op", "", {"create_web1", "reboot_web1", "migrate_db1", "fix"}),
    ("op", "kind=vm.create", {"create_web1"}),
    ("op", "kind=vm.explode", set()),  # a kind never run (or archived): nothing, on the page too
    ("op", "state=running", {"reboot_web1"}),
    ("op", "vm=web1", {"create_web1", "reboot_web1"}),
    ("op", "vm=WEB*", {"create_web1", "reboot_web1"}),  # names in any case
    ("op", "host=cpu1", {"create_web1", "migrate_db1"}),  # the page had it, the API had not
    ("op", "host=DISK2", {"fix"}),
    ("op", "user=alice", {"create_web1", "reboot_web1"}),
    ("op", "date_to=" + (timezone.localdate() - datetime.timedelta(days=1)).isoformat(), {"create_web1", "fix"}),
    ("op", "since=" + (timezone.now() - datetime.timedelta(days=5)).isoformat().replace("+", "%2B"),
     {"create_web1", "reboot_web1", "migrate_db1"}),  # the API had it, the page had not
    ("alice", "", {"create_web1", "reboot_web1"}),
    ("alice", "user=alice&kind=vm.reboot", {"reboot_web1"}),
])
def test_the_page_and_the_api_list_the_same_jobs_for_the_same_query(world, history, who, query, expected):
    page_status, page_ids, _ = _job_page(world[who], query)
    api_status, api_ids, body = _job_api(world[who], query)
    assert (page_status, api_status) == (200, 200), body
    assert page_ids == api_ids == {history[name].pk for name in expected}


@pytest.mark.parametrize(("who", "query", "field", "message"), [
    ("op", "state=sleeping", "state", "“sleeping” is not a job state."),
    ("op", "vm=Bad%20Name!", "vm", "A VM name is lower-case letters, digits and '-' (end with * for a prefix)."),
    ("op", "host=-cpu1", "host", "A host name is lower-case letters, digits and '-', starting with a letter."),
    ("op", "user=nobody", "user", "There is no user named “nobody”."),
    ("alice", "user=op", "user", "There is no user named “op”."),  # a tenant's users name only their own
    ("op", "user=%25s%25", "user", "There is no user named “%s%”."),  # found by schemathesis: a 500 in the API
    ("op", "date_from=2024-05-02&date_to=2024-05-01", "date_to", "“To” is before “From”."),
    ("alice", "host=cpu1", "host", "you are not shown which hosts a job acts on"),
])
def test_a_bad_job_filter_is_the_same_400_on_the_page_and_in_the_api(world, history, who, query, field, message):
    status, ids, html = _job_page(world[who], query)
    assert status == 400 and ids == set()
    assert message.replace("'", "&#x27;") in html and "The filters have a mistake" in html
    status, _, body = _job_api(world[who], query)
    assert status == 400 and body == {field: [message]}


def test_the_job_page_keeps_its_form_and_shows_a_kind_it_has_no_job_of(world, history):
    _, _, html = _job_page(world["op"], "kind=vm.explode")
    assert '<option value="vm.explode" selected>vm.explode</option>' in html
    assert 'name="since"' not in html and 'name="date_from"' in html and 'list="host-names"' in html
    _, _, html = _job_page(world["alice"], "")
    assert 'name="host"' not in html and 'name="user"' in html
