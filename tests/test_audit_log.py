"""The audit log as a record: append-only in the ORM and in PostgreSQL itself (but for a deleted
user's or tenant's link and the archive's own deletes), each tenant's users see their tenant's
events (and no operator's address), the page's and the API's filters. Its retention (archive and
restore): tests/test_audit_retention.py."""
from __future__ import annotations

import datetime
import re

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from api.tokens import issue_token
from audit.actors import Actor
from audit.choices import Action, ActorKind
from audit.models import AppendOnly, AuditEvent
from audit.services import record
from tenants.services import add_user, create_tenant, delete_tenant, set_permissions, set_quotas

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-enough-secret-1"


@pytest.fixture
def world():
    acme, globex = create_tenant("acme"), create_tenant("globex")
    users = {"alice": add_user(acme, "alice", password=PASSWORD), "bob": add_user(globex, "bob", password=PASSWORD),
             "op": get_user_model().objects.create_user("op", password=PASSWORD, is_staff=True),
             "nobody": get_user_model().objects.create_user("nobody", password=PASSWORD)}
    clients = {}
    for name in ("op", "alice", "nobody"):  # each login is an event too: made before any the tests count
        clients[name] = Client()
        clients[name].force_login(users[name])
    return {"acme": acme, "globex": globex, "clients": clients, **users}


def _by(user, ip: str) -> Actor:
    return Actor.of_user(user, ip=ip)


def _sample(w: dict) -> dict[str, AuditEvent]:
    """An event of each kind of visibility: alice's, bob's, an operator's on acme's VM, an anonymous
    attempt on alice's account, and one for operators only."""
    return {
        "alice": record(Action.LOGIN, "user", "alice", tenant_id=w["acme"].pk, actor=_by(w["alice"], "198.51.100.1")),
        "bob": record(Action.LOGIN, "user", "bob", tenant_id=w["globex"].pk, actor=_by(w["bob"], "198.51.100.2")),
        "op_on_acme": record(Action.JOB_REQUESTED, "vm", "web1", tenant_id=w["acme"].pk, details={"job": 7},
                             actor=_by(w["op"], "10.0.0.5")),
        "guess": record(Action.LOGIN_FAILED, "user", "alice", tenant_id=w["acme"].pk,
                        actor=Actor.anonymous("203.0.113.66")),
        "operators": record(Action.MAINTENANCE_ENTERED, "host", "cpu2", actor=_by(w["op"], "10.0.0.5")),
    }


def _refused(sql: str, params: list) -> None:
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_the_orm_refuses_to_change_or_delete_an_event(world):
    event = _sample(world)["alice"]
    event.action = Action.LOGOUT
    for attempt in (event.save, event.delete, AuditEvent.objects.filter(pk=event.pk).delete,
                    lambda: AuditEvent.objects.filter(pk=event.pk).update(action=Action.LOGOUT)):
        with pytest.raises(AppendOnly):
            attempt()
    assert AuditEvent.objects.get(pk=event.pk).action == Action.LOGIN


def test_postgresql_refuses_an_update_or_a_delete_from_any_client(world):
    event = _sample(world)["alice"]
    _refused("UPDATE audit_auditevent SET action = 'logout' WHERE id = %s", [event.pk])
    _refused("UPDATE audit_auditevent SET actor_id = NULL, actor_name = 'someone' WHERE id = %s", [event.pk])
    _refused("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])
    # Not even by claiming an archive: the last day's events are out of any cutoff's reach.
    _refused("SELECT set_config('xenaoe.audit_archived_before', %s, true); DELETE FROM audit_auditevent",
             [(timezone.now() + datetime.timedelta(days=1)).isoformat()])
    assert AuditEvent.objects.get(pk=event.pk).action == Action.LOGIN


def test_deleting_a_user_or_a_tenant_empties_the_link_and_keeps_the_names(world):
    events = _sample(world)
    world["bob"].delete()
    delete_tenant(world["globex"])
    bob = AuditEvent.objects.get(pk=events["bob"].pk)
    assert (bob.actor, bob.actor_name, bob.tenant, bob.target_name, bob.source_ip) == (
        None, "bob", None, "bob", "198.51.100.2")
    assert AuditEvent.objects.filter(action=Action.TENANT_DELETED, target_name="globex").exists()


def test_each_tenant_sees_its_own_events_and_no_operators_name_or_address(world):
    events = _sample(world)
    seen = {name: {e.pk: (e.shown_actor, e.shown_ip) for e in AuditEvent.objects.visible_to(world[name]).filter(
        pk__in=[e.pk for e in events.values()])} for name in ("op", "alice", "bob", "nobody")}
    assert seen["op"] == {e.pk: (e.actor_name, e.source_ip) for e in events.values()}
    assert seen["alice"] == {events["alice"].pk: ("alice", "198.51.100.1"),
                             events["op_on_acme"].pk: ("an operator", None),
                             events["guess"].pk: ("", "203.0.113.66")}
    assert seen["bob"] == {events["bob"].pk: ("bob", "198.51.100.2")}
    assert seen["nobody"] == {}


def _page(client: Client, query: str = "") -> tuple[int, str]:
    response = client.get(f"/audit/{query}")
    return response.status_code, response.content.decode()


def _shown(client: Client, query: str = "") -> set[int]:
    status, html = _page(client, query)
    assert status == 200, html
    return {int(pk) for pk in re.findall(r'data-audit-event="(\d+)"', html)}


def _world_events(world) -> dict[str, int]:
    """What making the world recorded: its tenants, its users, its operator, their logins."""
    return {f"{e.action} {e.target_name}": e.pk for e in AuditEvent.objects.all()}


def test_the_page_filters_by_who_what_on_what_whose_and_when(world):
    made = _world_events(world)
    assert set(made) == {"tenant.create acme", "tenant.create globex", "user.create alice", "user.create bob",
                         "user.operator op", "login op", "login alice", "login nobody"}
    events = {name: e.pk for name, e in _sample(world).items()}
    dated = AuditEvent.objects.create(time=timezone.now() - datetime.timedelta(days=40), actor_name="alice",
                                      actor_kind=ActorKind.USER, action=Action.LOGOUT, target_kind="user",
                                      target_name="alice", tenant=world["acme"]).pk
    op = world["clients"]["op"]
    assert _shown(op) == {*made.values(), *events.values(), dated}
    assert _shown(op, "?actor=alice") == {events["alice"], dated, made["login alice"]}
    assert _shown(op, "?action=login.failed") == {events["guess"]}
    assert _shown(op, "?target=web*") == {events["op_on_acme"]}
    assert _shown(op, "?target=alice&action=login") == {events["alice"], made["login alice"]}
    assert _shown(op, "?tenant=-") == {events["operators"], made["user.operator op"], made["login op"],
                                       made["login nobody"]}
    assert _shown(op, "?tenant=globex") == {events["bob"], made["tenant.create globex"], made["user.create bob"]}
    assert _shown(op, "?actor_kind=anonymous") == {events["guess"]}
    assert _shown(op, "?ip=10.0.0.5") == {events["op_on_acme"], events["operators"]}
    day = (timezone.localdate() - datetime.timedelta(days=40)).isoformat()
    assert _shown(op, f"?date_from={day}&date_to={day}") == {dated}
    status, html = _page(op, "?date_from=2026-12-31&date_to=2026-01-01")
    assert status == 400 and "is before" in html and "data-audit-event" not in html
    assert _page(op, "?action=reboot")[0] == 400


def test_a_tenants_user_gets_their_tenants_events_on_the_page_without_a_tenant_filter(world):
    made = _world_events(world)
    events = _sample(world)
    alice = world["clients"]["alice"]
    status, html = _page(alice)
    assert _shown(alice) == {made["tenant.create acme"], made["user.create alice"], made["login alice"],
                             events["alice"].pk, events["op_on_acme"].pk, events["guess"].pk}
    assert 'name="tenant"' not in html
    assert "10.0.0.5" not in html and "203.0.113.66" in html
    assert f'href="/jobs/{events["op_on_acme"].details["job"]}/"' in html
    # An operator is "an operator" to a tenant, without address; neither can be probed for.
    assert ">an operator</a>" in html and ">op</a>" not in html
    assert _shown(alice, "?actor=an operator") == {events["op_on_acme"].pk}
    assert _shown(alice, "?actor=op") == set() and _shown(alice, "?ip=10.0.0.5") == set()
    assert _shown(world["clients"]["nobody"]) == set()


def test_the_page_shows_a_change_as_old_to_new_and_a_list_as_a_list(world):
    set_quotas(world["acme"], quota_vms=5)
    set_permissions(world["acme"], allowed_actions=["start", "console"])
    _, html = _page(world["clients"]["op"], "?target=acme")
    assert "vms: 10 → 5" in html
    assert "allowed_actions: start, shutdown, reboot, console → start, console" in html
    assert "allowed_actions: start, shutdown, reboot, console</span>" in html  # the tenant's creation


def test_the_api_lists_what_the_page_does_with_the_same_filters(world):
    events = _sample(world)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(world['alice'])}")
    answer = api.get("/api/audit/", {"since": (timezone.now() - datetime.timedelta(minutes=5)).isoformat()}).json()
    assert {e["tenant"] for e in answer["results"]} == {"acme"}
    sample = {e.pk for e in events.values()}
    ids = [e["id"] for e in answer["results"] if e["id"] in sample]
    assert ids == [events["guess"].pk, events["op_on_acme"].pk, events["alice"].pk]  # newest first
    job = next(e for e in answer["results"] if e["id"] == events["op_on_acme"].pk)
    assert (job["actor"], job["actor_kind"], job["target_kind"], job["target_name"], job["tenant"],
            job["source_ip"], job["details"]) == ("an operator", "user", "vm", "web1", "acme", None, {"job": 7})
    assert api.get("/api/audit/", {"action": "nonsense"}).status_code == 400
    assert [e["id"] for e in api.get("/api/audit/", {"action": "login.failed"}).json()["results"]] == [
        events["guess"].pk]

