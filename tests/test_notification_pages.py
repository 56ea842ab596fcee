"""The notification targets' pages: a webhook's secret shown once, a tenant's user offered only their
VMs' kinds, the "Send a test" button and its line in the delivery log, each user's own targets."""
from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from audit.models import AuditEvent
from notifications.choices import EventKind, Severity, TargetKind
from notifications.models import Delivery, Target
from notifications.webhook_secrets import reveal
from tests.test_notifications import (  # noqa: F401
    deliver_all,
    email_target,
    kinds_for,
    people,
    receiver,
    webhook_target,
)

pytestmark = pytest.mark.django_db


def _signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_webhooks_secret_is_shown_once_and_kept_encrypted(people, receiver):  # noqa: F811
    client = _signed_in(people.operator)
    response = client.post("/notifications/new/", {"name": "chat", "kind": "webhook", "url": receiver.url(),
                                                    "min_severity": Severity.WARNING, "enabled": "on"}, follow=True)
    target = Target.objects.get()
    shown = re.search(r"signing secret of chat is (\S+) ", response.content.decode())
    assert shown, response.content.decode()[:2000]
    secret = shown.group(1)
    assert reveal(target.secret_encrypted) == secret and secret not in target.secret_encrypted
    assert secret not in client.get(target.get_absolute_url()).content.decode()

    rotated = client.post(f"/notifications/{target.pk}/secret/", follow=True).content.decode()
    new_secret = re.search(r"signing secret of chat is (\S+) ", rotated).group(1)
    target.refresh_from_db()
    assert new_secret != secret and reveal(target.secret_encrypted) == new_secret


def test_a_tenants_user_is_offered_only_their_vms_kinds(people):  # noqa: F811
    client = _signed_in(people.alice)
    page = client.get("/notifications/new/").content.decode()
    assert 'value="mirror.degraded"' in page and 'value="job.failed"' in page
    assert 'value="incident.opened"' not in page and 'value="capacity.n-plus-one-lost"' not in page
    refused = client.post("/notifications/new/", {"name": "all", "kind": "email", "email": "a@example.org",
                                                  "kinds": ["incident.opened"], "min_severity": Severity.INFO})
    assert refused.status_code == 200 and "incident.opened is not one of the available choices" in (
        refused.content.decode())
    assert not Target.objects.exists()


def test_the_test_button_sends_to_that_target_only_and_its_log_shows_it(people, receiver):  # noqa: F811
    clicked, secret = webhook_target(people.operator, receiver.url("/clicked"), kinds=[EventKind.JOB_FAILED])
    other, _ = webhook_target(people.operator, receiver.url("/other"), min_severity=Severity.INFO)
    client = _signed_in(people.operator)

    response = client.post(f"/notifications/{clicked.pk}/test/")
    deliver_all()

    assert response.status_code == 302 and response.url == clicked.get_absolute_url()
    assert kinds_for(clicked) == ["test"] and not other.deliveries.exists()
    [request] = receiver.received
    assert request.path == "/clicked" and request.signed_with(secret)
    assert request.json["subject"] == f"Test notification for {clicked.name}"
    page = client.get(clicked.get_absolute_url()).content.decode()
    assert 'data-state="sent"' in page and "Test notification for" in page


def test_a_user_sees_and_tests_only_their_own_targets(people):  # noqa: F811
    alices = email_target(people.alice, "alice@example.org")
    bobs = email_target(people.bob, "bob@example.org")
    listing = _signed_in(people.alice).get("/notifications/").content.decode()
    assert "alice@example.org" in listing and "bob@example.org" not in listing
    assert _signed_in(people.alice).post(f"/notifications/{bobs.pk}/test/").status_code == 404
    operators_view = _signed_in(people.operator).get("/notifications/").content.decode()
    assert "alice@example.org" in operators_view and "bob@example.org" in operators_view
    assert not Delivery.objects.exists() and alices.kind == TargetKind.EMAIL


def test_each_change_on_the_pages_is_in_the_audit_log_seen_by_the_owners_tenant(people, receiver):  # noqa: F811
    client = _signed_in(people.alice)
    client.post("/notifications/new/", {"name": "chat", "kind": "webhook", "url": receiver.url("/T01/s3cr3t-path"),
                                         "kinds": ["job.failed"], "min_severity": Severity.WARNING, "enabled": "on"})
    target = Target.objects.get()
    client.post(f"/notifications/{target.pk}/edit/", {"name": "chat", "url": target.url, "kinds": ["job.failed"],
                                                      "min_severity": Severity.ERROR})  # and disabled
    client.post(f"/notifications/{target.pk}/edit/", {"name": "chat", "url": target.url, "kinds": ["job.failed"],
                                                      "min_severity": Severity.ERROR})  # the same: no event
    client.post(f"/notifications/{target.pk}/secret/")
    client.post(f"/notifications/{target.pk}/test/")
    client.post(f"/notifications/{target.pk}/delete/")

    events = list(AuditEvent.objects.filter(target_kind="notification").order_by("pk"))
    assert [e.action for e in events] == ["notify.create", "notify.change", "notify.rotate", "notify.test",
                                          "notify.delete"]
    assert {(e.actor_name, e.actor_kind, e.tenant_id, e.target_kind, e.target_name) for e in events} == {
        ("alice", "user", people.acme.pk, "notification", "chat")}
    created = events[0].details
    assert created | {"target": None} == {"target": None, "owner": "alice", "kind": "webhook", "name": "chat",
                                          "address": receiver.url("").rstrip("/"), "kinds": ["job.failed"],
                                          "min_severity": "warning", "enabled": True}
    assert events[1].details == {"target": target.pk, "owner": "alice", "enabled": {"from": True, "to": False},
                                 "min_severity": {"from": "warning", "to": "error"}}
    # Neither the secret nor the webhook's path (a chat service's credential) is in the log.
    assert "s3cr3t" not in str([e.details for e in events]) and not Target.objects.exists()
    assert AuditEvent.objects.visible_to(people.alice).filter(target_kind="notification").count() == 5
    assert not AuditEvent.objects.visible_to(people.bob).filter(target_kind="notification").exists()
