"""`manage.py notify`: targets listed, added (a webhook's secret printed once), tested, their log read,
secrets rotated, removed; the owner's rules and bad input refused with nothing changed; every change
in the audit log as the command's operating system user's doing. On PostgreSQL, with the real
webhook receiver."""
from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from notifications.choices import DeliveryState, Severity, TargetKind
from notifications.models import Delivery, Target
from notifications.webhook_secrets import reveal
from tests.test_notifications import deliver_all, people, receiver  # noqa: F401

pytestmark = pytest.mark.django_db


def notify(*args: str) -> str:
    out = StringIO()
    call_command("notify", *args, stdout=out)
    return out.getvalue()


def test_a_webhook_added_tested_rotated_and_removed_from_the_command_line(people, receiver):  # noqa: F811
    added = notify("add", "alice", "chat", "--webhook", receiver.url("/alice"), "--kinds", "job.failed",
                   "--min-severity", "error")
    target = Target.objects.get()
    secret = re.search(r"signing secret \(shown this once\): (\S+)", added).group(1)
    assert f"#{target.pk} chat of alice" in added and reveal(target.secret_encrypted) == secret
    assert (target.owner, target.kind, target.kinds, target.min_severity) == (
        people.alice, TargetKind.WEBHOOK, ["job.failed"], Severity.ERROR)
    listed = notify("list")
    assert f"{target.pk}" in listed and receiver.url("/alice") in listed and secret not in listed

    tested = notify("test", str(target.pk))
    assert f"(delivery #{Delivery.objects.get().pk})" in tested
    deliver_all()
    [request] = receiver.received
    assert request.signed_with(secret) and request.json["kind"] == "test"
    log = notify("deliveries", str(target.pk))
    assert "test sent attempts=1 HTTP 200  Test notification for chat" in log

    rotated = notify("rotate-secret", str(target.pk))
    target.refresh_from_db()
    new_secret = rotated.rsplit(" ", 1)[1].strip()
    assert new_secret == reveal(target.secret_encrypted) != secret

    assert "removed notification target" in notify("remove", str(target.pk))
    assert not Target.objects.exists() and not Delivery.objects.exists()
    events = list(AuditEvent.objects.filter(target_kind="notification").order_by("pk"))
    assert [e.action for e in events] == ["notify.create", "notify.test", "notify.rotate", "notify.delete"]
    assert {(e.actor_kind, e.tenant_id) for e in events} == {("command", people.acme.pk)}
    assert secret not in str([e.details for e in events]) and new_secret not in str([e.details for e in events])


def test_an_email_target_of_an_operator_and_the_list_by_user(people):  # noqa: F811
    notify("add", "op", "oncall", "--email", "oncall@example.org", "--min-severity", "critical", "--disabled")
    notify("add", "alice", "mine", "--email", "alice@example.org")
    operators = Target.objects.get(owner=people.operator)
    assert (operators.kind, operators.min_severity, operators.enabled, operators.kinds) == (
        TargetKind.EMAIL, Severity.CRITICAL, False, [])
    only_alices = notify("list", "--user", "alice")
    assert "alice@example.org" in only_alices and "oncall@example.org" not in only_alices
    assert "severity>=warning" in only_alices and "(disabled)" in notify("list", "--user", "op")


@pytest.mark.parametrize(("args", "message"), [
    (["add", "alice", "all", "--email", "a@example.org", "--kinds", "incident.opened"],
     "kinds: a tenant's user hears only of their VMs' events, not incident.opened"),
    (["add", "nobody", "mail", "--email", "a@example.org"], "no user named 'nobody'"),
    (["add", "alice", "hook", "--webhook", "ftp://files.example.org/in"], "starts with http:// or https://"),
    (["add", "alice", "mail", "--email", "not an address"], "email: Enter a valid email address."),
    (["add", "alice", "x" * 101, "--email", "a@example.org"], "name: Ensure this value has at most 100"),
    (["remove", "999"], "no notification target #999"),
    (["test", "999"], "no notification target #999"),
])
def test_a_refusal_is_a_clear_error_and_changes_nothing(people, args, message):  # noqa: F811
    with pytest.raises(CommandError, match=re.escape(message)):
        notify(*args)
    assert not Target.objects.exists() and not AuditEvent.objects.filter(target_kind="notification").exists()


def test_a_user_who_hears_of_nothing_gets_no_target_and_an_email_has_no_secret(people, django_user_model):  # noqa: F811
    django_user_model.objects.create_user("drifter")
    with pytest.raises(CommandError, match="only operators and a tenant's users receive notifications"):
        notify("add", "drifter", "mail", "--email", "d@example.org")
    notify("add", "alice", "mail", "--email", "alice@example.org")
    target = Target.objects.get()
    with pytest.raises(CommandError, match="only a webhook has a secret"):
        notify("rotate-secret", str(target.pk))
    assert not target.deliveries.exists() and not target.secret_encrypted
    assert Delivery.objects.filter(state=DeliveryState.PENDING).count() == 0
