"""The REST API: token and session authentication, the pages' permissions (another tenant's VM is a
404, a forbidden action on a visible VM a 403), operations answering 202 with their job, services'
refusals as 400s with the field errors, operator-only endpoints, the schema and the docs pages."""
from __future__ import annotations

import datetime
import io
from pathlib import Path

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from api.tokens import issue_token
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.models import Incident, IncidentEvent
from hosts.models import CpuServer, DiskServer
from jobs.choices import JobState
from jobs.models import Job
from storage.models import AoEExport
from tenants.models import Tenant
from tenants.services import add_user, create_tenant, set_permissions, set_quotas
from vms.choices import VmState
from vms.models import VirtualMachine
from vms.services import VmRequest, create_vm

pytestmark = pytest.mark.django_db
User = get_user_model()
VM_BODY = {"name": "web1", "vcpus": 1, "memory_mib": 64, "disk_mib": 16}


# --- helpers, shared with test_api_live.py --------------------------------------------------------

def make_cluster() -> None:
    for i in (1, 2):
        CpuServer.objects.create(name=f"cpu{i}", address=f"192.0.2.{20 + i}", libvirt_uri="test:///default",
                                 memory_mib=8192, vcpus=8)
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=100_000)


def token_client(user) -> APIClient:
    """A client that signs in as a script does: with the user's API token."""
    if not hasattr(user, "_test_token"):  # one token per user: a new one would end the first
        user._test_token = issue_token(user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {user._test_token}")
    return client


def counts() -> tuple[int, int, int]:
    return VirtualMachine.objects.count(), AoEExport.objects.count(), Job.objects.count()


def vm_for(tenant: str | None, name: str, state: str = VmState.RUNNING) -> VirtualMachine:
    """A VM created through the service (as an operator would), its job finished, in `state`."""
    job = create_vm(VmRequest(name=name, vcpus=1, memory_mib=64, disk_mib=16, tenant=tenant))
    Job.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED, finished_at=timezone.now())
    VirtualMachine.objects.filter(pk=job.vm_id).update(state=state)
    return VirtualMachine.objects.get(pk=job.vm_id)


# --- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture
def world():
    make_cluster()
    acme, globex = create_tenant("acme"), create_tenant("globex")
    return {
        "acme": acme, "globex": globex,
        "alice": add_user(acme, "alice"), "carol": add_user(acme, "carol"), "bob": add_user(globex, "bob"),
        "op": User.objects.create_user("op", is_staff=True),
    }


@pytest.fixture
def alice(world) -> APIClient:
    return token_client(world["alice"])


@pytest.fixture
def bob(world) -> APIClient:
    return token_client(world["bob"])


@pytest.fixture
def op(world) -> APIClient:
    return token_client(world["op"])


# --- authentication -------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("get", "/api/vms/"), ("post", "/api/vms/"), ("get", "/api/vms/web1/"), ("post", "/api/vms/web1/start/"),
    ("get", "/api/jobs/"), ("get", "/api/jobs/1/log/"), ("get", "/api/me/"), ("get", "/api/tenants/"),
    ("post", "/api/verify/"), ("get", "/api/incidents/"), ("get", "/api/cpu-servers/"),
])
def test_anonymous_requests_get_401_with_a_token_challenge(world, method, path):
    response = getattr(APIClient(), method)(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Token")


def test_a_wrong_token_is_401_and_a_right_one_signs_in(world):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get("/api/me/").status_code == 401
    me = token_client(world["alice"]).get("/api/me/").json()
    assert me["username"] == "alice" and me["tenant"]["slug"] == "acme" and not me["is_operator"]


def test_the_command_prints_a_token_that_works_and_rotate_replaces_it(world):
    out = io.StringIO()
    call_command("api", "token", "alice", stdout=out)
    first = out.getvalue().strip()
    with pytest.raises(CommandError, match="cannot be shown again"):  # only its hash is kept
        call_command("api", "token", "alice", stdout=io.StringIO())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {first}")
    assert client.get("/api/me/").json()["username"] == "alice"
    rotated = io.StringIO()
    call_command("api", "token", "alice", "--rotate", stdout=rotated)
    assert rotated.getvalue().strip() != first
    assert client.get("/api/me/").status_code == 401
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        call_command("api", "token", "nobody")


def test_session_writes_need_the_csrf_token(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world["alice"])
    assert client.get("/api/vms/").status_code == 200
    response = client.post("/api/vms/", VM_BODY, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert counts() == (0, 0, 0)


# --- VMs: visibility and actions ---------------------------------------------------------------------

def test_a_tenant_neither_sees_nor_acts_on_another_tenants_vm(world, alice):
    theirs = vm_for("globex", "secret")
    job = Job.objects.get(vm=theirs)
    assert alice.get("/api/vms/").json()["count"] == 0
    assert alice.get("/api/vms/?q=secret").json()["results"] == []
    for method, path in [
        ("get", "/api/vms/secret/"), ("post", "/api/vms/secret/start/"), ("post", "/api/vms/secret/shutdown/"),
        ("post", "/api/vms/secret/force_off/"), ("post", "/api/vms/secret/migrate/"), ("delete", "/api/vms/secret/"),
        ("get", f"/api/jobs/{job.pk}/"), ("get", f"/api/jobs/{job.pk}/log/"), ("post", f"/api/jobs/{job.pk}/cancel/"),
    ]:
        assert getattr(alice, method)(path).status_code == 404, (method, path)
    assert alice.get("/api/jobs/").json()["count"] == 0
    assert Job.objects.count() == 1 and VirtualMachine.objects.get(name="secret").state == VmState.RUNNING


def test_tenant_actions_follow_the_tenants_allowed_actions(world, alice):
    vm_for("acme", "stopped", VmState.STOPPED)
    vm_for("acme", "running")
    started = alice.post("/api/vms/stopped/start/")
    assert started.status_code == 202 and started.json()["kind"] == "vm.start"
    refused = alice.post("/api/vms/running/force_off/")
    assert refused.status_code == 403 and "may not force off" in refused.json()["detail"]
    assert alice.delete("/api/vms/running/").status_code == 403
    migrate = alice.post("/api/vms/running/migrate/", {}, format="json")
    assert migrate.status_code == 403 and "only operators" in migrate.json()["detail"]
    assert not Job.objects.filter(vm__name="running", state=JobState.QUEUED).exists()

    set_permissions(world["acme"], allowed_actions=["start", "shutdown", "reboot", "force_off"])
    assert alice.post("/api/vms/running/force_off/").status_code == 202
    detail = alice.get("/api/vms/running/").json()
    assert detail["actions"] == ["start", "shutdown", "reboot", "force_off"]


def test_a_service_refusal_is_a_400_with_its_message(world, alice):
    vm_for("acme", "up")
    response = alice.post("/api/vms/up/start/")
    assert response.status_code == 400
    assert response.json() == {"name": ["up is running: cannot start it"]}
    alice.post("/api/vms/up/reboot/")
    busy = alice.post("/api/vms/up/shutdown/", {"timeout_s": 5}, format="json")
    assert busy.status_code == 400 and "busy with job" in busy.json()["non_field_errors"][0]


def test_create_answers_202_with_the_job_the_tenant_can_follow(world, alice, bob):
    response = alice.post("/api/vms/", VM_BODY, format="json")
    assert response.status_code == 202
    job = response.json()
    assert job["kind"] == "vm.create" and job["state"] == "queued" and job["vm"] == "web1"
    assert response["Location"] == job["job_url"] == job["url"] == f"http://testserver/api/jobs/{job['id']}/"
    assert job["ws_url"] == f"ws://testserver/ws/jobs/{job['id']}/" and "params" not in job  # no placement
    followed = alice.get(job["job_url"])
    assert followed.status_code == 200 and followed.json()["id"] == job["id"]
    assert [j["id"] for j in alice.get("/api/jobs/").json()["results"]] == [job["id"]]
    assert bob.get(job["job_url"]).status_code == 404
    vm = alice.get("/api/vms/web1/").json()
    assert vm["tenant"] == "acme" and "cpu_server" not in vm and "legs" not in vm
    assert VirtualMachine.objects.get(name="web1").tenant == world["acme"]


def test_cpu_servers_and_legs_are_shown_only_to_whom_they_may_be(world, alice, op):
    vm_for("acme", "web1")
    assert "cpu_server" not in alice.get("/api/vms/web1/").json()
    assert alice.get("/api/vms/?cpu_server=cpu1").status_code == 400
    set_permissions(world["acme"], shows_cpu_server=True)
    seen = alice.get("/api/vms/web1/").json()
    assert seen["cpu_server"] in ("cpu1", "cpu2") and "legs" not in seen
    assert alice.get(f"/api/vms/?cpu_server={seen['cpu_server']}").json()["count"] == 1
    full = op.get("/api/vms/web1/").json()
    assert {leg["disk_server"] for leg in full["legs"]} == {"disk1", "disk2"}
    assert "migrate" in full["actions"]


def test_tenants_may_not_place_vms_nor_create_without_permission(world, alice):
    response = alice.post("/api/vms/", VM_BODY | {"cpu_server": "cpu1"}, format="json")
    assert response.status_code == 400 and "only operators" in response.json()["non_field_errors"][0]
    other = alice.post("/api/vms/", VM_BODY | {"tenant": "globex"}, format="json")
    assert other.status_code == 400 and "tenant" in other.json()
    set_permissions(world["acme"], may_create_vms=False)
    forbidden = alice.post("/api/vms/", VM_BODY, format="json")
    assert forbidden.status_code == 403
    assert counts() == (0, 0, 0)


def test_quota_exceeded_is_a_clear_400_and_writes_nothing(world, alice):
    set_quotas(world["acme"], quota_vms=1, quota_memory_mib=100)
    assert alice.post("/api/vms/", VM_BODY, format="json").status_code == 202
    before = counts()
    response = alice.post("/api/vms/", VM_BODY | {"name": "web2", "memory_mib": 64}, format="json")
    assert response.status_code == 400
    messages = response.json()["non_field_errors"]
    assert any("acme's VMs quota is 1: 1 in use, 0 left, this VM needs 1" in m for m in messages)
    assert any("memory quota is 100 MiB: 64 MiB in use, 36 MiB left" in m for m in messages)
    assert counts() == before


def test_bad_input_is_a_400_per_field(world, alice):
    response = alice.post("/api/vms/", {"name": "Bad_Name", "vcpus": "many", "memory_mib": 64}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"vcpus", "disk_mib"}  # the types first; the service checks the rest
    response = alice.post("/api/vms/", VM_BODY | {"name": "Bad_Name"}, format="json")
    assert response.status_code == 400 and "lower-case" in response.json()["name"][0]
    assert counts() == (0, 0, 0)


def test_operators_create_for_a_tenant_on_a_chosen_server(world, op):
    response = op.post("/api/vms/", VM_BODY | {"tenant": "globex", "cpu_server": "cpu2"}, format="json")
    assert response.status_code == 202 and response.json()["params"]["cpu_server"] == "cpu2"
    vm = VirtualMachine.objects.get(name="web1")
    assert vm.tenant.slug == "globex" and vm.cpu_server.name == "cpu2"
    assert op.get("/api/vms/?tenant=globex").json()["count"] == 1
    assert op.get("/api/vms/?tenant=acme").json()["count"] == 0
    assert op.get("/api/vms/?state=creating&q=eb").json()["count"] == 1


def test_operators_delete_and_migrate(world, op):
    vm_for("acme", "web1")
    migrate = op.post("/api/vms/web1/migrate/", {"target": "cpu9"}, format="json")
    assert migrate.status_code == 400 and migrate.json() == {"target": ["no CPU server named 'cpu9'"]}
    deleted = op.delete("/api/vms/web1/")
    assert deleted.status_code == 202 and deleted.json()["kind"] == "vm.delete"
    assert VirtualMachine.objects.get(name="web1").state == VmState.DELETING


# --- jobs --------------------------------------------------------------------------------------------

def test_job_filters(world, op):
    vm_for("acme", "web1")
    vm_for("acme", "web2")
    old = Job.objects.get(vm__name="web2")
    Job.objects.filter(pk=old.pk).update(created_at=timezone.now() - datetime.timedelta(days=3))
    op.post("/api/vms/web1/reboot/")

    def ids(query: str) -> set[str]:
        response = op.get(f"/api/jobs/?{query}")
        assert response.status_code == 200, response.json()
        return {(j["kind"], j["vm"]) for j in response.json()["results"]}

    assert ids("vm=web1") == {("vm.create", "web1"), ("vm.reboot", "web1")}
    assert ids("vm=web*&kind=vm.create") == {("vm.create", "web1"), ("vm.create", "web2")}
    assert ids("state=queued") == {("vm.reboot", "web1")}
    since = (timezone.now() - datetime.timedelta(days=1)).isoformat()
    assert ("vm.create", "web2") not in ids(f"since={since.replace('+', '%2B')}")
    assert op.get("/api/jobs/?state=nonsense").status_code == 400
    assert op.get("/api/jobs/?vm=Bad!").status_code == 400


def test_cancel_by_the_user_who_started_it_or_an_operator(world, alice, op):
    job_id = alice.post("/api/vms/", VM_BODY, format="json").json()["id"]
    carol = token_client(world["carol"])
    assert carol.get(f"/api/jobs/{job_id}/").status_code == 200  # same tenant: sees it
    assert carol.post(f"/api/jobs/{job_id}/cancel/").status_code == 403
    response = alice.post(f"/api/jobs/{job_id}/cancel/")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    Job.objects.filter(pk=job_id).update(state=JobState.CANCELLED)
    assert op.post(f"/api/jobs/{job_id}/cancel/").status_code == 409


def test_the_log_after_a_serial(world, op):
    from jobs.runner import append_log

    job = Job.objects.create(kind="test.ok", state=JobState.RUNNING)
    for n in range(3):
        append_log(job, f"line {n + 1}")
    body = op.get(f"/api/jobs/{job.pk}/log/?after=1").json()
    assert [e["message"] for e in body["entries"]] == ["line 2", "line 3"] and body["next_after"] == 3
    assert body["job"]["state"] == "running"
    empty = op.get(f"/api/jobs/{job.pk}/log/?after=3").json()
    assert empty["entries"] == [] and empty["next_after"] == 3
    assert op.get(f"/api/jobs/{job.pk}/log/?wait=31").status_code == 400
    assert op.get(f"/api/jobs/{job.pk}/log/?after=-1").status_code == 400


# --- incidents ---------------------------------------------------------------------------------------

def test_a_tenant_sees_its_part_of_an_incident_only(world, alice, bob, op):
    vm_for("acme", "mine")
    vm_for("globex", "theirs")
    incident = Incident.objects.create(kind=IncidentKind.CPU_SERVER_FAILED, state=IncidentState.CLOSED,
                                       host_name="cpu1", summary="cpu1 failed: mine, theirs exposed")
    incident.tenants.add(world["acme"])
    IncidentEvent.objects.create(incident=incident, kind=EventKind.DETECTED, message="cpu1 missed 3 checks")
    IncidentEvent.objects.create(incident=incident, kind=EventKind.RESTARTED, message="mine restarted on cpu2",
                                 data={"vm": "mine", "target": "cpu2"})
    IncidentEvent.objects.create(incident=incident, kind=EventKind.RESTARTED, message="theirs restarted on cpu2",
                                 data={"vm": "theirs", "target": "cpu2"})

    seen = alice.get(f"/api/incidents/{incident.pk}/").json()
    assert seen["host"] is None and "theirs" not in seen["summary"]
    assert [e["message"] for e in seen["events"]] == ["A host your VMs use failed.", "mine: guest restarted."]
    assert "cpu" not in str(seen["events"])
    assert alice.get("/api/incidents/").json()["count"] == 1
    assert bob.get("/api/incidents/").json()["count"] == 0
    assert bob.get(f"/api/incidents/{incident.pk}/").status_code == 404
    full = op.get(f"/api/incidents/{incident.pk}/").json()
    assert full["host"] == "cpu1" and len(full["events"]) == 3
    assert alice.post(f"/api/incidents/{incident.pk}/confirm-fence/").status_code == 403
    assert bob.post(f"/api/incidents/{incident.pk}/confirm-fence/").status_code == 404
    closed = op.post(f"/api/incidents/{incident.pk}/confirm-fence/")
    assert closed.status_code == 409 and "not waiting for a fence" in closed.json()["detail"]


# --- operator-only endpoints ---------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("get", "/api/tenants/"), ("post", "/api/tenants/"), ("get", "/api/tenants/acme/"),
    ("patch", "/api/tenants/acme/quota/"), ("get", "/api/users/"), ("post", "/api/users/"),
    ("get", "/api/users/alice/"), ("get", "/api/cpu-servers/"), ("get", "/api/cpu-servers/cpu1/"),
    ("post", "/api/cpu-servers/cpu1/enter-maintenance/"), ("get", "/api/disk-servers/"),
    ("post", "/api/disk-servers/disk1/leave-maintenance/"), ("post", "/api/verify/"),
])
def test_operator_endpoints_do_not_exist_for_tenants(world, alice, method, path):
    assert getattr(alice, method)(path, {}, format="json").status_code == 404
    assert Job.objects.count() == 0 and Tenant.objects.count() == 2


def test_verify_and_maintenance_start_jobs(world, op):
    verify = op.post("/api/verify/")
    assert verify.status_code == 202 and verify.json()["kind"] == "cluster.verify"
    assert op.post("/api/verify/").json()["id"] == verify.json()["id"]  # the running one, not a second
    evacuate = op.post("/api/cpu-servers/cpu1/enter-maintenance/", {}, format="json")
    assert evacuate.status_code == 202 and evacuate.json()["kind"] == "host.evacuate"
    assert op.get("/api/cpu-servers/cpu1/").json()["state"] == "maintenance"
    again = op.post("/api/cpu-servers/cpu1/enter-maintenance/", {}, format="json")
    assert again.status_code == 400 and "already in maintenance" in again.json()["non_field_errors"][0]
    busy = op.post("/api/cpu-servers/cpu1/leave-maintenance/")
    assert busy.status_code == 400 and "still being evacuated" in busy.json()["non_field_errors"][0]
    Job.objects.filter(pk=evacuate.json()["id"]).update(state="succeeded")
    back = op.post("/api/cpu-servers/cpu1/leave-maintenance/")
    assert back.status_code == 202 and back.json()["kind"] == "host.return"
    assert back["Location"] == back.json()["job_url"]
    assert op.get("/api/cpu-servers/cpu1/").json()["state"] == "maintenance"  # until a worker runs the job
    not_in = op.post("/api/disk-servers/disk1/leave-maintenance/")
    assert not_in.status_code == 400 and "not in maintenance" in not_in.json()["non_field_errors"][0]


def test_operators_manage_tenants_and_quotas(world, op):
    created = op.post("/api/tenants/", {"slug": "initech", "name": "Initech", "allowed_actions": ["start"],
                                        "quota_vms": 3}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert body["quotas"]["vms"] == {"resource": "vms", "label": "VMs", "title": "VMs", "unit": "", "used": 0,
                                     "limit": 3, "remaining": 3}
    assert body["allowed_actions"] == ["start"] and body["url"].endswith("/api/tenants/initech/")
    assert op.post("/api/tenants/", {"slug": "initech"}, format="json").json() == {
        "slug": ["a tenant named 'initech' already exists"]}
    assert op.post("/api/tenants/", {"slug": "Bad Slug"}, format="json").status_code == 400
    assert op.post("/api/tenants/", {"slug": "x", "allowed_actions": ["migrate"]}, format="json").status_code == 400
    patched = op.patch("/api/tenants/initech/", {"shows_cpu_server": True, "allowed_actions": ["start", "delete"]},
                       format="json").json()
    assert patched["shows_cpu_server"] is True and patched["allowed_actions"] == ["start", "delete"]
    quota = op.patch("/api/tenants/initech/quota/", {"vms": 7, "memory_mib": 2048}, format="json").json()
    assert quota["quotas"]["vms"]["limit"] == 7 and quota["quotas"]["memory_mib"]["limit"] == 2048
    assert op.patch("/api/tenants/initech/quota/", {"vms": -1}, format="json").status_code == 400
    assert op.patch("/api/tenants/initech/quota/", {"vms": 10**9}, format="json").status_code == 400
    vm_for("initech", "web1")
    refused = op.delete("/api/tenants/initech/")
    assert refused.status_code == 400 and "still has 1 VM" in refused.json()["slug"][0]
    assert op.delete("/api/tenants/globex/").status_code == 204
    assert op.get("/api/tenants/globex/").status_code == 404


def test_operators_manage_users_without_ever_seeing_a_password(world, op):
    created = op.post("/api/users/", {"username": "dave", "email": "dave@example.com", "tenant": "acme",
                                      "password": "a sound passphrase 42"}, format="json")
    assert created.status_code == 201
    assert created.json()["tenant"] == "acme" and "password" not in str(created.json())
    assert User.objects.get(username="dave").check_password("a sound passphrase 42")
    weak = op.post("/api/users/", {"username": "eve", "tenant": "acme", "password": "123"}, format="json")
    assert weak.status_code == 400 and "password" in weak.json()
    assert op.post("/api/users/", {"username": "dave", "tenant": "acme"}, format="json").status_code == 400
    assert op.post("/api/users/", {"username": "fay", "tenant": "nope"}, format="json").json() == {
        "tenant": ["no tenant named 'nope'"]}
    assert op.get("/api/users/?tenant=acme").json()["count"] == 3
    moved = op.patch("/api/users/dave/", {"tenant": "globex"}, format="json")
    assert moved.status_code == 200 and moved.json()["tenant"] == "globex"
    operator = op.patch("/api/users/op/", {"tenant": "acme"}, format="json")
    assert operator.status_code == 400 and "operators belong to no tenant" in operator.json()["tenant"][0]
    dave = token_client(User.objects.get(username="dave"))
    assert dave.get("/api/me/").status_code == 200
    assert op.patch("/api/users/dave/", {"is_active": False}, format="json").json()["is_active"] is False
    assert dave.get("/api/me/").status_code == 401
    assert op.patch("/api/users/op/", {"is_active": False}, format="json").status_code == 400
    assert "password" not in str(op.get("/api/users/").json())


def test_me_tells_a_tenant_its_quota_use_and_what_it_may_do(world, alice, op):
    vm_for("acme", "web1")
    me = alice.get("/api/me/").json()
    vms = next(q for q in me["quotas"] if q["resource"] == "vms")
    assert vms["used"] == 1 and vms["limit"] == 10
    assert me["may"] == {"create_vms": True, "vm_actions": ["start", "shutdown", "reboot", "console"],
                         "see_cpu_servers": False, "operate_cluster": False}
    mine = op.get("/api/me/").json()
    assert mine["is_operator"] and mine["tenant"] is None and mine["quotas"] is None
    assert "migrate" in mine["may"]["vm_actions"]


def test_pages_are_50_by_default_and_bounded(world, op):
    for n in range(55):
        Job.objects.create(kind="test.ok", target_name=f"vm{n}")
    first = op.get("/api/jobs/").json()
    assert first["count"] == 55 and len(first["results"]) == 50 and first["next"]
    assert len(op.get("/api/jobs/?page=2").json()["results"]) == 5
    assert len(op.get("/api/jobs/?page_size=10000").json()["results"]) == 55
    assert op.get("/api/jobs/?page=9").status_code == 404


# --- schema and docs ---------------------------------------------------------------------------------

def test_the_schema_is_valid_openapi_and_covers_every_operation(world, tmp_path: Path):
    from drf_spectacular.validation import validate_schema

    response = APIClient().get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")
    for path in ("/api/vms/", "/api/vms/{name}/start/", "/api/vms/{name}/migrate/", "/api/jobs/{id}/log/",
                 "/api/jobs/{id}/cancel/", "/api/incidents/{id}/confirm-fence/", "/api/verify/",
                 "/api/tenants/{slug}/quota/", "/api/users/{username}/", "/api/me/",
                 "/api/cpu-servers/{name}/enter-maintenance/", "/api/disk-servers/{name}/leave-maintenance/",
                 "/api/notification-targets/", "/api/notification-targets/{id}/test/",
                 "/api/notification-targets/{id}/rotate-secret/", "/api/notification-targets/{id}/deliveries/"):
        assert path in schema["paths"], path
    create = schema["paths"]["/api/vms/"]["post"]
    assert {"202", "400", "401", "403"} <= set(create["responses"])
    assert "tokenAuth" in schema["components"]["securitySchemes"]
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert out.stat().st_size > 10_000


def test_the_docs_pages_load_everything_from_the_panel(world):
    client = Client()
    swagger = client.get("/api/docs/")
    assert swagger.status_code == 200
    html = swagger.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "https://" not in html and "<script>" not in html
    assert "script-src 'self'" in swagger["Content-Security-Policy"]
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and b"SwaggerUIBundle" in script.content
    redoc = client.get("/api/redoc/").content.decode()
    assert "/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js" in redoc
    assert "https://" not in redoc and "<script>" not in redoc


def test_a_since_with_an_offset_postgresql_refuses_is_taken_in_utc(op):
    """Found by schemathesis: ISO 8601 allows offsets PostgreSQL does not (here -22:26)."""
    response = op.get("/api/jobs/", {"since": "2957-02-19T22:33:46-22:26"})
    assert response.status_code == 200 and response.json()["results"] == []
