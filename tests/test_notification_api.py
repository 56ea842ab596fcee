"""Notification targets over the API (api/notifications.py): each user's own (operators: everyone's),
another's a 404 whatever the verb; a webhook's secret in the answer that made it and never again;
bad input a 400 that changes nothing; the test action and the delivery log; every change audited.
On PostgreSQL, with the real webhook receiver of tests/notify_receivers.py."""
from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEvent
from notifications.choices import DeliveryState, EventKind, Severity, TargetKind
from notifications.models import Delivery, Target
from notifications.notify import notify
from notifications.services import save_target
from notifications.webhook_secrets import reveal
from tests.test_api import token_client
from tests.test_notifications import deliver_all, email_target, people, receiver, webhook_target  # noqa: F401

pytestmark = pytest.mark.django_db
TARGETS = "/api/notification-targets/"


def _post(client: APIClient, path: str, body: dict[str, Any] | None = None) -> Any:
    return client.post(path, body or {}, format="json")


def _patch(client: APIClient, path: str, body: dict[str, Any]) -> Any:
    return client.patch(path, body, format="json")


def _audited() -> list[tuple[str, str, str]]:
    return list(AuditEvent.objects.filter(target_kind="notification").order_by("pk")
                .values_list("action", "actor_name", "actor_kind"))


def _rows() -> list[tuple]:
    """Every target as stored, for "nothing changed"."""
    return list(Target.objects.order_by("pk").values_list())


def test_a_webhooks_secret_is_in_the_answer_that_made_it_and_never_again(people, receiver):  # noqa: F811
    alice = token_client(people.alice)
    made = _post(alice, TARGETS, {"name": "chat", "kind": "webhook", "webhook_url": receiver.url("/T01/path"),
                                  "kinds": ["job.failed", "job.failed"], "min_severity": "error"})

    assert made.status_code == 201, made.json()
    body = made.json()
    target = Target.objects.get()
    assert made["Cache-Control"] == "no-store" and made["Location"] == body["url"]
    assert body["secret"] == reveal(target.secret_encrypted) and body["secret"] not in target.secret_encrypted
    assert {k: body[k] for k in ("name", "kind", "email", "webhook_url", "kinds", "min_severity", "enabled",
                                 "owner")} == {
        "name": "chat", "kind": "webhook", "email": "", "webhook_url": receiver.url("/T01/path"),
        "kinds": ["job.failed"], "min_severity": "error", "enabled": True, "owner": "alice"}
    secret = body["secret"]
    for read in (alice.get(TARGETS), alice.get(body["url"]), _patch(alice, body["url"], {"name": "chat 2"}),
                 token_client(people.operator).get(TARGETS)):
        assert read.status_code == 200 and "secret" not in read.content.decode() and secret not in read.content.decode()

    rotated = _post(alice, f"{body['url']}rotate-secret/")
    assert rotated.status_code == 200 and rotated["Cache-Control"] == "no-store"
    target.refresh_from_db()
    assert rotated.json()["secret"] == reveal(target.secret_encrypted) != secret
    assert _audited() == [("notify.create", "alice", "token"), ("notify.change", "alice", "token"),
                          ("notify.rotate", "alice", "token")]
    assert secret not in str(list(AuditEvent.objects.values_list("details", flat=True)))


def test_another_users_target_is_a_404_whatever_the_verb_and_nothing_changes(people):  # noqa: F811
    bobs = email_target(people.bob, "bob@example.org")
    bobs_hook, _ = webhook_target(people.bob, "https://hooks.example.org/bob")
    alice = token_client(people.alice)
    before, audited = _rows(), _audited()

    for target in (bobs, bobs_hook):
        url = f"{TARGETS}{target.pk}/"
        assert alice.get(url).status_code == 404
        assert alice.get(f"{url}deliveries/").status_code == 404
        assert _patch(alice, url, {"name": "mine now", "enabled": False}).status_code == 404
        assert _post(alice, f"{url}test/").status_code == 404
        assert _post(alice, f"{url}rotate-secret/").status_code == 404
        assert alice.delete(url).status_code == 404

    assert _rows() == before and _audited() == audited and not Delivery.objects.exists()
    assert alice.get(TARGETS).json()["count"] == 0
    seen = token_client(people.operator).get(TARGETS).json()
    assert seen["count"] == 2 and {t["owner"] for t in seen["results"]} == {"bob"}


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "all", "kind": "email", "email": "a@example.org", "kinds": ["incident.opened"]}, "kinds"),
    ({"name": "all", "kind": "email", "email": "a@example.org", "kinds": ["test"]}, "kinds"),
    ({"name": "all", "kind": "email", "email": "a@example.org", "kinds": "job.failed"}, "kinds"),
    ({"name": "mail", "kind": "email"}, "email"),
    ({"name": "mail", "kind": "email", "email": "not an address"}, "email"),
    ({"name": "mail", "kind": "email", "email": "a@example.org", "webhook_url": "https://x.example.org/"},
     "webhook_url"),
    ({"name": "hook", "kind": "webhook"}, "webhook_url"),
    ({"name": "hook", "kind": "webhook", "webhook_url": "ftp://files.example.org/in"}, "webhook_url"),
    ({"name": "hook", "kind": "webhook", "webhook_url": "https://x.example.org/", "email": "a@example.org"}, "email"),
    ({"name": "mail", "kind": "pager", "email": "a@example.org"}, "kind"),
    ({"name": "", "kind": "email", "email": "a@example.org"}, "name"),
    ({"name": "x" * 101, "kind": "email", "email": "a@example.org"}, "name"),
    ({"name": "mail", "kind": "email", "email": "a@example.org", "min_severity": 20}, "min_severity"),
    ({"name": "mail", "kind": "email", "email": "a@example.org", "enabled": "perhaps"}, "enabled"),
])
def test_bad_input_to_create_is_a_400_naming_the_field_and_makes_nothing(people, body, field):  # noqa: F811
    refused = _post(token_client(people.alice), TARGETS, body)
    assert refused.status_code == 400 and field in refused.json(), refused.json()
    assert not Target.objects.exists() and _audited() == []


@pytest.mark.parametrize(("body", "field"), [
    ({"kinds": ["capacity.n-plus-one-lost"]}, "kinds"),
    ({"kind": "webhook"}, "kind"),
    ({"webhook_url": "https://x.example.org/"}, "webhook_url"),
    ({"email": ""}, "email"),
    ({"name": ""}, "name"),
    ({"min_severity": "loud"}, "min_severity"),
])
def test_bad_input_to_a_change_is_a_400_and_changes_nothing(people, body, field):  # noqa: F811
    target = email_target(people.alice, "alice@example.org")
    before, audited = _rows(), _audited()
    refused = _patch(token_client(people.alice), f"{TARGETS}{target.pk}/", body)
    assert refused.status_code == 400 and field in refused.json(), refused.json()
    assert _rows() == before and _audited() == audited


def test_an_operator_may_change_a_tenants_target_but_not_beyond_what_its_owner_may_hear(people):  # noqa: F811
    alices = email_target(people.alice, "alice@example.org")
    operator = token_client(people.operator)
    refused = _patch(operator, f"{TARGETS}{alices.pk}/", {"kinds": ["host.unfenced"]})
    assert refused.status_code == 400 and "hears only of their VMs' events" in refused.json()["kinds"][0]
    changed = _patch(operator, f"{TARGETS}{alices.pk}/", {"min_severity": "critical", "enabled": False})
    assert changed.status_code == 200 and changed.json()["min_severity"] == "critical"
    alices.refresh_from_db()
    assert (alices.min_severity, alices.enabled, alices.owner) == (Severity.CRITICAL, False, people.alice)
    assert _audited()[-1] == ("notify.change", "op", "token")
    # Its owner's tenant reads it, with the operator as "an operator".
    [seen] = AuditEvent.objects.visible_to(people.alice).filter(action="notify.change")
    assert seen.shown_actor == "an operator"


def test_a_target_made_over_the_api_hears_only_of_its_owners_vms(people):  # noqa: F811
    alice = token_client(people.alice)
    made = _post(alice, TARGETS, {"name": "mail", "kind": "email", "email": "a@example.org"})
    assert made.status_code == 201 and made.json()["secret"] is None and made.json()["kinds"] == []
    assert made.json()["min_severity"] == "warning"  # the default
    assert _patch(alice, made.json()["url"], {"min_severity": "info"}).status_code == 200
    notify(EventKind.INCIDENT_OPENED, Severity.CRITICAL, "cpu1 failed")
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job of globex failed", tenant=people.globex)
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job of acme failed", tenant=people.acme)
    assert list(Delivery.objects.values_list("event__subject", flat=True)) == ["job of acme failed"]


def test_the_test_action_sends_to_that_target_and_its_log_pages_through_the_deliveries(people, receiver):  # noqa: F811
    target, secret = webhook_target(people.alice, receiver.url("/alice"), kinds=[EventKind.JOB_FAILED])
    alice = token_client(people.alice)
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job #7 vm.migrate shop on cpu1 (192.0.2.21) failed",
           tenant=people.acme)

    queued = _post(alice, f"{TARGETS}{target.pk}/test/")
    assert queued.status_code == 202 and queued.json()["state"] == DeliveryState.PENDING
    assert queued.json()["event"]["kind"] == "test" and queued["Location"].endswith(f"/{target.pk}/deliveries/")
    deliver_all()

    assert [r.path for r in receiver.received] == ["/alice", "/alice"] and receiver.received[1].signed_with(secret)
    first = alice.get(f"{TARGETS}{target.pk}/deliveries/?page_size=1").json()
    assert first["count"] == 2 and first["next"] and first["previous"] is None
    [latest] = first["results"]
    assert latest["id"] == queued.json()["id"] and latest["state"] == "sent" and latest["attempts"] == 1
    assert latest["response_code"] == 200 and latest["event"]["subject"] == f"Test notification for {target.name}"
    [older] = alice.get(first["next"]).json()["results"]
    # A tenant's user reads the log as on the target's page: no addresses (jobs/redaction.py).
    assert "192.0.2.21" not in older["event"]["subject"] and older["event"]["severity"] == "error"
    operators = token_client(people.operator).get(f"{TARGETS}{target.pk}/deliveries/").json()["results"]
    assert "192.0.2.21" in operators[1]["event"]["subject"]
    assert _audited()[-1] == ("notify.test", "alice", "token")


def test_removing_a_target_takes_its_log_and_says_so_in_the_audit_log(people):  # noqa: F811
    target = email_target(people.alice, "alice@example.org")
    alice = token_client(people.alice)
    _post(alice, f"{TARGETS}{target.pk}/test/")
    assert alice.delete(f"{TARGETS}{target.pk}/").status_code == 204
    assert not Target.objects.exists() and not Delivery.objects.exists()
    assert alice.get(f"{TARGETS}{target.pk}/").status_code == 404
    assert _audited()[-1] == ("notify.delete", "alice", "token")


def test_an_email_target_has_no_secret_to_rotate_and_a_user_without_tenant_may_make_none(people,  # noqa: F811
                                                                                        django_user_model):
    target = email_target(people.alice, "alice@example.org")
    refused = _post(token_client(people.alice), f"{TARGETS}{target.pk}/rotate-secret/")
    assert refused.status_code == 400 and refused.json() == {"non_field_errors": ["only a webhook has a secret"]}
    nobody = token_client(django_user_model.objects.create_user("drifter"))
    assert nobody.get(TARGETS).json()["count"] == 0
    made = _post(nobody, TARGETS, {"name": "mail", "kind": "email", "email": "d@example.org"})
    assert made.status_code == 403 and Target.objects.count() == 1
    assert APIClient().get(TARGETS).status_code == 401
    assert target.kind == TargetKind.EMAIL


def test_a_change_saved_after_a_rotation_keeps_the_rotated_secret(people):  # noqa: F811
    target, _ = webhook_target(people.alice, "https://hooks.example.org/alice")
    stale = Target.objects.get(pk=target.pk)  # read by a PATCH before the rotation below
    rotated = _post(token_client(people.alice), f"{TARGETS}{target.pk}/rotate-secret/").json()["secret"]
    stale.name = "renamed"
    save_target(stale)
    assert reveal(Target.objects.get(pk=target.pk).secret_encrypted) == rotated
