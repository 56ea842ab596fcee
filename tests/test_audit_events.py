"""The audit log records each action where it happens: a real login through the login page and a
failed one, a lock, tokens made and replaced by the command, tenants, quotas and users changed
through the API, the admin and the commands, jobs requested and cancelled through the API, a fence
confirmed, maintenance entered and left. Who, through what, from where, seen by which tenant.
(A console opened: tests/test_console_unit.py.)"""
from __future__ import annotations

import getpass
import io
import os
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test import AsyncClient, Client
from rest_framework.test import APIClient

from api.tokens import issue_token
from audit.actors import MONITOR, acting_as
from audit.choices import Action, ActorKind
from audit.models import AuditEvent
from ha.choices import IncidentKind, IncidentState
from ha.incidents import open_incident
from ha.models import Incident
from hosts.choices import HostState
from hosts.models import CpuServer
from jobs.models import Job
from jobs.services import start_job
from tenants.models import Membership
from tenants.services import add_user, create_tenant, move_user
from vms.choices import VmState
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-enough-secret-1"


@pytest.fixture
def acme():
    return create_tenant("acme", allowed_actions=["start", "shutdown", "reboot"])


@pytest.fixture
def alice(acme):
    return add_user(acme, "alice", password=PASSWORD)


@pytest.fixture
def operator():
    return get_user_model().objects.create_user("op", password=PASSWORD, is_staff=True)


def _api(user: Any, address: str = "203.0.113.5") -> APIClient:
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(user)}")
    return client


def _events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).select_related("tenant").order_by("pk"))


def _one(action: str, **where: Any) -> AuditEvent:
    found = [e for e in _events(action) if all(getattr(e, k) == v for k, v in where.items())]
    assert len(found) == 1, f"{action}: {found}"
    return found[0]


def _as_row(event: AuditEvent) -> tuple:
    return (event.actor_name, event.actor_kind, event.target_kind, event.target_name,
            event.tenant.slug if event.tenant else None, event.source_ip)


def test_a_login_through_the_login_page_is_recorded_with_its_address_and_so_is_the_logout(alice):
    client = Client(REMOTE_ADDR="198.51.100.11")
    assert client.post("/login/", {"username": "alice", "password": PASSWORD}).status_code == 302
    login = _one(Action.LOGIN)
    assert _as_row(login) == ("alice", ActorKind.USER, "user", "alice", "acme", "198.51.100.11")
    assert login.actor == alice and login.details == {"page": "panel"}
    client.post("/logout/")
    assert _as_row(_one(Action.LOGOUT)) == ("alice", ActorKind.USER, "user", "alice", "acme", "198.51.100.11")


def test_a_login_through_the_admins_page_says_so(operator):
    client = Client(REMOTE_ADDR="198.51.100.16")
    assert client.post("/admin/login/", {"username": "op", "password": PASSWORD, "next": "/admin/"}).status_code == 302
    login = _one(Action.LOGIN)
    assert (login.actor_name, login.details, login.source_ip) == ("op", {"page": "admin"}, "198.51.100.16")


def test_a_failed_login_keeps_the_name_tried_and_the_address_never_the_password(alice):
    client = Client(REMOTE_ADDR="198.51.100.12")
    client.post("/login/", {"username": "alice", "password": "wrong-guess-42"})
    client.post("/login/", {"username": "mallory", "password": "wrong-guess-43"})
    own, stranger = _events(Action.LOGIN_FAILED)
    assert _as_row(own) == ("", ActorKind.ANONYMOUS, "user", "alice", "acme", "198.51.100.12")
    assert own.actor is None and own.details == {"user_exists": True}
    # A name that is nobody's: the operators', no tenant's.
    assert _as_row(stranger) == ("", ActorKind.ANONYMOUS, "user", "mallory", None, "198.51.100.12")
    assert stranger.details == {"user_exists": False}
    assert not [row for row in AuditEvent.objects.values_list() if "wrong-guess" in str(row)]
    assert not _events(Action.LOGIN)


def test_the_lock_a_guesser_causes_is_recorded_once_not_each_refusal_while_it_holds(alice, settings):
    settings.LOGIN_FAILURES_PER_ACCOUNT = 2
    client = Client(REMOTE_ADDR="198.51.100.13")
    statuses = [client.post("/login/", {"username": "alice", "password": f"guess-{n}"}).status_code for n in range(4)]
    assert statuses == [200, 429, 429, 429]
    assert len(_events(Action.LOGIN_FAILED)) == 2
    lock = _one(Action.LOGIN_LOCKED)
    assert _as_row(lock) == ("", ActorKind.ANONYMOUS, "user", "alice", "acme", "198.51.100.13")
    assert lock.details == {"user_exists": True, "scope": "account", "for_s": settings.LOGIN_LOCKOUT_S}


def test_a_token_made_and_replaced_by_the_command_is_the_operating_system_users_doing(alice):
    call_command("api", "token", "alice", stdout=io.StringIO())
    call_command("api", "token", "alice", "--rotate", stdout=io.StringIO())
    made, replaced = _events(Action.TOKEN_CREATED) + _events(Action.TOKEN_ROTATED)
    who = os.environ.get("SUDO_USER") or getpass.getuser()
    for event in (made, replaced):
        assert _as_row(event) == (who, ActorKind.COMMAND, "user", "alice", "acme", None)
        assert event.actor is None and set(event.details) == {"expires_at"}
    assert made.pk < replaced.pk


def test_tenant_quota_and_permission_changes_through_the_api_are_the_tokens_user_and_a_refused_one_writes_nothing(
        operator):
    api = _api(operator, "203.0.113.21")
    assert api.post("/api/tenants/", {"slug": "initech", "quota_vms": 3}, format="json").status_code == 201
    assert api.patch("/api/tenants/initech/quota/", {"vms": 5, "vcpus": 16}, format="json").status_code == 200
    assert api.patch("/api/tenants/initech/", {"allowed_actions": ["start"]}, format="json").status_code == 200
    assert api.patch("/api/tenants/initech/quota/", {"vms": -1}, format="json").status_code == 400
    created, quotas, rights = _one(Action.TENANT_CREATED), _one(Action.TENANT_QUOTAS), _one(Action.TENANT_PERMISSIONS)
    for event in (created, quotas, rights):
        assert _as_row(event) == ("op", ActorKind.TOKEN, "tenant", "initech", "initech", "203.0.113.21")
    assert created.details["quota_vms"] == 3 and created.details["allowed_actions"] == [
        "start", "shutdown", "reboot", "console"]
    assert quotas.details == {"vms": {"from": 3, "to": 5}}  # vCPUs were 16 already: no change, not listed
    assert rights.details == {"allowed_actions": {"from": ["start", "shutdown", "reboot", "console"],
                                                  "to": ["start"]}}
    assert api.delete("/api/tenants/initech/").status_code == 204
    assert _as_row(_one(Action.TENANT_DELETED)) == ("op", ActorKind.TOKEN, "tenant", "initech", None,
                                                    "203.0.113.21")
    # The tenant has gone: its events stay, without the link.
    assert AuditEvent.objects.filter(target_name="initech").count() == 4


def _operator_and_token() -> str:
    create_tenant("acme")
    return issue_token(get_user_model().objects.create_user("op", is_staff=True))


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_served_through_asgi_as_daphne_serves_it_a_change_still_names_who_made_it_and_from_where():
    key = await sync_to_async(_operator_and_token)()
    response = await AsyncClient().patch("/api/tenants/acme/quota/", {"vms": 4}, content_type="application/json",
                                         headers={"Authorization": f"Token {key}"})
    assert response.status_code == 200
    event = await sync_to_async(_one)(Action.TENANT_QUOTAS)
    await sync_to_async(lambda: connection.close())()  # the request's thread's, so that the test database can go
    assert _as_row(event) == ("op", ActorKind.TOKEN, "tenant", "acme", "acme", "127.0.0.1")


def test_users_created_moved_deactivated_and_made_operators_wherever_it_is_done(operator, alice, acme, tmp_path):
    globex = create_tenant("globex")
    api = _api(operator, "203.0.113.22")
    assert api.post("/api/users/", {"username": "bob", "tenant": "acme"}, format="json").status_code == 201
    assert api.patch("/api/users/bob/", {"is_active": False}, format="json").status_code == 200
    move_user(get_user_model().objects.get(username="bob"), globex)
    created = _one(Action.USER_CREATED, target_name="bob")
    assert _as_row(created) == ("op", ActorKind.TOKEN, "user", "bob", "acme", "203.0.113.22")
    assert _as_row(_one(Action.USER_DEACTIVATED)) == ("op", ActorKind.TOKEN, "user", "bob", "acme", "203.0.113.22")
    # A move is two events, one for each tenant: neither is told the other's name.
    left, joined = _one(Action.USER_REMOVED), _one(Action.USER_ADDED)
    assert (left.tenant, joined.tenant, left.details, joined.details) == (acme, globex, {}, {})
    assert left.actor_kind == joined.actor_kind == ActorKind.SYSTEM  # no request, no command: the system

    password_file = tmp_path / "password"
    password_file.write_text("operator-password-1\n")
    call_command("ensure_operator", "carol", "--password-file", str(password_file), stdout=io.StringIO())
    rights = _one(Action.USER_OPERATOR, target_name="carol")
    assert (rights.actor_kind, rights.target_name, rights.tenant) == (ActorKind.COMMAND, "carol", None)
    assert rights.details == {"is_staff": {"from": False, "to": True}, "is_superuser": {"from": False, "to": True}}
    assert [e.target_name for e in _events(Action.USER_PASSWORD)] == ["carol"]


def test_a_password_changed_on_its_page_is_the_users_own_doing(alice):
    client = Client(REMOTE_ADDR="198.51.100.14")
    client.force_login(alice)
    response = client.post("/password-change/", {"old_password": PASSWORD, "new_password1": "another-secret-22",
                                                  "new_password2": "another-secret-22"})
    assert response.status_code == 302
    assert _as_row(_one(Action.USER_PASSWORD)) == ("alice", ActorKind.USER, "user", "alice", "acme", "198.51.100.14")


@pytest.fixture
def stopped_vm(acme):
    cpu = CpuServer.objects.create(name="cpu1", address="192.0.2.31", libvirt_uri="test:///default",
                                   memory_mib=8192, vcpus=8)
    return VirtualMachine.objects.create(name="web1", vcpus=1, memory_mib=128, disk_mib=64, cpu_server=cpu,
                                         tenant=acme, state=VmState.STOPPED)


def test_a_job_requested_and_cancelled_through_the_api_names_who_what_and_on_what(alice, stopped_vm):
    api = _api(alice, "203.0.113.23")
    response = api.post("/api/vms/web1/start/")
    assert response.status_code == 202
    request = _one(Action.JOB_REQUESTED)
    assert _as_row(request) == ("alice", ActorKind.TOKEN, "vm", "web1", "acme", "203.0.113.23")
    assert request.actor == alice and request.details == {"job": response.json()["id"], "kind": "vm.start"}
    assert api.post(f"/api/jobs/{response.json()['id']}/cancel/").status_code == 202
    cancel = _one(Action.JOB_CANCEL)
    assert _as_row(cancel) == ("alice", ActorKind.TOKEN, "vm", "web1", "acme", "203.0.113.23")
    assert cancel.details == request.details


def test_a_refused_job_request_writes_no_event(alice, stopped_vm):
    VirtualMachine.objects.filter(pk=stopped_vm.pk).update(state=VmState.RUNNING)
    assert _api(alice).post("/api/vms/web1/start/").status_code == 400
    assert not AuditEvent.objects.filter(action=Action.JOB_REQUESTED).exists()


def test_a_job_a_job_starts_is_that_jobs_doing_and_the_monitors_are_the_monitors(stopped_vm, operator):
    parent = start_job("cluster.verify", user=operator)
    start_job("vm.start", vm=stopped_vm, parent=parent, user=operator)
    with acting_as(MONITOR):
        start_job("cluster.verify")
    by_operator, by_job, by_monitor = _events(Action.JOB_REQUESTED)
    assert (by_operator.actor_name, by_operator.actor_kind, by_operator.target_kind) == ("op", ActorKind.USER,
                                                                                          "cluster")
    assert (by_job.actor_name, by_job.actor_kind, by_job.actor) == (f"job #{parent.pk}", ActorKind.SYSTEM, None)
    assert (by_monitor.actor_name, by_monitor.actor_kind) == ("monitor", ActorKind.MONITOR)


@pytest.fixture
def two_cpus():
    return {name: CpuServer.objects.create(name=name, address=f"192.0.2.{40 + i}", libvirt_uri="test:///default",
                                           memory_mib=8192, vcpus=8) for i, name in enumerate(["cpu1", "cpu2"])}


def test_a_fence_confirmed_through_the_api_is_recorded_with_its_incident(operator, two_cpus):
    incident = open_incident(two_cpus["cpu2"], IncidentKind.CPU_SERVER_FAILED, "cpu2 missed 3 checks")[0]
    CpuServer.objects.filter(name="cpu2").update(state=HostState.DEAD)
    Incident.objects.filter(pk=incident.pk).update(state=IncidentState.UNFENCED)
    assert _api(operator, "203.0.113.24").post(f"/api/incidents/{incident.pk}/confirm-fence/").status_code == 202
    fence = _one(Action.FENCE_CONFIRMED)
    assert _as_row(fence) == ("op", ActorKind.TOKEN, "host", "cpu2", None, "203.0.113.24")
    assert fence.details == {"incident": incident.pk}
    assert _one(Action.JOB_REQUESTED).details["kind"] == "host.failover"


def test_maintenance_entered_and_left_through_the_api(operator, two_cpus):
    api = _api(operator, "203.0.113.25")
    evacuation = api.post("/api/cpu-servers/cpu2/enter-maintenance/").json()["id"]
    assert api.post("/api/cpu-servers/cpu2/leave-maintenance/").status_code == 400  # still evacuating
    assert not _events(Action.MAINTENANCE_LEFT)  # refused: nothing recorded
    api.post(f"/api/jobs/{evacuation}/cancel/")
    assert api.post("/api/cpu-servers/cpu2/leave-maintenance/").status_code == 202
    entered, left = _one(Action.MAINTENANCE_ENTERED), _one(Action.MAINTENANCE_LEFT)
    for event in (entered, left):
        assert _as_row(event) == ("op", ActorKind.TOKEN, "host", "cpu2", None, "203.0.113.25")
    kinds = [e.details["kind"] for e in _events(Action.JOB_REQUESTED)]
    assert kinds == ["host.evacuate", "host.return"]
    assert Job.objects.filter(kind="host.return").exists()


def test_changes_through_the_tenant_admin_are_recorded_as_the_services_changes_are(operator, alice, acme):
    client = Client(REMOTE_ADDR="198.51.100.15")
    client.force_login(get_user_model().objects.create_superuser("root", password=PASSWORD))
    form = {"slug": "acme", "name": "Acme", "may_create_vms": "on", "allowed_actions": '["start"]',
            "quota_vms": 7, "quota_vcpus": 16, "quota_memory_mib": 16384, "quota_disk_mib": 204800,
            "memberships-TOTAL_FORMS": 1, "memberships-INITIAL_FORMS": 1,
            "memberships-0-id": Membership.objects.get(user=alice).pk, "memberships-0-tenant": acme.pk,
            "memberships-0-user": alice.pk, "memberships-0-DELETE": "on"}
    response = client.post(f"/admin/tenants/tenant/{acme.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    quotas, rights, left = _one(Action.TENANT_QUOTAS), _one(Action.TENANT_PERMISSIONS), _one(Action.USER_REMOVED)
    assert quotas.details == {"vms": {"from": 10, "to": 7}}
    assert rights.details == {"allowed_actions": {"from": ["start", "shutdown", "reboot"], "to": ["start"]}}
    assert (left.target_name, left.tenant) == ("alice", acme)
    for event in (quotas, rights, left):
        assert (event.actor_name, event.actor_kind, event.source_ip) == ("root", ActorKind.USER, "198.51.100.15")
